"""Timing a launch and checking its output: GPU-agnostic, so tests drive them with fakes.

How a point is timed (`time_launches`):

1. Correctness first (by the executor): the output is poisoned (NaN), the kernel runs
   once, and the result is compared with the CPU twin (`tvwsim.kernels.reference`, which
   reads the same encoded buffers) on a subset of tokens (`check_rows`: all of them for
   small M, else the first 256 and the last 128, so the ragged last token block is always
   among them). Every output element must be finite. A point that fails still gets its
   row, with `correct: false`; calibration and comparison leave such rows out.
2. `warmup` untimed launches (module load, clocks ramping up, instruction cache).
3. `repeats` (at least 20) timed launches. Before each: the L2 is *flushed* by writing a
   buffer of twice its size, so every run reads its weight, activations and indices from
   DRAM as a single cold inference step would (and as the model assumes: its L2 starts
   empty); then, where torch is present, a GPU sleep (`torch.cuda._sleep`) so the GPU
   is still busy when the host has queued the start event, the launch and the stop
   event - without that cushion the time between the events would include the host's
   launch latency. The cushion is sized from the launch itself: twice the longest host
   time of a warm-up launch, at least `MIN_CUSHION_US`. (A fixed 100 us was too short
   for torch's cuSPARSELt call, which sets up its plan on the host on every call, about
   250 us: the H200 campaign of 2026-12-01 timed that host work, not the kernel.) A
   timed run whose launch took the host longer than the cushion is counted in
   `host_bound_runs`. CUDA events on the default stream bracket the launch (for our
   kernels that is everything the GEMM needs: split-K workspace zeroing, the GEMM, the
   finalize pass). The row keeps every run's time and the median.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tvwsim.kernels.checks import relative_error
from tvwsim.validate.inputs import KernelInputs

from tvwsim.errors import InputError

CHECK_ALL_ROWS_UP_TO = 512
"""Tokens up to which every output row is checked against the CPU twin."""


class TimingEvent(Protocol):
    def record(self) -> None: ...
    def synchronize(self) -> None: ...
    def elapsed_ms(self, end: TimingEvent) -> float: ...


MIN_CUSHION_US = 100.0
"""Shortest GPU sleep before a timed launch (about what one kernel launch plus two event
records take the host from Python)."""

CUSHION_HOST_FACTOR = 2.0
"""The cushion is this many times the longest host time of a warm-up launch."""


@dataclass(frozen=True)
class TimedRuns:
    """What `time_launches` measured."""

    times_us: list[float]
    """Every timed run, in order (CUDA events around the launch)."""
    host_enqueue_us: float
    """Longest host wall time of one warm-up launch call (the enqueue, not the GPU work),
    the first warm-up launch left out when there are several (it may load or plan)."""
    cushion_us: float | None
    """GPU sleep before each timed launch; None without a cushion."""
    host_bound_runs: int
    """Timed runs whose launch call took the host longer than the cushion: their events
    may include GPU idle time waiting for the host."""


def time_launches(
    launch: Callable[[], Any],
    *,
    new_event: Callable[[], TimingEvent],
    flush: Callable[[], Any] | None,
    cushion: Callable[[float], Any] | None,
    synchronize: Callable[[], Any],
    warmup: int,
    repeats: int,
    host_clock: Callable[[], float] = time.perf_counter,
) -> TimedRuns:
    """`repeats` launches, each after an L2 flush and a GPU-side cushion(us) sleep.

    The events bracket only the launch: the flush and the cushion run before the start
    event on the same stream, so they are not in the time, but they are still keeping
    the GPU busy while the host queues the start event, the launch and the stop event.
    """
    if repeats < 1:
        raise InputError("repeats", f"must be >= 1, got {repeats}")
    host_us = []
    for _ in range(warmup):
        if flush is not None:
            flush()
        t0 = host_clock()
        launch()
        host_us.append((host_clock() - t0) * 1e6)
    synchronize()
    steady = host_us[1:] or host_us
    host_enqueue_us = max(steady, default=0.0)
    cushion_us = None
    if cushion is not None:
        cushion_us = max(MIN_CUSHION_US, CUSHION_HOST_FACTOR * host_enqueue_us)
    times = []
    host_bound = 0
    for _ in range(repeats):
        if flush is not None:
            flush()
        if cushion is not None:
            cushion(cushion_us)
        start, end = new_event(), new_event()
        start.record()
        t0 = host_clock()
        launch()
        if cushion_us is not None and (host_clock() - t0) * 1e6 > cushion_us:
            host_bound += 1
        end.record()
        end.synchronize()
        times.append(start.elapsed_ms(end) * 1000.0)
    return TimedRuns(times, float(host_enqueue_us), cushion_us, host_bound)


def check_rows(m: int) -> np.ndarray:
    """Token indices checked against the CPU twin: all for small M, else the first 256 and
    the last 128 (which hold the ragged last token block, the likeliest place for a bug)."""
    if m <= CHECK_ALL_ROWS_UP_TO:
        return np.arange(m)
    return np.unique(np.concatenate([np.arange(256), np.arange(m - 128, m)]))


def check_kernel_output(y: np.ndarray, inputs: KernelInputs) -> tuple[float, int]:
    """(max relative error vs the CPU twin on the checked tokens, tokens checked).

    Every element must have been written (the output was NaN-poisoned): a non-finite
    value anywhere is an infinite error, whatever the checked tokens say.
    """
    from tvwsim.kernels.reference import matmul

    rows = check_rows(inputs.x.shape[0])
    if not np.isfinite(y).all():
        return math.inf, int(rows.size)
    return relative_error(y[rows], matmul(inputs.x[rows], inputs.encoded)), int(rows.size)


def check_baseline_output(y: np.ndarray, x16: np.ndarray, w16: np.ndarray) -> tuple[float, int]:
    """Like `check_kernel_output`, against fp32 X @ W.T of the fp16 operands."""
    rows = check_rows(x16.shape[0])
    if not np.isfinite(y).all():
        return math.inf, int(rows.size)
    ref = x16[rows].astype(np.float32) @ w16.astype(np.float32).T
    return relative_error(y[rows], ref), int(rows.size)
