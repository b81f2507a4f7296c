"""Encoded weights: exactly the buffers a GPU kernel reads, for every sparsity pattern.

`encode(weight, mask, pattern)` turns a weight `W` (N x K, out x in) and its boolean
keep-mask into one frozen dataclass per format. Each holds numpy arrays - the very bytes
a kernel loads - plus the logical shape (`n`, `k`) and the `KernelConfig` the layout was
made for. The byte-level contract is docs/formats.md; this module is its executable form:

| pattern | class         | buffers                                                      |
|---------|---------------|--------------------------------------------------------------|
| dense   | `DenseWeight` | fp16 values `[n, k_pad]`                                     |
| ew      | `CsrWeight`   | CSR: row_ptr, col_idx, values                                |
| bw      | `BsrWeight`   | BSR + per-CTA-tile union of block columns                    |
| vw      | `VwWeight`    | 2:4-compressed values + lane-ordered mma.sp metadata         |
| tw/tvw  | `TileWeight`  | row map, per-tile kept-K index lists, compact (2:4) values   |

Every encoding offers the same small interface, which the CPU twin (`tvwsim.kernels.reference`)
and the simulator's tile schedule (`tvwsim.schedule`) are written against:

- `byte_counts()` -> `ByteCounts(values_bytes, indices_bytes, metadata_bytes)`, the sizes
  of the buffers held (so memory traffic is counted from the real encoding);
- `decode()` -> the fp16 N x K dense weight the buffers represent (for tests);
- `n_row_tiles` and `tile_k_lengths()`: how many CTA row tiles of `config.bm` weight rows
  there are and how much logical K each one iterates over.

Why the encoder is strict: a kept weight is never dropped silently. A mask that does not
have the pattern's structure (3 kept in a 2:4 group, a partial block) is an `InputError`
naming `mask`, not a quietly different matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from numba import njit

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec

__all__ = [
    "activations_fp16",
    "LEGAL_NIBBLES",
    "KernelConfig",
    "default_config",
    "ByteCounts",
    "DenseWeight",
    "CsrWeight",
    "BsrWeight",
    "VwWeight",
    "TileWeight",
    "Encoded",
    "ENCODINGS",
    "encode",
    "compress_2to4",
    "expand_2to4",
    "metadata_to_lanes",
    "metadata_from_lanes",
]

LEGAL_NIBBLES = (0x4, 0x8, 0x9, 0xC, 0xD, 0xE)
"""Ordered-metadata nibbles: bits [1:0] first position < bits [3:2] second position."""

FP16_MAX = 65504.0

# -- 2:4 position choice -------------------------------------------------------------
# A group of 4 K positions is described by the 4-bit set of kept positions (bit p = p
# kept). The tensor core always reads two values per group, so the encoder must name two
# distinct positions even when fewer than two are kept; the missing one stores a zero.
# Positions are ascending so that the nibble is legal for mma.sp::ordered_metadata (and
# plain mma.sp accepts it too). Rule: empty -> (0, 1); one kept at p -> (p, p + 1), or
# (2, 3) for p = 3; two kept -> themselves. -1 marks 3 or 4 kept (invalid 2:4).


def _position_table() -> tuple[np.ndarray, np.ndarray]:
    first = np.full(16, -1, dtype=np.int8)
    second = np.full(16, -1, dtype=np.int8)
    for bits in range(16):
        kept = [p for p in range(4) if bits >> p & 1]
        if len(kept) == 0:
            pair = (0, 1)
        elif len(kept) == 1:
            pair = (kept[0], kept[0] + 1) if kept[0] < 3 else (2, 3)
        elif len(kept) == 2:
            pair = (kept[0], kept[1])
        else:
            continue
        first[bits], second[bits] = pair
    return first, second


_FIRST_POS, _SECOND_POS = _position_table()


# -- small helpers --------------------------------------------------------------------
def _roundup(value: int, granule: int) -> int:
    return -(-value // granule) * granule


def _ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _frozen(array: np.ndarray) -> np.ndarray:
    """Make a buffer read-only: an encoding is a value, not a scratch pad."""
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class ByteCounts:
    """Bytes of the buffers an encoded weight holds, by role."""

    values_bytes: int
    """fp16 weight values, including zero padding."""
    indices_bytes: int
    """int32 index buffers: row pointers, column / kept-K indices, row maps."""
    metadata_bytes: int
    """2:4 metadata (uint32 lane-ordered words); 0 for patterns without mma.sp."""

    @property
    def total_bytes(self) -> int:
        return self.values_bytes + self.indices_bytes + self.metadata_bytes


class _Buffers:
    """Shared behaviour of the encodings: byte counts from the buffers they hold.

    Each subclass names its buffers by role in three class-level tuples; `byte_counts`
    sums their `nbytes`, so a count can never drift away from the arrays themselves.
    """

    _VALUE_BUFFERS: ClassVar[tuple[str, ...]] = ("values",)
    _INDEX_BUFFERS: ClassVar[tuple[str, ...]] = ()
    _METADATA_BUFFERS: ClassVar[tuple[str, ...]] = ()

    def buffers(self) -> dict[str, np.ndarray]:
        """Every buffer by name (what a kernel launch would copy to the device)."""
        names = self._VALUE_BUFFERS + self._INDEX_BUFFERS + self._METADATA_BUFFERS
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def byte_counts(self) -> ByteCounts:
        def total(names: tuple[str, ...]) -> int:
            arrays = (getattr(self, name) for name in names)
            return int(sum(a.nbytes for a in arrays if a is not None))

        return ByteCounts(
            values_bytes=total(self._VALUE_BUFFERS),
            indices_bytes=total(self._INDEX_BUFFERS),
            metadata_bytes=total(self._METADATA_BUFFERS),
        )

    def __post_init__(self) -> None:
        for name in self.buffers():
            object.__setattr__(self, name, _frozen(getattr(self, name)))


# =====================================================================================
# 2:4 compression and the mma.sp metadata layout (shared by vw and tvw)
# =====================================================================================
def compress_2to4(weight16: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compress rows 2:4 along K: (values `[R, L/2]` fp16, metadata `[R, L/16]` uint16).

    `weight16` and `mask` are `R x L` with L a multiple of 16; dropped entries of
    `weight16` must already be zero. For every aligned group of 4 the two stored values
    are in ascending K position; nibble c of metadata word `[r, q]` describes the group at
    K `16q + 4c .. 16q + 4c + 3` (bits [1:0] first position, [3:2] second). Raises
    InputError('mask') if a group keeps 3 or more.
    """
    return _compress_2to4(weight16, mask)


def _compress_2to4(
    weight16: np.ndarray, mask: np.ndarray, row_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`compress_2to4` of a slab of rows that starts at row `row_offset` of the matrix
    (the offset only names the row in the error)."""
    rows, length = mask.shape
    if length % 16:
        raise ValueError(f"compress_2to4 needs a K length that is a multiple of 16, got {length}")
    # The values move as raw fp16 bit patterns: a copy, never arithmetic.
    bits16 = np.ascontiguousarray(weight16, dtype=np.float16).view(np.uint16)
    mask = np.ascontiguousarray(mask, dtype=bool)
    values = np.empty((rows, length // 2), dtype=np.uint16)
    meta16 = np.empty((rows, length // 16), dtype=np.uint16)
    r, grp = _compress_rows(bits16, mask, _FIRST_POS, _SECOND_POS, values, meta16)
    if r >= 0:
        kept = int(np.count_nonzero(mask[r, 4 * grp : 4 * grp + 4]))
        raise InputError(
            "mask",
            f"row {row_offset + r} keeps {kept} of the aligned group of 4 at K "
            f"{4 * grp}..{4 * grp + 3}; 2:4 allows at most 2",
        )
    return values.view(np.float16), meta16


@njit(cache=True)
def _compress_rows(bits16, mask, first_pos, second_pos, values, meta16):  # pragma: no cover
    """The 2:4 compression loop: for every aligned group of 4, the 4-bit set of kept
    positions picks the two stored positions (`_position_table`), their values are
    copied and the nibble `first | second << 2` goes to bits 4c+3..4c of the row's
    16-K metadata word. Returns the first (row, group) that keeps 3 or more, else -1s."""
    n_rows, length = mask.shape
    for r in range(n_rows):
        for q in range(length // 16):
            word = 0
            for c in range(4):
                g = 4 * q + c
                at = 4 * g
                kept = (
                    mask[r, at] | mask[r, at + 1] << 1 | mask[r, at + 2] << 2 | mask[r, at + 3] << 3
                )
                first = first_pos[kept]
                if first < 0:
                    return r, g
                second = second_pos[kept]
                values[r, 2 * g] = bits16[r, at + first]
                values[r, 2 * g + 1] = bits16[r, at + second]
                word |= (first | second << 2) << (4 * c)
            meta16[r, q] = word
    return -1, -1


def expand_2to4(values: np.ndarray, meta16: np.ndarray) -> np.ndarray:
    """Inverse of `compress_2to4`: the logical `R x L` fp16 rows the metadata describes."""
    rows, half = values.shape
    groups = half // 2
    nibbles = (meta16[:, :, None] >> (4 * np.arange(4, dtype=np.uint16))) & 0xF
    nibbles = nibbles.reshape(rows, groups)
    out = np.zeros((rows, groups, 4), dtype=np.float16)
    pairs = values.reshape(rows, groups, 2)
    # Second first: if a (malformed) nibble named one position twice, the first value wins
    # the way it would in the ascending reading; legal nibbles never collide.
    np.put_along_axis(out, (nibbles >> 2)[:, :, None].astype(np.intp), pairs[:, :, 1:2], axis=2)
    np.put_along_axis(out, (nibbles & 3)[:, :, None].astype(np.intp), pairs[:, :, 0:1], axis=2)
    return out.reshape(rows, groups * 4)


def metadata_to_lanes(meta16: np.ndarray) -> np.ndarray:
    """Lane-order logical metadata `[R, L/16]` uint16 into words `[R/16, L/64, 32]` uint32.

    For 16-row block rb and 64-K chunk kc, lane `4g + t` gets
    `meta16[16rb + g + 8, 4kc + t] << 16 | meta16[16rb + g, 4kc + t]`: exactly the `e`
    register mma.sp reads for rows g and g+8 (docs/formats.md, "2:4 metadata"). A warp
    loads the 128 bytes with one coalesced 32-bit load per lane, and the one register
    serves selector 0 (K 0-31: lanes t = 0, 1) and selector 1 (K 32-63: lanes t = 2, 3).
    """
    rows, q = meta16.shape
    if rows % 16 or q % 4:
        raise ValueError(f"metadata_to_lanes needs [16a, 4b] uint16, got {meta16.shape}")
    # [rb, half(0: row g, 1: row g+8), g, kc, t]
    blocks = meta16.astype(np.uint32).reshape(rows // 16, 2, 8, q // 4, 4)
    words = blocks[:, 1] << 16 | blocks[:, 0]  # [rb, g, kc, t]
    return words.transpose(0, 2, 1, 3).reshape(rows // 16, q // 4, 32)


def metadata_from_lanes(words: np.ndarray) -> np.ndarray:
    """Inverse of `metadata_to_lanes`: words `[R/16, L/64, 32]` -> uint16 `[R, L/16]`."""
    row_blocks, chunks, lanes = words.shape
    assert lanes == 32
    per_lane = words.reshape(row_blocks, chunks, 8, 4).transpose(0, 2, 1, 3)  # [rb, g, kc, t]
    meta = np.empty((row_blocks, 2, 8, chunks, 4), dtype=np.uint16)
    meta[:, 0] = per_lane & 0xFFFF
    meta[:, 1] = per_lane >> 16
    return meta.reshape(row_blocks * 16, chunks * 4)


# =====================================================================================
# The formats
# =====================================================================================
@dataclass(frozen=True, eq=False)
class DenseWeight(_Buffers):
    """dense: fp16 `values [n, k_pad]`, `k_pad = roundup(k, config.bk)`, zero columns."""

    pattern: str
    n: int
    k: int
    config: KernelConfig
    values: np.ndarray

    @property
    def k_pad(self) -> int:
        return self.values.shape[1]

    @property
    def n_row_tiles(self) -> int:
        return _ceil_div(self.n, self.config.bm)

    def tile_k_lengths(self) -> np.ndarray:
        """Every row tile iterates over the whole padded K."""
        return np.full(self.n_row_tiles, self.k_pad, dtype=np.int32)

    def decode(self) -> np.ndarray:
        return self.values[:, : self.k].copy()


@dataclass(frozen=True, eq=False)
class CsrWeight(_Buffers):
    """ew (unstructured): CSR. No tvwsim kernel runs it; cuSPARSE is the baseline.

    `row_ptr [n + 1]`, `col_idx [nnz]` ascending within a row, `values [nnz]` fp16.
    Kept weights that are numerically zero are still stored (the mask decides).
    """

    _INDEX_BUFFERS: ClassVar[tuple[str, ...]] = ("row_ptr", "col_idx")

    pattern: str
    n: int
    k: int
    config: KernelConfig
    row_ptr: np.ndarray
    col_idx: np.ndarray
    values: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_row_tiles(self) -> int:
        return _ceil_div(self.n, self.config.bm)

    def tile_k_lengths(self) -> np.ndarray:
        """ew has no tensor-core kernel: per tile of `bm` rows, its count of nonzeros."""
        starts = np.arange(self.n_row_tiles) * self.config.bm
        ends = np.minimum(starts + self.config.bm, self.n)
        return (self.row_ptr[ends] - self.row_ptr[starts]).astype(np.int32)

    def decode(self) -> np.ndarray:
        out = np.zeros((self.n, self.k), dtype=np.float16)
        rows = np.repeat(np.arange(self.n), np.diff(self.row_ptr))
        out[rows, self.col_idx] = self.values
        return out


@dataclass(frozen=True, eq=False)
class BsrWeight(_Buffers):
    """bw: BSR with square blocks of `block` (b), plus the kernel's per-tile view.

    BSR part: `block_row_ptr [n_pad/b + 1]`, `block_col [nnzb]`, `values [nnzb, b, b]`.
    Kernel part, per CTA row tile of `bm` rows (`bm / b` block rows): the tile's union of
    kept block columns `tile_col[tile_col_ptr[t]:tile_col_ptr[t+1]]` and, for each union
    column and block row inside the tile, `tile_block` = the index into `values` or -1
    (an absent block: loaded as zeros, costing no memory traffic).
    """

    _INDEX_BUFFERS: ClassVar[tuple[str, ...]] = (
        "block_row_ptr",
        "block_col",
        "tile_col_ptr",
        "tile_col",
        "tile_block",
    )

    pattern: str
    n: int
    k: int
    config: KernelConfig
    block: int
    block_row_ptr: np.ndarray
    block_col: np.ndarray
    values: np.ndarray
    tile_col_ptr: np.ndarray
    tile_col: np.ndarray
    tile_block: np.ndarray

    @property
    def n_pad(self) -> int:
        return _roundup(self.n, self.block)

    @property
    def k_pad(self) -> int:
        return _roundup(self.k, self.block)

    @property
    def nnzb(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_row_tiles(self) -> int:
        return _ceil_div(self.n_pad, self.config.bm)

    def tile_k_lengths(self) -> np.ndarray:
        """Union block columns of each tile times b: the logical K its CTA walks."""
        return (np.diff(self.tile_col_ptr) * self.block).astype(np.int32)

    def tile_present_blocks(self) -> np.ndarray:
        """Blocks actually loaded per tile (absent blocks of a union column cost nothing)."""
        tile_of_col = np.repeat(np.arange(self.n_row_tiles), np.diff(self.tile_col_ptr))
        present = np.count_nonzero(self.tile_block >= 0, axis=1)
        return np.bincount(tile_of_col, weights=present, minlength=self.n_row_tiles).astype(
            np.int32
        )

    def decode(self) -> np.ndarray:
        b = self.block
        out = np.zeros((self.n_pad // b, b, self.k_pad // b, b), dtype=np.float16)
        block_rows = np.repeat(np.arange(self.n_pad // b), np.diff(self.block_row_ptr))
        out[block_rows, :, self.block_col, :] = self.values
        return out.reshape(self.n_pad, self.k_pad)[: self.n, : self.k].copy()


@dataclass(frozen=True, eq=False)
class VwWeight(_Buffers):
    """vw: 2:4 along K for the sparse tensor core.

    `values [n_pad, k_pad/2]` fp16 (two per aligned group of 4, ascending position: the
    compressed rows are what the dense m16n8k16 A fragment expects, one `ldmatrix.x4`
    per 16 x 16 compressed block) and `metadata [n_pad/16, k_pad/64, 32]` uint32 words in
    lane order (`metadata_to_lanes`). `n_pad = roundup(n, 16)`,
    `k_pad = roundup(k, config.bk)` (config.bk is a multiple of 64 for sparse kernels).
    """

    _METADATA_BUFFERS: ClassVar[tuple[str, ...]] = ("metadata",)

    pattern: str
    n: int
    k: int
    config: KernelConfig
    values: np.ndarray
    metadata: np.ndarray

    @property
    def n_pad(self) -> int:
        return self.values.shape[0]

    @property
    def k_pad(self) -> int:
        return 2 * self.values.shape[1]

    @property
    def n_row_tiles(self) -> int:
        return _ceil_div(self.n_pad, self.config.bm)

    def tile_k_lengths(self) -> np.ndarray:
        return np.full(self.n_row_tiles, self.k_pad, dtype=np.int32)

    def decode(self) -> np.ndarray:
        logical = expand_2to4(self.values, metadata_from_lanes(self.metadata))
        return logical[: self.n, : self.k].copy()


@dataclass(frozen=True, eq=False)
class TileWeight(_Buffers):
    """tw and tvw (`sparse=True`): tiles of G = config.bm surviving rows, own kept-K each.

    - `row_map [tiles*G]`: the output feature of each tile row; -1 past the last surviving
      row (zero weights, never stored). Pruned features are never written: the launch
      must zero-fill them in YT (the CPU twin starts from zeros).
    - `tile_kept_k [tiles]`: each tile's compacted kept-K length before the tail padding.
    - `k_ptr [tiles+1]`: offsets into `k_index`; tile length `roundup(tile_kept_k, bk)`.
    - `k_index`: per tile the kept K ascending, then -1 (a zero-filled activation row).
    - tw `values [G * k_ptr[-1]]`: tile t's compact `G x Kpad_t` block at `G * k_ptr[t]`.
    - tvw `values [G * k_ptr[-1] / 2]`: tile t's 2:4-compressed `G x Kpad_t/2` block at
      `G * k_ptr[t] / 2`, and `metadata`: its lane-ordered `[G/16, Kpad_t/64, 32]` words
      at word `G * k_ptr[t] / 32`. The 2:4 groups are aligned groups of 4 *compacted*
      positions. When encoding from a mask alone, a group that would hold 3 kept of one
      row is closed early with -1 entries, which then count in `tile_kept_k`.
    """

    _INDEX_BUFFERS: ClassVar[tuple[str, ...]] = ("row_map", "tile_kept_k", "k_ptr", "k_index")
    _METADATA_BUFFERS: ClassVar[tuple[str, ...]] = ("metadata",)

    pattern: str
    n: int
    k: int
    config: KernelConfig
    sparse: bool
    row_map: np.ndarray
    tile_kept_k: np.ndarray
    k_ptr: np.ndarray
    k_index: np.ndarray
    values: np.ndarray
    metadata: np.ndarray | None = field(default=None)

    @property
    def tile_width(self) -> int:
        """G, the rows of one tile (= config.bm)."""
        return self.config.bm

    @property
    def n_row_tiles(self) -> int:
        return int(self.k_ptr.shape[0] - 1)

    def tile_k_lengths(self) -> np.ndarray:
        return np.diff(self.k_ptr).astype(np.int32)

    def tile_rows(self, tile: int) -> np.ndarray:
        """Output features of tile `tile`'s G rows (-1 for padding rows)."""
        g = self.tile_width
        return self.row_map[tile * g : (tile + 1) * g]

    def tile_k_index(self, tile: int) -> np.ndarray:
        return self.k_index[self.k_ptr[tile] : self.k_ptr[tile + 1]]

    def tile_values(self, tile: int) -> np.ndarray:
        """Tile `tile`'s value block: `G x Kpad_t` (tw) or `G x Kpad_t/2` (tvw)."""
        g = self.tile_width
        start, end = int(self.k_ptr[tile]), int(self.k_ptr[tile + 1])
        if self.sparse:
            return self.values[g * start // 2 : g * end // 2].reshape(g, (end - start) // 2)
        return self.values[g * start : g * end].reshape(g, end - start)

    def tile_metadata(self, tile: int) -> np.ndarray:
        """Tile `tile`'s lane-ordered metadata words `[G/16, Kpad_t/64, 32]` (tvw only)."""
        if not self.sparse:
            raise ValueError("tw has no metadata")
        g = self.tile_width
        start, end = int(self.k_ptr[tile]), int(self.k_ptr[tile + 1])
        return self.metadata[g * start // 32 : g * end // 32].reshape(
            g // 16, (end - start) // 64, 32
        )

    def decode(self) -> np.ndarray:
        out = np.zeros((self.n, self.k), dtype=np.float16)
        for tile in range(self.n_row_tiles):
            block = self.tile_values(tile)
            if self.sparse:
                block = expand_2to4(block, metadata_from_lanes(self.tile_metadata(tile)))
            rows, cols = self.tile_rows(tile), self.tile_k_index(tile)
            r_ok, c_ok = rows >= 0, cols >= 0
            out[np.ix_(rows[r_ok], cols[c_ok])] = block[np.ix_(r_ok, c_ok)]
        return out


Encoded = DenseWeight | CsrWeight | BsrWeight | VwWeight | TileWeight

ENCODINGS: dict[str, type] = {
    "dense": DenseWeight,
    "ew": CsrWeight,
    "bw": BsrWeight,
    "vw": VwWeight,
    "tw": TileWeight,
    "tvw": TileWeight,
}
"""Pattern -> the dataclass its encoding returns (dispatch on `encoded.pattern`)."""


# =====================================================================================
# Encoders
# =====================================================================================
class _Layout(Protocol):
    """What encode needs from `tvwsim.kernels.patterns.TileLayout` (duck-typed, no import)."""

    tile_width: int
    rows: np.ndarray
    kept_k: Sequence[np.ndarray]


def encode(
    weight: np.ndarray,
    mask: np.ndarray | None,
    pattern: str,
    config: KernelConfig | None = None,
    *,
    layout: _Layout | None = None,
    block: int = 32,
) -> Encoded:
    """Encode `weight` (N x K) under `mask` (bool N x K, True = kept) for `pattern`.

    Values are `weight` rounded to fp16 (nearest) with dropped entries zeroed; the result
    represents exactly `fp16(weight) * mask`. `config` defaults to
    `default_config(pattern)`; vw and tvw need `config.mma == 'sparse'`, the others
    'dense'. tw/tvw use tile width G = config.bm; a `layout` from the pruner fixes the
    tiles' rows and kept-K lists exactly, otherwise they are inferred from the mask.
    `block` is the bw block size b. `mask=None` keeps everything.
    """
    spec = pattern_spec(pattern)
    if config is None:
        config = default_config(pattern)
    if not isinstance(config, KernelConfig):
        raise InputError("config", f"must be a KernelConfig, got {type(config).__name__}")
    if config.mma != spec.mma:
        raise InputError(
            "config",
            f"pattern {pattern} runs mma={spec.mma} kernels, but config {config.name} has "
            f"mma={config.mma}",
        )
    w = np.asarray(weight)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise InputError("weight", f"must be a non-empty 2-D N x K array, got shape {w.shape}")
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise InputError("weight", f"must hold real numbers, got dtype {w.dtype}")
    if mask is None:
        mask = np.ones(w.shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise InputError("mask", f"must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != w.shape:
        raise InputError("mask", f"shape {mask.shape} differs from the weight's {w.shape}")
    if layout is not None and not spec.tiled:
        raise InputError("layout", f"only tiled patterns take a tile layout, not {pattern}")

    n, k = w.shape
    if pattern == "dense":
        return _encode_dense(w, mask, n, k, config)
    if pattern == "ew":
        return _encode_csr(w, mask, n, k, config)
    if pattern == "bw":
        return _encode_bsr(w, mask, n, k, config, block)
    if pattern == "vw":
        return _encode_vw(w, mask, n, k, config)
    return _encode_tiles(w, mask, n, k, config, pattern, layout)


CHUNK_ELEMENTS = 1 << 18
"""Weights converted to fp16 at a time. The encoders work through the weight in slabs of
whole rows, so a layer of half a billion weights never needs a full-size fp16 copy or a
full-size temporary; the slab size changes no byte of the result."""


def _row_slabs(n_rows: int, n_cols: int, multiple: int = 1):
    """(lo, hi) slabs of about CHUNK_ELEMENTS, each a whole multiple of `multiple` rows."""
    rows = max(1, CHUNK_ELEMENTS // max(1, n_cols * multiple)) * multiple
    for lo in range(0, n_rows, rows):
        yield lo, min(n_rows, lo + rows)


def _fp16_rows(w: np.ndarray, mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """fp16(W[lo:hi]) with dropped entries zeroed; a kept value must be finite in fp16."""
    part, keep = w[lo:hi], mask[lo:hi]
    with np.errstate(over="ignore", invalid="ignore"):
        w16 = part.astype(np.float16)
    if not _within_fp16(part):
        _raise_first_unrepresentable(part, keep, w16, lo)
    return np.where(keep, w16, np.float16(0))


def _check_fp16(w: np.ndarray, mask: np.ndarray) -> None:
    """Raise for the first kept weight that fp16 cannot hold (before any other error)."""
    for lo, hi in _row_slabs(*w.shape):
        part = w[lo:hi]
        if not _within_fp16(part):
            with np.errstate(over="ignore", invalid="ignore"):
                w16 = part.astype(np.float16)
            _raise_first_unrepresentable(part, mask[lo:hi], w16, lo)


def _within_fp16(part: np.ndarray) -> bool:
    """True when no entry can round to inf: all lie within +-65504, the largest finite
    fp16, and rounding never carries a value past a representable bound. Two reductions
    cost far less than converting and testing every entry; NaN fails the comparison."""
    return part.size == 0 or bool(part.max() <= FP16_MAX and part.min() >= -FP16_MAX)


def _raise_first_unrepresentable(
    part: np.ndarray, keep: np.ndarray, w16: np.ndarray, lo: int
) -> None:
    """Slabs are visited in row order, so the first offending slab holds the first
    offending weight of the whole matrix: the error names the entry a whole-matrix check
    would."""
    bad = keep & ~np.isfinite(w16)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        _raise_unrepresentable(part[r, c], lo + r, c)


def _raise_unrepresentable(value: object, row: int, col: int) -> None:
    raise InputError(
        "weight",
        f"kept value {value!r} at ({row}, {col}) is not representable in fp16; kept "
        f"weights must be finite with |w| <= {FP16_MAX:g}",
    )


def _encode_dense(
    w: np.ndarray, mask: np.ndarray, n: int, k: int, config: KernelConfig
) -> DenseWeight:
    values = np.zeros((n, _roundup(k, config.bk)), dtype=np.float16)
    for lo, hi in _row_slabs(n, k):
        values[lo:hi, :k] = _fp16_rows(w, mask, lo, hi)
    return DenseWeight("dense", n, k, config, values)


def _encode_csr(w: np.ndarray, mask: np.ndarray, n: int, k: int, config: KernelConfig) -> CsrWeight:
    row_nnz = np.empty(n, dtype=np.int64)
    for lo, hi in _row_slabs(n, k):
        row_nnz[lo:hi] = np.count_nonzero(mask[lo:hi], axis=1)
    row_ptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(row_nnz, out=row_ptr[1:])
    nnz = int(row_nnz.sum())
    # One slot of slack: the branch-free fill below writes one entry past the last kept.
    col_idx = np.empty(nnz + 1, dtype=np.int32)
    values = np.empty(nnz, dtype=np.float16)
    items = _raw_items(w)
    for lo, hi in _row_slabs(n, k):
        start, end = int(row_ptr[lo]), int(row_ptr[hi])
        keep = np.ascontiguousarray(mask[lo:hi])
        if items is None:
            kept = w[lo:hi][keep]  # row-major, like col_idx
            col_idx[start:end] = np.nonzero(keep)[1]
        else:
            raw = np.empty(end - start + 1, dtype=items.dtype)
            _csr_fill(items[lo:hi], keep, col_idx[start:], raw)
            kept = raw[:-1].view(w.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            values[start:end] = kept.astype(np.float16)
        bad = np.flatnonzero(~np.isfinite(values[start:end]))
        if bad.size:
            at = start + int(bad[0])
            row, col = int(np.searchsorted(row_ptr, at, side="right")) - 1, int(col_idx[at])
            _raise_unrepresentable(w[row, col], row, col)
    return CsrWeight("ew", n, k, config, row_ptr, col_idx[:nnz], values)


def _raw_items(w: np.ndarray) -> np.ndarray | None:
    """W's elements as unsigned integers of the same width (a view with W's strides, no
    copy), for numba loops that move weights without arithmetic; None for a 16-byte
    float, which has no such view, so numpy indexing has to do."""
    if w.dtype.itemsize not in (1, 2, 4, 8):
        return None
    return w.view(f"u{w.dtype.itemsize}")


@njit(cache=True)
def _csr_fill(items, mask, col_idx, kept):  # pragma: no cover - numba
    """The kept entries of a slab of rows, row-major: their columns and raw values.

    Branch-free (a random mask defeats branch prediction): every entry is written to
    the next free slot, and the slot advances only when the entry is kept, so both
    outputs need one slot of slack past the last kept entry.
    """
    at = 0
    for r in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            col_idx[at] = c
            kept[at] = items[r, c]
            at += mask[r, c]


def activations_fp16(x: object) -> np.ndarray:
    """`x` converted to fp16, refused (InputError naming `x`) unless it is a float array
    whose values fp16 can hold: the one rule the CPU twins and the launcher apply to the
    activations before a GEMM. Shape checks stay with the caller, which knows the layout."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError("x", f"must be a float array, got dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        x16 = x.astype(np.float16)
    if not np.isfinite(x16).all():
        raise InputError("x", "values must be finite and within fp16 range (|x| <= 65504)")
    return x16


def bw_block_problem(block: object, config: KernelConfig) -> str | None:
    """Why a bw kernel built from `config` cannot take blocks of side `block`, or None.

    The one rule for the bw block: the encoder, the launcher and the sweep spec all ask
    it, so a spec the encoder would refuse fails before any GPU time is spent. A block is
    whole mma rows (16), a CTA tile holds whole block rows (bm), and a pipeline stage
    never straddles two block columns (bk).
    """
    if not isinstance(block, int) or isinstance(block, bool) or block < 16 or block % 16:
        return f"must be a positive multiple of 16, got {block!r}"
    if config.bm % block:
        return f"{block} must divide the CTA tile height bm={config.bm} (config {config.name})"
    if block % config.bk:
        return (
            f"{block} must be a multiple of the stage K bk={config.bk}: a CTA walks whole "
            f"block columns (config {config.name})"
        )
    return None


def _encode_bsr(
    w: np.ndarray, mask: np.ndarray, n: int, k: int, config: KernelConfig, block: Any
) -> BsrWeight:
    problem = bw_block_problem(block, config)
    if problem is not None:
        raise InputError("block", problem)
    b = block
    n_pad, k_pad = _roundup(n, b), _roundup(k, b)
    nbr, nbc = n_pad // b, k_pad // b
    kept_per_block = np.empty((nbr, nbc), dtype=np.int64)
    for lo, hi in _row_slabs(n, k, b):
        part = np.zeros((_roundup(hi - lo, b), k_pad), dtype=bool)
        part[: hi - lo, :k] = mask[lo:hi]
        kept_per_block[lo // b : lo // b + part.shape[0] // b] = part.reshape(-1, b, nbc, b).sum(
            axis=(1, 3)
        )
    # A block is all-kept or all-dropped over its logical (unpadded) part.
    logical_rows = np.minimum(b, n - np.arange(nbr) * b)
    logical_cols = np.minimum(b, k - np.arange(nbc) * b)
    full = np.outer(logical_rows, logical_cols)
    partial = (kept_per_block > 0) & (kept_per_block != full)
    if partial.any():
        _check_fp16(w, mask)  # an unrepresentable kept value is the first error to report
        br, bc = np.argwhere(partial)[0]
        raise InputError(
            "mask",
            f"block ({br}, {bc}) of size {b} keeps {kept_per_block[br, bc]} of "
            f"{full[br, bc]} entries; bw keeps or drops whole blocks",
        )
    present = kept_per_block > 0
    block_rows, block_cols = np.nonzero(present)
    block_row_ptr = np.zeros(nbr + 1, dtype=np.int32)
    np.cumsum(np.bincount(block_rows, minlength=nbr), out=block_row_ptr[1:])
    values = np.empty((block_rows.size, b, b), dtype=np.float16)
    for lo, hi in _row_slabs(n, k, b):
        padded = np.zeros((_roundup(hi - lo, b), k_pad), dtype=np.float16)
        padded[: hi - lo, :k] = _fp16_rows(w, mask, lo, hi)
        first = lo // b
        sel = slice(int(block_row_ptr[first]), int(block_row_ptr[first + padded.shape[0] // b]))
        values[sel] = padded.reshape(-1, b, nbc, b)[block_rows[sel] - first, :, block_cols[sel], :]

    # Kernel view: per CTA tile of bm / b block rows, the union of kept block columns.
    per_tile = config.bm // b
    tiles = _ceil_div(nbr, per_tile)
    index_of = np.full((tiles * per_tile, nbc), -1, dtype=np.int32)
    index_of[block_rows, block_cols] = np.arange(block_rows.size, dtype=np.int32)
    index_of = index_of.reshape(tiles, per_tile, nbc)
    col_ptr = np.zeros(tiles + 1, dtype=np.int32)
    cols_list, blocks_list = [], []
    for t in range(tiles):
        cols = np.flatnonzero((index_of[t] >= 0).any(axis=0)).astype(np.int32)
        cols_list.append(cols)
        blocks_list.append(index_of[t][:, cols].T)
        col_ptr[t + 1] = col_ptr[t] + cols.size
    return BsrWeight(
        "bw",
        n,
        k,
        config,
        b,
        block_row_ptr,
        block_cols.astype(np.int32),
        values,
        col_ptr,
        np.concatenate(cols_list) if cols_list else np.zeros(0, np.int32),
        np.concatenate(blocks_list) if blocks_list else np.zeros((0, per_tile), np.int32),
    )


def _encode_vw(w: np.ndarray, mask: np.ndarray, n: int, k: int, config: KernelConfig) -> VwWeight:
    n_pad, k_pad = _roundup(n, 16), _roundup(k, config.bk)
    values = np.empty((n_pad, k_pad // 2), dtype=np.float16)
    metadata = np.empty((n_pad // 16, k_pad // 64, 32), dtype=np.uint32)
    broken = None  # the first 2:4 violation; raised after every kept value is checked
    for lo, hi in _row_slabs(n_pad, k_pad, 16):
        padded = np.zeros((hi - lo, k_pad), dtype=np.float16)
        padded_mask = np.zeros((hi - lo, k_pad), dtype=bool)
        real = min(hi, n) - lo
        if real > 0:
            padded[:real, :k] = _fp16_rows(w, mask, lo, lo + real)
            padded_mask[:real, :k] = mask[lo : lo + real]
        if broken is not None:
            continue
        try:
            part, meta16 = _compress_2to4(padded, padded_mask, row_offset=lo)
        except InputError as err:
            broken = err
            continue
        values[lo:hi] = part
        metadata[lo // 16 : hi // 16] = metadata_to_lanes(meta16)
    if broken is not None:
        raise broken
    return VwWeight("vw", n, k, config, values, metadata)


@njit(cache=True)
def _greedy_2to4_order(kept_cols: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    """Compacted order of a tile's union columns, with -1 closing a group early.

    `kept_cols` is `U x R` (union column j, tile row r): True where r keeps column j.
    Columns go in ascending order into aligned groups of 4; if the next column would give
    some row a third kept entry in the current group, the group is padded with -1 and the
    column starts a fresh one. Returns positions into the union list, or -1.
    """
    n_cols, n_rows = kept_cols.shape
    out = np.empty(4 * n_cols, dtype=np.int32)
    counts = np.zeros(n_rows, dtype=np.int32)
    filled = 0
    for j in range(n_cols):
        conflict = False
        for r in range(n_rows):
            if kept_cols[j, r] and counts[r] >= 2:
                conflict = True
                break
        if conflict:
            while filled % 4:
                out[filled] = -1
                filled += 1
            counts[:] = 0
        out[filled] = j
        filled += 1
        for r in range(n_rows):
            if kept_cols[j, r]:
                counts[r] += 1
        if filled % 4 == 0:
            counts[:] = 0
    return out[:filled]


def _tile_lists_from_mask(
    mask: np.ndarray, g: int, sparse: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Infer (surviving rows, per-tile compacted kept-K lists with -1) from a mask."""
    rows = np.flatnonzero(mask.any(axis=1)).astype(np.int32)
    lists = []
    for start in range(0, rows.size, g):
        sub = mask[rows[start : start + g]]
        union = np.flatnonzero(sub.any(axis=0)).astype(np.int32)
        if sparse and union.size:
            order = _greedy_2to4_order(np.ascontiguousarray(sub[:, union].T))
            union = np.where(order >= 0, union[np.maximum(order, 0)], -1).astype(np.int32)
        lists.append(union)
    return rows, lists


def _tile_lists_from_layout(
    layout: _Layout, n: int, k: int, g: int, config: KernelConfig
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate a pruner's TileLayout and return its rows and kept-K lists."""
    width = getattr(layout, "tile_width", None)
    if width != g:
        raise InputError(
            "config",
            f"the layout's tile width {width} differs from config.bm={g} ({config.name}); "
            "tw/tvw tiles are CTA row tiles",
        )
    rows = np.asarray(layout.rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise InputError("layout", "rows must be a 1-D integer array")
    rows = rows.astype(np.int32)
    if rows.size and (rows[0] < 0 or rows[-1] >= n or (np.diff(rows) <= 0).any()):
        raise InputError("layout", f"rows must be strictly ascending within 0..{n - 1}")
    kept = list(layout.kept_k)
    if len(kept) != _ceil_div(rows.size, g):
        raise InputError(
            "layout",
            f"{rows.size} rows make {_ceil_div(rows.size, g)} tiles of {g}, but kept_k "
            f"has {len(kept)} lists",
        )
    lists = []
    for t, cols in enumerate(kept):
        cols = np.asarray(cols)
        if cols.ndim != 1 or (cols.size and not np.issubdtype(cols.dtype, np.integer)):
            raise InputError("layout", f"kept_k[{t}] must be a 1-D integer array")
        cols = cols.astype(np.int32)
        if cols.size and (cols[0] < 0 or cols[-1] >= k or (np.diff(cols) <= 0).any()):
            raise InputError("layout", f"kept_k[{t}] must be strictly ascending within 0..{k - 1}")
        lists.append(cols)
    return rows, lists


def _encode_tiles(
    w: np.ndarray,
    mask: np.ndarray,
    n: int,
    k: int,
    config: KernelConfig,
    pattern: str,
    layout: _Layout | None,
) -> TileWeight:
    g, bk, sparse = config.bm, config.bk, pattern_spec(pattern).sparse_mma
    _check_fp16(w, mask)  # the first error to report, before any question of layout
    if layout is None:
        rows, lists = _tile_lists_from_mask(mask, g, sparse)
    else:
        rows, lists = _tile_lists_from_layout(layout, n, k, g, config)
    tiles = len(lists)
    row_map = np.full(tiles * g, -1, dtype=np.int32)
    row_map[: rows.size] = rows
    kept_k = np.array([c.size for c in lists], dtype=np.int32)
    k_ptr = np.zeros(tiles + 1, dtype=np.int32)
    np.cumsum([_roundup(int(c), bk) for c in kept_k], out=k_ptr[1:])
    k_index = np.full(int(k_ptr[-1]), -1, dtype=np.int32)
    # Every tile's block goes straight to its place: no list of parts to concatenate.
    total = g * int(k_ptr[-1])
    values = np.empty(total // 2 if sparse else total, dtype=np.float16)
    metadata = np.empty(total // 32, dtype=np.uint32) if sparse else None

    covered = 0  # kept entries that land in some tile: must be all of them
    items = _raw_items(w)
    for t, cols in enumerate(lists):
        k_index[k_ptr[t] : k_ptr[t] + cols.size] = cols
        tile_rows = rows[t * g : (t + 1) * g]
        start, end = int(k_ptr[t]), int(k_ptr[t + 1])
        block_mask = np.zeros((g, end - start), dtype=bool)
        if items is None:
            block = np.zeros((g, end - start), dtype=np.float16)
            real = np.flatnonzero(cols >= 0)
            picked = np.ix_(tile_rows, cols[real])
            kept = mask[picked]
            with np.errstate(over="ignore", invalid="ignore"):
                # Dropped entries may overflow fp16; they are zeroed (kept ones were checked).
                block[: tile_rows.size, real] = np.where(kept, w[picked].astype(np.float16), 0)
            block_mask[: tile_rows.size, real] = kept
        else:
            raw = np.zeros((g, end - start), dtype=items.dtype)
            _gather_tile(items, mask, tile_rows, cols, raw, block_mask)
            with np.errstate(over="ignore", invalid="ignore"):
                block = raw.view(w.dtype).astype(np.float16)  # dropped entries are 0 bits
        covered += int(np.count_nonzero(block_mask))
        if sparse:
            try:
                compact, meta16 = compress_2to4(block, block_mask)
            except InputError as err:
                raise InputError(
                    "mask", f"tile {t} breaks 2:4 along its kept-K list: {err.problem}"
                ) from None
            values[g * start // 2 : g * end // 2] = compact.ravel()
            metadata[g * start // 32 : g * end // 32] = metadata_to_lanes(meta16).ravel()
        else:
            values[g * start : g * end] = block.ravel()
    missing = int(np.count_nonzero(mask)) - covered
    if missing:
        raise InputError(
            "mask",
            f"{missing} kept weights lie outside the tile layout (rows not listed or K not "
            "in their tile's kept-K list); the encoder never drops a kept weight",
        )
    return TileWeight(
        pattern, n, k, config, sparse, row_map, kept_k, k_ptr, k_index, values, metadata
    )


@njit(cache=True)
def _gather_tile(items, mask, tile_rows, cols, raw, block_mask):  # pragma: no cover - numba
    """A tile's compact block: raw[i, j] = W[tile_rows[i], cols[j]] where that weight is
    kept (else 0, which is +0.0 as a float), and the kept flags; cols -1 stay empty."""
    for i in range(tile_rows.size):
        r = tile_rows[i]
        for j in range(cols.size):
            c = cols[j]
            if c >= 0 and mask[r, c]:
                raw[i, j] = items[r, c]
                block_mask[i, j] = True
