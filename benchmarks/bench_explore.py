"""Benchmark: design points per second of `tvwsim explore` on 0, 1 and 2 Dask workers.

    python benchmarks/bench_explore.py [--points 24] [--workers 0,1,2]
    python benchmarks/bench_explore.py --spec sparse-tc-1k --batches 4 [--workers 0,1,2]

Without `--spec`, a small spec: an A100 with its L2 bandwidth on a grid of `--points`
values, one GEMM of BERT-base's FFN (4096 x 3072 x 768: batch 32 x sequence 128), dense,
vw, tw and tvw at 75% - four simulations per point. With `--spec`, `--batches` batches
of a shipped spec (or a .toml) as `tvwsim explore` plans them for two workers, evenly
spaced over the design (its points do not all cost the same: the engine's work grows
with the SM count), and the time the whole spec would take at that rate.

For each worker count a LocalCluster is started first (its start-up time printed on its
own), then the spec runs into a fresh store through `run_exploration` connected to that
cluster, so the rate is the throughput of batching, pickling, the tasks, the simulations
and the Parquet writes, not process start-up. Every worker is a fresh process whose
caches (trace work, schedules, results) start cold, as in a real run: on a few batches
the rate is a little pessimistic. `0` is the same spec in this process without Dask.

Prints, per worker count: cluster start-up, wall seconds, points (hardware point x
workload) per second and rows per second; with `--spec`, the projected time of it all.
For `0` also the CPU seconds per point, which another job on the machine moves much less
than the wall time: the whole spec's CPU time over the cores is what it would take on
an idle machine with one worker per core (plus each worker's cold start).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwsim.explore.evaluate import units
from tvwsim.explore.runner import plan_batches, run_exploration
from tvwsim.explore.spec import load_spec, parse_spec
from tvwsim.explore.store import Store

SHAPE = [4096, 3072, 768]


def small_spec(points: int):
    # The L2 bandwidth, not the SM count, varies: every point then costs the same to
    # simulate (the engine's work grows with the SMs), so points/s means one thing.
    l2 = [3000.0 + 50.0 * i for i in range(points)]
    return parse_spec(
        {
            "name": "bench",
            "base": "a100",
            "patterns": ["dense", "vw", "tw", "tvw"],
            "sparsities": [0.75],
            "hardware": {"l2_bandwidth_gbps": l2},
            "workload": [{"shape": SHAPE}],
        },
        label="bench",
    )


def run_once(spec, workers: int, only: set[str] | None, batch_size: int | None):
    """(start-up seconds, CPU seconds of this process, RunSummary) of one run into a
    fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store", spec)
        if workers == 0:
            cpu = time.process_time()
            summary = run_exploration(spec, store, workers=0, only=only, batch_size=batch_size)
            return 0.0, time.process_time() - cpu, summary
        from dask.distributed import LocalCluster

        began = time.perf_counter()
        with LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster:
            startup = time.perf_counter() - began
            return (
                startup,
                None,
                run_exploration(
                    spec,
                    store,
                    scheduler=cluster.scheduler_address,
                    only=only,
                    batch_size=batch_size,
                ),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=24, help="hardware points (24)")
    parser.add_argument("--spec", help="a shipped spec or .toml to sample instead")
    parser.add_argument("--batches", type=int, default=4, help="(--spec) batches to run (4)")
    parser.add_argument("--cores", type=int, default=2, help="(--spec) cores to project on (2)")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to time (0,1,2)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    if args.spec is None:
        spec, only, batch_size = small_spec(args.points), None, None
        print(
            f"spec: {len(spec.points)} hardware points x {SHAPE} GEMM, "
            f"{spec.rows_per_point} rows per point (dense, vw, tw, tvw 0.75) on a100"
        )
    else:
        spec = load_spec(args.spec)
        # The batches a two-worker run plans, for every worker count: the same work.
        planned = plan_batches(units(spec), 2)
        batch_size = max(map(len, planned))
        step = max(1, len(planned) // args.batches)
        chosen = planned[::step][: args.batches]
        only = {u.key for batch in chosen for u in batch}
        print(
            f"spec {spec.name}: {len(units(spec))} units ({len(spec.points)} hardware points "
            f"x {len(spec.workloads)} workloads), {spec.rows_per_point} rows per point; "
            f"timing {len(chosen)} of its {len(planned)} batches ({len(only)} units), "
            f"every {step}th"
        )
    for workers in (int(w) for w in args.workers.split(",")):
        startup, cpu, summary = run_once(spec, workers, only, batch_size)
        rate = summary.done / summary.seconds
        line = (
            f"workers {workers}: start-up {startup:5.1f} s, run {summary.seconds:6.1f} s, "
            f"{rate:6.3f} points/s, {summary.rows / summary.seconds:6.2f} rows/s "
            f"({summary.batches} batches)"
        )
        if args.spec is not None:
            whole = summary.units / rate
            line += f"; all {summary.units} points: {whole / 60:.1f} min at this rate"
        if args.spec is not None and cpu is not None:
            per_point = cpu / summary.done
            idle = summary.units * per_point / args.cores
            line += (
                f"; {per_point:.2f} CPU s per point: {idle / 60:.1f} min on {args.cores} idle cores"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
