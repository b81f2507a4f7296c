"""What a point launches, built on the CPU: the weight, its encoding and schedule, and X.

The GPU executor launches exactly these buffers, and the model simulates exactly this
schedule: the weight is `tvwsim.kernels.prepare.synthetic_weight(N, K, seed=seed)` - the
matrix `tvwsim.kernels.prepare.schedule_for_shape` prunes - prepared by the one
`prepare_weight` pipeline, so the schedule digest in a row is the digest calibration and
comparison rebuild. Nothing here needs a GPU: the tests build every point of every
shipped sweep this way, so a spec the encoder refuses fails in CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvwsim.validate.points import SweepPoint

from tvwsim.errors import InputError


def make_activations(m: int, k: int, seed: int) -> np.ndarray:
    """Seeded standard-normal fp16 X (M x K); seed offset so X is not W's stream."""
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((m, k), dtype=np.float32).astype(np.float16)


def point_weight(point: SweepPoint) -> np.ndarray:
    """The seeded N x K weight of a point (every implementation prunes this one)."""
    from tvwsim.kernels.prepare import synthetic_weight

    return synthetic_weight(point.n, point.k, seed=point.seed)


@dataclass(frozen=True, eq=False)
class KernelInputs:
    """Everything our kernel needs for a point, built on the CPU."""

    pruned: Any
    """`tvwsim.kernels.patterns.Pruned`: mask, achieved sparsity, tile layout."""
    encoded: Any
    """`tvwsim.kernels.formats.encode` output: the buffers the kernel reads."""
    schedule: Any
    """`tvwsim.schedule.Schedule`: the CTA tasks, the same array the model simulates."""
    x: np.ndarray
    """fp16 activations, M x K."""


def prepare_point(point: SweepPoint, weight: np.ndarray | None = None) -> Any:
    """`prepare_weight` of a point of our kernels: pruned, encoded, its tile work.

    Points that differ only in M and policy share it (what a caller may cache).
    """
    from tvwsim.kernels.prepare import prepare_weight

    if point.implementation != "tvwsim" or point.config is None:
        raise InputError("point", f"{point.key} is not one of our kernels")
    if weight is None:
        weight = point_weight(point)
    return prepare_weight(weight, point.pattern, point.sparsity, point.config, block=point.block)


def kernel_inputs(
    point: SweepPoint, weight: np.ndarray | None = None, *, prepared: Any = None
) -> KernelInputs:
    """Prune, encode and schedule a point exactly as the model does for its shape.

    `prepared` is `prepare_point(point)` when the caller has it already.
    """
    from tvwsim.schedule import build_schedule

    if prepared is None:
        prepared = prepare_point(point, weight)
    schedule = build_schedule(prepared.work, point.m, point.policy)
    return KernelInputs(
        prepared.pruned,
        prepared.encoded,
        schedule,
        make_activations(point.m, point.k, point.seed),
    )


def baseline_inputs(
    point: SweepPoint, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(X fp16, pruned W fp16 with zeros, achieved sparsity) for a vendor baseline: the
    same seeded weight pruned by our pruner, so vendor and our kernels keep equal weights."""
    from tvwsim.kernels.patterns import prune_with_layout

    if weight is None:
        weight = point_weight(point)
    pruned = prune_with_layout(weight, point.pattern, point.sparsity, block=point.block)
    w16 = np.where(pruned.mask, weight.astype(np.float16), np.float16(0))
    return make_activations(point.m, point.k, point.seed), w16, float(pruned.achieved_sparsity)
