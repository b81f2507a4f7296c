"""Benchmark: the fast-forward engine against the exact one, and its speed on big GEMMs.

    python benchmarks/bench_engine.py [--cases 300] [--seed 0] [--big 8192,16384]
                                      [--exact-big] [--hw a100]

Part 1 (accuracy): `--cases` random launches - shapes, patterns, sparsities, policies,
presets and, for many waves on small shapes, hypothetical GPUs with few SMs - each run by
both engines (`simulate(..., exact=True)` is the reference). Prints the largest and the
mean difference of the launch time, the share of cases the fast engine skipped anything
in, and the worst cases.

Part 2 (speed): dense square GEMMs of the `--big` sizes on `--hw`, timed with the fast
engine (and the exact one with `--exact-big`: 16384^3 takes about a minute), with the
SimPy events each processed and the skips taken. Times are CPU seconds of this process
(`time.process_time`), which other jobs on the machine disturb less than wall-clock.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwsim.kernels.prepare import schedule_for_shape  # noqa: E402
from tvwsim.sim.engine import Gpu  # noqa: E402
from tvwsim.sim.occupancy import occupancy, resources_for  # noqa: E402
from tvwsim.sim.presets import load_preset  # noqa: E402

from tvwsim.errors import InputError  # noqa: E402
from tvwsim.pattern_spec import PATTERNS  # noqa: E402
from tvwsim.schedule import POLICIES  # noqa: E402

PRESETS = ("a100", "h100", "h200", "v100", "rtx3090", "t4")


def random_case(rng: np.random.Generator) -> dict:
    """One launch: a shape, pattern, sparsity, policy, preset, SM count and L2 size. Half
    the cases are drawn where a steady state is likely (long K, many waves on a few SMs,
    an L2 small enough for waves to be alike), so that the skips are tested too."""
    steady = bool(rng.integers(0, 2))
    pattern = str(rng.choice(["dense", "vw", "bw", "tvw"] if steady else list(PATTERNS)))
    sparsity = PATTERNS[pattern].sparsity_for(float(rng.choice([0.5, 0.75, 0.9])))
    return {
        "hw": str(rng.choice(PRESETS)),
        "sm_count": int(rng.choice([4, 8, 16] if steady else [0, 4, 8, 16, 32])),  # 0: own
        "l2_bytes": int(rng.choice([2**20, 0])) if steady else 0,  # 0: the preset's own
        "m": int(rng.choice([1024, 2048, 4096] if steady else [256, 512, 1000, 2048, 4096])),
        "n": int(rng.choice([256, 768, 1024, 2048, 3072])),
        "k": int(rng.choice([2048, 4096] if steady else [512, 768, 1024, 2048, 3072, 4096])),
        "pattern": pattern,
        "sparsity": 0.0 if sparsity is None else sparsity,
        "policy": str(rng.choice(POLICIES)),
        "seed": int(rng.integers(0, 1000)),
    }


def launch(case: dict, exact: bool) -> Gpu:
    """The launch (`Gpu`, not yet run) of one case on one engine."""
    overrides = {f: case[f] for f in ("sm_count", "l2_bytes") if case.get(f)}
    hw = load_preset(case["hw"], overrides or None)
    schedule = schedule_for_shape(
        case["m"],
        case["n"],
        case["k"],
        case["pattern"],
        case["sparsity"],
        policy=case["policy"],
        seed=case["seed"],
    )
    resources = resources_for(hw, schedule.pattern, schedule.config, None)
    return Gpu(schedule, hw, resources, occupancy(hw, resources), exact=exact)


def run_case(case: dict, exact: bool):
    """The SimResult and the launch (`Gpu`) of one case on one engine."""
    gpu = launch(case, exact)
    return gpu.run(), gpu


def compare(case: dict) -> tuple[float, bool]:
    """Relative difference of the launch time, fast vs exact, and whether it skipped."""
    exact, _ = run_case(case, exact=True)
    fast, gpu = run_case(case, exact=False)
    skipped = gpu.steady is not None and bool(gpu.steady.skips)
    return fast.cycles / exact.cycles - 1.0, skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big", default="8192,16384")
    parser.add_argument("--exact-big", action="store_true")
    parser.add_argument("--hw", default="a100")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rows = []
    start = time.perf_counter()
    for i in range(args.cases):
        while True:
            case = random_case(rng)
            try:
                diff, skipped = compare(case)
                break
            except InputError:  # the default tile does not fit this GPU: draw again
                continue
        rows.append((abs(diff), diff, skipped, case))
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{args.cases} cases, {time.perf_counter() - start:.0f} s", flush=True)
    if rows:
        diffs = np.array([r[0] for r in rows])
        skipped = [r for r in rows if r[2]]
        print(f"accuracy: {len(rows)} random launches, fast vs exact launch time")
        print(f"  max |difference| {100 * diffs.max():.4f} %, mean {100 * diffs.mean():.4f} %")
        if skipped:
            worst = max(r[0] for r in skipped)
            mean = np.mean([r[0] for r in skipped])
            print(
                f"  the fast engine skipped in {len(skipped)} of them:"
                f" max {100 * worst:.4f} %, mean {100 * mean:.4f} %"
            )
        for _, diff, was, case in sorted(rows, key=lambda r: -r[0])[:5]:
            print(f"  {100 * diff:+.4f} % skipped={was} {case}")

    hw = load_preset(args.hw)
    for size in [int(s) for s in args.big.split(",") if s]:
        case = {"hw": args.hw, "m": size, "n": size, "k": size}
        case |= {"pattern": "dense", "sparsity": 0.0, "policy": "natural", "seed": 0}
        engines = (False, True) if args.exact_big else (False,)
        times = {}
        for exact in engines:
            gpu = launch(case, exact=exact)  # pruning and scheduling are not timed
            t0 = time.process_time()
            result = gpu.run()
            seconds = time.process_time() - t0
            times[exact] = result.cycles
            name = "exact" if exact else "fast"
            skips = "" if exact else f", skips {[s[:2] for s in gpu.steady.skips]}"
            print(
                f"{hw.name} dense {size}^3 {name}: {seconds:.2f} s, {result.events} events,"
                f" {result.cycles / hw.clock_mhz:.1f} us{skips}"
            )
        if len(times) == 2:
            print(f"  fast vs exact: {100 * (times[False] / times[True] - 1):+.4f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
