"""Calibration: the split, the device rule, recovery of known parameters from the model's
own noisy predictions, the calibrated preset on disk, and every bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.sim.presets import SHIPPED_DIR as SHIPPED_PRESETS
from tvwsim.sim.presets import load_preset, load_preset_file
from tvwsim.validate import split as sp
from tvwsim.validate.dataset import load_rows
from tvwsim.validate.fit import check_fit_names, fit_parameters, with_parameters
from tvwsim.validate.replay import RowSimulator, row_case

from tests.validate.fakes import scaled_hardware, synthetic_rows, write_rows
from tvwsim.cli import main
from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError

DEVICE = "NVIDIA H100 80GB HBM3 (synthetic, 8 SMs)"
D, S, T, TV = (default_config(p) for p in ("dense", "vw", "tw", "tvw"))
SMALL = KernelConfig(64, 64, 32, warps=2, stages=2)
ONE_PER_SM = {"registers": 128, "smem_bytes": 200_000}

# One row per kind of GEMM each parameter governs (validate/calibrate.py docstring): on
# an 8-SM H100 (same balance per SM) these run in milliseconds of simulation.
KINDS = [
    # few CTAs, long K: compute-bound -> mma_efficiency_dense / _sparse
    ((128, 256, 8192), "dense", 0.0, D, "natural"),
    ((256, 128, 4096), "dense", 0.0, D, "natural"),
    ((128, 256, 8192), "vw", 0.5, S, "natural"),
    ((256, 128, 8192), "tvw", 0.75, TV, "natural"),
    # every SM busy: L2-bound -> l2_efficiency
    ((1024, 1024, 512), "dense", 0.0, D, "natural"),
    ((1024, 1024, 1024), "vw", 0.5, S, "natural"),
    ((1024, 1024, 1024), "tw", 0.75, T, "natural"),
    # M = 16 streaming a large weight -> dram_efficiency
    ((16, 2048, 4096), "dense", 0.0, D, "natural"),
    ((16, 4096, 2048), "vw", 0.5, S, "natural"),
    # waves of short CTAs one at a time per SM -> cta_fixed_cycles (with several resident
    # CTAs per SM the fixed cost hides behind the others' work, so these kernels hold
    # 200 KB of shared memory: one CTA per SM)
    ((16, 8192, 32), "dense", 0.0, SMALL, "natural", ONE_PER_SM),
    ((16, 4096, 64), "dense", 0.0, SMALL, "natural", ONE_PER_SM),
    # tiny -> launch_overhead_us
    ((16, 128, 64), "dense", 0.0, D, "natural"),
    ((16, 256, 128), "dense", 0.0, D, "natural"),
]

TRUTH = {
    "mma_efficiency_dense": 0.55,
    "mma_efficiency_sparse": 0.32,
    "l2_efficiency": 0.75,
    "dram_efficiency": 0.70,
    "cta_fixed_cycles": 900.0,
    "launch_overhead_us": 4.5,
}


@pytest.fixture(scope="module")
def mini():
    """An H100 cut to 8 SMs, with the shipped first-guess efficiencies."""
    return scaled_hardware(load_preset("h100"), 8, name="h100-mini8")


@pytest.fixture(scope="module")
def true_hw(mini):
    return with_parameters(mini, list(TRUTH), list(TRUTH.values()))


@pytest.fixture(scope="module")
def noisy_rows(true_hw):
    return synthetic_rows(KINDS, true_hw, noise=0.005, seed=7, device_name=DEVICE)


# =====================================================================================
# Split and device rule
# =====================================================================================
def test_shape_fraction_is_sha256_of_the_shape():
    digest = hashlib.sha256(b"4096x3072x768").digest()
    assert sp.shape_fraction(4096, 3072, 768) == int.from_bytes(digest[:8], "big") / 2**64


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(*(st.integers(1, 100_000),) * 3), min_size=1, max_size=30, unique=True))
def test_split_is_deterministic_disjoint_and_hash_ruled(shapes):
    split = sp.split_shapes(shapes)
    assert split == sp.split_shapes(reversed(shapes))  # order of rows does not matter
    assert not set(split.train) & set(split.held_out)
    assert set(split.train) | set(split.held_out) == set(shapes)
    if len(shapes) == 1:
        assert split.held_out == () and split.train == (shapes[0],)
        return
    assert split.train and split.held_out
    below = {s for s in shapes if sp.shape_fraction(*s) < sp.HELD_OUT_FRACTION}
    if below and below != set(shapes):
        assert set(split.held_out) == below  # the plain rule, no fallback
    elif not below:
        assert split.held_out == (min(shapes, key=lambda s: sp.shape_fraction(*s)),)
    else:
        assert split.train == (max(shapes, key=lambda s: sp.shape_fraction(*s)),)


def test_split_keeps_every_row_of_a_shape_together(noisy_rows):
    split = sp.split_shapes((r["M"], r["N"], r["K"]) for r in noisy_rows)
    for held in split.held_out:
        assert held not in split.train
    by_shape = {}
    for row in noisy_rows:
        by_shape.setdefault((row["M"], row["N"], row["K"]), set()).add(split.is_held_out(row))
    assert all(len(flags) == 1 for flags in by_shape.values())


@pytest.mark.parametrize(
    "preset, device, ok",
    [
        ("h100", "NVIDIA H100 80GB HBM3", True),
        ("h100", "NVIDIA H100 PCIe", True),
        ("h100", "NVIDIA H200", False),
        ("h100", "NVIDIA A100-SXM4-80GB", False),
        ("a100", "NVIDIA A100-SXM4-40GB", True),
        ("rtx3090", "NVIDIA GeForce RTX 3090", True),
        ("v100", "Tesla V100-SXM2-16GB", True),
        ("v100", "NVIDIA H100 80GB HBM3", False),
        ("t4", "NVIDIA T4", True),
        ("t4", "Tesla T4", True),
        ("t4", "NVIDIA GeForce RTX 4090", False),
    ],
)
def test_device_rule(preset, device, ok):
    assert sp.device_matches(load_preset(preset), device) is ok


def test_device_rule_for_derived_and_calibrated_presets(mini):
    assert sp.device_family(mini) == "h100"
    assert sp.device_matches(mini, "NVIDIA H100 80GB HBM3")
    import dataclasses

    odd = dataclasses.replace(
        mini, name="mylab-cal", extra={"calibration": {"device_names": ["Lab GPU 7"]}}
    )
    assert sp.device_matches(odd, "Lab GPU 7") and not sp.device_matches(odd, "Lab GPU 8")


# =====================================================================================
# The fit
# =====================================================================================
def test_calibration_recovers_known_parameters(mini, true_hw, noisy_rows):
    """Rows simulated with known efficiencies x (1 + 0.5% noise per run): starting from the
    shipped first guesses, the fit finds every parameter again."""
    cases = [row_case(r) for r in noisy_rows]
    assert all(c.digest_matches for c in cases)
    fit = fit_parameters(cases, mini)
    found = fit.values
    for name, true in TRUTH.items():
        p = next(p for p in fit.parameters if p.name == name)
        assert p.initial == getattr(mini, name) != true  # it had to move
        error = abs(found[name] - true) / true
        assert error <= 0.05, (name, found[name], true)
        # The error bar the preset reports is small (the data determine the parameter)
        # and honest (the true value lies within a few of them).
        assert p.rel_std_error is not None and p.rel_std_error < 0.05
        assert error <= 3 * p.rel_std_error + 0.01, (name, error, p.rel_std_error)
        assert not p.at_bound
    summary = fit.summary()
    assert summary["initial_rms_log_residual"] > 0.05  # the first guesses were off
    assert summary["rms_log_residual"] < 0.01  # the fit explains the data to the noise
    # The fitted hardware reproduces every row to about the noise.
    for case in cases:
        assert case.simulate_us(fit.hardware) == pytest.approx(case.measured_us, rel=0.02)


def test_a_parameter_the_data_cannot_see_gets_no_error_bar(mini, true_hw):
    # Dense rows only: nothing depends on the sparse tensor core's efficiency.
    dense = [k for k in KINDS if k[1] == "dense"]
    rows = synthetic_rows(dense, true_hw, device_name=DEVICE)
    cases = [row_case(r) for r in rows]
    fit = fit_parameters(cases, mini, ["mma_efficiency_sparse", "launch_overhead_us"], max_nfev=10)
    sparse = next(p for p in fit.parameters if p.name == "mma_efficiency_sparse")
    assert sparse.rel_std_error is None
    assert sparse.value == pytest.approx(sparse.initial)  # nothing pulled it anywhere


def test_too_few_rows_and_unknown_parameters(mini, noisy_rows):
    cases = [row_case(r) for r in noisy_rows[:8]]
    with pytest.raises(InputError, match="need at least 9") as err:
        fit_parameters(cases, mini)
    assert err.value.argument == "--measured"
    with pytest.raises(InputError, match="cannot fit 'sm_count'"):
        fit_parameters(cases, mini, ["sm_count"])
    with pytest.raises(InputError, match="at least one"):
        check_fit_names([])


# =====================================================================================
# tvwsim calibrate
# =====================================================================================
@pytest.fixture
def base_preset(tmp_path, monkeypatch):
    """The 8-SM H100 as a derived preset file, and a preset directory on the lookup path."""
    presets = tmp_path / "presets"
    presets.mkdir()
    monkeypatch.setenv("TVWSIM_PRESET_PATH", str(presets))
    h100 = load_preset("h100")
    f = 8 / h100.sm_count
    base = presets / "h100-mini8.toml"
    base.write_text(
        'base = "h100"\ndescription = "NVIDIA H100 cut to 8 SMs"\nsm_count = 8\n'
        f"l2_bytes = {int(h100.l2_bytes * f)}\n"
        f"l2_bandwidth_gbps = {h100.l2_bandwidth_gbps * f!r}\n"
        f"dram_bandwidth_gbps = {h100.dram_bandwidth_gbps * f!r}\n"
    )
    return presets


def test_calibrate_writes_a_preset_found_by_name(tmp_path, base_preset, mini, capsys):
    # DRAM- and launch-bound dense rows: enough to fit two parameters on the training split
    shapes = [(16, 2048, 4096), (16, 4096, 2048), (16, 1024, 4096), (32, 2048, 2048)]
    shapes += [(16, 128, 64), (16, 256, 128), (16, 128, 128), (32, 256, 64)]
    kinds = [(shape, "dense", 0.0, D, "natural") for shape in shapes]
    # Only the two fitted parameters differ from the base preset.
    fitted = ["dram_efficiency", "launch_overhead_us"]
    truth = with_parameters(mini, fitted, [TRUTH[n] for n in fitted])
    rows = synthetic_rows(kinds, truth, noise=0.002, seed=1, device_name=DEVICE)
    first = write_rows(tmp_path / "a.jsonl", rows[:3])
    second = write_rows(tmp_path / "b.jsonl", rows[3:])
    out = base_preset / "h100-mini8-calibrated.toml"
    argv = ["calibrate", "--measured", str(first), str(second), "--hw", "h100-mini8"]
    argv += ["--out", str(out), "--fit", "dram_efficiency,launch_overhead_us"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "use it as --hw h100-mini8-calibrated" in text
    hw = load_preset("h100-mini8-calibrated")  # found by name on the lookup path
    assert hw.dram_efficiency == pytest.approx(TRUTH["dram_efficiency"], rel=0.05)
    assert hw.launch_overhead_us == pytest.approx(TRUTH["launch_overhead_us"], rel=0.05)
    assert hw.sm_count == 8 and hw.mma_efficiency_dense == load_preset("h100").mma_efficiency_dense
    record = hw.extra["calibration"]
    assert record["base"] == "h100-mini8" and record["device_names"] == [DEVICE]
    assert [f["name"] for f in record["files"]] == ["a.jsonl", "b.jsonl"]
    for f, path in zip(record["files"], (first, second), strict=True):
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    split = record["split"]
    assert split["held_out_shapes"] and split["train_shapes"]
    assert not set(split["held_out_shapes"]) & set(split["train_shapes"])
    assert record["residuals"]["n_train_rows"] == sum(
        1 for r in rows if "x".join(map(str, (r["M"], r["N"], r["K"]))) in split["train_shapes"]
    )
    assert record["residuals"]["rms_log_residual"] < 0.01
    assert "a.jsonl" in hw.source
    assert load_preset_file(out).extra == hw.extra  # what is on disk reads back
    # The file is the base preset's own text (through h100-mini8 to h100): every figure
    # keeps the comment naming its source, a value the derived preset changed says who
    # changed it, and each fitted value carries its provenance.
    text = out.read_text()
    fields = text.split("\n[extra")[0].splitlines()
    lines = {line.split(" = ")[0]: line for line in fields if " = " in line}
    h100_text = (SHIPPED_PRESETS / "h100.toml").read_text()
    assert "# NVIDIA H100 SXM5 80 GB (GH100, compute capability 9.0)." in text
    assert "# -- memory system ----" in text
    assert lines["dense_flops_per_clk_per_sm"] in h100_text  # untouched, comment and all
    assert lines["dram_bandwidth_gbps"].startswith("dram_bandwidth_gbps = ")
    assert lines["sm_count"] == f"{'sm_count = 8':<41}# h100-mini8.toml: no source given"
    assert "132 SMs" not in lines["sm_count"]
    assert lines["mma_efficiency_dense"] in h100_text  # not fitted: the base's line
    for name in ("dram_efficiency", "launch_overhead_us"):
        assert lines[name].startswith(f"{name} = {getattr(hw, name)!r}")
        assert "fitted (+-" in lines[name] and "h100-mini8 had" in lines[name]
    assert "tvwsim calibrate" in lines["source"] and "no source given" not in lines["source"]
    assert "[extra.calibration]" in text and "base" not in lines  # complete: no base key
    assert main(["hw", "show", "h100-mini8-calibrated"]) == 0
    assert "h100-mini8-calibrated" in capsys.readouterr().out

    # Refuses to overwrite without --force, and leaves the file as it was.
    before = out.read_bytes()
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*argv, "--force", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["parameters"]) == {"dram_efficiency", "launch_overhead_us"}


def bad_rows(rows, change):
    out = []
    for r in rows:
        r = json.loads(json.dumps(r))
        change(r)
        out.append(r)
    return out


def _drop_times(r):
    del r["times_us"]


def _schema_2(r):
    r["schema"] = 2


def _a100(r):
    r["device"]["name"] = "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize(
    "change, count, extra_args, message",
    [
        (_drop_times, None, [], "times_us: missing"),
        (_schema_2, None, [], "schema 2; this tvwsim reads schema 1"),
        (_a100, None, [], "describes another GPU"),
        (None, 4, [], "need at least 9"),
        (None, None, ["--fit", "sm_count"], "cannot fit 'sm_count'"),
        (None, None, ["--max-nfev", "0"], "--max-nfev"),
    ],
)
def test_calibrate_bad_input_is_one_error_and_writes_nothing(
    tmp_path, noisy_rows, change, count, extra_args, message, capsys
):
    rows = noisy_rows[:count] if count else noisy_rows
    if change is not None:
        rows = bad_rows(rows, change)
    measured = write_rows(tmp_path / "m.jsonl", rows)
    out = tmp_path / "h100-cal.toml"
    argv = ["calibrate", "--measured", str(measured), "--hw", "h100", "--out", str(out)]
    assert main(argv + extra_args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_calibrate_refuses_a_shipped_name_and_a_non_toml_out(tmp_path, noisy_rows, capsys):
    measured = write_rows(tmp_path / "m.jsonl", noisy_rows)
    for out, message in ((tmp_path / "h100.toml", "shipped preset"), (tmp_path / "x.txt", ".toml")):
        argv = ["calibrate", "--measured", str(measured), "--hw", "h100", "--out", str(out)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_duplicate_points_across_files_are_refused(tmp_path, noisy_rows):
    a = write_rows(tmp_path / "a.jsonl", noisy_rows[:3])
    b = write_rows(tmp_path / "b.jsonl", noisy_rows[2:5])
    with pytest.raises(InputError, match="appears in two files"):
        load_rows([a, b])


def test_scaled_hardware_keeps_the_per_sm_balance():
    h100 = load_preset("h100")
    small = scaled_hardware(h100, 11)
    assert small.sm_count == 11
    for name in ("l2_bytes", "l2_bandwidth_gbps", "dram_bandwidth_gbps"):
        assert getattr(small, name) / 11 == pytest.approx(getattr(h100, name) / 132, rel=1e-6)
    assert np.isclose(small.dense_peak_tflops / 11, h100.dense_peak_tflops / 132)


def test_worker_processes_simulate_exactly_what_one_process_does(true_hw, noisy_rows):
    cases = [row_case(r) for r in noisy_rows]
    alone = RowSimulator(cases, jobs=1)
    spread = RowSimulator(cases, jobs=3)
    try:
        assert spread.pool is not None
        assert sorted(i for b in spread.bins for i in b) == list(range(len(cases)))
        assert np.array_equal(alone(true_hw), spread(true_hw))
    finally:
        spread.close()


def test_the_base_preset_follows_the_measured_device(tmp_path):
    """calibrate without --hw calibrates the shipped preset of the device that measured:
    h200 for an NVIDIA H200 (our first campaign's rows), and says so when none or two
    devices are in the files."""
    import json

    from tvwsim.validate.split import preset_for_device

    from tvwsim.cli.validate import _measured_device_preset

    assert preset_for_device("NVIDIA H200") == "h200"
    assert preset_for_device("NVIDIA H100 80GB HBM3") == "h100"
    assert preset_for_device("NVIDIA A100-SXM4-40GB") == "a100"
    assert preset_for_device("NVIDIA GeForce RTX 3090") == "rtx3090"
    assert preset_for_device("Tesla V100-SXM2-16GB") == "v100"
    assert preset_for_device("NVIDIA T4") == "t4"  # the name DeepBench's T4 rows carry
    with pytest.raises(InputError, match="--hw.*no shipped preset.*L40S"):
        preset_for_device("NVIDIA L40S")

    measured = Path(__file__).parents[2] / "traces" / "measured" / "h200-20261201.jsonl"
    lines = measured.read_text().splitlines()[:2]
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(lines) + "\n")
    assert _measured_device_preset(load_rows([str(one)])[0]) == "h200"
    other = json.loads(lines[1])
    other["device"]["name"] = "NVIDIA A100-SXM4-40GB"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(lines[0] + "\n" + json.dumps(other) + "\n")
    with pytest.raises(InputError, match="--measured.*2 devices"):
        _measured_device_preset(load_rows([str(mixed)])[0])
