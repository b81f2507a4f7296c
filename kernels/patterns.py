"""Pruning patterns: which weights of a layer survive, and in what structure.

A pattern turns a weight `W` (N x K, torch.nn.Linear layout: out x in) and a target
sparsity `s` (the fraction of weights removed) into a boolean mask of W's shape. Which
weights win is decided by an importance score of W's shape - `|W|` unless the caller
passes another non-negative score matrix (a Taylor score, say). The patterns differ only
in the *granule* that is kept or dropped whole, and that granule is what a GPU kernel
can exploit:

| pattern | granule kept/dropped whole | score ranked | sparsity |
|---|---|---|---|
| `dense` | everything | - | 0 only |
| `ew` | one element | the element's score, globally | any |
| `bw` | a b x b block (b = `block`, 32) | block RMS norm, globally | any |
| `vw` | n of every m consecutive K of a row (2:4) | element score, in its group | 1 - n/m |
| `tw` | (1) a row; (2) a K-column of one tile | normalised norms, globally | any |
| `tvw` | `tw`, then n:m along each tile's kept-K | as `tw`, then within groups | >= 1 - n/m |

Tile-wise (`tw`, Guo et al. SC20 / IEEE TC 2024) in three steps, tile width G = `tile`:

1. Rows (output features) are ranked globally by their normalised L2 norm
   `||score[i, :]|| / sqrt(K)` and the weakest `round(s_rows * N)` are pruned.
2. The surviving rows, in ascending order, are cut into tiles of G consecutive surviving
   rows; the last tile may hold fewer.
3. Every (tile, k) column segment - the scores of column k restricted to the tile's
   rows - is scored by its normalised norm `||segment|| / sqrt(rows in tile)` and ALL
   segments of ALL tiles are ranked together (no per-tile quota). The strongest
   segments are kept. A tile therefore keeps its own set of K columns, and how many
   (its kept-K) differs from tile to tile: that skew is what the kernels and the
   simulator have to cope with.

The norms are normalised by their length so that one threshold is fair to the smaller
last tile (and to layers of other sizes). The split of the sparsity between steps 1 and
3 is `row_fraction` = s_rows, the fraction of rows pruned; the column step then prunes
s_k with (1 - s_rows)(1 - s_k) = 1 - s. By default the two steps share it equally:
s_rows = s_k = 1 - sqrt(1 - s), as the authors' VGG and NMT code did.

Tile-vector-wise (`tvw`) runs `tw` at sparsity 1 - (m/n)(1 - s) (1 - 2(1 - s) for 2:4)
and then keeps n of every m consecutive entries of each tile's *compacted* kept-K list,
row by row: aligned groups are formed by positions 0-3, 4-7, ... of the list, not of K.
This is what the sparse tensor core sees after the kernel has gathered the tile's kept-K.

How many are kept (exactness)
-----------------------------
The number of weights to keep is `T = N*K - round(s * N*K)` (Python's round: half to
even). Each pattern then gets as close to T as its granule allows:

- `ew` keeps exactly T.
- `bw` ranks blocks and keeps the prefix of that ranking whose element count is closest
  to T: within half a block (b*b/2 elements).
- `vw` keeps exactly n of every m (its sparsity is fixed by n:m).
- `tw` keeps `round((1 - s_rows) * N)` rows (at least one when T > 0), then the prefix of
  the global segment ranking whose element count is closest to T: within one tile column
  (G elements) of T, or within one row (K elements) when the surviving rows alone hold
  fewer than T weights because the row count was rounded.
- `tvw` chooses the prefix of the segment ranking by the count left *after* n:m (which
  depends only on each tile's kept-K), so it also lands within one tile column of T (or
  one row, as above). Among prefixes that are equally close, the one nearest to plain
  `tw` at 1 - (m/n)(1 - s) is taken.

When two prefixes are equally close to T, the shorter one (fewer kept) wins.

Ties
----
Every ranking is a stable sort on the negated score, so among equal scores the lower
index wins: lower row; lower block row, then block column; lower tile, then lower k;
the lower position inside an n:m group. All-equal and all-zero scores are fine, and the
same input always gives the same mask.

Shapes that do not fit the granule (never a silent drop)
--------------------------------------------------------
- `bw`: edge blocks may be partial (N or K not a multiple of b). A partial block is
  kept or dropped whole like any other. Blocks are ranked by their RMS norm - the L2
  norm over the block's actual elements divided by the square root of their number -
  which orders full blocks exactly as the plain L2 norm does, and does not penalise a
  partial block for the zero padding an encoder adds around it.
- `vw` and `tvw`: when K (for tvw: a tile's kept-K) is not a multiple of m, the last
  group of a row is a partial group of length L < m that keeps min(n, L) entries. Zero
  padding up to the kernel's K granule then still forms legal n:m groups.
- `tw`: the last tile may hold fewer than G rows; a tile may keep no column at all.

Memory and speed (the same masks, leaner)
------------------------------------------
A 1024 x 500000 layer has half a billion weights, so the pruner never makes a full-size
float64 copy of the scores. With the default importance the scores are |W| computed on
the fly from W itself; every norm is summed slab by slab (`CHUNK_ELEMENTS` at a time)
with exactly the numpy arithmetic of a whole-matrix pass, so each row, block or column
segment gets the same float64 sum bit for bit. Selections need no arithmetic at all:
the k-th largest score is found by a radix select on the IEEE bit patterns (for
non-negative floats the bits sort like the values), and n:m groups by comparisons, both
in numba loops that read W in place. Only comparisons of exactly converted values decide
a mask, so the result is the one a float64 copy would give.

Bad input raises `tvwsim.errors.InputError` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numba import njit

from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Where the weights of a tile-wise (tw/tvw) mask live, tile by tile.

    Tile t holds the output features `rows[t*G : (t+1)*G]` (G = `tile_width`; the last
    tile may hold fewer) and reads only the K columns `kept_k[t]`. This is the structure
    the encoder packs into `row_map`, `k_ptr` and `k_index` (docs/formats.md).
    """

    tile_width: int
    """G: surviving rows per tile (the CTA tile's bm)."""
    rows: np.ndarray
    """int32, ascending: the surviving rows (output features), in tile order."""
    kept_k: tuple[np.ndarray, ...]
    """One int32 ascending array per tile: the tile's kept K columns (its compacted
    kept-K list). For tvw this is the list BEFORE n:m; the n:m groups are aligned groups
    of m consecutive entries of this list (the last one may be partial). May be empty."""

    @property
    def n_tiles(self) -> int:
        """Number of tiles: ceil(surviving rows / G)."""
        return len(self.kept_k)

    def kept_k_counts(self) -> np.ndarray:
        """int64 [n_tiles]: the kept-K count of every tile (its work along K)."""
        return np.array([len(k) for k in self.kept_k], dtype=np.int64)

    def tile_rows(self, t: int) -> np.ndarray:
        """The output features tile `t` computes (G of them, fewer in the last tile)."""
        g = self.tile_width
        return self.rows[t * g : (t + 1) * g]


@dataclass(frozen=True, eq=False)
class Pruned:
    """The result of pruning: the mask, what was asked, what was achieved."""

    mask: np.ndarray
    """bool, the weight's shape: True = kept."""
    pattern: str
    """A pattern of the registry (`tvwsim.pattern_spec.PATTERNS`)."""
    target_sparsity: float
    """The sparsity asked for (fraction of weights removed)."""
    achieved_sparsity: float
    """1 - kept / (N*K): equal to the target up to one granule (module docstring)."""
    layout: TileLayout | None
    """The tile structure for tw and tvw; None for the other patterns."""


# -- scores, read slab by slab -------------------------------------------------------------------

CHUNK_ELEMENTS = 1 << 18
"""Scores per slab when a pass needs float64 temporaries (2 MiB each: they stay in the
cache, which makes slabs faster than whole-matrix passes). The slab size bounds memory
only; it never changes a result (module docstring, "Memory and speed")."""


@dataclass(frozen=True, eq=False)
class _Scores:
    """The importance scores of a weight, without a full-size float64 copy.

    `source` holds either W itself (`magnitude=True`: the score is |W|) or the caller's
    importance (float64, or any array for the public norm functions, converted slab by
    slab). float16 weights are widened to float32 (exactly) because numba has no float16
    on the CPU.
    """

    source: np.ndarray
    magnitude: bool

    @classmethod
    def of_weight(cls, w: np.ndarray) -> _Scores:
        if w.dtype == np.float16:
            w = w.astype(np.float32)
        elif w.dtype not in (np.float32, np.float64):
            # Wider floats: the float64 a whole-matrix np.abs(w, dtype=float64) would see.
            w = w.astype(np.float64)
        return cls(w, magnitude=True)

    @classmethod
    def of_array(cls, score: object) -> _Scores:
        """Scores given as an array (the public norm functions): read as float64."""
        return cls(np.asarray(score), magnitude=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    def as_float64(self, part: np.ndarray) -> np.ndarray:
        """float64 scores of a piece of `source`: |W| or the importance itself."""
        if self.magnitude:
            return np.abs(part, dtype=np.float64)
        return np.asarray(part, dtype=np.float64)


def _slabs(
    n_rows: int, n_cols: int, row_unit: int = 1, col_unit: int = 1, *, split_cols: bool = True
):
    """(r0, r1, c0, c1) pieces of about CHUNK_ELEMENTS covering an n_rows x n_cols array.

    Row pieces hold whole multiples of `row_unit` rows (a tile, a block row); columns are
    cut only when one row unit alone is too big, and then into pieces of at least two
    `col_unit`s: numpy sums a reduction that degenerates to one contiguous column unit
    pairwise, a wider one row after row, so a piece must keep the whole matrix's shape.
    """
    units_per_slab = max(1, CHUNK_ELEMENTS // max(1, n_cols * row_unit))
    rows_per = units_per_slab * row_unit
    units = -(-n_cols // col_unit)
    pieces = 1
    if split_cols and units_per_slab == 1:
        pieces = max(1, min(units // 2, -(-(n_cols * row_unit) // CHUNK_ELEMENTS)))
    bounds = [min(n_cols, (i * units // pieces) * col_unit) for i in range(pieces + 1)]
    for r0 in range(0, n_rows, rows_per):
        r1 = min(n_rows, r0 + rows_per)
        for c0, c1 in zip(bounds[:-1], bounds[1:], strict=True):
            yield r0, r1, c0, c1


# -- public entry points -------------------------------------------------------------------


def prune(
    weight: np.ndarray,
    pattern: str,
    sparsity: float,
    *,
    tile: int = 128,
    block: int = 32,
    importance: np.ndarray | None = None,
    n: int = 2,
    m: int = 4,
    row_fraction: float | None = None,
) -> np.ndarray:
    """Boolean keep-mask of `weight`'s shape for `pattern` at `sparsity`.

    Shorthand for `prune_with_layout(...).mask`; see the module docstring for what each
    pattern keeps.
    """
    return prune_with_layout(
        weight,
        pattern,
        sparsity,
        tile=tile,
        block=block,
        importance=importance,
        n=n,
        m=m,
        row_fraction=row_fraction,
    ).mask


def prune_with_layout(
    weight: np.ndarray,
    pattern: str,
    sparsity: float,
    *,
    tile: int = 128,
    block: int = 32,
    importance: np.ndarray | None = None,
    n: int = 2,
    m: int = 4,
    row_fraction: float | None = None,
) -> Pruned:
    """Prune `weight` (N x K, out x in) and return mask, achieved sparsity and tile layout.

    Args:
        weight: 2-D real floating array, finite.
        pattern: a name of `tvwsim.pattern_spec.PATTERNS`.
        sparsity: target fraction of weights removed, 0 <= s < 1.
        tile: tile width G of tw/tvw (surviving rows per tile).
        block: block side b of bw.
        importance: non-negative finite scores of weight's shape; default |weight|.
        n, m: keep n of every m consecutive K (vw, and the second step of tvw).
        row_fraction: tw/tvw only, s_rows = the fraction of rows pruned by step 1, in
            [0, tile-wise sparsity]; default None = 1 - sqrt(1 - tile-wise sparsity).
    """
    w = _check_weight(weight)
    spec = pattern_spec(pattern)
    s = _check_fraction("sparsity", sparsity, upper_inclusive=False)
    tile = _check_positive_int("tile", tile)
    block = _check_positive_int("block", block)
    n = _check_positive_int("n", n)
    m = _check_positive_int("m", m)
    if n > m:
        raise InputError("n", f"n:m needs 1 <= n <= m, got {n}:{m}")
    score = _check_importance(importance, w)
    if row_fraction is not None and not spec.tiled:
        raise InputError("row_fraction", f"applies only to tiled patterns, not to {pattern}")
    # The registry says which sparsities a pattern takes; vw and tvw at this call's n:m.
    nm_spec = spec.with_nm(n, m)
    if not nm_spec.accepts(s):
        nm = f" {n}:{m}" if nm_spec.nm else ""
        raise InputError("sparsity", f"{pattern}{nm} needs a sparsity {nm_spec.allowed()}, got {s}")

    layout = None
    if pattern == "dense":
        mask = np.ones(w.shape, dtype=bool)
    elif pattern == "ew":
        mask = _top_k_mask(score.source, _keep_count(w.size, s)).reshape(w.shape)
    elif pattern == "bw":
        mask = _block_wise(score, s, block)
    elif pattern == "vw":
        mask = _n_of_m_mask(score, n, m)
    else:
        # tvw prunes tile-wise to 1 - (m/n)(1 - s) first, so that n:m lands on s.
        tw_sparsity = s if nm_spec.nm is None else max(0.0, 1.0 - (m / n) * (1.0 - s))
        if row_fraction is not None:
            row_fraction = _check_fraction("row_fraction", row_fraction, upper_inclusive=True)
            if row_fraction > tw_sparsity:
                raise InputError(
                    "row_fraction",
                    f"must be in [0, {tw_sparsity:g}] (the tile-wise sparsity), got {row_fraction}",
                )
        mask, layout = _tile_wise(
            score,
            tw_sparsity=tw_sparsity,
            final_sparsity=s,
            tile=tile,
            row_fraction=row_fraction,
            nm=nm_spec.nm,
        )
    achieved = 1.0 - int(np.count_nonzero(mask)) / mask.size
    return Pruned(
        mask=mask, pattern=pattern, target_sparsity=s, achieved_sparsity=achieved, layout=layout
    )


# -- the scores each pattern ranks (public so that tests and notebooks rank the same way) --


def normalised_row_norms(score: np.ndarray) -> np.ndarray:
    """float64 [N]: ||score[i, :]|| / sqrt(K), tw's row ranking score (step 1)."""
    return _row_norms(_Scores.of_array(score))


def block_rms_norms(score: np.ndarray, block: int) -> np.ndarray:
    """float64 [ceil(N/b), ceil(K/b)]: each b x b block's L2 norm / sqrt(its element count).

    Edge blocks may be partial; they are scored over their actual elements only.
    """
    return _block_norms(_Scores.of_array(score), block)


def segment_norms(score: np.ndarray, rows: np.ndarray, tile: int) -> np.ndarray:
    """float64 [n_tiles, K]: tw's column-segment score (step 3).

    Entry (t, k) is the L2 norm of score[rows of tile t, k] divided by sqrt(rows in tile
    t), where tile t holds `rows[t*tile : (t+1)*tile]`.
    """
    return _segment_norms(_Scores.of_array(score), np.asarray(rows), tile)


def _row_norms(scores: _Scores) -> np.ndarray:
    n_rows, n_cols = scores.shape
    sums = np.empty(n_rows)
    # Whole rows only: a row's sum of squares is one einsum, never cut.
    for r0, r1, _, _ in _slabs(n_rows, n_cols, split_cols=False):
        part = scores.as_float64(scores.source[r0:r1])
        sums[r0:r1] = np.einsum("ij,ij->i", part, part)
    return np.sqrt(sums) / math.sqrt(n_cols)


def _block_norms(scores: _Scores, block: int) -> np.ndarray:
    n_rows, n_cols = scores.shape
    nbr, nbc = -(-n_rows // block), -(-n_cols // block)
    sums = np.empty((nbr, nbc))
    for r0, r1, c0, c1 in _slabs(n_rows, n_cols, block, block):
        part = scores.as_float64(scores.source[r0:r1, c0:c1])
        sq = part * part
        rows_b, cols_b = -(-(r1 - r0) // block), -(-(c1 - c0) // block)
        if sq.shape != (rows_b * block, cols_b * block):
            # Zero padding adds nothing to a sum of squares; the count below stays exact.
            padded = np.zeros((rows_b * block, cols_b * block))
            padded[: r1 - r0, : c1 - c0] = sq
            sq = padded
        b0, k0 = r0 // block, c0 // block
        sums[b0 : b0 + rows_b, k0 : k0 + cols_b] = sq.reshape(rows_b, block, cols_b, block).sum(
            axis=(1, 3)
        )
    return np.sqrt(sums / _block_sizes(n_rows, n_cols, block))


def _segment_norms(scores: _Scores, rows: np.ndarray, tile: int) -> np.ndarray:
    n_kept, n_cols = len(rows), scores.shape[1]
    n_tiles = -(-n_kept // tile)
    sums = np.empty((n_tiles, n_cols))
    # Slabs of whole tiles of the (zero-padded) stack of surviving rows.
    for r0, r1, c0, c1 in _slabs(n_tiles * tile, n_cols, tile):
        picked = rows[r0:r1]
        sq = np.zeros((r1 - r0, c1 - c0))
        sq[: picked.size] = scores.as_float64(scores.source[picked, c0:c1]) ** 2
        t0 = r0 // tile
        sums[t0 : t0 + (r1 - r0) // tile, c0:c1] = sq.reshape(-1, tile, c1 - c0).sum(axis=1)
    return np.sqrt(sums / _tile_sizes(n_kept, tile)[:, None])


# -- the patterns ------------------------------------------------------------------------------


def _keep_count(total: int, sparsity: float) -> int:
    """T = total - round(s * total): the number of weights to keep."""
    return total - round(sparsity * total)


def _top_k_mask(score: np.ndarray, k: int) -> np.ndarray:
    """Keep the k entries of largest magnitude of a float array (flattened, row-major);
    among equal magnitudes the lower index wins. Callers pass non-negative scores, or W
    itself to rank |W|.

    A full stable sort would do, but a threshold is all that is needed: everything above
    the k-th largest value is kept, and the ties at it are resolved by index order, which
    is what the stable sort would have done. The threshold is found without sorting or
    copying: with the sign bit cleared, the IEEE bit patterns of non-negative floats sort
    exactly like their values (and -0.0 becomes +0.0, its equal), so a radix select over
    16-bit digits of the bits (`_radix_select`) finds it in one pass per digit, and the
    mask is filled in one more. Passing W itself ranks |W|.
    """
    values = np.ascontiguousarray(score).reshape(-1)
    size = values.size
    mask = np.zeros(size, dtype=bool)
    if k <= 0:
        return mask
    if k >= size:
        mask[:] = True
        return mask
    bits = 8 * values.dtype.itemsize
    keys = values.view(f"u{values.dtype.itemsize}")
    clear = np.uint64((1 << (bits - 1)) - 1)  # every bit but the sign
    threshold, above = _radix_select(keys, clear, bits, k)
    _fill_top(keys, clear, threshold, k - above, mask)
    return mask


@njit(cache=True)
def _radix_select(keys, clear, n_bits, k):  # pragma: no cover - numba
    """(threshold, above): the k-th largest of `keys & clear` and how many are larger.

    Most significant 16-bit digit first: count the keys that share the digits fixed so
    far, per value of the next digit, and walk down from the top digit until k is
    reached; that digit is fixed and the keys above it counted as kept.
    """
    prefix = np.uint64(0)
    above = 0
    hist = np.zeros(1 << 16, dtype=np.int64)
    digit_mask = np.uint64(0xFFFF)
    shift = n_bits
    while shift > 0:
        shift -= 16
        hist[:] = 0
        low = np.uint64(shift)
        high = np.uint64(shift + 16)
        first = shift + 16 >= n_bits  # no digit fixed yet
        for i in range(keys.size):
            v = np.uint64(keys[i]) & clear
            if first or (v >> high) == prefix:
                hist[(v >> low) & digit_mask] += 1
        d = 0xFFFF
        while above + hist[d] < k:
            above += hist[d]
            d -= 1
        prefix = (prefix << np.uint64(16)) | np.uint64(d)
    return prefix, above


@njit(cache=True)
def _fill_top(keys, clear, threshold, missing, out):  # pragma: no cover - numba
    """Keep every key above the threshold and the first `missing` equal to it."""
    for i in range(keys.size):
        v = np.uint64(keys[i]) & clear
        out[i] = v > threshold  # branch-free: a random mask defeats branch prediction
        if v == threshold and missing > 0:  # rare: the ties at the threshold
            out[i] = True
            missing -= 1


def _closest_prefix(cum_kept: np.ndarray, target: int, prefer: int) -> int:
    """Length of the ranking prefix whose kept count `cum_kept[len]` is closest to target.

    Among equally close lengths, the one nearest to `prefer` (then the shorter) wins.
    """
    distance = np.abs(cum_kept - target)
    candidates = np.flatnonzero(distance == distance.min())
    return int(candidates[np.argmin(np.abs(candidates - prefer))])


def _block_sizes(n_rows: int, n_cols: int, block: int) -> np.ndarray:
    """int64 [ceil(N/b), ceil(K/b)]: elements in each block (edge blocks may be smaller)."""
    rows = np.minimum(block, n_rows - block * np.arange(-(-n_rows // block)))
    cols = np.minimum(block, n_cols - block * np.arange(-(-n_cols // block)))
    return rows[:, None].astype(np.int64) * cols[None, :]


def _tile_sizes(n_kept_rows: int, tile: int) -> np.ndarray:
    """int64 [n_tiles]: rows in each tile (G, the last one possibly fewer)."""
    return np.minimum(tile, n_kept_rows - tile * np.arange(-(-n_kept_rows // tile))).astype(
        np.int64
    )


def _block_wise(score: _Scores, sparsity: float, block: int) -> np.ndarray:
    n_rows, n_cols = score.shape
    norms = _block_norms(score, block)
    sizes = _block_sizes(n_rows, n_cols, block).ravel()
    order = np.argsort(-norms.ravel(), kind="stable")
    cum = np.concatenate(([0], np.cumsum(sizes[order])))
    target = _keep_count(n_rows * n_cols, sparsity)
    keep = np.zeros(norms.size, dtype=bool)
    keep[order[: _closest_prefix(cum, target, prefer=0)]] = True
    keep = keep.reshape(norms.shape)
    mask = np.empty((n_rows, n_cols), dtype=bool)
    for br in range(norms.shape[0]):
        mask[br * block : (br + 1) * block] = np.repeat(keep[br], block)[:n_cols]
    return mask


def _n_of_m_mask(score: _Scores, n: int, m: int) -> np.ndarray:
    """Keep the n best of every aligned group of m consecutive columns, row by row.

    A partial last group of length L < m keeps min(n, L). Within a group the rank of
    entry i is the number of entries that beat it: a higher score, or an equal score at a
    lower position (`_n_of_m_rows`). Only comparisons decide, so reading W in place and
    comparing magnitudes gives what comparing float64 copies of |W| would.
    """
    mask = np.empty(score.shape, dtype=bool)
    _n_of_m_rows(score.source, score.magnitude, n, m, mask)
    return mask


@njit(cache=True)
def _group_keep(s, length, n, keep):  # pragma: no cover - numba
    """keep[i] = entry i of a group of `length` scores s[:length] is among its n best."""
    for i in range(length):
        beaten_by = 0
        for j in range(length):
            if j < i:
                beaten_by += s[j] >= s[i]
            elif j > i:
                beaten_by += s[j] > s[i]
        keep[i] = beaten_by < n


@njit(cache=True)
def _n_of_m_rows(values, magnitude, n, m, out):  # pragma: no cover - numba
    """vw: n:m along K for every row; the last group of a row may be partial."""
    n_rows, n_cols = values.shape
    s = np.empty(m, dtype=np.float64)
    keep = np.empty(m, dtype=np.bool_)
    for r in range(n_rows):
        for g0 in range(0, n_cols, m):
            length = min(m, n_cols - g0)
            for i in range(length):
                x = np.float64(values[r, g0 + i])
                s[i] = abs(x) if magnitude else x
            _group_keep(s, length, n, keep)
            for i in range(length):
                out[r, g0 + i] = keep[i]


@njit(cache=True)
def _n_of_m_tiles(values, magnitude, rows, tile, cols, col_ptr, n, m, out):  # pragma: no cover
    """tvw's second step: n:m along each tile's compacted kept-K list, row by row.

    Tile t holds rows[t*tile : (t+1)*tile] and the kept columns cols[col_ptr[t] :
    col_ptr[t+1]]; aligned groups are positions 0..m-1, m..2m-1, ... of that list.
    Writes out[row, column] for every kept (row, column) of every tile.
    """
    s = np.empty(m, dtype=np.float64)
    keep = np.empty(m, dtype=np.bool_)
    for t in range(col_ptr.size - 1):
        c0, c1 = col_ptr[t], col_ptr[t + 1]
        for p in range(t * tile, min(rows.size, (t + 1) * tile)):
            r = rows[p]
            for g0 in range(c0, c1, m):
                length = min(m, c1 - g0)
                for i in range(length):
                    x = np.float64(values[r, cols[g0 + i]])
                    s[i] = abs(x) if magnitude else x
                _group_keep(s, length, n, keep)
                for i in range(length):
                    out[r, cols[g0 + i]] = keep[i]


def _occurrence(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """For each entry, how many earlier entries carry the same label (0, 1, 2, ...)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, np.arange(n_labels))
    occurrence = np.empty(labels.size, dtype=np.int64)
    occurrence[order] = np.arange(labels.size) - first[sorted_labels]
    return occurrence


def _tile_wise(
    score: _Scores,
    *,
    tw_sparsity: float,
    final_sparsity: float,
    tile: int,
    row_fraction: float | None,
    nm: tuple[int, int] | None,
) -> tuple[np.ndarray, TileLayout]:
    n_rows, n_cols = score.shape
    total = n_rows * n_cols
    tw_target = _keep_count(total, tw_sparsity)

    # Step 1: rows. s_rows from the split, the count by rounding, at least one row when
    # anything is to be kept (rounding could otherwise leave nothing for step 3).
    s_rows = 1.0 - math.sqrt(1.0 - tw_sparsity) if row_fraction is None else row_fraction
    n_kept_rows = n_rows - round(s_rows * n_rows)
    if n_kept_rows == 0 and tw_target > 0:
        n_kept_rows = 1
    rows = np.flatnonzero(_top_k_mask(_row_norms(score), n_kept_rows))
    rows = rows.astype(np.int32)

    # Step 2 and 3: tiles of surviving rows, column segments ranked across all tiles.
    seg = _segment_norms(score, rows, tile)
    n_tiles = seg.shape[0]
    sizes = _tile_sizes(n_kept_rows, tile)
    order = np.argsort(-seg.ravel(), kind="stable")  # ties: lower tile, then lower k
    seg_tile = order // n_cols
    cum_tw = np.concatenate(([0], np.cumsum(sizes[seg_tile])))
    prefer = _closest_prefix(cum_tw, tw_target, prefer=0)
    if nm is None:
        n_segments = prefer
    else:
        # After n:m a tile with kept-K c keeps n*(c//m) + min(n, c%m) per row, so its
        # (c+1)-th column adds a row's worth only when c % m < n. Choosing the prefix by
        # that count puts tvw within one tile column of its own target.
        n, m = nm
        adds = _occurrence(seg_tile, n_tiles) % m < n
        cum_final = np.concatenate(([0], np.cumsum(np.where(adds, sizes[seg_tile], 0))))
        n_segments = _closest_prefix(cum_final, _keep_count(total, final_sparsity), prefer)

    seg_keep = np.zeros(seg.size, dtype=bool)
    seg_keep[order[:n_segments]] = True
    seg_keep = seg_keep.reshape(seg.shape)
    kept_k = tuple(np.flatnonzero(seg_keep[t]).astype(np.int32) for t in range(n_tiles))
    layout = TileLayout(tile_width=tile, rows=rows, kept_k=kept_k)

    mask = np.zeros(score.shape, dtype=bool)
    for t in range(n_tiles):
        mask[layout.tile_rows(t)] = seg_keep[t]
    if nm is not None:
        col_ptr = np.zeros(n_tiles + 1, dtype=np.int64)
        np.cumsum([cols.size for cols in kept_k], out=col_ptr[1:])
        cols = np.concatenate(kept_k) if kept_k else np.zeros(0, np.int32)
        _n_of_m_tiles(score.source, score.magnitude, rows, tile, cols, col_ptr, *nm, mask)
    return mask, layout


# -- input checks ------------------------------------------------------------------------------


def _check_weight(weight: object) -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim != 2:
        raise InputError("weight", f"must be a 2-D array (N x K, out x in), got {w.ndim}-D")
    if w.dtype.kind != "f":
        raise InputError(
            "weight", f"must be a real floating array (float16/32/64), got dtype {w.dtype}"
        )
    if w.size == 0:
        raise InputError("weight", f"must have at least one row and column, got {w.shape}")
    if not _all_rows(w, np.isfinite):
        raise InputError("weight", "must be finite (found NaN or inf)")
    return w


def _all_rows(array: np.ndarray, test) -> bool:
    """test(rows).all() for every slab of rows: no full-size boolean temporary."""
    return all(test(array[r0:r1]).all() for r0, r1, _, _ in _slabs(*array.shape, split_cols=False))


def _check_importance(importance: object, w: np.ndarray) -> _Scores:
    """The scores: |w| by default (read from w itself), else the caller's, checked."""
    if importance is None:
        return _Scores.of_weight(w)
    score = np.asarray(importance)
    if score.shape != w.shape:
        raise InputError("importance", f"must have the weight's shape {w.shape}, got {score.shape}")
    if score.dtype.kind not in "fiu":
        raise InputError("importance", f"must be a real numeric array, got dtype {score.dtype}")
    score = score.astype(np.float64)
    if not _all_rows(score, np.isfinite):
        raise InputError("importance", "must be finite (found NaN or inf)")
    if not _all_rows(score, lambda part: part >= 0):
        raise InputError("importance", "must be non-negative (scores rank weights)")
    return _Scores(score, magnitude=False)


def _check_fraction(name: str, value: object, *, upper_inclusive: bool) -> float:
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputError(name, f"must be a number in {interval}, got {value!r}")
    v = float(value)
    if not (0.0 <= v <= 1.0) or (v == 1.0 and not upper_inclusive):
        raise InputError(name, f"must be in {interval}, got {value!r}")
    return v


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise InputError(name, f"must be a positive integer, got {value!r}")
    return int(value)
