"""Simulated vs measured: metrics on synthetic data with known answers, the report and
plots, bad input, and every committed real measurement file in traces/measured/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tvwsim.sim.presets import list_presets, load_preset
from tvwsim.validate import split
from tvwsim.validate.compare import compare_rows, format_text, mape, spearman
from tvwsim.validate.dataset import read_measurements
from tvwsim.validate.fit import with_parameters
from tvwsim.validate.plots import speedup_bars, time_scatter, write_plots
from tvwsim.validate.points import BASELINES, VENDOR, SweepPoint

from tests.validate.fakes import scaled_hardware, synthetic_rows, write_rows
from tvwsim.cli import main
from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DEVICE = "NVIDIA H100 80GB HBM3 (synthetic, 8 SMs)"

# Shapes whose hashes put some in each split (split.split_shapes); small enough that an
# 8-SM H100 simulates each in milliseconds.
SHAPES = [(256, 512, 1024), (512, 256, 512), (128, 1024, 2048), (64, 512, 512), (256, 256, 256)]
KERNELS = [
    ("dense", 0.0, "natural"),
    ("vw", 0.5, "natural"),
    ("tw", 0.75, "natural"),
    ("tw", 0.75, "longest-first"),
    ("tvw", 0.75, "natural"),
    ("bw", 0.75, "natural"),
]


@pytest.fixture(scope="module")
def mini():
    return scaled_hardware(load_preset("h100"), 8, name="h100-mini8")


def cublas_row(dense: dict, factor: float) -> dict:
    """A vendor row on the same shape as `dense`, `factor` times its time."""
    row = json.loads(json.dumps(dense))
    point = SweepPoint("cublas", "dense", row["M"], row["N"], row["K"], 0.0, None, VENDOR)
    times = [t * factor for t in row["times_us"]]
    row.update(
        point=point.key,
        implementation="cublas",
        kernel="torch.mm fp16 (cuBLAS)",
        config=VENDOR,
        mma=VENDOR,
        policy=VENDOR,
        schedule_digest=None,
        times_us=times,
        median_us=float(np.median(times)),
    )
    return row


@pytest.fixture(scope="module")
def rows(mini):
    """Our five kernels on every shape, measured = the model itself + 1% noise, and a
    cuBLAS row per shape at 0.8 x our dense time."""
    entries = [
        (shape, pattern, s, default_config(pattern), policy)
        for shape in SHAPES
        for pattern, s, policy in KERNELS
    ]
    ours = synthetic_rows(entries, mini, noise=0.01, seed=3, device_name=DEVICE)
    vendor = [cublas_row(r, 0.8) for r in ours if r["pattern"] == "dense"]
    return ours + vendor


# =====================================================================================
# Metrics
# =====================================================================================
def test_mape_and_spearman_definitions():
    assert mape([110.0, 90.0], [100.0, 100.0]) == pytest.approx(0.1)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None  # too few points to rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no variation


def test_a_perfect_model_scores_perfectly(rows, mini):
    c = compare_rows(rows, mini, all_rows=True)
    assert c.n == len(SHAPES) * len(KERNELS)
    assert c.time_mape < 0.01  # only the 1% per-run noise (its median, smaller)
    assert c.speedup_mape < 0.02
    assert c.spearman > 0.99
    # cuBLAS: simulated column divides the measured cuBLAS time by our simulated time.
    assert c.speedup_cublas_mape < 0.01
    for p in c.points:
        assert p.schedule_matches is True
        assert p.speedup_cublas_measured == pytest.approx(
            0.8 * _dense_time(rows, p.shape) / p.measured_us
        )
        if p.pattern == "dense":
            assert p.speedup_dense_measured == pytest.approx(1.0)
            assert p.speedup_dense_simulated == pytest.approx(1.0)


def _dense_time(rows, shape: str) -> float:
    return min(
        r["median_us"]
        for r in rows
        if r["implementation"] == "tvwsim"
        and r["pattern"] == "dense"
        and f"{r['M']}x{r['N']}x{r['K']}" == shape
    )


def test_a_wrong_model_shows_where_it_is_wrong(rows, mini):
    wrong = with_parameters(mini, ["mma_efficiency_sparse"], [mini.mma_efficiency_sparse / 2])
    good = compare_rows(rows, mini, all_rows=True)
    bad = compare_rows(rows, wrong, all_rows=True)
    assert bad.time_mape > good.time_mape + 0.05
    assert bad.per_pattern["vw"]["time_mape"] > 0.2 or bad.per_pattern["tvw"]["time_mape"] > 0.2
    assert bad.per_pattern["dense"]["time_mape"] == pytest.approx(
        good.per_pattern["dense"]["time_mape"]
    )  # a sparse-only error leaves dense alone
    worst = bad.worst()
    assert len(worst) == 5
    assert all(p.pattern in ("vw", "tvw") for p in worst)
    logs = [abs(p.log_ratio) for p in worst]
    assert logs == sorted(logs, reverse=True)
    assert max(logs) == max(abs(p.log_ratio) for p in bad.points)


def test_default_compares_only_held_out_shapes(rows, mini):
    c = compare_rows(rows, mini)
    assert c.rows == "held-out" and c.split.held_out
    held = {split.shape_name(s) for s in c.split.held_out}
    assert {p.shape for p in c.points} == held
    assert c.n == len(held) * len(KERNELS)


def test_text_json_and_plots(tmp_path, rows, mini, capsys):
    measured = write_rows(tmp_path / "m.jsonl", rows)
    plots = tmp_path / "plots"
    argv = ["compare", "--measured", str(measured), "--hw", "h100", "--all-rows"]
    # The 8-SM GPU as a preset file: the rows' device name matches its family 'h100'.
    preset = tmp_path / "h100-mini8.toml"
    h100 = load_preset("h100")
    preset.write_text(
        f'base = "h100"\nsm_count = 8\nl2_bytes = {mini.l2_bytes}\n'
        f"l2_bandwidth_gbps = {mini.l2_bandwidth_gbps!r}\n"
        f"dram_bandwidth_gbps = {mini.dram_bandwidth_gbps!r}\n"
    )
    assert h100.sm_count == 132
    argv[4] = str(preset)
    assert main([*argv, "--json", "--plot", str(plots)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"n", "time_mape", "speedup_mape", "spearman", "worst"} <= set(data)
    assert data["n"] == len(SHAPES) * len(KERNELS) and len(data["worst"]) == 5
    assert data["time_mape"] < 0.01 and data["spearman"] > 0.99
    assert {"point", "measured_us", "simulated_us", "error"} <= set(data["worst"][0])
    for name in ("time_scatter.png", "speedup_bars.png"):
        png = plots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert sorted(data["plots"]) == sorted(
        str(plots / n) for n in ("speedup_bars.png", "time_scatter.png")
    )
    assert not list(plots.glob(".*"))  # no temp files left behind
    assert main(argv) == 0
    text = capsys.readouterr().out
    for needle in ("time MAPE", "Spearman", "worst 5", "tvw", "speedup over cuBLAS"):
        assert needle in text


def test_compare_bad_input(tmp_path, rows, capsys):
    # Rows from another GPU than the preset: refused, unless asked for.
    a100 = json.loads(json.dumps(rows))
    for r in a100:
        r["device"]["name"] = "NVIDIA A100-SXM4-80GB"
    path = write_rows(tmp_path / "a100.jsonl", a100)
    assert main(["compare", "--measured", str(path), "--hw", "h100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "describes another GPU" in err
    # A malformed file: one error naming file and line.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n" + '{"schema": 1}\n')
    assert main(["compare", "--measured", str(broken), "--hw", "h100"]) == 2
    assert "broken.jsonl:2: point: missing" in capsys.readouterr().err
    # Unknown preset.
    assert main(["compare", "--measured", str(path), "--hw", "h900"]) == 2
    assert "unknown hardware preset" in capsys.readouterr().err


def test_one_shape_has_nothing_held_out(rows, mini):
    one = [r for r in rows if (r["M"], r["N"], r["K"]) == SHAPES[0]]
    with pytest.raises(InputError, match="--all-rows"):
        compare_rows(one, mini)
    assert compare_rows(one, mini, all_rows=True).n == len(KERNELS)
    with pytest.raises(InputError, match="no correct rows of tvwsim kernels"):
        compare_rows([r for r in rows if r["implementation"] in BASELINES], mini, kind="tvwsim")


def test_format_text_handles_missing_references(tmp_path, rows, mini):
    ours = [r for r in rows if r["implementation"] == "tvwsim" and r["pattern"] != "dense"]
    c = compare_rows(ours, mini, all_rows=True)
    assert c.speedup_mape is None and c.speedup_cublas_mape is None
    text = format_text(c)
    assert "speedup over our dense, MAPE   -" in text
    (ax,) = speedup_bars(c).axes
    assert not ax.patches  # no bars: no sparse row has a dense reference
    assert [t.get_text() for t in ax.texts] == ["no sparse rows with a dense reference"]
    out = write_plots(c, tmp_path)
    assert [p.name for p in out] == ["time_scatter.png", "speedup_bars.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out)


def test_time_scatter_shows_every_point_per_pattern(rows, mini):
    c = compare_rows(rows, mini, all_rows=True)
    (ax,) = time_scatter(c).axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    # One scatter per pattern, in the registry's order, holding exactly its points.
    patterns = ["dense", "bw", "vw", "tw", "tvw"]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    counts = {p: sum(q.pattern == p for q in c.points) for p in patterns}
    assert labels == ["simulated = measured", "within 25%"] + [
        f"{p} ({counts[p]})" for p in patterns
    ]
    plotted = np.concatenate([col.get_offsets() for col in ax.collections[1:]])
    expected = [(p.measured_us, p.simulated_us) for p in c.points]
    assert np.allclose(sorted(map(tuple, plotted.tolist())), sorted(expected))
    # The y = x line spans both axes; the limits hold every point.
    lo, hi = ax.get_xlim()
    assert lo < min(min(e) for e in expected) and hi > max(max(e) for e in expected)
    assert f"{c.n} kernels (all rows)" in ax.get_title()
    # Minor ticks are labelled at 2x and 5x a power of ten only, so a decade stays legible.
    ax.figure.canvas.draw()
    minor = [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    assert minor and all(label.lstrip("0.")[0] in "25" for label in minor), minor


def test_minor_tick_labels_are_the_2s_and_5s():
    from tvwsim.validate.plots import _minor_label

    assert [_minor_label(v) for v in (2, 3, 5, 7, 20, 40, 50, 400, 500, 0.2)] == [
        "2",
        "",
        "5",
        "",
        "20",
        "",
        "50",
        "",
        "500",
        "0.2",
    ]


def test_speedup_bars_are_the_geometric_means(rows, mini):
    c = compare_rows(rows, mini, all_rows=True)
    (ax,) = speedup_bars(c).axes
    # Measured and simulated bar per (pattern, sparsity) with a dense reference.
    groups = sorted({(p.pattern, p.sparsity) for p in c.points if p.pattern != "dense"})
    bars = ax.patches
    assert len(bars) == 2 * len(groups)
    heights = [b.get_height() for b in bars]
    measured, simulated = heights[: len(groups)], heights[len(groups) :]
    order = ["bw", "vw", "tw", "tvw"]
    for i, (pattern, s) in enumerate(sorted(groups, key=lambda g: (order.index(g[0]), g[1]))):
        ps = [p for p in c.points if (p.pattern, p.sparsity) == (pattern, s)]
        gm = np.exp(np.mean(np.log([p.speedup_dense_measured for p in ps])))
        gs = np.exp(np.mean(np.log([p.speedup_dense_simulated for p in ps])))
        assert measured[i] == pytest.approx(gm) and simulated[i] == pytest.approx(gs)
        assert ax.get_xticklabels()[i].get_text().startswith(f"{pattern}\n{s:.4g}")
    # A perfect model: each simulated bar within the noise of its measured one.
    assert simulated == pytest.approx(measured, rel=0.03)


# =====================================================================================
# Committed real measurements
# =====================================================================================
MEASURED = sorted((REPO / "traces" / "measured").glob("*.jsonl"))


def _row_point(row: dict) -> SweepPoint:
    config = None
    if row["implementation"] == "tvwsim":
        config = KernelConfig.from_name(row["config"], mma=row["mma"])
    return SweepPoint(
        row["implementation"],
        row["pattern"],
        row["M"],
        row["N"],
        row["K"],
        row["target_sparsity"],
        config,
        row["policy"],
        row.get("seed", 0),
        row.get("block", 32),
    )


def check_measured_file(path: Path) -> None:
    """A committed measurement file is well-formed, self-consistent and comparable."""
    rows = read_measurements(path)  # strict: schema, fields, types, complete lines
    names = {r["device"]["name"] for r in rows}
    assert len(names) == 1, f"{path.name}: several devices {names}"
    presets = [load_preset(p) for p in list_presets()]
    device = names.pop()
    matching = [hw for hw in presets if split.device_matches(hw, device)]
    assert matching, f"{path.name}: no preset describes its device"
    for row in rows:
        assert _row_point(row).key == row["point"], f"{path.name}: key disagrees with fields"
        assert row["median_us"] == pytest.approx(float(np.median(row["times_us"])))
        assert len(row["times_us"]) >= 20
        if row["max_rel_error"] is not None:
            assert row["correct"] == (row["max_rel_error"] <= row["tolerance"])
    # Compare the cheapest kernels (the whole file would take minutes to simulate).
    ours = [r for r in rows if r["implementation"] == "tvwsim" and r.get("correct")]
    ours.sort(key=lambda r: r["M"] * r["N"] * r["K"])
    c = compare_rows(ours[:8], matching[0], all_rows=True)
    assert c.n == min(8, len(ours))
    assert math.isfinite(c.time_mape)
    assert all(p.simulated_us > 0 for p in c.points)


def test_every_committed_measurement_file_is_valid():
    """Fails (never skips) on a malformed file; with no files there is nothing to check."""
    checked = 0
    for path in MEASURED:
        check_measured_file(path)
        checked += 1
    assert checked == len(list((REPO / "traces" / "measured").glob("*.jsonl")))


def test_the_file_check_catches_a_malformed_file(tmp_path, rows):
    good = write_rows(tmp_path / "good.jsonl", rows)
    check_measured_file(good)
    tampered = json.loads(json.dumps(rows))
    tampered[0]["M"] += 1  # the key no longer describes the row
    with pytest.raises(AssertionError, match="key disagrees"):
        check_measured_file(write_rows(tmp_path / "bad.jsonl", tampered))
    with pytest.raises(InputError):
        check_measured_file(write_rows(tmp_path / "empty.jsonl", []))
