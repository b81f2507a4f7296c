"""Tile schedules: the ordered list of CTA tasks a sparse GEMM launch executes.

A GEMM `Y.T = W @ X.T` is cut into output tiles of `bm` weight rows x `bn` tokens. One
CTA computes one tile (or, with K-splitting, one K range of it). The *schedule* is the
array that says which CTA does what:

    tasks: int32 [n_tasks, 4], row i = (weight_tile, act_block, k_begin, k_end)

CTA `i` of the kernel launch (blockIdx.x = i) executes `tasks[i]`; the simulator hands the
same rows to its SMs in the same order. Because the schedule is data, a scheduling policy
is just a different array - tried first in the model, then run unchanged on silicon
(docs/formats.md, "Tile schedule").

What a weight tile costs is described by `TileWork`, built from the encoded weight
(`kernels.formats`): how much logical K its CTA walks, which activation rows each
pipeline stage gathers, how many weight bytes each stage loads, and how much math each
stage is. The engine (`sim.engine`) reads nothing else.

Policies
--------
- `natural`: weight-tile-major, activation blocks inner: tasks (0, 0), (0, 1), ...,
  (0, B-1), (1, 0), ... Consecutive CTAs share a weight tile (and, for tw/tvw, its
  gather list) while the CTAs resident at one moment sweep all activation blocks, so
  both operands' panels are re-read from L2 rather than DRAM. This is blockIdx.x order
  for a grid whose fastest dimension is the token (activation) block.
- `longest-first`: the same, with the weight tiles sorted by their K length, heaviest
  first (stable, so equal tiles keep their natural order). A heavy tile started last is
  what makes a long tail; started first, it overlaps with the light ones.
- `split`: every tile whose K length exceeds the median tile's is cut along K into
  pieces of about the median length (whole stages each). The pieces of one output tile
  run on different SMs at once and add their fp32 partial sums into a workspace
  (`red.global.add.f32`); a final pass converts those rows to fp16. The engine charges
  that extra traffic (docs/formats.md, "Split-K reduction"). Order: natural, with the
  pieces of one (tile, block) adjacent.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kernels.config import KernelConfig, default_config
from kernels.errors import InputError

POLICIES = ("natural", "longest-first", "split")
PATTERNS = ("dense", "ew", "bw", "vw", "tw", "tvw")
SPARSE_MMA_PATTERNS = ("vw", "tvw")

ELEMENT_BYTES = 2
"""fp16 values and activations."""
INDEX_BYTES = 4
"""int32 index entries (k_index, col_idx, tile_block)."""


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=dtype)
    out.setflags(write=False)
    return out


def _roundup(value: int, granule: int) -> int:
    return -(-value // granule) * granule


@dataclass(frozen=True, eq=False)
class TileWork:
    """What each weight row tile asks of the GPU, per pipeline stage.

    A stage is `config.bk` logical K positions. For tile t, positions
    `act_rows[act_ptr[t] : act_ptr[t + 1]]` name the original K row of X.T each position
    reads (-1: a zero-filled copy that costs no memory traffic), and stage s of the tile
    has entry `stage_ptr[t] + s` in the per-stage arrays.
    """

    pattern: str
    """Sparsity pattern the work came from."""
    config: KernelConfig
    """The kernel variant (tile shape, stages, mma kind)."""
    n: int
    """Logical output features (rows of W)."""
    k: int
    """Logical reduction length (columns of W)."""
    k_lengths: np.ndarray
    """int32 [tiles]: logical K each tile's CTA walks, a multiple of bk (0 = no K kept)."""
    act_rows: np.ndarray
    """int32 [sum k_lengths]: the X.T row each logical position gathers, or -1."""
    act_ptr: np.ndarray
    """int64 [tiles + 1]: offsets of each tile's positions in `act_rows`."""
    stage_weight_bytes: np.ndarray
    """float64 [sum stages]: weight bytes one stage loads (values, metadata, indices)."""
    stage_flops: np.ndarray
    """float64 [sum stages]: math one stage executes for a full bn-token block. Tensor
    cores: 2 * bm * bn * bk, padding and absent blocks included (they are multiplied
    anyway). CUDA cores (ew): 2 * nonzeros * bn."""
    stage_ptr: np.ndarray
    """int64 [tiles + 1]: offsets of each tile's stages in the per-stage arrays."""
    out_rows: np.ndarray
    """int32 [tiles]: output rows the tile stores (pruned and padding rows are not)."""
    kept_weights: int
    """Nonzero weights of the encoded W: useful FLOPs are 2 x M x this."""
    compute_unit: str
    """'tensor' (mma.sync / mma.sp) or 'cuda' (ew: a CSR SpMM on the CUDA cores)."""

    def __post_init__(self) -> None:
        for name, dtype in (
            ("k_lengths", np.int32),
            ("act_rows", np.int32),
            ("act_ptr", np.int64),
            ("stage_weight_bytes", np.float64),
            ("stage_flops", np.float64),
            ("stage_ptr", np.int64),
            ("out_rows", np.int32),
        ):
            object.__setattr__(self, name, _frozen(getattr(self, name), dtype))

    @property
    def n_tiles(self) -> int:
        return int(self.k_lengths.shape[0])

    @property
    def weight_bytes(self) -> float:
        """Weight bytes one full pass over every tile loads (values + metadata + indices)."""
        return float(self.stage_weight_bytes.sum())


@dataclass(frozen=True, eq=False)
class Schedule:
    """The CTA tasks of one GEMM launch, and the tile work they refer to."""

    tasks: np.ndarray
    """int32 [n_tasks, 4]: (weight_tile, act_block, k_begin, k_end) per CTA, in launch
    order. k_begin and k_end are multiples of config.bk inside the tile's K length."""
    pattern: str
    config: KernelConfig
    m: int
    """Tokens (rows of X)."""
    n: int
    k: int
    policy: str
    """The policy that produced `tasks` (not part of the digest: equal tasks are equal)."""
    work: TileWork

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _frozen(self.tasks, np.int32).reshape(-1, 4))

    @property
    def n_tasks(self) -> int:
        return int(self.tasks.shape[0])

    @property
    def act_blocks(self) -> int:
        """Token blocks: ceil(M / bn)."""
        return -(-self.m // self.config.bn)

    @property
    def has_split_tasks(self) -> bool:
        """True if some task covers only part of its tile's K (split-K reduction needed)."""
        whole = self.work.k_lengths[self.tasks[:, 0]]
        return bool(((self.tasks[:, 2] != 0) | (self.tasks[:, 3] != whole)).any())

    def task_stages(self) -> np.ndarray:
        """int64 [n_tasks]: pipeline stages (K steps) each task runs."""
        return (self.tasks[:, 3].astype(np.int64) - self.tasks[:, 2]) // self.config.bk

    def digest(self) -> str:
        """sha256 (hex) of everything the model reads: the tasks, the shape, the kernel
        config, the pattern and the per-tile work arrays. Equal digests simulate equally
        on equal hardware, which is what the result cache keys on."""
        h = hashlib.sha256()
        c = self.config
        head = (
            f"tvwsim-schedule-1|{self.pattern}|{c.name}|{c.mma}|{c.dtype}|"
            f"{self.m},{self.n},{self.k}|{self.work.compute_unit}|{self.work.kept_weights}|"
        )
        h.update(head.encode())
        h.update(self.tasks.astype("<i4").tobytes())
        w = self.work
        for array, dtype in (
            (w.k_lengths, "<i4"),
            (w.act_rows, "<i4"),
            (w.stage_weight_bytes, "<f8"),
            (w.stage_flops, "<f8"),
            (w.out_rows, "<i4"),
        ):
            h.update(b"|")
            h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return h.hexdigest()


# =====================================================================================
# Tile work from an encoded weight
# =====================================================================================
def _stage_arrays(
    k_lengths: np.ndarray, bk: int, per_position_bytes: list[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-position weight bytes into per-stage bytes; returns (bytes, stage_ptr)."""
    steps = k_lengths.astype(np.int64) // bk
    stage_ptr = np.zeros(len(k_lengths) + 1, dtype=np.int64)
    np.cumsum(steps, out=stage_ptr[1:])
    flat = np.asarray(per_position_bytes, dtype=np.float64).ravel()
    return flat.reshape(-1, bk).sum(axis=1) if flat.size else np.zeros(0), stage_ptr


def regular_tile_work(
    pattern: str, n: int, k: int, config: KernelConfig, kept_weights: int | None = None
) -> TileWork:
    """Tile work of dense and vw, which depends only on the shape, not on the values.

    Every tile walks the padded K (`roundup(k, bk)`), gathers X.T rows 0..k-1 in order,
    and loads `rows x bk x 2` weight bytes per stage (dense) or the 2:4-compressed
    `rows x bk` bytes plus `rows x bk / 8` bytes of metadata (vw). Rows are the tile's
    rows that exist in memory: `n` rows for dense, `roundup(n, 16)` for vw (the encoder
    pads vw to whole 16-row mma blocks).
    """
    if pattern not in ("dense", "vw"):
        raise InputError("pattern", f"regular tile work is for dense and vw, not {pattern}")
    bm, bk = config.bm, config.bk
    tiles = -(-n // bm)
    k_pad = _roundup(k, bk)
    steps = k_pad // bk
    rows_in_memory = n if pattern == "dense" else _roundup(n, 16)
    mem_rows = np.minimum(bm, rows_in_memory - np.arange(tiles) * bm)
    per_row_stage = bk * ELEMENT_BYTES if pattern == "dense" else bk + bk // 8
    one_tile_rows = np.where(np.arange(k_pad) < k, np.arange(k_pad), -1)
    if kept_weights is None:
        kept_weights = n * k if pattern == "dense" else n * (2 * (k // 4) + min(2, k % 4))
    return TileWork(
        pattern=pattern,
        config=config,
        n=n,
        k=k,
        k_lengths=np.full(tiles, k_pad),
        act_rows=np.tile(one_tile_rows, tiles),
        act_ptr=np.arange(tiles + 1, dtype=np.int64) * k_pad,
        stage_weight_bytes=np.repeat(mem_rows * float(per_row_stage), steps),
        stage_flops=np.full(tiles * steps, float(config.flops_per_stage())),
        stage_ptr=np.arange(tiles + 1, dtype=np.int64) * steps,
        out_rows=np.minimum(bm, n - np.arange(tiles) * bm),
        kept_weights=int(kept_weights),
        compute_unit="tensor",
    )


def tile_work(encoded: object, kept_weights: int | None = None) -> TileWork:
    """The per-tile, per-stage work of an encoded weight (`kernels.formats.encode`).

    `kept_weights` (the mask's count) sets the useful FLOPs; without it the nonzero
    values of the encoding are counted (a kept weight that is exactly zero then counts
    as pruned - harmless for FLOP rates).

    Per pattern (docs/formats.md has the buffers):

    - dense, vw: `regular_tile_work`.
    - tw, tvw: tile t walks its padded kept-K list `k_index[k_ptr[t]:k_ptr[t+1]]`; every
      stage loads the tile's G x bk values (tw) or G x bk/2 values + G x bk/8 bytes of
      metadata (tvw) - padding rows and columns are stored zeros and are loaded too - plus
      the bk int32 `k_index` entries that drive the gather.
    - bw: tile t walks its union of block columns, b logical K per column; a stage loads
      only the blocks present in its columns (absent ones are zero-filled) plus the
      `bm / b` int32 `tile_block` entries per column, but the tensor cores multiply the
      whole bm x bk tile.
    - ew: a CSR SpMM on the CUDA cores (a cuSPARSE-like model, no tvwsim kernel): tile t
      walks the union of the columns its bm rows keep, a stage gathers bk of those X.T
      rows and loads the nonzeros in them (fp16 value + int32 column index each), and the
      math is 2 FLOPs per nonzero and token.
    """
    pattern = getattr(encoded, "pattern", None)
    config = getattr(encoded, "config", None)
    if pattern not in PATTERNS or not isinstance(config, KernelConfig):
        raise InputError("encoded", "must be an encoded weight from kernels.formats.encode")
    n, k = int(encoded.n), int(encoded.k)
    if kept_weights is None:
        values = encoded.values
        kept_weights = n * k if pattern == "dense" else int(np.count_nonzero(values))
    if pattern in ("dense", "vw"):
        return regular_tile_work(pattern, n, k, config, kept_weights)
    if pattern in ("tw", "tvw"):
        return _tile_wise_work(encoded, kept_weights)
    if pattern == "bw":
        return _block_work(encoded, kept_weights)
    return _csr_work(encoded, kept_weights)


def _tile_wise_work(enc, kept_weights: int) -> TileWork:
    config, g, bk = enc.config, enc.config.bm, enc.config.bk
    k_lengths = np.diff(enc.k_ptr).astype(np.int32)
    total = int(enc.k_ptr[-1])
    sparse = enc.pattern == "tvw"
    per_position = (g + g // 8 if sparse else g * ELEMENT_BYTES) + INDEX_BYTES
    stage_bytes, stage_ptr = _stage_arrays(k_lengths, bk, np.full(total, float(per_position)))
    out_rows = (np.asarray(enc.row_map).reshape(-1, g) >= 0).sum(axis=1)
    return TileWork(
        pattern=enc.pattern,
        config=config,
        n=int(enc.n),
        k=int(enc.k),
        k_lengths=k_lengths,
        act_rows=np.asarray(enc.k_index),
        act_ptr=np.asarray(enc.k_ptr, dtype=np.int64),
        stage_weight_bytes=stage_bytes,
        stage_flops=np.full(stage_bytes.size, float(config.flops_per_stage())),
        stage_ptr=stage_ptr,
        out_rows=out_rows,
        kept_weights=int(kept_weights),
        compute_unit="tensor",
    )


def _block_work(enc, kept_weights: int) -> TileWork:
    config, bm, bk, b = enc.config, enc.config.bm, enc.config.bk, int(enc.block)
    n, k = int(enc.n), int(enc.k)
    tiles = int(enc.n_row_tiles)
    col_ptr = np.asarray(enc.tile_col_ptr, dtype=np.int64)
    union_cols = np.asarray(enc.tile_col, dtype=np.int64)
    present = (np.asarray(enc.tile_block) >= 0).sum(axis=1)  # per union column
    k_lengths = (np.diff(col_ptr) * b).astype(np.int32)
    # Position p of a union column c gathers X.T row c*b + p (none past K).
    rows = (union_cols[:, None] * b + np.arange(b)[None, :]).ravel()
    rows = np.where(rows < k, rows, -1)
    # Each position of a column carries 1/b of the column's bytes: the present blocks'
    # b rows of fp16 values, plus the column's bm/b tile_block entries.
    col_bytes = present * b * b * ELEMENT_BYTES + (bm // b) * INDEX_BYTES
    per_position = np.repeat(col_bytes / b, b)
    stage_bytes, stage_ptr = _stage_arrays(k_lengths, bk, per_position)
    return TileWork(
        pattern="bw",
        config=config,
        n=n,
        k=k,
        k_lengths=k_lengths,
        act_rows=rows,
        act_ptr=col_ptr * b,
        stage_weight_bytes=stage_bytes,
        stage_flops=np.full(stage_bytes.size, float(config.flops_per_stage())),
        stage_ptr=stage_ptr,
        out_rows=np.clip(n - np.arange(tiles) * bm, 0, bm),
        kept_weights=int(kept_weights),
        compute_unit="tensor",
    )


def _csr_work(enc, kept_weights: int) -> TileWork:
    config, bm, bk, bn = enc.config, enc.config.bm, enc.config.bk, enc.config.bn
    n, k = int(enc.n), int(enc.k)
    row_ptr = np.asarray(enc.row_ptr, dtype=np.int64)
    col_idx = np.asarray(enc.col_idx)
    tiles = -(-n // bm)
    # Tile by tile (a tile's nonzeros are one contiguous run of col_idx): the union of
    # the columns its rows keep, ascending, and each column's nonzero count.
    rows_parts, nnz_parts = [], []
    k_lengths = np.zeros(tiles, dtype=np.int32)
    for t in range(tiles):
        cols = col_idx[row_ptr[t * bm] : row_ptr[min(n, (t + 1) * bm)]]
        per_col = np.bincount(cols, minlength=k)
        used = np.flatnonzero(per_col)
        length = _roundup(used.size, bk)
        k_lengths[t] = length
        rows = np.full(length, -1, dtype=np.int64)
        rows[: used.size] = used
        nnz = np.zeros(length, dtype=np.float64)
        nnz[: used.size] = per_col[used]
        rows_parts.append(rows)
        nnz_parts.append(nnz)
    act_ptr = np.zeros(tiles + 1, dtype=np.int64)
    np.cumsum(k_lengths, out=act_ptr[1:])
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, dtype=np.int64)
    nnz_at = np.concatenate(nnz_parts) if nnz_parts else np.zeros(0, dtype=np.float64)
    stage_nnz, stage_ptr = _stage_arrays(k_lengths, bk, nnz_at)
    return TileWork(
        pattern="ew",
        config=config,
        n=n,
        k=k,
        k_lengths=k_lengths,
        act_rows=rows,
        act_ptr=act_ptr,
        stage_weight_bytes=stage_nnz * (ELEMENT_BYTES + INDEX_BYTES),
        stage_flops=stage_nnz * 2.0 * bn,
        stage_ptr=stage_ptr,
        out_rows=np.minimum(bm, n - np.arange(tiles) * bm),
        kept_weights=int(kept_weights),
        compute_unit="cuda",
    )


# =====================================================================================
# Policies
# =====================================================================================
def _natural_tiles(work: TileWork) -> np.ndarray:
    return np.arange(work.n_tiles)


def _longest_first_tiles(work: TileWork) -> np.ndarray:
    return np.argsort(-work.k_lengths.astype(np.int64), kind="stable")


def split_length(work: TileWork) -> int:
    """K length that `split` cuts heavy tiles into: the median tile's, in whole stages."""
    bk = work.config.bk
    if work.n_tiles == 0:
        return bk
    median = float(np.median(work.k_lengths))
    return max(bk, _roundup(int(np.ceil(median)), bk))


def build_schedule(source: TileWork | object, m: int, policy: str = "natural") -> Schedule:
    """The schedule of a GEMM with `m` tokens over an encoded weight (or its TileWork)."""
    work = source if isinstance(source, TileWork) else tile_work(source)
    m = check_positive_int("m", m)
    if policy not in POLICIES:
        raise InputError("--policy", f"got {policy!r}; allowed: {', '.join(POLICIES)}")
    blocks = -(-m // work.config.bn)
    bk = work.config.bk
    order = _longest_first_tiles(work) if policy == "longest-first" else _natural_tiles(work)
    lengths = work.k_lengths.astype(np.int64)[order]

    if policy == "split":
        target = split_length(work)
        stages = lengths // bk
        pieces = np.where(lengths > target, -(-lengths // target), 1)
        rows = []
        for tile, n_stages, n_pieces in zip(order, stages, pieces, strict=True):
            # Spread the stages evenly: the first (n_stages % n_pieces) pieces get one more.
            base, extra = divmod(int(n_stages), int(n_pieces))
            sizes = [base + (1 if p < extra else 0) for p in range(n_pieces)]
            bounds = np.concatenate([[0], np.cumsum(sizes)]) * bk
            ranges = [(bounds[p], bounds[p + 1]) for p in range(n_pieces)]
            for block in range(blocks):
                for lo, hi in ranges:
                    rows.append((tile, block, lo, hi))
        tasks = np.array(rows, dtype=np.int32).reshape(-1, 4)
    else:
        tile_col = np.repeat(order, blocks)
        block_col = np.tile(np.arange(blocks), len(order))
        k_end = np.repeat(lengths, blocks)
        tasks = np.stack([tile_col, block_col, np.zeros_like(k_end), k_end], axis=1)
    return Schedule(
        tasks=tasks.astype(np.int32),
        pattern=work.pattern,
        config=work.config,
        m=m,
        n=work.n,
        k=work.k,
        policy=policy,
        work=work,
    )


# =====================================================================================
# From a shape (seeded random weights) or a given weight
# =====================================================================================
def check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise InputError(name, f"must be a positive integer, got {value!r}")
    return int(value)


def config_for(pattern: str, config: KernelConfig | None = None) -> KernelConfig:
    """`config`, or the pattern's default kernel; checks the mma kind fits the pattern."""
    if pattern not in PATTERNS:
        raise InputError("--pattern", f"got {pattern!r}; allowed: {', '.join(PATTERNS)}")
    if config is None:
        return default_config(pattern)
    want = "sparse" if pattern in SPARSE_MMA_PATTERNS else "dense"
    if config.mma != want:
        raise InputError(
            "--tile", f"{pattern} runs mma={want} kernels; config {config.name} has {config.mma}"
        )
    return config


def random_weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Seeded i.i.d. standard normal float32 N x K weight (same seed, same matrix)."""
    return np.random.default_rng(seed).standard_normal((n, k), dtype=np.float32)


def prune_and_encode(
    weight: np.ndarray, pattern: str, sparsity: float, config: KernelConfig, block: int = 32
) -> TileWork:
    """Prune `weight` with the pattern (importance |W|), encode it, and return its work."""
    from kernels.formats import encode
    from kernels.patterns import prune_with_layout

    pruned = prune_with_layout(weight, pattern, sparsity, tile=config.bm, block=block)
    encoded = encode(weight, pruned.mask, pattern, config, layout=pruned.layout, block=block)
    return tile_work(encoded, kept_weights=int(np.count_nonzero(pruned.mask)))


@lru_cache(maxsize=64)
def _random_work(
    n: int, k: int, pattern: str, sparsity: float, config: KernelConfig, seed: int, block: int
) -> TileWork:
    if pattern in ("dense", "vw"):
        # Their structure does not depend on the values; prune only to check the sparsity.
        from kernels.patterns import prune_with_layout

        prune_with_layout(np.ones((1, 4), np.float32), pattern, sparsity)
        return regular_tile_work(pattern, n, k, config)
    return prune_and_encode(random_weight(n, k, seed), pattern, sparsity, config, block)


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

    Without `weights`, the weight is seeded i.i.d. Gaussian (`random_weight(n, k, seed)`),
    so equal (shape, pattern, sparsity, config, seed) give identical schedules - identical
    layers of a network then share one schedule and one cached simulation. dense and vw
    do not depend on the values at all (every tile is alike) and skip materialising W.
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
        work = _random_work(n, k, pattern, float(sparsity), config, int(seed), block)
    else:
        w = np.asarray(weights)
        if w.shape != (n, k):
            raise InputError(
                "--weights", f"has shape {w.shape}; --shape says W is N x K = ({n}, {k})"
            )
        if pattern in ("dense", "vw"):
            from kernels.patterns import prune_with_layout

            kept = int(np.count_nonzero(prune_with_layout(w, pattern, sparsity).mask))
            work = regular_tile_work(pattern, n, k, config, kept)
        else:
            work = prune_and_encode(w, pattern, sparsity, config, block)
    return build_schedule(work, m, policy)
