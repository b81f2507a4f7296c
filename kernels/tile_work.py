"""Tile work: what each weight tile of an encoded weight asks of the GPU, per stage.

The encodings (`tvwsim.kernels.formats`) know their own buffers; this module turns each
into the `tvwsim.schedule.TileWork` that the tile schedule and the model read
(docs/formats.md has the byte counts).
"""

from __future__ import annotations

import numpy as np

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERNS, REGULAR_PATTERNS, pattern_spec
from tvwsim.schedule import ELEMENT_BYTES, INDEX_BYTES, TileWork, _roundup


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
    spec = pattern_spec(pattern)
    if not spec.regular:
        raise InputError(
            "pattern", f"regular tile work is for {', '.join(REGULAR_PATTERNS)}, not {pattern}"
        )
    bm, bk = config.bm, config.bk
    tiles = -(-n // bm)
    k_pad = _roundup(k, bk)
    steps = k_pad // bk
    # mma.sp: 16-row metadata blocks; bk/2 fp16 values + 2 bits of metadata per value.
    rows_in_memory = _roundup(n, 16) if spec.sparse_mma else n
    mem_rows = np.minimum(bm, rows_in_memory - np.arange(tiles) * bm)
    per_row_stage = bk + bk // 8 if spec.sparse_mma else bk * ELEMENT_BYTES
    one_tile_rows = np.where(np.arange(k_pad) < k, np.arange(k_pad), -1)
    if kept_weights is None:
        kept_weights = n * int(spec.kept_along_k(k))
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
        compute_unit=spec.compute_unit,
    )


def tile_work(encoded: object, kept_weights: int | None = None) -> TileWork:
    """The per-tile, per-stage work of an encoded weight (`tvwsim.kernels.formats.encode`).

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
        raise InputError("encoded", "must be an encoded weight from tvwsim.kernels.formats.encode")
    n, k = int(encoded.n), int(encoded.k)
    spec = PATTERNS[pattern]
    if kept_weights is None:
        values = encoded.values
        kept_weights = int(np.count_nonzero(values)) if spec.prunes else n * k
    if spec.regular:
        return regular_tile_work(pattern, n, k, config, kept_weights)
    if spec.tiled:
        return _tile_wise_work(encoded, kept_weights)
    if pattern == "bw":
        return _block_work(encoded, kept_weights)
    return _csr_work(encoded, kept_weights)


def _tile_wise_work(enc, kept_weights: int) -> TileWork:
    config, g, bk = enc.config, enc.config.bm, enc.config.bk
    k_lengths = np.diff(enc.k_ptr).astype(np.int32)
    total = int(enc.k_ptr[-1])
    sparse = pattern_spec(enc.pattern).sparse_mma
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
        compute_unit=pattern_spec(enc.pattern).compute_unit,
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
        pattern=enc.pattern,
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
        compute_unit=pattern_spec(enc.pattern).compute_unit,
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
        pattern=enc.pattern,
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
        compute_unit=pattern_spec(enc.pattern).compute_unit,
    )
