"""Benchmark: simulate every GEMM of a BERT-base forward pass in every pattern.

    python benchmarks/bench_bert_sim.py [--hw a100] [--batch 32] [--seq 128] [--sparsity 0.75]
                                        [--set core_model=true]

BERT-base has 12 layers; each runs Q, K, V and the attention output (M x 768 x 768),
FFN1 (M x 3072 x 768) and FFN2 (M x 768 x 3072) with M = batch x sequence = 4096. That is
72 prunable GEMMs per pattern, 432 for dense, ew, bw, vw, tw and tvw (vw at its fixed
50%). The attention score products (activation x activation) are not pruned and not
simulated here.

Every GEMM instance goes through the public API (`schedule_for_shape` then `simulate`).
Identical layers share a result only through the caches, which key on what makes them
identical: the seeded random weight per (shape, pattern, sparsity, seed) gives identical
schedules, and `simulate` keys on (schedule digest, hardware, kernel resources).

Prints wall-clock seconds (total, pruning + encoding, simulation), SimPy events per
second, peak resident memory, and the model's forward-pass time per pattern.

With `--set core_model=true` (the cycle-level SM core, docs/model.md 5.7) the pass runs
twice, each in a fresh process sharing one new, empty core cache folder
($TVWSIM_CACHE_DIR): cold (every core result computed and written) and warm (read back,
as any later run on this machine) - both wall clocks are printed. `--single` runs one
pass in this process with the usual cache folder.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwsim.kernels.prepare import schedule_for_shape  # noqa: E402
from tvwsim.sim.core.cache import CACHE_ENV, STATS  # noqa: E402
from tvwsim.sim.engine import clear_cache, simulate  # noqa: E402
from tvwsim.sim.presets import load_preset, parse_overrides  # noqa: E402
from tvwsim.traces.catalog import load_workload  # noqa: E402

from tvwsim.pattern_spec import PATTERNS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="a100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hardware field, e.g. core_model=true (the cycle-level SM core)",
    )
    parser.add_argument(
        "--single", action="store_true", help="one pass in this process (no cold/warm pair)"
    )
    args = parser.parse_args()

    hw = load_preset(args.hw, parse_overrides(args.set))
    if hw.core_model and not args.single:
        return cold_and_warm()
    workload = load_workload("bert-base", batch=args.batch, seq=args.seq)
    gemms = [g for g in workload.gemms if g.prunable]
    layers = max(g.count for g in gemms)
    clear_cache()

    start = time.perf_counter()
    build_s = sim_s = fresh_s = 0.0
    distinct: dict[str, object] = {}
    events = 0
    totals = {}
    instances = 0
    for pattern, spec in PATTERNS.items():
        sparsity = spec.sparsity_for(args.sparsity)  # vw 0.5, dense 0; None: not accepted
        if sparsity is None:
            continue
        total_us = 0.0
        for layer in range(layers):
            for gemm in gemms:
                if layer >= gemm.count:
                    continue
                t0 = time.perf_counter()
                schedule = schedule_for_shape(gemm.m, gemm.n, gemm.k, pattern, sparsity)
                t1 = time.perf_counter()
                result = simulate(schedule, hw)
                t2 = time.perf_counter()
                build_s += t1 - t0
                sim_s += t2 - t1
                key = schedule.digest()
                if key not in distinct:
                    distinct[key] = result
                    events += result.events
                    fresh_s += t2 - t1
                total_us += result.time_us
                instances += 1
        totals[pattern] = (sparsity, total_us)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print(f"BERT-base forward, batch {args.batch} x seq {args.seq}, on {hw.name}")
    print(f"{instances} GEMM instances, {len(distinct)} distinct schedules simulated")
    print(
        f"wall clock      {wall:.2f} s  (prune+encode+schedule {build_s:.2f} s, "
        f"simulate {sim_s:.2f} s)"
    )
    print(
        f"SimPy events    {events} in the distinct simulations, "
        f"{events / max(fresh_s, 1e-9):,.0f} events/s ({fresh_s:.2f} s in those)"
    )
    print(f"peak memory     {peak_mb:.0f} MiB resident (whole process)")
    if hw.core_model:
        print(
            f"core model      {STATS['computed']} runs computed, {STATS['disk']} read from "
            f"the cache folder, {STATS['memory']} from memory"
        )
    print()
    dense_us = totals["dense"][1]
    print(f"{'pattern':8} {'sparsity':>8} {'model time (us)':>16} {'speedup':>8}")
    for pattern, (sparsity, total_us) in totals.items():
        print(f"{pattern:8} {sparsity:>8g} {total_us:>16.1f} {dense_us / total_us:>7.2f}x")
    return 0


def cold_and_warm() -> int:
    """This benchmark twice with `--single`, each in a new process, on one new cache folder."""
    walls = []
    with tempfile.TemporaryDirectory(prefix="bench-core-cache-") as folder:
        env = {**os.environ, CACHE_ENV: folder}
        for label in ("cold: empty core cache", "warm: core results on disk"):
            run = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--single"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(f"== {label}\n{run.stdout}")
            walls.append(float(re.search(r"wall clock\s+([\d.]+) s", run.stdout).group(1)))
    print(f"wall clock: cold {walls[0]:.2f} s, warm {walls[1]:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
