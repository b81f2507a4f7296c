"""CPU twins of the GPU kernels: Y = X @ W.T computed from the encoded buffers only.

Each twin reads an encoding (`tvwsim.kernels.formats`) the way its kernel does - per CTA row
tile, gathering activation rows through the kept-K index list, expanding 2:4 values by
decoding the metadata words nibble by nibble as the tensor core does, scattering output
rows through the row map - and never looks at the original weight or mask. If a twin
agrees with `X @ (fp16(W) * mask).T`, the buffers are right; if a kernel agrees with its
twin, the kernel reads them right.

Numerics follow the kernels: inputs are rounded to fp16 first, products of two fp16 are
exact in fp32, and sums are accumulated in fp32 (numpy's float32 matmul). The result is
returned in fp32 (kernels round the final YT to fp16; compare against that with fp16
tolerance).

The kernels compute `YT = W @ XT` with activations K-major (`XT`, K x M): `matmul_yt`
is that form, `matmul` the torch-style `Y = X @ W.T` wrapper.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from tvwsim.kernels.formats import (
    LEGAL_NIBBLES,
    BsrWeight,
    CsrWeight,
    DenseWeight,
    Encoded,
    TileWeight,
    VwWeight,
    activations_fp16,
)

from tvwsim.errors import InputError

__all__ = ["matmul", "matmul_yt", "expand_sparse_block"]

_LEGAL = np.zeros(16, dtype=bool)
_LEGAL[list(LEGAL_NIBBLES)] = True


def matmul(x: np.ndarray, encoded: Encoded) -> np.ndarray:
    """Y (M x N, fp32) = fp16(X) @ W.T, W read from `encoded`'s buffers only."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError("x", f"must be a 2-D M x K array, got shape {x.shape}")
    return np.ascontiguousarray(matmul_yt(x.T, encoded).T)


def matmul_yt(xt: np.ndarray, encoded: Encoded) -> np.ndarray:
    """YT (N x M, fp32) = W @ fp16(XT): the kernels' form, activations K-major."""
    if not isinstance(encoded, DenseWeight | CsrWeight | BsrWeight | VwWeight | TileWeight):
        raise InputError("encoded", f"not an encoded weight: {type(encoded).__name__}")
    xt16 = _activations_fp16(xt, encoded.k)
    if isinstance(encoded, DenseWeight):
        return _dense_yt(xt16, encoded)
    if isinstance(encoded, CsrWeight):
        return _csr_yt(xt16, encoded)
    if isinstance(encoded, BsrWeight):
        return _bsr_yt(xt16, encoded)
    if isinstance(encoded, VwWeight):
        return _vw_yt(xt16, encoded)
    return _tile_yt(xt16, encoded)


def _activations_fp16(xt: np.ndarray, k: int) -> np.ndarray:
    xt = np.asarray(xt)
    if xt.ndim != 2 or xt.shape[0] != k:
        raise InputError("x", f"needs K = {k} features per token, got shape {xt.T.shape}")
    return activations_fp16(xt)


def _padded_rows(xt16: np.ndarray, rows: int) -> np.ndarray:
    """XT as fp32 with zero rows appended up to `rows` (the kernel's zero-filled loads)."""
    out = np.zeros((rows, xt16.shape[1]), dtype=np.float32)
    out[: xt16.shape[0]] = xt16
    return out


# -- dense ----------------------------------------------------------------------------
def _dense_yt(xt16: np.ndarray, enc: DenseWeight) -> np.ndarray:
    xt = _padded_rows(xt16, enc.k_pad)
    return enc.values.astype(np.float32) @ xt


# -- ew: CSR, one output row at a time ---------------------------------------------------
@njit(cache=True, parallel=True)
def _csr_rows(row_ptr, col_idx, values, xt):  # pragma: no cover - numba
    n, m = row_ptr.shape[0] - 1, xt.shape[1]
    yt = np.zeros((n, m), dtype=np.float32)
    for r in prange(n):  # output rows are independent (one warp per row in cuSPARSE-like code)
        acc = yt[r]
        for j in range(row_ptr[r], row_ptr[r + 1]):
            v = values[j]
            x_row = xt[col_idx[j]]  # one kept k = one contiguous K-major activation row
            for i in range(m):
                acc[i] += v * x_row[i]
    return yt


def _csr_yt(xt16: np.ndarray, enc: CsrWeight) -> np.ndarray:
    # numba pays here: the sparse row loop has no vectorised numpy form that does not
    # materialise nnz x M temporaries (4096^2 at 25% kept, M = 256: 0.05 s vs 3 s serial).
    xt = np.ascontiguousarray(xt16, dtype=np.float32)
    return _csr_rows(enc.row_ptr, enc.col_idx, enc.values.astype(np.float32), xt)


# -- bw: per CTA tile, walk the union block columns ------------------------------------
def _bsr_yt(xt16: np.ndarray, enc: BsrWeight) -> np.ndarray:
    b, bm = enc.block, enc.config.bm
    per_tile = bm // b
    xt = _padded_rows(xt16, enc.k_pad)
    values = enc.values.astype(np.float32)
    yt = np.zeros((enc.n_row_tiles * bm, xt.shape[1]), dtype=np.float32)
    for t in range(enc.n_row_tiles):
        lo, hi = enc.tile_col_ptr[t], enc.tile_col_ptr[t + 1]
        cols, blocks = enc.tile_col[lo:hi], enc.tile_block[lo:hi]  # [U], [U, bm/b]
        if cols.size == 0:
            continue
        # The CTA's weight tile: bm x (U*b), absent blocks read as zeros.
        tile = np.zeros((per_tile, b, cols.size, b), dtype=np.float32)
        present = blocks >= 0
        u_idx, r_idx = np.nonzero(present)
        tile[r_idx, :, u_idx, :] = values[blocks[present]]
        gathered = xt[(cols[:, None] * b + np.arange(b)).ravel()]  # U*b activation rows
        yt[t * bm : (t + 1) * bm] = tile.reshape(bm, cols.size * b) @ gathered
    return yt[: enc.n]


# -- 2:4: decode the lane-ordered metadata as the tensor core does ----------------------
def expand_sparse_block(values: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Expand a compressed block to logical positions, reading metadata as mma.sp does.

    `values` is `R x L/2` (two stored values per aligned group of 4 logical K), `words`
    the block's lane-ordered metadata `[R/16, L/64, 32]`. For a 16-row block and a 64-K
    chunk, lane `4g + t`'s word holds, in bits [15:0], the uint16 of row g for logical K
    `16t .. 16t + 15` of the chunk and, in bits [31:16], the same for row g + 8 (selector
    0 consumes lanes t = 0, 1; selector 1 lanes t = 2, 3). Inside a uint16, nibble c
    describes the group at `4c .. 4c + 3`: bits [1:0] where the first stored value goes,
    bits [3:2] the second. Returns the fp32 `R x L` logical block.
    """
    rows, half = values.shape
    row_blocks, chunks, _ = words.shape
    out = np.zeros((rows, 2 * half), dtype=np.float32)
    stored = values.astype(np.float32)
    # Broadcast shapes [row block, chunk, lane]: every lane of every (rb, kc) at once.
    rb = np.arange(row_blocks)[:, None, None]
    kc = np.arange(chunks)[None, :, None]
    lane = np.arange(32)[None, None, :]
    g, t = lane >> 2, lane & 3
    q = 4 * kc + t  # which 16 logical K of the row this lane's halves describe
    w = words.astype(np.uint32)
    for upper in (0, 1):  # bits [15:0] -> row g, bits [31:16] -> row g + 8
        row = 16 * rb + g + 8 * upper
        meta = (w >> np.uint32(16 * upper)) & 0xFFFF
        for c in range(4):  # one nibble = one aligned group of 4 logical K
            nibble = (meta >> np.uint32(4 * c)) & 0xF
            if not _LEGAL[nibble].all():
                bad = int(nibble[~_LEGAL[nibble]].flat[0])
                raise InputError(
                    "encoded", f"metadata nibble {bad:#x} is not a legal ordered 2:4 pair"
                )
            group = 4 * q + c  # group index along the row
            first, second = nibble & 3, nibble >> 2
            out[row, 4 * group + first] = stored[row, 2 * group]
            out[row, 4 * group + second] = stored[row, 2 * group + 1]
    return out


def _vw_yt(xt16: np.ndarray, enc: VwWeight) -> np.ndarray:
    xt = _padded_rows(xt16, enc.k_pad)
    bm = enc.config.bm
    yt = np.empty((enc.n_pad, xt.shape[1]), dtype=np.float32)
    # Per CTA row tile, like the kernel (and so that the expanded tile stays small).
    for start in range(0, enc.n_pad, bm):
        end = min(start + bm, enc.n_pad)
        words = enc.metadata[start // 16 : end // 16]
        tile = expand_sparse_block(enc.values[start:end], words)
        yt[start:end] = tile @ xt
    return yt[: enc.n]


# -- tw / tvw: gather kept K, compute the compact tile, scatter rows ------------------
def _tile_yt(xt16: np.ndarray, enc: TileWeight) -> np.ndarray:
    m = xt16.shape[1]
    # One extra zero row at the end: index -1 (padding) gathers it, like the kernel's
    # zero-filled cp.async (src_size = 0).
    xt = _padded_rows(xt16, enc.k + 1)
    yt = np.zeros((enc.n, m), dtype=np.float32)
    for tile in range(enc.n_row_tiles):
        k_index = enc.tile_k_index(tile)
        if k_index.size == 0:
            continue
        if enc.sparse:
            block = expand_sparse_block(enc.tile_values(tile), enc.tile_metadata(tile))
        else:
            block = enc.tile_values(tile).astype(np.float32)
        partial = block @ xt[k_index]  # G x M, fp32 accumulation
        rows = enc.tile_rows(tile)
        keep = rows >= 0
        yt[rows[keep]] = partial[keep]
    return yt
