"""Wall time and peak memory of whole-model runs and of pruning + encoding a huge layer.

    python benchmarks/bench_model_memory.py                    # everything (~5 min)
    python benchmarks/bench_model_memory.py --skip-deepbench   # without the slow model
    python benchmarks/bench_model_memory.py --shape 1024,50000 --patterns ew,tw

Every measurement runs in a fresh Python process, which reports its own wall time and
its peak resident set size (`resource.getrusage`, ru_maxrss), so one run's memory never
hides in another's. Measured:

- `tvwsim model vgg16 --hw a100 --sparsity 0.75` (its fc6 weight, 4096 x 25088, is a
  seeded random weight pruned and encoded per pattern);
- `tvwsim model deepbench --hw a100 --sparsity 0.75` (random 512 and 1024 x 500000
  weights among 248 GEMMs; most of its time is the simulation itself);
- `prepare_weight` (prune, encode, tile work) of one seeded synthetic N x K float32 weight
  (default 1024 x 500000, as `tvwsim.kernels.prepare.synthetic_weight` draws it) per
  pattern: the seconds to draw it and to prepare it, the peak RSS with the weight alone,
  and the peak RSS at the end.

Figures of this machine, not assertions: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout this script belongs to, installed or not
TARGET_SPARSITY = 0.75
"""Sparsity of the prepared weight; a fixed-sparsity pattern uses its own (vw 0.5, dense 0)."""
MODEL_RUNS = {
    "vgg16": ["model", "vgg16", "--hw", "a100", "--sparsity", "0.75"],
    "deepbench": ["model", "deepbench", "--hw", "a100", "--sparsity", "0.75"],
}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- what a child process measures ------------------------------------------------------------
def child_model(argv: list[str]) -> dict:
    from tvwsim.cli import main

    start = time.perf_counter()
    with open(os.devnull, "w") as sink:
        saved, sys.stdout = sys.stdout, sink
        try:
            rc = main([*argv, "--json", "--no-progress"])
        finally:
            sys.stdout = saved
    return {"rc": rc, "wall_s": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


def child_prepare(pattern: str, n: int, k: int) -> dict:
    from tvwsim.kernels.prepare import prepare_weight, synthetic_weight

    sparsity = sparsity_of(pattern)
    # Compile (or load) the numba loops on a small weight first: their one-off cost is
    # not what is measured.
    prepare_weight(synthetic_weight(64, 256, seed=1), pattern, sparsity)

    start = time.perf_counter()
    weight = synthetic_weight(n, k, seed=0)
    drawn = time.perf_counter()
    with_weight = peak_rss_mib()
    prepared = prepare_weight(weight, pattern, sparsity)
    done = time.perf_counter()
    return {
        "weight_s": drawn - start,
        "prepare_s": done - drawn,
        "rss_with_weight_mib": with_weight,
        "peak_rss_mib": peak_rss_mib(),
        "encoded_mib": prepared.encoded.byte_counts().total_bytes / 2**20,
    }


def sparsity_of(pattern: str) -> float:
    from tvwsim.pattern_spec import pattern_spec

    return pattern_spec(pattern).sparsity_for(TARGET_SPARSITY)


# -- the parent: one child per measurement ----------------------------------------------------
def measure(args: list[str]) -> dict:
    """Run this script as a child with `args` and return the JSON line it prints."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"measurement {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1024,500000", help="N,K of the pruned weight")
    parser.add_argument("--patterns", default="all", help="comma list, or all")
    parser.add_argument("--skip-deepbench", action="store_true", help="skip the slowest run")
    parser.add_argument("--skip-models", action="store_true", help="only prune + encode")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "model":
            result = child_model(MODEL_RUNS[rest[0]])
        else:
            result = child_prepare(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return

    if not args.skip_models:
        print(f"{'tvwsim run':50} {'wall s':>8} {'peak RSS MiB':>13}")
        for name, argv in MODEL_RUNS.items():
            if name == "deepbench" and args.skip_deepbench:
                continue
            r = measure(["model", name])
            print(f"{' '.join(argv):50} {r['wall_s']:8.1f} {r['peak_rss_mib']:13.0f}", flush=True)
        print()

    n, k = (int(x) for x in args.shape.split(","))
    from tvwsim.pattern_spec import PATTERN_NAMES

    size_mib = n * k * 4 / 2**20
    print(f"prepare_weight of a seeded synthetic {n} x {k} fp32 weight ({size_mib:.0f} MiB)")
    head = ("pattern", "sparsity", "draw s", "prepare s", "RSS w/ weight", "peak RSS")
    print(f"{head[0]:8} {head[1]:>8} " + " ".join(f"{h:>13}" for h in head[2:]) + "  (MiB)")
    patterns = PATTERN_NAMES if args.patterns == "all" else args.patterns.split(",")
    for pattern in patterns:
        r = measure(["prepare", pattern, str(n), str(k)])
        cells = (r["weight_s"], r["prepare_s"])
        print(
            f"{pattern:8} {sparsity_of(pattern):8.2f} "
            + " ".join(f"{c:13.2f}" for c in cells)
            + f" {r['rss_with_weight_mib']:13.0f} {r['peak_rss_mib']:13.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
