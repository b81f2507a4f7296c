"""Sweeps without a GPU: spec rules, point keys, the runner's resume and row layout, the
timing loop's order of events, the CPU side of the GPU executor, nvidia-smi parsing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.validate import device_info
from tvwsim.validate.dataset import REQUIRED_FIELDS, read_measurements
from tvwsim.validate.sweep import (
    BASELINE_PATTERN,
    BASELINES,
    EQUAL_TILE_PATTERNS,
    MIN_REPEATS,
    REL_TOLERANCE,
    Measurement,
    PointSkipped,
    StopFlag,
    SweepPoint,
    TimingPlan,
    check_baseline_output,
    check_kernel_output,
    check_rows,
    failed_log_path,
    kernel_inputs,
    load_spec,
    parse_spec,
    read_failed_log,
    run_sweep,
    shipped_sweeps,
    time_launches,
)

from tvwsim.cli import main
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError


# =====================================================================================
# A fake executor: the runner cannot tell it from a GPU
# =====================================================================================
class FakeExecutor:
    """Times are a deterministic function of the point; records what it was asked."""

    def __init__(self, *, fail=(), skip=(), wrong=(), interrupt_after=None):
        self.measured: list[str] = []
        self.clock_reads = 0
        self.fail, self.skip = set(fail), set(skip)
        self.wrong = wrong if isinstance(wrong, dict) else dict.fromkeys(wrong, 0.5)
        self.interrupt_after = interrupt_after

    def device_info(self) -> dict:
        return {"name": "Fake GPU 80GB", "sm_count": 4, "driver_version": "0.0"}

    def read_clocks(self) -> dict:
        self.clock_reads += 1
        return {"sm_mhz": 1000.0 + self.clock_reads, "mem_mhz": 2600.0}

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        if self.interrupt_after is not None and len(self.measured) == self.interrupt_after:
            raise KeyboardInterrupt
        if point.key in self.skip:
            raise PointSkipped("library absent")
        if point.key in self.fail:
            raise RuntimeError("illegal address")
        self.measured.append(point.key)
        base = (point.m * point.n * point.k) ** (1 / 3) / 10
        times = tuple(base * (1 + 0.01 * i) for i in range(timing.repeats))
        return Measurement(
            kernel=f"{point.pattern}_gemm",
            times_us=times,
            max_rel_error=self.wrong.get(point.key, 1e-4),
            achieved_sparsity=point.sparsity,
            schedule_digest="d" * 64 if point.implementation == "tvwsim" else None,
            resources={"registers": 128, "smem_bytes": 49152, "threads": 128},
            timing={"method": "fake"},
        )


SMALL_SPEC = {
    "name": "small",
    "repeats": 20,
    "warmup": 1,
    "shapes": [[64, 256, 128], [16, 128, 256]],
    "patterns": ["dense", "vw", "tw", "tvw", "bw"],
    "sparsities": [0.5, 0.75],
    "policies": ["natural", "split"],
    "baselines": ["cublas", "cusparselt", "cusparse-csr", "cusparse-bsr"],
}


def small_points():
    return parse_spec(SMALL_SPEC, label="small.toml").points()


# =====================================================================================
# Specs and points
# =====================================================================================
def test_shipped_sweeps_load_and_quick_is_part_of_full():
    assert {"quick", "full"} <= set(shipped_sweeps())
    quick, full = load_spec("quick"), load_spec("full")
    q = [p.key for p in quick.points()]
    f = [p.key for p in full.points()]
    assert len(q) == len(set(q)) and len(f) == len(set(f))
    # A campaign can resume `full` in the file `quick` wrote: nothing is measured twice.
    assert set(q) <= set(f)
    assert len(q) < len(f)
    assert quick.timing.repeats >= MIN_REPEATS and full.timing.repeats >= MIN_REPEATS
    # Both hold our five kernels and the four vendor baselines.
    for spec in (quick, full):
        impls = {p.implementation for p in spec.points()}
        patterns = {p.pattern for p in spec.points() if p.implementation == "tvwsim"}
        assert impls == {"tvwsim", *BASELINES}
        assert patterns == {"dense", "bw", "vw", "tw", "tvw"}


def test_points_are_deterministic_and_keys_name_every_coordinate():
    a, b = small_points(), small_points()
    assert [p.key for p in a] == [p.key for p in b]
    p = next(p for p in a if p.pattern == "tw" and p.policy == "split")
    assert p.key == "tvwsim/tw/64x256x128/s0.5/128x128x32s3w4/split/seed0"
    bw = next(p for p in a if p.implementation == "cusparse-bsr")
    assert bw.key.endswith("/b32") and "/vendor/vendor/" in bw.key


shapes = st.lists(st.tuples(*(st.integers(1, 5000),) * 3), min_size=1, max_size=3, unique=True).map(
    lambda shapes: [list(s) for s in shapes]
)
sparsity_lists = st.lists(
    st.sampled_from([0.25, 0.5, 0.6, 0.75, 0.875, 0.9375]), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=shapes,
    patterns=st.lists(st.sampled_from(["dense", "bw", "vw", "tw", "tvw"]), min_size=1),
    sparsities=sparsity_lists,
    policies=st.lists(st.sampled_from(["natural", "longest-first", "split"]), min_size=1),
    baselines=st.lists(st.sampled_from(list(BASELINES))),
)
def test_point_rules_hold_for_any_spec(shapes, patterns, sparsities, policies, baselines):
    if "tvw" in patterns and max(sparsities) < 0.5:
        sparsities = [*sparsities, 0.75]
    spec = parse_spec(
        {
            "shapes": shapes,
            "patterns": patterns,
            "sparsities": sparsities,
            "policies": policies,
            "baselines": baselines,
        }
    )
    points = spec.points()
    keys = [p.key for p in points]
    assert len(keys) == len(set(keys))
    for p in points:
        assert [p.m, p.n, p.k] in shapes
        if p.implementation == "tvwsim":
            assert p.pattern in patterns and p.config is not None
            assert p.config.mma == ("sparse" if p.pattern in ("vw", "tvw") else "dense")
            assert p.policy in policies or (
                p.pattern in EQUAL_TILE_PATTERNS and p.policy == "natural"
            )
        else:
            assert p.config is None and p.policy == "vendor"
            assert p.pattern == BASELINE_PATTERN[p.implementation]
        if p.pattern == "dense":
            assert p.sparsity == 0.0
        elif p.pattern == "vw":
            assert p.sparsity == 0.5
        else:
            assert p.sparsity in sparsities
            assert p.pattern != "tvw" or p.sparsity >= 0.5
    # dense and vw run once per shape (every policy would give the natural schedule)
    for pattern in set(patterns) & set(EQUAL_TILE_PATTERNS):
        ours = [p for p in points if p.pattern == pattern and p.implementation == "tvwsim"]
        assert len(ours) == len(shapes)


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"patterns": ["dense", "sw"]}, "patterns", "unknown 'sw'"),
        ({"patterns": ["ew"]}, "patterns", "cusparse-csr"),
        ({"baselines": ["mkl"]}, "baselines", "unknown 'mkl'"),
        ({"policies": ["random"]}, "policies", "unknown 'random'"),
        ({"configs": {"tw": ["128x128x40s3w4"]}}, "configs.tw", "multiple of 16"),
        ({"configs": {"vw": ["128x128x32s3w4"]}}, "configs.vw", "multiple of 64"),
        ({"configs": {"dense": ["256x256x32s3w4"]}}, "configs.dense", "not a built dense"),
        ({"configs": {"dense": ["big"]}}, "configs.dense", "expected BMxBNxBK"),
        ({"configs": {"ew": ["128x128x32s3w4"]}}, "configs.ew", "unknown pattern"),
        ({"repeats": 5}, "repeats", "at least 20"),
        ({"shapes": [[64, 0, 64]]}, "shapes", "positive integers"),
        ({"shapes": []}, "shapes", "non-empty"),
        ({"sparsities": [1.0]}, "sparsities", "(0, 1)"),
        ({"patterns": ["tvw"], "sparsities": [0.25]}, "sparsities", "at least 0.5"),
        ({"sparsity": [0.5]}, "sparsity", "unknown key"),
        ({"block": 12}, "block", "multiple of 8"),
        ({"hw": "h900"}, "hw", "unknown hardware preset"),
    ],
)
def test_bad_specs_name_the_key(change, key, message):
    data = {**SMALL_SPEC, **change}
    with pytest.raises(InputError, match=message) as err:
        parse_spec(data, label="bad.toml")
    assert err.value.argument.startswith("bad.toml")
    assert key in err.value.argument


def test_group_errors_name_the_group_and_configs_too_big_for_the_hw(tmp_path):
    data = {"shapes": [[64, 64, 64]], "group": [{"patterns": ["dense"]}, {"patterns": ["xw"]}]}
    with pytest.raises(InputError, match="unknown 'xw'") as err:
        parse_spec(data, label="g.toml")
    assert "group[1].patterns" in err.value.argument
    # 128x128x32 with 4 stages needs 64 KiB of shared memory; a derived preset describes
    # a GPU whose CTAs may hold only 48 KiB, and the spec check refuses the config.
    preset = tmp_path / "small-smem.toml"
    preset.write_text('base = "a100"\nsmem_per_cta_bytes = 49152\n')
    small = {"shapes": [[64, 64, 64]], "patterns": ["dense"], "hw": str(preset)}
    small["configs"] = {"dense": ["128x128x32s4w4"]}
    with pytest.raises(InputError, match="needs 65536 B shared memory per CTA; small-smem"):
        parse_spec(small)
    small["configs"] = {"dense": ["128x128x32s3w4"]}  # 48 KiB: fits
    assert len(parse_spec(small).points()) == 1


def test_load_spec_errors(tmp_path):
    with pytest.raises(InputError, match="unknown sweep 'nope'"):
        load_spec("nope", argument="--sweep")
    with pytest.raises(InputError, match="does not exist"):
        load_spec(str(tmp_path / "absent.toml"))
    bad = tmp_path / "broken.toml"
    bad.write_text("shapes = [[1, 2, 3]\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_spec(str(bad))


# =====================================================================================
# The runner
# =====================================================================================
def test_sweep_writes_one_checked_row_per_point(tmp_path):
    points = small_points()
    out = tmp_path / "m.jsonl"
    fake = FakeExecutor()
    summary = run_sweep(points, fake, out, timing=TimingPlan(1, 20), sweep="small", progress=False)
    assert summary.measured == len(points) == summary.total
    assert summary.remaining == 0 and not summary.failed and summary.stopped is None
    rows = read_measurements(out)  # strict schema check of every row
    assert [r["point"] for r in rows] == [p.key for p in points]
    for row, point in zip(rows, points, strict=True):
        assert set(REQUIRED_FIELDS) <= set(row)
        assert (row["M"], row["N"], row["K"]) == point.shape
        assert len(row["times_us"]) == 20
        assert row["median_us"] == pytest.approx(float(np.median(row["times_us"])))
        before, after = row["device"]["clocks_before"], row["device"]["clocks_after"]
        assert after["sm_mhz"] == before["sm_mhz"] + 1  # read around this very point
        assert row["device"]["name"] == "Fake GPU 80GB"
        assert row["correct"] is True and row["tolerance"] == REL_TOLERANCE
        if point.implementation == "tvwsim":
            assert row["config"] == point.config.name and row["mma"] == point.config.mma
        else:
            assert row["config"] == row["policy"] == "vendor"


def test_resume_skips_points_already_in_the_file_and_never_rewrites_them(tmp_path):
    points = small_points()
    out = tmp_path / "m.jsonl"
    first = FakeExecutor()
    run_sweep(points[:7], first, out, timing=TimingPlan(0, 20), progress=False)
    written = out.read_bytes()
    second = FakeExecutor()
    summary = run_sweep(points, second, out, timing=TimingPlan(0, 20), progress=False)
    assert summary.already_done == 7
    assert summary.measured == len(points) - 7
    assert second.measured == [p.key for p in points[7:]]  # none measured twice
    assert out.read_bytes().startswith(written)  # finished rows untouched, byte for byte
    assert [r["point"] for r in read_measurements(out)] == [p.key for p in points]
    # A third run finds nothing to do and does not even ask for the device.
    third = FakeExecutor()
    summary = run_sweep(points, third, out, timing=TimingPlan(0, 20), progress=False)
    assert summary.measured == 0 and third.measured == [] and third.clock_reads == 0


def test_interrupted_sweep_keeps_finished_rows_and_resumes(tmp_path):
    points = small_points()
    out = tmp_path / "m.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(points, FakeExecutor(interrupt_after=5), out, progress=False)
    assert [r["point"] for r in read_measurements(out)] == [p.key for p in points[:5]]
    # A crash in the middle of a write leaves a partial last line; resume cuts only that.
    finished = out.read_bytes()
    out.write_bytes(finished + b'{"schema": 1, "point": "tvw')
    fake = FakeExecutor()
    summary = run_sweep(points, fake, out, timing=TimingPlan(0, 20), progress=False)
    assert summary.truncated_bytes == len(b'{"schema": 1, "point": "tvw')
    assert summary.already_done == 5
    assert fake.measured == [p.key for p in points[5:]]
    assert out.read_bytes().startswith(finished)
    assert [r["point"] for r in read_measurements(out)] == [p.key for p in points]


def test_a_file_from_another_gpu_is_not_resumed(tmp_path):
    points = small_points()
    out = tmp_path / "m.jsonl"
    run_sweep(points[:2], FakeExecutor(), out, progress=False)
    before = out.read_bytes()

    class OtherGpu(FakeExecutor):
        def device_info(self) -> dict:
            return {"name": "Other GPU 40GB"}

    with pytest.raises(InputError, match="holds measurements from Fake GPU 80GB") as err:
        run_sweep(points, OtherGpu(), out, progress=False)
    assert err.value.argument == "--out"
    assert out.read_bytes() == before


def test_skipped_failed_and_wrong_points(tmp_path):
    points = small_points()
    keys = [p.key for p in points]
    fake = FakeExecutor(skip={keys[1]}, fail={keys[2]}, wrong={keys[3]})
    out = tmp_path / "m.jsonl"
    summary = run_sweep(points, fake, out, timing=TimingPlan(0, 20), progress=False)
    assert summary.skipped == ((keys[1], "library absent"),)
    assert [k for k, _ in summary.failed] == [keys[2]]
    assert "illegal address" in summary.failed[0][1]
    assert summary.incorrect == 1
    rows = {r["point"]: r for r in read_measurements(out)}
    assert keys[1] not in rows and keys[2] not in rows  # left for a later run
    assert rows[keys[3]]["correct"] is False and rows[keys[3]]["max_rel_error"] == 0.5
    # A non-finite output: JSON has no infinity, so the row says so another way.
    nan_key = keys[5]
    out2 = tmp_path / "nan.jsonl"
    run_sweep(points[5:6], FakeExecutor(wrong={nan_key: float("inf")}), out2, progress=False)
    assert "Infinity" not in out2.read_text()
    (row,) = read_measurements(out2)
    assert row["max_rel_error"] is None and row["correct"] is False
    assert row["extra"]["non_finite_output"] is True
    # The later run retries the skipped point; the one that raised is remembered and left
    # alone (it may crash the GPU again) until asked for.
    assert read_failed_log(failed_log_path(out)) == {keys[2]: "RuntimeError: illegal address"}
    again = FakeExecutor()
    summary = run_sweep(points, again, out, timing=TimingPlan(0, 20), progress=False)
    assert again.measured == [keys[1]]
    assert summary.skipped[0][0] == keys[2] and "earlier run" in summary.skipped[0][1]
    last = FakeExecutor()
    run_sweep(points, last, out, timing=TimingPlan(0, 20), progress=False, retry_failed=True)
    assert last.measured == [keys[2]]


def test_consecutive_failures_end_the_sweep(tmp_path):
    points = small_points()
    keys = [p.key for p in points]
    fake = FakeExecutor(fail=set(keys[4:]))
    summary = run_sweep(
        points, fake, tmp_path / "m.jsonl", progress=False, max_consecutive_failures=3
    )
    assert summary.measured == 4 and len(summary.failed) == 3
    assert "3 points failed in a row" in summary.stopped
    # Only the first of the streak is blamed: the others fell with the (fake) dead context.
    assert set(read_failed_log(failed_log_path(tmp_path / "m.jsonl"))) == {keys[4]}
    # So the next run gets past the culprit.
    fake = FakeExecutor(fail={keys[4]})
    summary = run_sweep(points, fake, tmp_path / "m.jsonl", progress=False)
    assert fake.measured == keys[5:] and summary.remaining == 1


def test_budget_and_stop_requests_end_between_points(tmp_path):
    points = small_points()
    ticks = iter(range(0, 10_000, 10))  # every clock read advances 10 s
    summary = run_sweep(
        points,
        FakeExecutor(),
        tmp_path / "a.jsonl",
        budget_s=75,
        progress=False,
        clock=lambda: float(next(ticks)),
    )
    assert "budget" in summary.stopped
    assert 0 < summary.measured < len(points)
    assert len(read_measurements(tmp_path / "a.jsonl")) == summary.measured
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    summary = run_sweep(
        points, FakeExecutor(), tmp_path / "b.jsonl", should_stop=stop_after_three, progress=False
    )
    assert summary.measured == 3 and summary.stopped == "stop requested"


def test_stop_flag_turns_sigterm_into_a_request():
    flag = StopFlag().install()
    try:
        assert not flag()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag() and flag.reason == "SIGTERM"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# =====================================================================================
# Timing loop and correctness checks
# =====================================================================================
class Recorder:
    def __init__(self):
        self.log: list[str] = []
        self.t = 0.0

    def event(self):
        rec = self

        class Event:
            def record(self):
                rec.log.append("record")
                self.at = rec.t

            def synchronize(self):
                rec.log.append("sync")

            def elapsed_ms(self, end):
                return end.at - self.at

        return Event()

    def launch(self):
        self.log.append("launch")
        self.t += 0.010  # 10 us in ms


def test_time_launches_flushes_and_cushions_before_every_timed_launch():
    rec = Recorder()
    times = time_launches(
        rec.launch,
        new_event=rec.event,
        flush=lambda: rec.log.append("flush"),
        cushion=lambda: rec.log.append("cushion"),
        synchronize=lambda: rec.log.append("device-sync"),
        warmup=2,
        repeats=3,
    )
    assert times == pytest.approx([10.0, 10.0, 10.0])  # microseconds
    warm = ["flush", "launch"] * 2 + ["device-sync"]
    timed = ["flush", "cushion", "record", "launch", "record", "sync"] * 3
    assert rec.log == warm + timed
    with pytest.raises(InputError, match="repeats"):
        time_launches(
            rec.launch,
            new_event=rec.event,
            flush=None,
            cushion=None,
            synchronize=lambda: None,
            warmup=0,
            repeats=0,
        )


def test_check_rows_cover_the_ragged_last_block():
    assert list(check_rows(100)) == list(range(100))
    rows = check_rows(5000)
    assert rows[0] == 0 and rows[-1] == 4999 and len(rows) == 384
    assert np.all(np.diff(rows) > 0)


@pytest.mark.parametrize(
    "pattern, sparsity, policy, config",
    [
        ("dense", 0.0, "natural", None),
        ("vw", 0.5, "natural", None),
        ("bw", 0.75, "longest-first", None),
        ("tw", 0.75, "split", None),
        ("tvw", 0.875, "longest-first", KernelConfig(64, 128, 64, 4, 3, "sparse")),
    ],
)
def test_executor_inputs_are_the_work_the_model_simulates(pattern, sparsity, policy, config):
    """The GPU executor's schedule digest equals the model's for the same point, and the
    CPU twin's output passes the check that the GPU's output must pass."""
    from tvwsim.kernels.prepare import schedule_for_shape
    from tvwsim.kernels.reference import matmul

    from tvwsim.config import default_config

    config = config or default_config(pattern)
    point = SweepPoint("tvwsim", pattern, 200, 300, 257, sparsity, config, policy, seed=3)
    inputs = kernel_inputs(point)
    model = schedule_for_shape(
        200, 300, 257, pattern, sparsity, config=config, policy=policy, seed=3
    )
    assert inputs.schedule.digest() == model.digest()
    assert np.array_equal(inputs.schedule.tasks, model.tasks)
    y = matmul(inputs.x, inputs.encoded).astype(np.float16)
    err, checked = check_kernel_output(y, inputs)
    assert err < 1e-3 and checked == 200
    bad = y.copy()
    bad[-1, 0] += 100.0  # a wrong element in the ragged last token block
    assert check_kernel_output(bad, inputs)[0] > REL_TOLERANCE
    bad = y.copy()
    bad[0, -1] = np.nan  # an element no kernel wrote
    assert check_kernel_output(bad, inputs)[0] == np.inf


def test_baseline_check_uses_the_pruned_weight():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64)).astype(np.float16)
    w = rng.standard_normal((32, 64)).astype(np.float16)
    w[:, ::2] = 0
    y = x.astype(np.float32) @ w.astype(np.float32).T
    assert check_baseline_output(y, x, w) == (0.0, 40)
    assert check_baseline_output(y + 1.0, x, w)[0] > REL_TOLERANCE


# =====================================================================================
# Device information
# =====================================================================================
def test_clock_csv_parsing_tolerates_missing_values():
    text = "1980, 2619, 1980, 2619, 41, 72.31, P0\n1410, 1593, [N/A], 1593, N/A, 60.0, P2\n"
    first = device_info.parse_clock_csv(text, "t")
    assert (first.sm_mhz, first.mem_mhz, first.temperature_c, first.pstate) == (
        1980.0,
        2619.0,
        41.0,
        "P0",
    )
    assert first.error is None
    second = device_info.parse_clock_csv(text, "t", index=1)
    assert second.max_sm_mhz is None and second.temperature_c is None and second.power_w == 60
    missing = device_info.parse_clock_csv(text, "t", index=2)
    assert missing.sm_mhz is None and "2 GPU" in missing.error
    garbled = device_info.parse_clock_csv("not, csv\n", "t")
    assert garbled.sm_mhz is None and "unexpected" in garbled.error


def test_cuda_version_from_the_nvidia_smi_header():
    header = "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0     |"
    assert device_info.parse_cuda_version(header) == "13.0"
    assert device_info.parse_cuda_version("no version here") is None


def test_readers_without_nvidia_smi_report_instead_of_raising(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find there
    reading = device_info.read_clocks()
    assert reading.sm_mhz is None and reading.error == "nvidia-smi not found"
    assert reading.read_at.endswith("Z")
    info = device_info.read_device_info()
    assert info.driver_version is None and "nvidia-smi not found" in info.errors
    assert isinstance(info.name, str)
    assert "unavailable" in device_info.nvidia_smi_report()


# =====================================================================================
# The command line
# =====================================================================================
def test_validate_dry_run_lists_points_and_what_is_done(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'shapes = [[64, 256, 128]]\npatterns = ["dense", "tw"]\nsparsities = [0.75]\n'
        'baselines = ["cublas"]\n'
    )
    out = tmp_path / "m.jsonl"
    points = load_spec(str(spec)).points()
    run_sweep(points[:1], FakeExecutor(), out, progress=False)
    assert main(["validate", "--spec", str(spec), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 points (2 tvwsim kernels, 1 vendor baselines)" in text
    assert "1 already in" in text
    assert f"done {points[0].key}" in text and f"  {points[2].key}" in text


def test_validate_without_a_gpu_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    from tvwsim.kernels.launch import gpu_status

    usable, why = gpu_status()
    if usable:
        pytest.skip("a GPU is present; this checks the machine without one")
    out = tmp_path / "m.jsonl"
    assert main(["validate", "--sweep", "quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err  # e.g. pycuda: not installed: pip install ...
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "--sweep", "nope", "--dry-run"], "unknown sweep 'nope'"),
        (["validate", "--sweep", "quick"], "--out: name the measurement file"),
        (["validate", "--sweep", "quick", "--budget-s", "-3", "--out", "x"], "--budget-s"),
    ],
)
def test_validate_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_rows_round_trip_through_json_unchanged(tmp_path):
    out = tmp_path / "m.jsonl"
    run_sweep(small_points()[:3], FakeExecutor(), out, progress=False)
    lines = Path(out).read_text().splitlines()
    assert all(json.loads(line)["schema"] == 1 for line in lines)


def test_vendor_baselines_compute_the_same_product_where_torch_exists():
    """Runs where torch is installed (the GPU machine has it; the CI image need not): the
    baseline closures on the CPU device compute YT = W @ XT, fall back to fp32 where a
    library lacks fp16, and turn a missing library into a skipped point."""
    torch = pytest.importorskip("torch")
    from tvwsim.validate.baselines import TorchBaselines

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 128)).astype(np.float16)
    w = rng.standard_normal((64, 128)).astype(np.float16)
    w[:, 1::2] = 0  # 2:4 along K, and whole zero 32 x 32 blocks below
    w[:32, :32] = 0
    baselines = TorchBaselines(torch, device="cpu")
    ran = 0
    for implementation in BASELINES:
        try:
            prepared = baselines.prepare(implementation, x, w, block=32)
        except PointSkipped as why:
            assert implementation == "cusparselt", why  # the CPU build has no cuSPARSELt
            continue
        err, checked = check_baseline_output(prepared.run(), x, w)
        assert err < REL_TOLERANCE and checked == 40
        assert prepared.info["dtype"] in ("fp16", "fp32")
        ran += 1
    assert ran >= 3


def test_gpu_executor_end_to_end_with_a_cpu_stand_in(tmp_path, monkeypatch):
    """The GPU executor's own code, driven with a stand-in for PyCUDA whose "kernel" is
    the CPU twin: the row it writes is checked, timed, tagged with the schedule digest
    the model rebuilds, and vendor points are skipped when torch is absent."""
    import types

    from tvwsim.kernels import launch
    from tvwsim.kernels.reference import matmul
    from tvwsim.validate import baselines
    from tvwsim.validate.calibrate import row_case
    from tvwsim.validate.sweep import GpuExecutor

    clock = {"t": 0.0}

    class Event:
        def record(self):
            self.at = clock["t"]

        def synchronize(self):
            pass

        def time_till(self, end):
            return end.at - self.at

    calls = {"flush": 0, "launch": 0}
    cuda = types.SimpleNamespace(
        Event=Event,
        mem_alloc=lambda n: object(),
        memset_d32=lambda ptr, value, count: calls.__setitem__("flush", calls["flush"] + 1),
        Context=types.SimpleNamespace(synchronize=lambda: None),
        Device=lambda i: types.SimpleNamespace(get_attribute=lambda a: 50 * 2**20),
        device_attribute=types.SimpleNamespace(L2_CACHE_SIZE="L2"),
        function_attribute=types.SimpleNamespace(
            NUM_REGS="regs", SHARED_SIZE_BYTES="shared", LOCAL_SIZE_BYTES="local"
        ),
    )
    session = types.SimpleNamespace(cuda=cuda, info=types.SimpleNamespace(arch="sm_90"))

    class Prepared:
        def __init__(self, encoded, m, schedule, build_dir=None):
            self.encoded, self.m = encoded, m
            self.regions = np.zeros((0, 4), np.int32)
            attrs = {"regs": 168, "shared": 0, "local": 0}
            self.kernel = types.SimpleNamespace(
                gemm=types.SimpleNamespace(get_attribute=attrs.__getitem__),
                cubin=Path(f"{encoded.pattern}-x-sm_90.cubin"),
                smem_bytes=49152,
            )

        def run(self, x, poison=True):
            return matmul(x, self.encoded).astype(np.float16)

        def launch(self):
            calls["launch"] += 1
            clock["t"] += 0.025  # 25 us per launch

    monkeypatch.setattr(launch, "session", lambda: session)
    monkeypatch.setattr(launch, "prepare", Prepared)
    monkeypatch.setattr(baselines, "import_torch", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either

    spec = parse_spec(
        {
            "shapes": [[96, 200, 160]],
            "patterns": ["tw"],
            "sparsities": [0.75],
            "policies": ["split"],
            "baselines": ["cublas"],
            "warmup": 2,
        }
    )
    executor = GpuExecutor()
    out = tmp_path / "m.jsonl"
    summary = run_sweep(spec.points(), executor, out, timing=spec.timing, progress=False)
    assert summary.measured == 1 and summary.skipped[0][0].startswith("cublas/")
    (row,) = read_measurements(out)
    assert row["correct"] is True and row["max_rel_error"] < 1e-3
    assert row["times_us"] == pytest.approx([25.0] * spec.timing.repeats)
    assert calls["launch"] == spec.timing.warmup + spec.timing.repeats
    assert calls["flush"] == spec.timing.warmup + spec.timing.repeats
    assert row["timing"]["flush_bytes"] == 2 * 50 * 2**20 and row["timing"]["cushion"] is None
    assert row["resources"]["registers"] == 168 and row["resources"]["smem_bytes"] == 49152
    assert row["device"]["arch"] == "sm_90" and row["device"]["clocks_before"]["error"]
    assert row["extra"]["checked_tokens"] == 96
    assert row_case(row).digest_matches is True
