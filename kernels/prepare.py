"""The one path from a weight to its work: prune, encode, tile work (then a schedule).

`prepare_weight` is what every caller uses - `tvwsim simulate`, the whole-model
simulator, the validation sweeps, the kernel checks, the benchmarks - so the weight the
model sees is the one the kernels would read. A caller without a weight of its own uses
`synthetic_weight`, the one seeded stand-in for a trained layer; a caller with a mask and
no values (a real-weight trace, a pruned model) uses `mask_work`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.kernels.tile_work import regular_tile_work, tile_work

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import check_sparsity, pattern_spec
from tvwsim.schedule import Schedule, TileWork, build_schedule, check_positive_int

if TYPE_CHECKING:
    from tvwsim.kernels.formats import Encoded
    from tvwsim.kernels.patterns import Pruned

SYNTHETIC_SCALE = 0.02
"""Standard deviation of the synthetic weight's Gaussian part: BERT's initialiser's."""
SYNTHETIC_SKEW_SIGMA = 0.5
"""Sigma of the log-normal row and column factors (median 1): how unequal the rows and
columns are. docs/real-weights.md compares the tile skew this gives with real layers'."""


def config_for(pattern: str, config: KernelConfig | None = None) -> KernelConfig:
    """`config`, or the pattern's default kernel; checks the mma kind fits the pattern."""
    want = pattern_spec(pattern, argument="--pattern").mma
    if config is None:
        return default_config(pattern)
    if config.mma != want:
        raise InputError(
            "--tile", f"{pattern} runs mma={want} kernels; config {config.name} has {config.mma}"
        )
    return config


def synthetic_weight(n_rows: int, n_cols: int, *, seed: int = 0) -> np.ndarray:
    """A seeded float32 N x K weight whose magnitudes are skewed like trained weights.

    `W[i, j] = 0.02 * z[i, j] * r[i] * c[j]` with z standard normal, and per-row and
    per-column factors r, c log-normal with sigma 0.5 (median 1). Trained layers are not
    i.i.d.: some output features and some input features matter much more than others,
    and that row/column skew is exactly what tile-wise pruning exploits (and what makes
    its kept-K per tile uneven). An i.i.d. Gaussian would make every tile look alike and
    flatter tw and tvw. Same (shape, seed), same matrix.
    """
    n_rows = check_positive_int("shape", n_rows)
    n_cols = check_positive_int("shape", n_cols)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    w = rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    rows = rng.lognormal(0.0, SYNTHETIC_SKEW_SIGMA, size=(n_rows, 1)).astype(np.float32)
    cols = rng.lognormal(0.0, SYNTHETIC_SKEW_SIGMA, size=(1, n_cols)).astype(np.float32)
    # In place, in the order (scale * z) * r * c: one N x K array however big the layer
    # (a DeepBench 1024 x 500000 weight is 2 GB), and the same bits as the expression.
    w *= np.float32(SYNTHETIC_SCALE)
    w *= rows
    w *= cols
    return w


@dataclass(frozen=True, eq=False)
class PreparedWeight:
    """One weight made ready for a kernel and for the model: pruned, encoded, its work."""

    pruned: Pruned
    """The keep-mask, the achieved sparsity and (tw/tvw) the tile layout."""
    encoded: Encoded | None
    """The buffers the kernel reads (`tvwsim.kernels.formats`); None when only the work
    was asked for and the pattern's work follows from the shape (dense, vw)."""
    work: TileWork
    """What each weight tile asks of the GPU, per stage: what schedules and the model read."""

    @property
    def pattern(self) -> str:
        return self.work.pattern

    @property
    def config(self) -> KernelConfig:
        return self.work.config

    @property
    def mask(self) -> np.ndarray:
        return self.pruned.mask


def prepare_weight(
    weight: np.ndarray,
    pattern: str,
    sparsity: float,
    config: KernelConfig | None = None,
    *,
    block: int = 32,
    buffers: bool = True,
) -> PreparedWeight:
    """Prune `weight` (N x K) with `pattern` (importance |W|), encode it, and measure its work.

    `config` is the kernel (default: the pattern's; tw/tvw tile width G = config.bm),
    `block` the bw block side. `buffers=False` is for callers that only simulate: dense
    and vw then skip the encoder, since their work does not depend on the values.
    """
    from tvwsim.kernels.formats import encode
    from tvwsim.kernels.patterns import prune_with_layout

    config = config_for(pattern, config)
    pruned = prune_with_layout(weight, pattern, sparsity, tile=config.bm, block=block)
    kept = int(np.count_nonzero(pruned.mask))
    if not buffers and pattern_spec(pattern).regular:
        n, k = pruned.mask.shape
        return PreparedWeight(pruned, None, regular_tile_work(pattern, n, k, config, kept))
    encoded = encode(weight, pruned.mask, pattern, config, layout=pruned.layout, block=block)
    return PreparedWeight(pruned, encoded, tile_work(encoded, kept_weights=kept))


def mask_work(
    mask: np.ndarray,
    pattern: str,
    config: KernelConfig | None = None,
    *,
    layout: object | None = None,
    block: int = 32,
) -> TileWork:
    """The work of a weight pruned to `mask` (N x K bool) when its values do not matter.

    The mask (and, for tw/tvw, its tile layout) goes through the real encoder with every
    kept value 1.0 - values never change the work - so the result obeys the byte-level
    contract like any weight's. A regular pattern's work comes from the shape: vw counts
    the mask's kept weights, dense every weight (its kernel multiplies them all).
    """
    from tvwsim.kernels.formats import encode

    config = config_for(pattern, config)
    mask = np.asarray(mask, dtype=bool)
    n, k = mask.shape
    spec = pattern_spec(pattern)
    if spec.regular:
        kept = int(np.count_nonzero(mask)) if spec.prunes else None
        return regular_tile_work(pattern, n, k, config, kept)
    ones = np.broadcast_to(np.float16(1.0), (n, k))  # a view: no N x K array of ones
    encoded = encode(ones, mask, pattern, config, layout=layout, block=block)
    return tile_work(encoded, kept_weights=int(np.count_nonzero(mask)))


@lru_cache(maxsize=64)
def synthetic_work(
    n: int, k: int, pattern: str, sparsity: float, config: KernelConfig, seed: int, block: int
) -> TileWork:
    """The work of `synthetic_weight(n, k, seed=seed)` prepared for `pattern` (cached).

    Identical layers of a network (equal shape, pattern, sparsity, config, seed) get the
    very same TileWork, so their schedules share one digest and one cached simulation.
    Regular patterns need no weight at all.
    """
    if pattern_spec(pattern).regular:
        check_sparsity(pattern, sparsity)
        return regular_tile_work(pattern, n, k, config)
    weight = synthetic_weight(n, k, seed=seed)
    return prepare_weight(weight, pattern, sparsity, config, block=block, buffers=False).work


def schedule_for_shape(
    m: int,
    n: int,
    k: int,
    pattern: str,
    sparsity: float,
    *,
    config: KernelConfig | None = None,
    policy: str = "natural",
    seed: int = 0,
    weights: np.ndarray | None = None,
    block: int = 32,
    progress: Callable[[str], None] | None = None,
) -> Schedule:
    """Schedule of an M x N x K GEMM whose N x K weight is pruned with `pattern`.

    Without `weights`, the weight is `synthetic_weight(n, k, seed=seed)`, so equal
    (shape, pattern, sparsity, config, seed) give identical schedules - identical layers
    of a network then share one schedule and one cached simulation. dense and vw do not
    depend on the values at all (every tile is alike) and skip materialising W.
    """
    m, n, k = (check_positive_int("--shape", v) for v in (m, n, k))
    config = config_for(pattern, config)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError("--seed", f"must be a non-negative integer, got {seed!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise InputError("--sparsity", f"must be a number in [0, 1), got {sparsity!r}")
    if progress is not None:
        progress(f"pruning and encoding {pattern} {n}x{k}")
    if weights is None:
        work = synthetic_work(n, k, pattern, float(sparsity), config, int(seed), block)
    else:
        w = np.asarray(weights)
        if w.shape != (n, k):
            raise InputError(
                "--weights", f"has shape {w.shape}; --shape says W is N x K = ({n}, {k})"
            )
        work = prepare_weight(w, pattern, sparsity, config, block=block, buffers=False).work
    return build_schedule(work, m, policy)
