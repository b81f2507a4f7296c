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

Bad input raises `kernels.errors.InputError` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from kernels.errors import InputError

PATTERNS = ("dense", "ew", "bw", "vw", "tw", "tvw")

# vw's sparsity is fixed by n:m; a typed target this close to 1 - n/m counts as equal.
VW_SPARSITY_TOLERANCE = 1e-6


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
    """One of PATTERNS."""
    target_sparsity: float
    """The sparsity asked for (fraction of weights removed)."""
    achieved_sparsity: float
    """1 - kept / (N*K): equal to the target up to one granule (module docstring)."""
    layout: TileLayout | None
    """The tile structure for tw and tvw; None for the other patterns."""


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
        pattern: one of PATTERNS.
        sparsity: target fraction of weights removed, 0 <= s < 1.
        tile: tile width G of tw/tvw (surviving rows per tile).
        block: block side b of bw.
        importance: non-negative finite scores of weight's shape; default |weight|.
        n, m: keep n of every m consecutive K (vw, and the second step of tvw).
        row_fraction: tw/tvw only, s_rows = the fraction of rows pruned by step 1, in
            [0, tile-wise sparsity]; default None = 1 - sqrt(1 - tile-wise sparsity).
    """
    w = _check_weight(weight)
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise InputError("pattern", f"got {pattern!r}; allowed: {', '.join(PATTERNS)}")
    s = _check_fraction("sparsity", sparsity, upper_inclusive=False)
    tile = _check_positive_int("tile", tile)
    block = _check_positive_int("block", block)
    n = _check_positive_int("n", n)
    m = _check_positive_int("m", m)
    if n > m:
        raise InputError("n", f"n:m needs 1 <= n <= m, got {n}:{m}")
    score = _check_importance(importance, w)
    if row_fraction is not None and pattern not in ("tw", "tvw"):
        raise InputError("row_fraction", f"applies only to tw and tvw, not to {pattern}")

    nm_sparsity = 1.0 - n / m
    layout = None
    if pattern == "dense":
        if s != 0.0:
            raise InputError("sparsity", f"dense keeps every weight; must be 0, got {s}")
        mask = np.ones(w.shape, dtype=bool)
    elif pattern == "ew":
        mask = _top_k_mask(score.ravel(), _keep_count(score.size, s)).reshape(w.shape)
    elif pattern == "bw":
        mask = _block_wise(score, s, block)
    elif pattern == "vw":
        if abs(s - nm_sparsity) > VW_SPARSITY_TOLERANCE:
            raise InputError(
                "sparsity",
                f"vw {n}:{m} keeps exactly {n} of every {m}, so its sparsity is "
                f"{nm_sparsity:g}; got {s}",
            )
        mask = _n_of_m_mask(score, n, m)
    else:
        if pattern == "tvw" and s < nm_sparsity - VW_SPARSITY_TOLERANCE:
            raise InputError(
                "sparsity",
                f"tvw applies {n}:{m} after tw, so it needs sparsity >= {nm_sparsity:g}; got {s}",
            )
        tw_sparsity = s if pattern == "tw" else max(0.0, 1.0 - (m / n) * (1.0 - s))
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
            nm=(n, m) if pattern == "tvw" else None,
        )
    achieved = 1.0 - int(np.count_nonzero(mask)) / mask.size
    return Pruned(
        mask=mask, pattern=pattern, target_sparsity=s, achieved_sparsity=achieved, layout=layout
    )


# -- the scores each pattern ranks (public so that tests and notebooks rank the same way) --


def normalised_row_norms(score: np.ndarray) -> np.ndarray:
    """float64 [N]: ||score[i, :]|| / sqrt(K), tw's row ranking score (step 1)."""
    score = np.asarray(score, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", score, score)) / math.sqrt(score.shape[1])


def block_rms_norms(score: np.ndarray, block: int) -> np.ndarray:
    """float64 [ceil(N/b), ceil(K/b)]: each b x b block's L2 norm / sqrt(its element count).

    Edge blocks may be partial; they are scored over their actual elements only.
    """
    score = np.asarray(score, dtype=np.float64)
    n_rows, n_cols = score.shape
    nbr, nbc = -(-n_rows // block), -(-n_cols // block)
    sq = score * score
    if nbr * block != n_rows or nbc * block != n_cols:
        # Zero padding adds nothing to a sum of squares; the count below stays exact.
        padded = np.zeros((nbr * block, nbc * block))
        padded[:n_rows, :n_cols] = sq
        sq = padded
    sums = sq.reshape(nbr, block, nbc, block).sum(axis=(1, 3))
    return np.sqrt(sums / _block_sizes(n_rows, n_cols, block))


def segment_norms(score: np.ndarray, rows: np.ndarray, tile: int) -> np.ndarray:
    """float64 [n_tiles, K]: tw's column-segment score (step 3).

    Entry (t, k) is the L2 norm of score[rows of tile t, k] divided by sqrt(rows in tile
    t), where tile t holds `rows[t*tile : (t+1)*tile]`.
    """
    score = np.asarray(score, dtype=np.float64)
    rows = np.asarray(rows)
    n_kept, n_cols = len(rows), score.shape[1]
    n_tiles = -(-n_kept // tile)
    sq = np.zeros((n_tiles * tile, n_cols))
    sq[:n_kept] = score[rows] ** 2
    sums = sq.reshape(n_tiles, tile, n_cols).sum(axis=1)
    return np.sqrt(sums / _tile_sizes(n_kept, tile)[:, None])


def synthetic_weight(n_rows: int, n_cols: int, *, seed: int = 0) -> np.ndarray:
    """A seeded float32 N x K matrix whose magnitudes are skewed like trained weights.

    `W[i, j] = 0.02 * z[i, j] * r[i] * c[j]` with z standard normal, and per-row and
    per-column factors r, c log-normal with sigma 0.5 (median 1). Trained layers are not
    i.i.d.: some output features and some input features matter much more than others,
    and that row/column skew is exactly what tile-wise pruning exploits (and what makes
    its kept-K per tile uneven). An i.i.d. Gaussian would make every tile look alike.
    The scale 0.02 is BERT's initialiser standard deviation.
    """
    n_rows = _check_positive_int("shape", n_rows)
    n_cols = _check_positive_int("shape", n_cols)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    z = rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    r = rng.lognormal(0.0, 0.5, size=(n_rows, 1)).astype(np.float32)
    c = rng.lognormal(0.0, 0.5, size=(1, n_cols)).astype(np.float32)
    return (np.float32(0.02) * z * r * c).astype(np.float32)


# -- the patterns ------------------------------------------------------------------------------


def _keep_count(total: int, sparsity: float) -> int:
    """T = total - round(s * total): the number of weights to keep."""
    return total - round(sparsity * total)


def _top_k_mask(score: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries of a 1-D array; among equal scores the lower index wins.

    A full stable sort would do, but on 16M weights a partition to find the k-th largest
    value is several times faster: everything above it is kept, and the ties at it are
    resolved by index order, which is what the stable sort would have done.
    """
    size = score.size
    mask = np.zeros(size, dtype=bool)
    if k <= 0:
        return mask
    if k >= size:
        mask[:] = True
        return mask
    threshold = np.partition(score, size - k)[size - k]
    mask = score > threshold
    missing = k - int(np.count_nonzero(mask))
    mask[np.flatnonzero(score == threshold)[:missing]] = True
    return mask


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


def _block_wise(score: np.ndarray, sparsity: float, block: int) -> np.ndarray:
    n_rows, n_cols = score.shape
    norms = block_rms_norms(score, block)
    sizes = _block_sizes(n_rows, n_cols, block).ravel()
    order = np.argsort(-norms.ravel(), kind="stable")
    cum = np.concatenate(([0], np.cumsum(sizes[order])))
    target = _keep_count(score.size, sparsity)
    keep = np.zeros(norms.size, dtype=bool)
    keep[order[: _closest_prefix(cum, target, prefer=0)]] = True
    keep = keep.reshape(norms.shape)
    return np.repeat(np.repeat(keep, block, axis=0), block, axis=1)[:n_rows, :n_cols]


def _n_of_m_mask(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n best of every aligned group of m consecutive columns, row by row.

    A partial last group of length L < m keeps min(n, L). Within a group the rank of
    entry i is the number of entries that beat it: a higher score, or an equal score at a
    lower position. With m = 4 that is 12 vectorised comparisons, cheaper than sorting
    millions of 4-element groups.
    """
    n_rows, n_cols = score.shape
    groups = -(-n_cols // m)
    if groups * m != n_cols:
        # Scores are >= 0, so -1 pads rank below every real entry; dropped again below.
        padded = np.full((n_rows, groups * m), -1.0)
        padded[:, :n_cols] = score
    else:
        padded = np.asarray(score, dtype=np.float64)
    grouped = padded.reshape(n_rows, groups, m)
    keep = np.empty(grouped.shape, dtype=bool)
    for i in range(m):
        s_i = grouped[:, :, i]
        beaten_by = np.zeros(s_i.shape, dtype=np.int32)
        for j in range(m):
            if j < i:
                beaten_by += grouped[:, :, j] >= s_i
            elif j > i:
                beaten_by += grouped[:, :, j] > s_i
        keep[:, :, i] = beaten_by < n
    return keep.reshape(n_rows, groups * m)[:, :n_cols]


def _occurrence(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """For each entry, how many earlier entries carry the same label (0, 1, 2, ...)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, np.arange(n_labels))
    occurrence = np.empty(labels.size, dtype=np.int64)
    occurrence[order] = np.arange(labels.size) - first[sorted_labels]
    return occurrence


def _tile_wise(
    score: np.ndarray,
    *,
    tw_sparsity: float,
    final_sparsity: float,
    tile: int,
    row_fraction: float | None,
    nm: tuple[int, int] | None,
) -> tuple[np.ndarray, TileLayout]:
    n_rows, n_cols = score.shape
    total = score.size
    tw_target = _keep_count(total, tw_sparsity)

    # Step 1: rows. s_rows from the split, the count by rounding, at least one row when
    # anything is to be kept (rounding could otherwise leave nothing for step 3).
    s_rows = 1.0 - math.sqrt(1.0 - tw_sparsity) if row_fraction is None else row_fraction
    n_kept_rows = n_rows - round(s_rows * n_rows)
    if n_kept_rows == 0 and tw_target > 0:
        n_kept_rows = 1
    rows = np.flatnonzero(_top_k_mask(normalised_row_norms(score), n_kept_rows))
    rows = rows.astype(np.int32)

    # Step 2 and 3: tiles of surviving rows, column segments ranked across all tiles.
    seg = segment_norms(score, rows, tile)
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
    mask[rows] = seg_keep[np.arange(n_kept_rows) // tile]
    if nm is not None:
        for t in range(n_tiles):
            cols = kept_k[t]
            if cols.size:
                tile_rows = layout.tile_rows(t)
                sub = score[np.ix_(tile_rows, cols)]
                mask[np.ix_(tile_rows, cols)] = _n_of_m_mask(sub, *nm)
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
    if not np.isfinite(w).all():
        raise InputError("weight", "must be finite (found NaN or inf)")
    return w


def _check_importance(importance: object, w: np.ndarray) -> np.ndarray:
    """float64 scores: |w| by default, else the caller's, checked."""
    if importance is None:
        return np.abs(w, dtype=np.float64)
    score = np.asarray(importance)
    if score.shape != w.shape:
        raise InputError("importance", f"must have the weight's shape {w.shape}, got {score.shape}")
    if score.dtype.kind not in "fiu":
        raise InputError("importance", f"must be a real numeric array, got dtype {score.dtype}")
    score = score.astype(np.float64)
    if not np.isfinite(score).all():
        raise InputError("importance", "must be finite (found NaN or inf)")
    if (score < 0).any():
        raise InputError("importance", "must be non-negative (scores rank weights)")
    return score


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
