"""Real-weight structure at full size: one pruned trace layer -> the work of a big layer.

The committed traces (traces/pruned/, docs/real-weights.md) were pruned from real trained
weights, but those models are smaller than the ones a user simulates: MiniLM-L6's
384-wide layers stand in for BERT-base's 768-wide ones, a half-width ResNet-50 for the
full one. What carries over from a small layer to a bigger one of the same role is not
the mask itself but its *shape statistics*: how unevenly kept-K is spread over the tiles
(the skew a tile-wise schedule has to absorb), what fraction of the rows survives, how
full the block rows are. This module draws a full-size structure with those statistics.

How a trace layer is scaled (the same recipe for every pattern)
---------------------------------------------------------------
1. *Fractions, not counts.* Every count of the trace is divided by what it could have
   been: a tile's kept-K by K (tw, tvw), a block row's kept blocks by the block columns
   (bw), a row's kept weights by K (ew).
2. *Stratified draw.* The big layer needs T values (one per tile, block row or row).
   They are the empirical distribution's quantiles at (i + 1/2) / T, i = 0 .. T-1, put in
   a seeded random order (`stratified_draw`). The same T as the trace gives back exactly
   the trace's values; a larger T repeats each value about T / T_trace times. No value
   the trace never showed is invented, and equal seeds give equal draws.
3. *Exact total.* All fractions are scaled by one common factor (a count never exceeds
   its capacity) so that the kept weights match the target sparsity, and each count is
   rounded to the pattern's granule - one K column (tw), one 2:4 group of 4 K (tvw), one
   block (bw), one weight (ew) - largest remainders first (`fit_counts`). The total lands
   within one granule of one tile of the target, as close as the pruner itself gets.
4. *Positions.* A trace stores counts, not positions, so positions are drawn (seeded):
   the surviving rows and each tile's kept K columns uniformly; for bw, each block row's
   kept block columns by popularity - the trace's per-column share of kept blocks - so
   the block rows of one CTA tile share columns about as often as in the real layer (the
   union of their columns is what a bw CTA walks); ew's columns uniformly.
5. *Through the real encoder.* The drawn mask (and, for tw/tvw, its tile layout) is
   turned into work by `tvwsim.kernels.prepare.mask_work` (encoder, then tile work), so
   the result obeys the byte-level contract (docs/formats.md) like any other weight.

dense and vw need no trace: their work depends on the shape only (`regular_tile_work`).

This module reads no files: `LayerProfile` holds plain arrays. Loading the trace files and
deciding which trace layer stands in for which layer of a big model is validate's job
(`validate/model_sim.py`), which keeps sim free of validate imports (docs/design.md).
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass

import numpy as np
from tvwsim.kernels.prepare import config_for, mask_work

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import VALUE_DEPENDENT_PATTERNS, pattern_spec
from tvwsim.schedule import TileWork


def granule(pattern: str) -> int:
    """Rounding unit of the counts: weights per row (ew), blocks per block row (bw), K
    columns per tile (tw), K columns per tile in whole n:m groups of m (tvw)."""
    nm = pattern_spec(pattern).nm
    return 1 if nm is None else nm[1]


@dataclass(frozen=True, eq=False)
class LayerProfile:
    """What one real pruned layer's structure looked like: the counts a trace keeps.

    Only the fields of its pattern are set: tw/tvw `tile`, `rows_kept` and `kept_k`;
    bw `kept_blocks` (and `block`); ew `row_nnz`.
    """

    source: str
    """The trace, in words: 'MiniLM-L6 trace'."""
    layer: str
    """The trace layer: 'layer0.ffn1'."""
    pattern: str
    """ew, bw, tw or tvw."""
    sparsity: float
    """The target sparsity the trace layer was pruned at."""
    n: int
    """Rows of the trace layer's W (output features)."""
    k: int
    """Columns of the trace layer's W (reduction length)."""
    tile: int | None = None
    """tw/tvw: tile width G the trace was pruned with."""
    rows_kept: int | None = None
    """tw/tvw: rows (output features) that survived row pruning."""
    kept_k: np.ndarray | None = None
    """tw/tvw: int64 [tiles], kept-K count of every tile (tvw: before 2:4)."""
    kept_blocks: np.ndarray | None = None
    """bw: bool [ceil(n / block), ceil(k / block)], True where a block is kept."""
    block: int = 32
    """bw: block side b."""
    row_nnz: np.ndarray | None = None
    """ew: int64 [n], kept weights per row."""

    def __post_init__(self) -> None:
        where = f"{self.source} {self.layer} {self.pattern} {self.sparsity:g}"
        if self.pattern not in VALUE_DEPENDENT_PATTERNS:
            raise InputError(
                "trace", f"{where}: pattern must be one of {', '.join(VALUE_DEPENDENT_PATTERNS)}"
            )
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise InputError("trace", f"{where}: sparsity must lie in [0, 1)")
        for name in ("n", "k", "block"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise InputError("trace", f"{where}: {name} must be a positive integer")
        if pattern_spec(self.pattern).tiled:
            if self.tile is None or self.tile < 1 or self.rows_kept is None:
                raise InputError("trace", f"{where}: tw/tvw need tile and rows_kept")
            if not 0 <= self.rows_kept <= self.n:
                raise InputError("trace", f"{where}: rows_kept must lie in [0, {self.n}]")
            counts = _int_array(self.kept_k, where, "kept_k")
            if counts.shape != (-(-self.rows_kept // self.tile),):
                raise InputError(
                    "trace",
                    f"{where}: {counts.size} kept_k counts for {self.rows_kept} rows in "
                    f"tiles of {self.tile}",
                )
            if counts.size and (counts.min() < 0 or counts.max() > self.k):
                raise InputError("trace", f"{where}: kept_k counts must lie in [0, {self.k}]")
            object.__setattr__(self, "kept_k", counts)
        elif self.pattern == "bw":
            grid = np.asarray(self.kept_blocks)
            shape = (-(-self.n // self.block), -(-self.k // self.block))
            if grid.dtype != np.bool_ or grid.shape != shape:
                raise InputError(
                    "trace", f"{where}: kept_blocks must be a bool block grid of shape {shape}"
                )
            object.__setattr__(self, "kept_blocks", _frozen(grid))
        else:
            counts = _int_array(self.row_nnz, where, "row_nnz")
            if counts.shape != (self.n,) or counts.min() < 0 or counts.max() > self.k:
                raise InputError(
                    "trace", f"{where}: row_nnz must be {self.n} counts in [0, {self.k}]"
                )
            object.__setattr__(self, "row_nnz", counts)

    @property
    def label(self) -> str:
        """'MiniLM-L6 trace layer0.ffn1': what the output names as the structure's origin."""
        return f"{self.source} {self.layer}"


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, copy=True)
    out.setflags(write=False)
    return out


def _int_array(values: object, where: str, name: str) -> np.ndarray:
    if values is None:
        raise InputError("trace", f"{where}: {name} is missing")
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise InputError("trace", f"{where}: {name} must be a 1-D integer array")
    return _frozen(array.astype(np.int64))


# =====================================================================================
# The two numerical steps: drawing fractions and fitting counts to a total
# =====================================================================================
def stratified_draw(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` values from the empirical distribution of `values`, in a seeded order.

    Value i (before shuffling) is the empirical quantile at (i + 1/2) / count (the
    inverse of the step CDF, no interpolation). With `count == len(values)` that is
    exactly the sorted `values`; with more, each value repeats about count / len times.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise InputError("trace", "cannot draw from an empty distribution")
    if count <= 0:
        return np.zeros(0, dtype=np.float64)
    position = np.ceil((np.arange(count) + 0.5) / count * v.size).astype(np.int64) - 1
    out = v[np.clip(position, 0, v.size - 1)]
    rng.shuffle(out)
    return out


def fit_counts(
    fractions: np.ndarray,
    capacity: int,
    weights: np.ndarray,
    target: float,
    granule: int = 1,
) -> np.ndarray:
    """Integer counts c_i in [0, capacity], proportional to `fractions`, with
    sum(weights * c) as close to `target` as rounding to `granule` allows.

    Continuous step: c_i = min(capacity, x * fractions_i * capacity) with the one factor
    x that makes the weighted sum equal `target` (bisection; the sum grows with x).
    Rounding: every count is floored to a multiple of `granule` (or to `capacity`), then
    the counts with the largest remainders are raised by one granule while that brings
    the total closer to `target`. A zero fraction stays zero unless the non-zero ones
    cannot hold the target.
    """
    f = np.clip(np.asarray(fractions, dtype=np.float64), 0.0, 1.0)
    f[f < 1e-9] = 0.0  # keeps the scale factor finite (below 1e9)
    w = np.asarray(weights, dtype=np.float64)
    cap = int(capacity)
    if f.shape != w.shape:
        raise InputError("fractions", f"shape {f.shape} differs from the weights' {w.shape}")
    if f.size == 0 or target <= 0 or cap <= 0:
        return np.zeros(f.shape, dtype=np.int64)
    if target >= float((w * cap).sum()):
        return np.full(f.shape, cap, dtype=np.int64)
    if float((w * cap)[f > 0].sum()) < target:
        # The trace's non-zero fractions cannot hold the target: let every count grow.
        f = f + 1e-6

    def total(x: float) -> float:
        return float((w * np.minimum(cap, x * f * cap)).sum())

    lo, hi = 0.0, 1.0
    while total(hi) < target:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if total(mid) < target:
            lo = mid
        else:
            hi = mid
    real = np.minimum(cap, hi * f * cap)
    counts = np.minimum(cap, np.floor(real / granule) * granule).astype(np.int64)
    deficit = target - float((w * counts).sum())
    for i in np.argsort(-(real - counts), kind="stable"):
        if counts[i] >= cap or f[i] <= 0:
            continue
        step = min(granule, cap - int(counts[i]))
        gain = float(w[i]) * step
        if abs(deficit - gain) < abs(deficit):
            counts[i] += step
            deficit -= gain
    return counts


def keep_count(total: int, sparsity: float) -> int:
    """Weights a layer of `total` weights keeps at `sparsity`: total - round(s * total),
    the pruner's own count (tvwsim.kernels.patterns)."""
    return int(total) - int(round(float(sparsity) * int(total)))


def _tile_rows(rows: int, tile: int) -> np.ndarray:
    return np.minimum(tile, rows - tile * np.arange(-(-rows // tile)))


def profile_rng(profile: LayerProfile, n: int, k: int, seed: int) -> np.random.Generator:
    """The seeded generator of one (profile, full-size shape): the same inputs give the
    same draw in every process (a sha256, not Python's salted hash)."""
    text = f"{profile.label}|{profile.pattern}|{profile.sparsity!r}|{n}|{k}|{seed}"
    digest = hashlib.sha256(text.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# =====================================================================================
# Per pattern: counts at full size
# =====================================================================================
def scaled_tile_counts(
    profile: LayerProfile, n: int, k: int, sparsity: float, tile: int, rng: np.random.Generator
) -> tuple[int, np.ndarray]:
    """tw/tvw: (surviving rows, kept-K per tile) of an n x k layer at `sparsity`.

    Rows: the trace's surviving-row fraction times n (at least enough rows to hold the
    target). Tiles: ceil(rows / tile). Kept-K: fractions kept_k / K of the trace's tiles,
    drawn and fitted so that the kept weights (tvw: after 2:4) match `sparsity`.
    """
    pattern = profile.pattern
    nm = pattern_spec(pattern).nm
    per_count = 1.0 if nm is None else nm[0] / nm[1]
    target = keep_count(n * k, sparsity)
    if target == 0:
        return 0, np.zeros(0, dtype=np.int64)
    rows = int(round(profile.rows_kept / profile.n * n))
    rows = min(n, max(rows, 1, -(-target // max(1, int(k * per_count)))))
    sizes = _tile_rows(rows, tile)
    fractions = profile.kept_k / profile.k
    drawn = stratified_draw(fractions, sizes.size, rng)
    counts = fit_counts(drawn, k, sizes * per_count, target, granule(pattern))
    return rows, counts


def scaled_block_rows(
    profile: LayerProfile, n: int, k: int, sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    """bw: bool block grid [ceil(n / b), ceil(k / b)] of an n x k layer at `sparsity`.

    Block-row counts from the trace's per-block-row kept fractions (drawn and fitted to
    the target block count); columns picked per block row by popularity - weighted
    sampling without replacement (Gumbel top-k) with the trace's per-column kept shares
    as weights, drawn like the row fractions.
    """
    b = profile.block
    grid = profile.kept_blocks
    rows, cols = -(-n // b), -(-k // b)
    target_blocks = round((1.0 - float(sparsity)) * rows * cols)
    row_fractions = stratified_draw(grid.mean(axis=1), rows, rng)
    counts = fit_counts(row_fractions, cols, np.ones(rows), target_blocks, granule("bw"))
    popularity = stratified_draw(grid.mean(axis=0), cols, rng)
    with np.errstate(divide="ignore"):
        log_weight = np.log(popularity + 1e-6)
    keys = log_weight[None, :] + rng.gumbel(size=(rows, cols))
    order = np.argsort(-keys, axis=1, kind="stable")
    kept = np.zeros((rows, cols), dtype=bool)
    picks = np.arange(cols)[None, :] < counts[:, None]
    np.put_along_axis(kept, order, picks, axis=1)
    return kept


def scaled_row_nnz(
    profile: LayerProfile, n: int, k: int, sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    """ew: kept weights per row of an n x k layer, from the trace's row-length fractions."""
    drawn = stratified_draw(profile.row_nnz / profile.k, n, rng)
    return fit_counts(drawn, k, np.ones(n), keep_count(n * k, sparsity), granule("ew"))


# =====================================================================================
# Full-size mask, layout and work
# =====================================================================================
@dataclass(frozen=True, eq=False)
class DrawnLayout:
    """A tile layout drawn from a trace: what `tvwsim.kernels.formats.encode` takes as `layout`
    (the fields of `tvwsim.kernels.patterns.TileLayout`)."""

    tile_width: int
    rows: np.ndarray
    """int32 ascending: the surviving rows, in tile order."""
    kept_k: tuple[np.ndarray, ...]
    """Per tile, its kept K columns ascending (tvw: before 2:4)."""


def scaled_mask(
    profile: LayerProfile,
    n: int,
    k: int,
    sparsity: float,
    config: KernelConfig,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, DrawnLayout | None]:
    """A full-size n x k keep-mask (and tw/tvw tile layout) with the profile's statistics.

    `config.bm` is the tile width G of tw/tvw and must divide into the bw block grid as
    the encoder requires. Deterministic in (profile, n, k, sparsity, seed).
    """
    _check_shape(n, k)
    rng = profile_rng(profile, n, k, seed)
    pattern = profile.pattern
    mask = np.zeros((n, k), dtype=bool)
    spec = pattern_spec(pattern)
    if spec.tiled:
        g = config.bm
        n_rows, counts = scaled_tile_counts(profile, n, k, sparsity, g, rng)
        rows = np.sort(rng.choice(n, size=n_rows, replace=False)).astype(np.int32)
        lists = []
        for t, count in enumerate(counts.tolist()):
            cols = np.sort(rng.choice(k, size=count, replace=False)).astype(np.int32)
            lists.append(cols)
            # tvw: positions 0 and 1 of every aligned group of 4 in the compacted list
            # (which 2 of the 4 does not change the work; only how many).
            keep = cols if spec.nm is None else cols[np.arange(count) % spec.nm[1] < spec.nm[0]]
            mask[np.ix_(rows[t * g : (t + 1) * g], keep)] = True
        return mask, DrawnLayout(tile_width=g, rows=rows, kept_k=tuple(lists))
    if pattern == "bw":
        b = profile.block
        grid = scaled_block_rows(profile, n, k, sparsity, rng)
        mask = np.repeat(np.repeat(grid, b, axis=0), b, axis=1)[:n, :k]
        return np.ascontiguousarray(mask), None
    nnz = scaled_row_nnz(profile, n, k, sparsity, rng)
    # Row by row in slabs: the uniform draws come off the generator in the same order as
    # one (n, k) draw, and each row is sorted on its own, so the mask is the same.
    rows_per_slab = max(1, (1 << 20) // k)
    for lo in range(0, n, rows_per_slab):
        hi = min(n, lo + rows_per_slab)
        order = np.argsort(rng.random((hi - lo, k)), axis=1)
        np.put_along_axis(mask[lo:hi], order, np.arange(k)[None, :] < nnz[lo:hi, None], axis=1)
    return mask, None


def trace_tile_work(
    profile: LayerProfile,
    n: int,
    k: int,
    sparsity: float,
    config: KernelConfig | None = None,
    *,
    seed: int = 0,
) -> TileWork:
    """The work of an n x k layer pruned at `sparsity` whose structure follows `profile`.

    The mask from `scaled_mask` goes through `tvwsim.kernels.prepare.mask_work` (the real
    encoder, all kept values 1.0: values never change the work); `kept_weights` is the
    mask's count, so the achieved sparsity of the result is the drawn mask's.
    """
    config = config_for(profile.pattern, config)
    mask, layout = scaled_mask(profile, n, k, sparsity, config, seed=seed)
    return mask_work(mask, profile.pattern, config, layout=layout, block=profile.block)


def _check_shape(n: int, k: int) -> None:
    for name, value in (("n", n), ("k", k)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise InputError(name, f"must be a positive integer, got {value!r}")
