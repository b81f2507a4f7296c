"""The sweep runner: measure every point not yet in the file, one durable row per point.

The runner does not know what a GPU is. It asks an *executor* for three things: a
description of the device, a clock reading, and a `Measurement` of one point.
`tvwsim.validate.gpu_executor.GpuExecutor` is the real one; the tests drive the same
runner with a fake executor, so resume, skipping and row layout are checked on any
machine.

Each point has a deterministic key (`SweepPoint.key`), which is what makes a sweep
resumable: the measurement file (`tvwsim.validate.dataset.MeasurementWriter`) remembers
the keys already written, and a rerun with the same `--out` skips them. Points that
raised are remembered in `<out>.failed.jsonl` and skipped by later runs unless retried.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm
from tvwsim.validate.dataset import MeasurementWriter
from tvwsim.validate.points import Measurement, PointSkipped, SweepPoint, TimingPlan
from tvwsim.validate.rows import REL_TOLERANCE, build_row

from tvwsim.errors import InputError
from tvwsim.io import append_line, read_jsonl_tolerant


class Executor(Protocol):
    """What `run_sweep` needs from whatever runs the kernels."""

    def device_info(self) -> dict:
        """Static description of the device; must hold a 'name' string."""

    def read_clocks(self) -> dict:
        """The clocks right now (never raises; unknown values are None)."""

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        """Check and time one point; raise PointSkipped if it cannot run here."""


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep run did."""

    total: int
    """Points in the spec."""
    already_done: int
    """Points found in the output file and skipped."""
    measured: int
    """Rows written by this run."""
    incorrect: int
    """Of those, rows whose result did not match the CPU reference."""
    skipped: tuple[tuple[str, str], ...]
    """(key, reason) of points the executor could not run here."""
    failed: tuple[tuple[str, str], ...]
    """(key, error) of points that raised."""
    stopped: str | None
    """Why the run ended before the last point (budget, signal, failures), or None."""
    truncated_bytes: int
    """Bytes of a partial row an earlier interrupted run left and this run cut off."""
    elapsed_s: float

    @property
    def remaining(self) -> int:
        return self.total - self.already_done - self.measured


def run_sweep(
    points: Sequence[SweepPoint],
    executor: Executor,
    out: str | os.PathLike,
    *,
    timing: TimingPlan | None = None,
    sweep: str = "",
    budget_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    max_consecutive_failures: int = 3,
    retry_failed: bool = False,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], str] | None = None,
) -> SweepSummary:
    """Measure every point not yet in `out`, appending one row per point as it finishes.

    - Points whose key is already in `out` are skipped (resume). A partial last line left
      by an interrupted run is cut off first; no finished row is ever changed.
    - `budget_s`: do not *start* a point once the time spent plus the mean time of a point
      so far would exceed it (a run under a hard limit then ends cleanly between points).
    - `should_stop`: polled between points (the CLI sets it on SIGTERM / SIGINT).
    - `PointSkipped` from the executor: reported and left for a later run. Any other
      exception: reported; `max_consecutive_failures` in a row end the sweep (a GPU whose
      context died fails every later point the same way).
    - The first failure of each streak - the likely culprit, the others being collateral
      damage of a dead context - is appended to `failed_log_path(out)`, and later runs skip
      the points listed there unless `retry_failed`: a kernel that crashes the GPU stops
      one run, not every run after it.
    """
    timing = timing or TimingPlan()
    if now is None:
        from tvwsim.validate.device_info import utc_now as now
    started = clock()
    skipped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    measured = incorrect = 0
    stopped = None
    failed_log = failed_log_path(out)
    earlier_failures = {} if retry_failed else read_failed_log(failed_log)
    with MeasurementWriter(out) as log:
        todo = [p for p in points if p.key not in log.done]
        already = len(points) - len(todo)
        for p in todo:
            if p.key in earlier_failures:
                skipped.append((p.key, f"failed in an earlier run ({earlier_failures[p.key]})"))
        todo = [p for p in todo if p.key not in earlier_failures]

        def say(text: str) -> None:
            if progress:
                tqdm.write(text)  # above the bar when there is one

        if skipped:
            say(
                f"{len(skipped)} points failed in an earlier run ({failed_log.name}); skipped "
                "(--retry-failed runs them again)"
            )
        if log.truncated_bytes:
            say(
                f"{Path(out).name}: cut {log.truncated_bytes} bytes of a row an interrupted "
                "run left unfinished"
            )
        if already:
            say(f"{already} of {len(points)} points already in {Path(out).name}; skipped")
        device = dict(executor.device_info()) if todo else {}
        if todo:
            # One file, one GPU: resuming another GPU's file would mix two devices' rows.
            others = _device_names(out) - {device.get("name")}
            if others:
                raise InputError(
                    "--out",
                    f"{Path(out).name} holds measurements from {', '.join(sorted(others))}; "
                    f"this GPU is {device.get('name')!r}. Use another file",
                )
        consecutive = 0
        point_times: list[float] = []
        # A bar on a terminal (disable=None); in a log file one line per point instead,
        # since a bar's carriage returns garble logs.
        bar = tqdm(
            total=len(todo),
            desc=sweep or "sweep",
            unit="point",
            dynamic_ncols=True,
            disable=None if progress else True,
        )

        finished = 0

        def step(key: str) -> None:
            nonlocal finished
            finished += 1
            bar.set_postfix_str(key[-40:], refresh=False)
            bar.update(1)
            if progress and bar.disable:
                print(f"[{finished}/{len(todo)}] {key}", flush=True)

        try:
            for point in todo:
                if should_stop is not None and should_stop():
                    stopped = "stop requested"
                    break
                if budget_s is not None:
                    spent = clock() - started
                    typical = float(np.mean(point_times)) if point_times else 0.0
                    if spent + typical > budget_s:
                        stopped = f"time budget of {budget_s:g} s reached"
                        break
                t0 = clock()
                try:
                    before = executor.read_clocks()
                    result = executor.measure(point, timing)
                    after = executor.read_clocks()
                except PointSkipped as why:
                    skipped.append((point.key, str(why)))
                    say(f"skipped {point.key}: {why}")
                    step(point.key)
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:  # noqa: BLE001 - reported, and bounded below
                    message = f"{type(err).__name__}: {err}"
                    failed.append((point.key, message))
                    say(f"FAILED {point.key}: {message}")
                    step(point.key)
                    if consecutive == 0:
                        _append_failure(failed_log, point.key, message, now())
                    consecutive += 1
                    if consecutive >= max_consecutive_failures:
                        stopped = f"{consecutive} points failed in a row"
                        break
                    continue
                consecutive = 0
                row = build_row(point, result, device, before, after, sweep=sweep, date=now())
                log.append(row)
                measured += 1
                if row["correct"] is False:
                    incorrect += 1
                    say(
                        f"WRONG RESULT {point.key}: max rel error {result.max_rel_error:.3g} "
                        f"> {REL_TOLERANCE:g} (row kept with correct=false)"
                    )
                point_times.append(clock() - t0)
                step(point.key)
        finally:
            bar.close()
    return SweepSummary(
        total=len(points),
        already_done=already,
        measured=measured,
        incorrect=incorrect,
        skipped=tuple(skipped),
        failed=tuple(failed),
        stopped=stopped,
        truncated_bytes=log.truncated_bytes,
        elapsed_s=clock() - started,
    )


def _device_names(path: str | os.PathLike) -> set[str]:
    """Device names of the complete rows in a measurement file (tolerant read)."""
    names = set()
    for row in read_jsonl_tolerant(path):
        device = row.get("device")
        if isinstance(device, dict) and "name" in device:
            names.add(str(device["name"]))
    return names


def failed_log_path(out: str | os.PathLike) -> Path:
    """Where a sweep writing `out` records the points that raised: `<out>.failed.jsonl`."""
    out = Path(out)
    return out.with_name(out.name + ".failed.jsonl")


def read_failed_log(path: str | os.PathLike) -> dict[str, str]:
    """{point key: error} of earlier failures; tolerant (a damaged line is ignored)."""
    return {
        str(entry["point"]): str(entry.get("error", ""))[:200]
        for entry in read_jsonl_tolerant(path)
        if "point" in entry
    }


def _append_failure(path: Path, key: str, error: str, date: str) -> None:
    append_line(path, json.dumps({"point": key, "error": error[:2000], "date": date}))


class StopFlag:
    """Set by SIGTERM / SIGINT so a sweep ends between points, never inside a row write."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.reason is not None

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:
            # A second signal means "now": restore the default and re-raise it.
            self.restore()
            signal.raise_signal(signum)
            return
        self.reason = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
