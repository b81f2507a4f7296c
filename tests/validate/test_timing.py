"""The timing loop's order of events and the correctness checks, with fakes for the GPU."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.validate.rows import REL_TOLERANCE
from tvwsim.validate.timing import (
    MIN_CUSHION_US,
    check_baseline_output,
    check_rows,
    time_launches,
)

from tvwsim.errors import InputError


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
    runs = time_launches(
        rec.launch,
        new_event=rec.event,
        flush=lambda: rec.log.append("flush"),
        cushion=lambda us: rec.log.append(f"cushion {us:g}"),
        synchronize=lambda: rec.log.append("device-sync"),
        warmup=2,
        repeats=3,
    )
    assert runs.times_us == pytest.approx([10.0, 10.0, 10.0])  # microseconds
    warm = ["flush", "launch"] * 2 + ["device-sync"]
    timed = ["flush", f"cushion {MIN_CUSHION_US:g}", "record", "launch", "record", "sync"] * 3
    assert rec.log == warm + timed
    assert runs.cushion_us == MIN_CUSHION_US and runs.host_bound_runs == 0
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


def test_the_cushion_outlasts_a_slow_host_launch():
    """A launch that keeps the host busy (torch's cuSPARSELt call plans on every call)
    gets a cushion of twice its warm-up enqueue time, so the events time the GPU work;
    the first warm-up launch (module load, planning) does not size it, and a timed
    launch slower than the cushion is counted, not hidden."""
    rec = Recorder()
    host = {"t": 0.0}
    enqueue_s = iter([5e-3, 250e-6, 260e-6, 200e-6, 200e-6, 900e-6])

    def slow_launch():
        host["t"] += next(enqueue_s)
        rec.launch()

    runs = time_launches(
        slow_launch,
        new_event=rec.event,
        flush=None,
        cushion=lambda us: rec.log.append(us),
        synchronize=lambda: None,
        warmup=3,
        repeats=3,
        host_clock=lambda: host["t"],
    )
    assert runs.host_enqueue_us == pytest.approx(260.0)
    assert runs.cushion_us == pytest.approx(520.0)
    assert [x for x in rec.log if isinstance(x, float)] == pytest.approx([520.0] * 3)
    assert runs.host_bound_runs == 1  # the 900 us launch outlasted the 520 us cushion


def test_check_rows_cover_the_ragged_last_block():
    assert list(check_rows(100)) == list(range(100))
    rows = check_rows(5000)
    assert rows[0] == 0 and rows[-1] == 4999 and len(rows) == 384
    assert np.all(np.diff(rows) > 0)


def test_baseline_check_uses_the_pruned_weight():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64)).astype(np.float16)
    w = rng.standard_normal((32, 64)).astype(np.float16)
    w[:, ::2] = 0
    y = x.astype(np.float32) @ w.astype(np.float32).T
    assert check_baseline_output(y, x, w) == (0.0, 40)
    assert check_baseline_output(y + 1.0, x, w)[0] > REL_TOLERANCE
