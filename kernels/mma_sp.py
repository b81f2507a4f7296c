"""One warp's tensor-core ops in numpy: registers in, registers out.

A warp-level mma spreads its matrices over the 32 lanes' registers in a fixed pattern
(PTX ISA, "Matrix fragments for mma.m16n8k16" and "... for sparse mma.m16n8k32"). This
module emulates that: `mma_m16n8k16` and `mma_sp_m16n8k32` take per-lane register arrays
and return the per-lane result registers, and the `pack_*` / `unpack_*` helpers move
between matrices and registers. It is the CPU side of the one-warp GPU test that pins the
documented layout on silicon: the same registers go to the real instruction and here.

Lane notation: `g = lane >> 2` (the group, 0..7), `t = lane & 3` (thread in group, 0..3).
A 32-bit register holding two fp16 keeps the lower-indexed element in bits [15:0].

What each lane holds (m16n8k16, and the compressed A of m16n8k32):

    A (16 x 16, row-major)  a[0] = A[g,   2t:2t+2]    a[1] = A[g+8, 2t:2t+2]
                            a[2] = A[g, 8+2t:10+2t]   a[3] = A[g+8, 8+2t:10+2t]
    B (K x 8, K = 16 or 32) b[i] = (B[8i+2t, g], B[8i+2t+1, g])   i < K/8
    C, D (16 x 8, fp32)     c[0], c[1] = C[g, 2t], C[g, 2t+1]
                            c[2], c[3] = C[g+8, 2t], C[g+8, 2t+1]

Sparse m16n8k32: A is 16 x 32 logically, 2 kept of every aligned 4 along K; the 16 x 16
*compressed* A sits in the dense A layout above. The metadata register `e` and the
selector s (an immediate, 0 or 1) say where each stored value belongs: only lanes
`4g + 2s + j` (j = 0, 1) are read; such a lane's bits [15:0] describe row g and bits
[31:16] row g + 8, for logical K `16j .. 16j + 15`. Nibble c of a 16-bit half covers K
`16j + 4c .. +3`: bits [1:0] = position of the first stored value, bits [3:2] = the
second (ascending for `::ordered_metadata`). Stored value pairs go in order: compressed
columns `8j + 2c` and `8j + 2c + 1` of the row.
"""

from __future__ import annotations

import numpy as np

from tvwsim.errors import InputError

__all__ = [
    "ORDERED_NIBBLES",
    "pack_a",
    "unpack_a",
    "pack_b",
    "unpack_b",
    "pack_c",
    "unpack_d",
    "pack_a_sparse",
    "mma_m16n8k16",
    "mma_sp_m16n8k32",
    "expand_sparse_a",
]

ORDERED_NIBBLES = (0x4, 0x8, 0x9, 0xC, 0xD, 0xE)

_LANE = np.arange(32)
_G, _T = _LANE >> 2, _LANE & 3


# -- fp16 pairs <-> 32-bit registers ---------------------------------------------------
def _pair(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    lo16 = np.asarray(lo, dtype=np.float16).view(np.uint16).astype(np.uint32)
    hi16 = np.asarray(hi, dtype=np.float16).view(np.uint16).astype(np.uint32)
    return hi16 << 16 | lo16


def _halves(reg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reg = np.asarray(reg, dtype=np.uint32)
    lo = (reg & 0xFFFF).astype(np.uint16).view(np.float16)
    hi = (reg >> 16).astype(np.uint16).view(np.float16)
    return lo, hi


def _check(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise InputError(name, f"must have shape {shape}, got {array.shape}")
    return array


# -- A: 16 x 16 row-major --------------------------------------------------------------
def pack_a(a: np.ndarray) -> np.ndarray:
    """A 16 x 16 matrix -> (32, 4) uint32 A fragment (dense m16n8k16 layout)."""
    a = _check("a", a, (16, 16)).astype(np.float16)
    regs = np.empty((32, 4), dtype=np.uint32)
    col = 2 * _T
    for i, (row_off, col_off) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
        rows = _G + row_off
        regs[:, i] = _pair(a[rows, col + col_off], a[rows, col + col_off + 1])
    return regs


def unpack_a(regs: np.ndarray) -> np.ndarray:
    """(32, 4) uint32 A fragment -> the 16 x 16 fp16 matrix it holds."""
    regs = _check("a_regs", regs, (32, 4))
    a = np.empty((16, 16), dtype=np.float16)
    col = 2 * _T
    for i, (row_off, col_off) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
        lo, hi = _halves(regs[:, i])
        a[_G + row_off, col + col_off] = lo
        a[_G + row_off, col + col_off + 1] = hi
    return a


# -- B: K x 8, "col" (each lane holds two consecutive K of one column) ------------------
def pack_b(b: np.ndarray) -> np.ndarray:
    """A K x 8 matrix (K = 16 or 32) -> (32, K/8) uint32 B fragment(s).

    K = 32 gives the four registers of sparse m16n8k32: two dense k16 fragments back to
    back (registers 0-1 for K 0-15, 2-3 for K 16-31).
    """
    b = np.asarray(b)
    if b.shape not in ((16, 8), (32, 8)):
        raise InputError("b", f"must be 16 x 8 or 32 x 8, got shape {b.shape}")
    b = b.astype(np.float16)
    regs = np.empty((32, b.shape[0] // 8), dtype=np.uint32)
    for i in range(regs.shape[1]):
        regs[:, i] = _pair(b[8 * i + 2 * _T, _G], b[8 * i + 2 * _T + 1, _G])
    return regs


def unpack_b(regs: np.ndarray) -> np.ndarray:
    """(32, K/8) uint32 B fragment(s) -> the K x 8 fp16 matrix."""
    regs = np.asarray(regs)
    if regs.shape not in ((32, 2), (32, 4)):
        raise InputError("b_regs", f"must have shape (32, 2) or (32, 4), got {regs.shape}")
    b = np.empty((8 * regs.shape[1], 8), dtype=np.float16)
    for i in range(regs.shape[1]):
        lo, hi = _halves(regs[:, i])
        b[8 * i + 2 * _T, _G] = lo
        b[8 * i + 2 * _T + 1, _G] = hi
    return b


# -- C / D: 16 x 8 fp32 ----------------------------------------------------------------
def pack_c(c: np.ndarray) -> np.ndarray:
    """A 16 x 8 fp32 accumulator -> (32, 4) float32 C fragment."""
    c = _check("c", c, (16, 8)).astype(np.float32)
    return np.stack(
        [c[_G, 2 * _T], c[_G, 2 * _T + 1], c[_G + 8, 2 * _T], c[_G + 8, 2 * _T + 1]], axis=1
    )


def unpack_d(regs: np.ndarray) -> np.ndarray:
    """(32, 4) float32 D fragment -> the 16 x 8 fp32 matrix."""
    regs = _check("d_regs", regs, (32, 4)).astype(np.float32)
    d = np.empty((16, 8), dtype=np.float32)
    d[_G, 2 * _T], d[_G, 2 * _T + 1] = regs[:, 0], regs[:, 1]
    d[_G + 8, 2 * _T], d[_G + 8, 2 * _T + 1] = regs[:, 2], regs[:, 3]
    return d


# -- the ops ----------------------------------------------------------------------------
def _accumulate(a: np.ndarray, b: np.ndarray, c_regs: np.ndarray) -> np.ndarray:
    # fp16 x fp16 products are exact in fp32; summing in float64 and rounding once is the
    # idealised tensor core. Silicon's internal accumulation order may differ in the last
    # fp32 bits, so the GPU test compares with a tolerance, not bit-exactly.
    c = unpack_d(_check("c_regs", c_regs, (32, 4)))
    d = (a.astype(np.float64) @ b.astype(np.float64) + c).astype(np.float32)
    return pack_c(d)


def mma_m16n8k16(a_regs: np.ndarray, b_regs: np.ndarray, c_regs: np.ndarray) -> np.ndarray:
    """`mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`: D = A @ B + C, per lane."""
    a = unpack_a(_check("a_regs", a_regs, (32, 4)))
    b = unpack_b(_check("b_regs", b_regs, (32, 2)))
    return _accumulate(a, b, c_regs)


def expand_sparse_a(
    compressed: np.ndarray, e_regs: np.ndarray, selector: int, *, ordered: bool = True
) -> np.ndarray:
    """The logical 16 x 32 A of one warp's sparse k32 step: `compressed` (16 x 16) placed
    by the metadata `e_regs` (32,) of the lanes `selector` names (mma.sp m16n8k32, and
    each warp's 16 rows of wgmma.sp m64nNk32, whose metadata the PTX ISA draws the same).
    A position pair that is not legal for the form is an InputError naming `e_regs`."""
    if selector not in (0, 1):
        raise InputError("selector", f"must be 0 or 1 for f16 m16n8k32, got {selector!r}")
    compressed = _check("compressed", compressed, (16, 16))
    e = _check("e_regs", e_regs, (32,)).astype(np.uint32)

    a = np.zeros((16, 32), dtype=np.float16)
    for g in range(8):
        for j in range(2):
            word = int(e[4 * g + 2 * selector + j])
            for upper, row in ((0, g), (1, g + 8)):
                half = word >> (16 * upper) & 0xFFFF
                for c in range(4):
                    nibble = half >> (4 * c) & 0xF
                    first, second = nibble & 3, nibble >> 2
                    legal = nibble in ORDERED_NIBBLES if ordered else first != second
                    if not legal:
                        rule = "first < second" if ordered else "two distinct positions"
                        raise InputError(
                            "e_regs",
                            f"lane {4 * g + 2 * selector + j} names positions "
                            f"({first}, {second}) for row {row}, K {16 * j + 4 * c}..; "
                            f"the metadata needs {rule}",
                        )
                    base = 16 * j + 4 * c
                    a[row, base + first] = compressed[row, 8 * j + 2 * c]
                    a[row, base + second] = compressed[row, 8 * j + 2 * c + 1]
    return a


def mma_sp_m16n8k32(
    a_regs: np.ndarray,
    b_regs: np.ndarray,
    c_regs: np.ndarray,
    e_regs: np.ndarray,
    selector: int,
    *,
    ordered: bool = True,
) -> np.ndarray:
    """`mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32`.

    a_regs (32, 4) uint32: the compressed 16 x 16 A in the dense A layout. b_regs (32, 4)
    uint32: B 32 x 8. c_regs (32, 4) float32. e_regs (32,) uint32: metadata, read only
    from lanes `4g + 2*selector + j`; every other lane's value is ignored (garbage is
    fine). Returns D (32, 4) float32. `ordered=False` models plain `mma.sp`, which also
    accepts descending pairs; equal positions are rejected either way.
    """
    compressed = unpack_a(_check("a_regs", a_regs, (32, 4)))
    b = unpack_b(_check("b_regs", b_regs, (32, 4)))
    a = expand_sparse_a(compressed, e_regs, selector, ordered=ordered)
    return _accumulate(a, b, c_regs)


def pack_a_sparse(
    a_logical: np.ndarray, selector: int = 0, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A logical 16 x 32 2:4 matrix -> (a_regs (32, 4), e_regs (32,)) for `selector`.

    Kept positions come from `mask` (default: the nonzeros). A group with fewer than two
    kept still names two ascending positions (empty: 0, 1; one at p: p, p + 1, or 2, 3
    for p = 3) and stores a zero. Lanes that do not supply metadata for `selector` get 0.
    """
    a_logical = _check("a_logical", a_logical, (16, 32)).astype(np.float16)
    if selector not in (0, 1):
        raise InputError("selector", f"must be 0 or 1, got {selector!r}")
    kept = a_logical != 0 if mask is None else _check("mask", mask, (16, 32)).astype(bool)
    compressed = np.zeros((16, 16), dtype=np.float16)
    meta = np.zeros((16, 2), dtype=np.uint32)  # [row, j]: uint16 for K 16j .. 16j + 15
    for row in range(16):
        for grp in range(8):
            positions = [p for p in range(4) if kept[row, 4 * grp + p]]
            if len(positions) > 2:
                raise InputError("a_logical", f"row {row} keeps 3+ of K {4 * grp}..{4 * grp + 3}")
            if not positions:
                positions = [0, 1]
            elif len(positions) == 1:
                p = positions[0]
                positions = [p, p + 1] if p < 3 else [2, 3]
            first, second = positions
            compressed[row, 2 * grp] = a_logical[row, 4 * grp + first] * kept[row, 4 * grp + first]
            compressed[row, 2 * grp + 1] = (
                a_logical[row, 4 * grp + second] * kept[row, 4 * grp + second]
            )
            j, c = divmod(grp, 4)
            meta[row, j] |= (first | second << 2) << (4 * c)
    e = np.zeros(32, dtype=np.uint32)
    for g in range(8):
        for j in range(2):
            e[4 * g + 2 * selector + j] = meta[g + 8, j] << 16 | meta[g, j]
    return pack_a(compressed), e
