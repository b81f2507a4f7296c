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
by `tvwsim.kernels.tile_work`: how much logical K its CTA walks, which activation rows each
pipeline stage gathers, how many weight bytes each stage loads, and how much math each
stage is. The engine (`tvwsim.sim.engine`) reads nothing else.

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
- `grouped`: rasterised like the grouped ("swizzled") CTA order of GEMM libraries: the
  weight tiles are taken in groups of `GROUP_TILES`, and within a group the activation
  blocks are outer and the tiles inner: (0, 0), (1, 0), ..., (G-1, 0), (0, 1), ... So the
  CTAs resident at one moment cover a few weight tiles x a few activation blocks - a
  square-ish patch whose operands fit in L2 - instead of all activation blocks of a few
  tiles: when X is larger than L2 (8192 tokens x 8192 K is 128 MB), natural order reads
  all of X from DRAM again for every few weight tiles, grouped order about once per
  group.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass
from dataclasses import replace as _dataclass_replace

import numpy as np

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

POLICIES = ("natural", "longest-first", "split", "grouped")

GROUP_TILES = 8
"""Weight tiles per group of the `grouped` policy (GEMM libraries' usual GROUP_M is 8)."""

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


def build_schedule(
    work: TileWork, m: int, policy: str = "natural", *, split_k: int = 1
) -> Schedule:
    """The schedule of a GEMM with `m` tokens over a weight's tile work
    (`tvwsim.kernels.tile_work.tile_work` makes it from an encoded weight).

    `split_k` > 1 cuts every task of the policy's order along K into that many pieces of
    whole stages (fewer when a tile has fewer stages), adjacent in the order: the uniform
    split-K of dense GEMM libraries, for GEMMs with too few output tiles to fill the GPU.
    The pieces add fp32 partial sums like the `split` policy's (which instead cuts only
    heavy tiles, and takes no `split_k`).
    """
    if not isinstance(work, TileWork):
        raise InputError("work", f"must be a TileWork, got {type(work).__name__}")
    m = check_positive_int("m", m)
    if policy not in POLICIES:
        raise InputError("--policy", f"got {policy!r}; allowed: {', '.join(POLICIES)}")
    split_k = check_positive_int("split_k", split_k)
    if split_k > 1 and policy == "split":
        raise InputError("split_k", "the split policy chooses its own pieces; use split_k=1")
    schedule = _build(work, m, policy)
    if split_k == 1:
        return schedule
    return _dataclass_replace(schedule, tasks=_split_tasks(schedule.tasks, split_k, work))


def _split_tasks(tasks: np.ndarray, split_k: int, work: TileWork) -> np.ndarray:
    """Every task cut into up to `split_k` K pieces of whole stages, pieces adjacent."""
    bk = work.config.bk
    rows = []
    for tile, block, lo, hi in tasks.tolist():
        n_stages = (hi - lo) // bk
        pieces = max(1, min(split_k, n_stages))
        base, extra = divmod(n_stages, pieces)
        begin = lo
        for p in range(pieces):
            end = begin + (base + (1 if p < extra else 0)) * bk
            rows.append((tile, block, begin, end))
            begin = end
    return np.array(rows, dtype=np.int32).reshape(-1, 4)


def _build(work: TileWork, m: int, policy: str) -> Schedule:
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
    elif policy == "grouped":
        rows = []
        for g0 in range(0, len(order), GROUP_TILES):
            group = range(g0, min(g0 + GROUP_TILES, len(order)))
            for block in range(blocks):
                rows.extend((order[i], block, 0, lengths[i]) for i in group)
        tasks = np.array(rows, dtype=np.int64).reshape(-1, 4)
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


def check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise InputError(name, f"must be a positive integer, got {value!r}")
    return int(value)
