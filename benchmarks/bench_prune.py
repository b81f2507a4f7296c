"""How long pruning takes: every pattern on one large fp32 matrix.

    python benchmarks/bench_prune.py                 # 4096 x 4096, 3 repeats
    python benchmarks/bench_prune.py --shape 3072,768 --repeats 5

Prints one row per pattern with the best-of-N wall time of each timed stage: pruning
alone, and the whole `prepare_weight` (prune, encode, tile work) every caller runs. A
stage is a function `(weight, pattern, sparsity, context) -> None` in STAGES; `context`
carries what earlier stages produced, so a stage can be added by appending one function
and one column, without touching the others.
Timings are of this machine and this numpy; they are figures, not assertions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.prepare import prepare_weight, synthetic_weight

from tvwsim.config import default_config
from tvwsim.pattern_spec import PATTERNS

TARGET_SPARSITY = 0.75
"""The README's 75 %; a pattern with a fixed sparsity is timed at its own (vw 0.5, dense 0)."""


def stage_prune(weight: np.ndarray, pattern: str, sparsity: float, context: dict) -> None:
    context["pruned"] = prune_with_layout(
        weight, pattern, sparsity, tile=default_config(pattern).bm
    )


def stage_prepare(weight: np.ndarray, pattern: str, sparsity: float, context: dict) -> None:
    # Default kernel config per pattern: prune again, encode, tile work.
    context["prepared"] = prepare_weight(weight, pattern, sparsity)


Stage = Callable[[np.ndarray, str, float, dict], None]
STAGES: dict[str, Stage] = {"prune": stage_prune, "prepare": stage_prepare}


def time_pattern(
    weight: np.ndarray, pattern: str, sparsity: float, *, repeats: int = 3
) -> dict[str, float]:
    """Best-of-`repeats` seconds of every stage in STAGES for one pattern."""
    best = {name: float("inf") for name in STAGES}
    for _ in range(repeats):
        context: dict = {}
        for name, stage in STAGES.items():
            start = time.perf_counter()
            stage(weight, pattern, sparsity, context)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096,4096", help="N,K of the weight")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_rows, n_cols = (int(x) for x in args.shape.split(","))
    weight = synthetic_weight(n_rows, n_cols, seed=args.seed)
    print(f"weight {n_rows} x {n_cols} fp32, best of {args.repeats}")
    print(f"{'pattern':8} {'sparsity':>8} " + " ".join(f"{n + ' s':>10}" for n in STAGES))
    for pattern, spec in PATTERNS.items():
        sparsity = spec.sparsity_for(TARGET_SPARSITY)
        seconds = time_pattern(weight, pattern, sparsity, repeats=args.repeats)
        cells = " ".join(f"{seconds[n]:10.3f}" for n in STAGES)
        print(f"{pattern:8} {sparsity:8.2f} {cells}")


if __name__ == "__main__":
    main()
