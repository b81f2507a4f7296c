"""Benchmark: design points per second of `tvwsim explore` on 0, 1 and 2 Dask workers.

    python benchmarks/bench_explore.py [--points 24] [--workers 1,2]

A small spec: an A100 with its L2 bandwidth on a grid of `--points` values, one GEMM of
BERT-base's attention (1024 x 768 x 768: batch 8 x sequence 128), dense, vw, tw and tvw
at 75% - four simulations per point. For each worker count a LocalCluster is started
first (its start-up time printed on its own), then the spec runs into a fresh store
through `run_exploration` connected to that cluster, so the rate is the steady
throughput: batching, pickling, the tasks and the Parquet writes, not process start-up.
`0` is the same spec in this process without Dask: the floor the workers are measured
against (every worker is a fresh process: its numba and schedule caches start cold).

Prints, per worker count: cluster start-up, wall seconds, points (hardware point x
workload) per second and rows per second.
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

from tvwsim.explore.runner import run_exploration
from tvwsim.explore.spec import parse_spec
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=24, help="hardware points (24)")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to time (0,1,2)")
    args = parser.parse_args()
    spec = small_spec(args.points)
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    print(
        f"spec: {len(spec.points)} hardware points x {SHAPE} GEMM, "
        f"{spec.rows_per_point} rows per point (dense, vw, tw, tvw 0.75) on a100"
    )
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "store", spec)
            if workers == 0:
                startup = 0.0
                summary = run_exploration(spec, store, workers=0)
            else:
                from dask.distributed import LocalCluster

                began = time.perf_counter()
                with LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                ) as cluster:
                    startup = time.perf_counter() - began
                    summary = run_exploration(spec, store, scheduler=cluster.scheduler_address)
        print(
            f"workers {workers}: start-up {startup:5.1f} s, run {summary.seconds:6.1f} s, "
            f"{summary.done / summary.seconds:6.2f} points/s, "
            f"{summary.rows / summary.seconds:6.2f} rows/s ({summary.batches} batches)"
        )


if __name__ == "__main__":
    main()
