"""Hardware counters: choosing metrics ncu knows, profiling each point once inside a
profiler range, and joining ncu's raw CSV with the console's point markers."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from tvwsim.validate import counters
from tvwsim.validate.counters import (
    MARKER,
    METRICS,
    parse_raw_csv,
    point_of_each_profile,
    profile_points,
    read_counters,
    select_metrics,
)
from tvwsim.validate.spec import parse_spec

from tvwsim.errors import InputError

QUERY = """\
Device NVIDIA H200 (GH100)
-------------------------------------- ---------- -----------
Metric Name                            Metric Type Metric Unit Metric Description
dram__bytes_read                       Counter    byte        # of bytes read from DRAM
gpu__time_duration                     Counter    nsecond     total duration
lts__t_sector_hit_rate                 Ratio                  L2 hit rate
"""


def test_select_metrics_keeps_only_what_ncu_lists_in_our_order():
    chosen = select_metrics(QUERY)
    assert chosen == [
        "gpu__time_duration.sum",
        "dram__bytes_read.sum",
        "lts__t_sector_hit_rate.pct",
    ]
    assert select_metrics("") == []
    # every metric we ask for has a field name, so no counter is read and then dropped
    assert set(METRICS) == set(counters.FIELDS)


class _Point:
    def __init__(self, key):
        self.key = key


def test_profile_points_marks_each_point_and_survives_a_failing_one():
    lines, seen = [], []

    def profile_once(point):
        seen.append(point.key)
        if point.key == "b":
            raise RuntimeError("no cuSPARSELt")

    done, skipped = profile_points(
        [_Point("a"), _Point("b"), _Point("c")], profile_once, lines.append
    )
    assert (done, skipped) == (2, 1) and seen == ["a", "b", "c"]
    assert [line for line in lines if line.startswith(MARKER)] == [MARKER + k for k in "abc"]
    assert any("skipped b: RuntimeError: no cuSPARSELt" in line for line in lines)


def _csv(rows):
    header = ["ID", "Process ID", "Kernel Name", "Block Size", "Grid Size", *METRICS[:5]]
    units = ["", "", "", "", "", "nsecond", "byte", "byte", "byte", "%"]
    text = ['"' + '","'.join(header) + '"', '"' + '","'.join(units) + '"']
    for row in rows:
        text.append('"' + '","'.join(str(v) for v in row) + '"')
    return "==PROF== Disconnected from process 1\n" + "\n".join(text) + "\n"


CONSOLE = f"""\
[campaign +1s] running
{MARKER}tvwsim/tw/4096x3072x768/s0.75/128x128x32s3w4/split/seed0
==PROF== Profiling "tw_gemm" - 0: 0%....50%....100% - 3 passes
==PROF== Profiling "finalize" - 1: 0%....50%....100% - 3 passes
{MARKER}cublas/dense/4096x3072x768/s0/vendor/vendor/seed0
==PROF== Profiling "sm90_xmma_gemm_f16f16" - 2: 0%....50%....100% - 3 passes
[profile] skipped cusparselt/vw/...: PointSkipped: none
"""


def test_console_markers_own_the_profiles_that_follow_them():
    owner = point_of_each_profile(CONSOLE)
    assert owner == {
        0: "tvwsim/tw/4096x3072x768/s0.75/128x128x32s3w4/split/seed0",
        1: "tvwsim/tw/4096x3072x768/s0.75/128x128x32s3w4/split/seed0",
        2: "cublas/dense/4096x3072x768/s0/vendor/vendor/seed0",
    }


def test_read_counters_joins_values_in_base_units_with_their_point():
    text = _csv(
        [
            (
                0,
                9,
                "tw_gemm",
                "(128, 1, 1)",
                "(24, 32, 1)",
                "41,000",
                "6291456",
                "1048576",
                "2e7",
                "88.5",
            ),
            (1, 9, "finalize", "(256, 1, 1)", "(8, 1, 1)", "3000", "0", "524288", "", "n/a"),
            (
                2,
                9,
                "sm90_xmma_gemm_f16f16",
                "(384, 1, 1)",
                "(24, 16, 1)",
                "52000",
                "1",
                "2",
                "3",
                "4",
            ),
        ]
    )
    rows = read_counters(text, CONSOLE)
    assert [r.profile_id for r in rows] == [0, 1, 2]
    tw, fin, cublas = rows
    assert tw.point.startswith("tvwsim/tw/") and fin.point == tw.point
    assert cublas.point.startswith("cublas/")
    assert tw.values == {
        "duration_ns": 41000.0,
        "dram_read_bytes": 6291456.0,
        "dram_write_bytes": 1048576.0,
        "l2_bytes": 2e7,
        "l2_hit_rate_pct": 88.5,
    }
    assert "l2_bytes" not in fin.values and "l2_hit_rate_pct" not in fin.values
    assert tw.grid == "(24, 32, 1)" and json.loads(json.dumps(tw.to_dict()))["kernel"] == "tw_gemm"


def test_parse_raw_csv_needs_a_header():
    with pytest.raises(InputError, match="counters CSV"):
        parse_raw_csv("==ERROR== no kernels were profiled\n")
    assert parse_raw_csv(_csv([])) == []


def test_read_command_writes_jsonl(tmp_path, capsys):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(_csv([(2, 9, "k", "(1, 1, 1)", "(1, 1, 1)", "5", "6", "7", "8", "9")]))
    console = tmp_path / "console.log"
    console.write_text(CONSOLE)
    out = tmp_path / "rows.jsonl"
    assert counters.main(["read", str(csv_path), str(console), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["point"].startswith("cublas/") and row["values"]["dram_write_bytes"] == 7.0
    assert counters.main(["read", str(tmp_path / "missing.csv"), str(console)]) == 2
    assert "CSV" in capsys.readouterr().err


def test_gpu_executor_profiles_the_second_launch_only(monkeypatch, tmp_path):
    """profile_once launches once warm, flushes L2, then launches inside the profiler's
    range - so ncu --profile-from-start off sees exactly one launch per point."""
    from tvwsim.kernels import launch
    from tvwsim.validate import baselines
    from tvwsim.validate.gpu_executor import GpuExecutor

    events = []
    cuda = types.SimpleNamespace(
        Event=object,
        mem_alloc=lambda n: object(),
        memset_d32=lambda ptr, value, count: events.append("flush"),
        Context=types.SimpleNamespace(synchronize=lambda: events.append("sync")),
        Device=lambda i: types.SimpleNamespace(get_attribute=lambda a: 50 * 2**20),
        device_attribute=types.SimpleNamespace(L2_CACHE_SIZE="L2"),
        start_profiler=lambda: events.append("start"),
        stop_profiler=lambda: events.append("stop"),
    )
    session = types.SimpleNamespace(cuda=cuda, info=types.SimpleNamespace(arch="sm_90"))

    class Prepared:
        def __init__(self, encoded, m, schedule, build_dir=None):
            self.regions = np.zeros((0, 4), np.int32)

        def launch(self):
            events.append("launch")

    monkeypatch.setattr(launch, "session", lambda: session)
    monkeypatch.setattr(launch, "prepare", Prepared)
    monkeypatch.setattr(baselines, "import_torch", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    spec = parse_spec(
        {
            "shapes": [[64, 128, 128]],
            "patterns": ["tw"],
            "sparsities": [0.75],
            "baselines": ["cublas"],
        }
    )
    executor = GpuExecutor()
    lines = []
    done, skipped = profile_points(spec.points(), executor.profile_once, lines.append)
    assert (done, skipped) == (1, 1)  # cuBLAS needs torch, absent here
    assert events == ["launch", "flush", "sync", "start", "launch", "sync", "stop"]


def test_point_row_parses_back_every_field_the_replay_needs():
    from tvwsim.validate.points import SweepPoint

    spec = parse_spec(
        {"shapes": [[96, 200, 160]], "patterns": ["tw", "bw"], "sparsities": [0.75], "block": 64}
    )
    for point in spec.points():
        row = counters.point_row(point.key)
        assert (row["M"], row["N"], row["K"]) == point.shape
        assert row["pattern"] == point.pattern and row["policy"] == point.policy
        assert row["config"] == point.config.name and row["seed"] == point.seed
        assert row["target_sparsity"] == pytest.approx(point.sparsity)
        assert row.get("block", point.block) == point.block
    assert isinstance(point, SweepPoint)
    with pytest.raises(InputError, match="point"):
        counters.point_row("cublas/dense/8x8x8/s0/vendor/vendor/seed0")


def test_compare_counters_sets_the_model_beside_ncu_for_our_kernels_only():
    """The model's figures are the simulator's own for the same schedule; ncu's are the
    point's kernels summed (GEMM + finalize); vendor points have no model and are left out."""
    from tvwsim.sim.engine import simulate
    from tvwsim.sim.presets import load_preset
    from tvwsim.validate.replay import row_case

    key = "tvwsim/tw/96x200x160/s0.75/128x128x32s3w4/split/seed0"
    gemm = counters.CounterRow(
        key,
        "tw_gemm",
        0,
        "(2, 1, 1)",
        "(128, 1, 1)",
        {
            "duration_ns": 9000.0,
            "dram_read_bytes": 4e5,
            "dram_write_bytes": 1e5,
            "l2_hit_rate_pct": 50.0,
            "tensor_active_pct": 20.0,
        },
    )
    fin = counters.CounterRow(
        key,
        "finalize_rows",
        1,
        "(1, 1, 1)",
        "(256, 1, 1)",
        {"duration_ns": 1000.0, "dram_write_bytes": 5e5, "l2_hit_rate_pct": 99.0},
    )
    vendor = counters.CounterRow(
        "cublas/dense/96x200x160/s0/vendor/vendor/seed0", "k", 2, "", "", {}
    )
    hw = load_preset("h200")
    (c,) = counters.compare_counters([gemm, fin, vendor], hw)
    expect = simulate(row_case(counters.point_row(key)).schedule, hw, cache=False)
    assert c.measured_us == pytest.approx(10.0) and c.measured_dram_mb == pytest.approx(1.0)
    assert c.measured_l2_hit == pytest.approx(0.5)  # the GEMM's, not the finalize pass's
    assert c.simulated_us == pytest.approx(expect.kernel_us)
    assert c.simulated_dram_mb == pytest.approx(expect.dram_bytes / 1e6)
    assert c.dram_ratio == pytest.approx(c.simulated_dram_mb / 1.0)
    table = counters.comparison_table([c])
    assert key[:40] in table and f"{c.simulated_us:8.1f}" in table


def test_committed_counters_are_the_counters_sweep_measured():
    """Every counters.jsonl under traces/measured/ holds rows of the counters sweep's
    points only, each of our points with its GEMM kernel, with a positive duration and DRAM
    traffic (the L2 was flushed before each profiled launch)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    files = sorted((repo / "traces" / "measured").glob("*/counters.jsonl"))
    keys = {p.key for p in parse_spec_file("counters")}
    for path in files:
        rows = counters._load_counter_rows(str(path))
        assert rows and {r.point for r in rows} <= keys, path
        for key in {r.point for r in rows if r.point.startswith("tvwsim/")}:
            pattern = key.split("/")[1]
            gemm = [r for r in rows if r.point == key and r.kernel == f"{pattern}_gemm"]
            assert len(gemm) == 1, (path, key)
            v = gemm[0].values
            assert v["duration_ns"] > 0 and v["dram_read_bytes"] > 0, (path, key)
            assert 0 <= v["l2_hit_rate_pct"] <= 100


def parse_spec_file(name):
    from tvwsim.validate.spec import load_spec

    return load_spec(name).points()
