"""The sweep runner with a fake executor: one checked row per point, resume, interruption,
skipped, failed and wrong points, the time budget and stop requests."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from tvwsim.validate.dataset import read_measurements
from tvwsim.validate.points import TimingPlan
from tvwsim.validate.rows import REL_TOLERANCE, MeasurementRow
from tvwsim.validate.runner import StopFlag, failed_log_path, read_failed_log, run_sweep

from tests.validate.fakes import FakeExecutor, small_points
from tvwsim.errors import InputError


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
        assert MeasurementRow.model_validate(row).point == point.key
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


def test_rows_round_trip_through_json_unchanged(tmp_path):
    out = tmp_path / "m.jsonl"
    run_sweep(small_points()[:3], FakeExecutor(), out, progress=False)
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["schema"] == 1 for line in lines)
