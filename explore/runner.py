"""Run an exploration on Dask: batches of units out, Parquet files in.

    run_exploration(spec, Store(DIR, spec))                          # local cluster
    run_exploration(spec, store, scheduler="tcp://10.0.0.5:8786")    # an existing one

By default a `dask.distributed.LocalCluster` starts with one worker process per core and
one thread each (the engine is pure Python: threads would share one GIL), no dashboard,
and stops when the run ends. `scheduler` (an address) or `scheduler_file` (the file
`dask scheduler --scheduler-file` writes) runs the same spec on an existing cluster
instead; its workers need tvwsim installed, nothing else (they read no file of the
store: `tvwsim.explore.evaluate` returns rows, and only this process writes them).
`workers=0` runs the batches here, in order, without Dask (debugging, profiling, and the
reference the tests compare a cluster run with).

Units (one hardware point x one workload) are grouped into batches so that the
scheduler sees a few tasks per worker rather than one per point: about four batches per
worker, at most `MAX_BATCH_UNITS` units each, consecutive units of one workload
together (and points that differ only in the sparse tensor core, whose other kernels
are simulated once for all of them), so a worker's caches serve the whole batch. A
finished batch is written at once as its own file (`Store.write_batch`); a Ctrl-C, an
error or `max_batches` cancels what is still in flight and keeps every file written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tvwsim.explore.evaluate import Unit, evaluate_batch, siblings, units
from tvwsim.explore.spec import ExploreSpec
from tvwsim.explore.store import Store

from tvwsim.errors import InputError

MAX_BATCH_UNITS = 16
"""Largest default batch: a Ctrl-C loses at most this many units per worker."""
BATCHES_PER_WORKER = 4
"""Default batches per worker: enough to balance uneven units, few enough to schedule."""

CONNECT_TIMEOUT_S = 10
"""How long to try an existing scheduler: a wrong address fails in seconds, not a hang."""
WORKERS_TIMEOUT_S = 120
"""How long an existing scheduler may take to get its first worker."""

BatchFn = Callable[[int, str], None]
"""Called after each batch is written: (rows written, a short label)."""


@dataclass(frozen=True)
class RunSummary:
    """What one `run_exploration` call did."""

    units: int
    """Units of the spec."""
    skipped: int
    """Units already in the store before this run."""
    done: int
    """Units written by this run."""
    batches: int
    """Batch files written by this run."""
    rows: int
    """Rows written by this run."""
    workers: int
    """Dask workers that ran it (0: in this process)."""
    seconds: float
    complete: bool
    """Every unit of the spec is in the store."""


def plan_batches(
    todo: Sequence[Unit], workers: int, batch_size: int | None = None
) -> list[list[Unit]]:
    """Consecutive units in batches of at most `batch_size` (default: the module
    docstring's rule). A batch takes whole groups of siblings (`evaluate.siblings`:
    points that differ only in the sparse core, which share simulations) while they fit,
    so that a group is simulated in one worker."""
    if batch_size is None:
        share = math.ceil(len(todo) / (max(1, workers) * BATCHES_PER_WORKER))
        batch_size = min(MAX_BATCH_UNITS, max(1, share))
    batches: list[list[Unit]] = []
    for group in siblings(todo):
        if batches and len(batches[-1]) + len(group) <= batch_size:
            batches[-1].extend(group)
            continue
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def default_workers() -> int:
    """One local worker process per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def dask_client(
    *, scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None
) -> Iterator:
    """A `dask.distributed.Client`: to `scheduler` / `scheduler_file`, else to a new
    LocalCluster of `workers` processes that is shut down on exit."""
    from dask.distributed import Client, LocalCluster

    if scheduler is not None or scheduler_file is not None:
        where = scheduler or scheduler_file
        what = "--scheduler" if scheduler else "--scheduler-file"
        address = scheduler if scheduler is not None else _address_in(scheduler_file)
        try:
            client = Client(address=address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except Exception as err:  # noqa: BLE001 - whatever answers there, it is no scheduler
            # A refused port, an unknown host, a missing scheduler file and a peer that
            # speaks another protocol all mean the same to the user: nothing ran.
            raise InputError(
                what, f"cannot reach a Dask scheduler at {where} ({type(err).__name__}: {err})"
            ) from None
        with client:
            try:
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except TimeoutError:
                raise InputError(
                    what, f"the Dask scheduler at {where} has no workers ({WORKERS_TIMEOUT_S} s)"
                ) from None
            yield client
        return
    # The scheduler's HTTP endpoint moves to a free port when 8787 is taken (another
    # cluster, a parallel run): nothing the user needs to act on.
    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    with _workers_ignore_ctrl_c():
        cluster = LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as client:
        yield client


def _address_in(scheduler_file: str) -> str:
    """The address in a scheduler's JSON file, waiting up to CONNECT_TIMEOUT_S for it to
    appear (a job script may start the scheduler and this command together). Dask's own
    client would wait for a missing file forever."""
    path = Path(scheduler_file).expanduser()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not path.is_file():
        if time.monotonic() > deadline:
            raise InputError(
                "--scheduler-file",
                f"cannot reach a Dask scheduler at {scheduler_file}: no such file after "
                f"{CONNECT_TIMEOUT_S} s (`dask scheduler --scheduler-file FILE` writes it)",
            )
        time.sleep(0.1)
    try:
        address = json.loads(path.read_text(encoding="utf-8"))["address"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            "--scheduler-file", f"{scheduler_file} is not a Dask scheduler file ({err})"
        ) from None
    if not isinstance(address, str):
        raise InputError("--scheduler-file", f"{scheduler_file}: 'address' is not a string")
    return address


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they inherit it), then restore ours.

    A terminal's Ctrl-C goes to the whole process group. Only this process should act on
    it - cancel, keep what is written, shut the cluster down - not every worker with a
    traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_exploration(
    spec: ExploreSpec,
    store: Store,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    on_batch: BatchFn | None = None,
    only: Collection[str] | None = None,
) -> RunSummary:
    """Simulate every unit of `spec` not yet in `store`, writing each batch as it ends.

    `workers`: local worker processes (default one per core; 0 runs here, without Dask);
    ignored with `scheduler` / `scheduler_file`. `max_batches` stops after writing that
    many batches (a run in slices); the next run resumes. `only`: the keys of the units
    to run, the others left for later (a sample of a design, as the benchmark times).
    """
    start = time.perf_counter()
    every = units(spec)
    done_before = store.done_units()
    todo = [u for u in every if u.key not in done_before and (only is None or u.key in only)]
    written = {"batches": 0, "rows": 0, "units": 0}

    def finish(rows: list[dict], batch: Sequence[Unit]) -> None:
        store.write_batch(rows)
        written["batches"] += 1
        written["rows"] += len(rows)
        written["units"] += len(batch)
        if on_batch is not None:
            on_batch(len(rows), batch[-1].workload.label)

    remote = scheduler is not None or scheduler_file is not None
    if workers == 0 and not remote:
        used = 0
        batches = plan_batches(todo, 1, batch_size)[:max_batches]
        for batch in batches:
            finish(evaluate_batch(batch), batch)
    else:
        with dask_client(
            scheduler=scheduler, scheduler_file=scheduler_file, workers=workers
        ) as client:
            from dask.distributed import as_completed

            used = len(client.nthreads())
            batches = plan_batches(todo, used, batch_size)[:max_batches]
            futures = client.map(evaluate_batch, batches, pure=False)
            batch_of = {future.key: batch for future, batch in zip(futures, batches, strict=True)}
            try:
                for future in as_completed(futures):
                    finish(future.result(), batch_of[future.key])
            finally:
                client.cancel([f for f in futures if not f.done()])
    complete = len(done_before) + written["units"] >= len(every)
    return RunSummary(
        units=len(every),
        skipped=len(every) - len(todo),
        done=written["units"],
        batches=written["batches"],
        rows=written["rows"],
        workers=used,
        seconds=time.perf_counter() - start,
        complete=complete,
    )
