"""Hopper warpgroup MMA in numpy: shared-memory descriptors, swizzle and accumulators.

Covers the CPU side of the sm_90a kernels (`cuda/wgmma.cuh`, `cuda/dense_wgmma.cu`):

- `MatrixDescriptor`: the 64-bit shared-memory matrix descriptor of `wgmma.mma_async`
  (PTX ISA, "Matrix Descriptor Format"), encoded and decoded bit for bit;
- `read_operand`: what the tensor core reads through a descriptor - the canonical
  K-major and MN-major layouts with the 128-, 64- and 32-byte swizzles, the swizzle
  applied to the byte address it computes (PTX ISA, "Shared Memory Matrix Layout");
- `accumulator_owner`: which register of which of the 128 threads holds each element of
  the 64 x N fp32 accumulator;
- `wgmma_dense`: one `wgmma.mma_async.m64nNk16.f32.f16.f16` (A K-major, B N-major), in
  registers out;
- the dense kernel's own side: `blocked_weight` (the K-blocked, pre-swizzled weight the
  launcher hands the kernel), `write_activation_stage` (where the kernel's cp.async puts
  each activation chunk) and `emulate_dense` (the whole kernel, task by task, descriptor by
  descriptor, through the epilogue), which the tests compare with the CPU twin.

The readers (descriptor + address swizzle) and the writers (the kernel's chunk rule
`chunk ^ (row % 8)`) are written independently on purpose: they agree only if the
kernel's layout is the one the tensor core expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

__all__ = [
    "SWIZZLE_MODES",
    "MatrixDescriptor",
    "swizzle_address",
    "read_operand",
    "accumulator_owner",
    "wgmma_dense",
    "check_wgmma_config",
    "DenseWgmmaLayout",
    "blocked_weight",
    "write_activation_stage",
    "emulate_dense",
]

SWIZZLE_MODES: dict[str, int] = {"none": 0, "128B": 1, "64B": 2, "32B": 3}
"""Swizzle mode -> its code in descriptor bits 63:62."""
_SWIZZLE_BITS = {"none": 0, "128B": 3, "64B": 2, "32B": 1}
"""Swizzle<B, 4, 3>: address bits [4, 4+B) are XORed with bits [7, 7+B)."""

WARPGROUP_THREADS = 128
WGMMA_M = 64
DENSE_WGMMA_K = 16
_T = 8  # fp16 elements per 16-byte unit (the PTX ISA's T for 16-bit types)


# -- descriptors ------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixDescriptor:
    """A wgmma shared-memory matrix descriptor (all offsets in bytes)."""

    start_bytes: int
    lbo_bytes: int
    """Leading-dimension byte offset: K-major swizzled layouts ignore it; MN-major: from
    one swizzle atom to the next along M/N."""
    sbo_bytes: int
    """Stride byte offset: from one group of 8 rows (K-major) or 8 K (MN-major) to the next."""
    swizzle: str = "128B"
    base_offset: int = 0

    def __post_init__(self) -> None:
        if self.swizzle not in SWIZZLE_MODES:
            allowed = ", ".join(SWIZZLE_MODES)
            raise InputError("swizzle", f"got {self.swizzle!r}; allowed: {allowed}")
        for name in ("start_bytes", "lbo_bytes", "sbo_bytes"):
            value = getattr(self, name)
            if value < 0 or value % 16 or value >> 4 >= 1 << 14:
                raise InputError(name, f"must be a multiple of 16 below 2^18, got {value}")
        if not 0 <= self.base_offset < 8:
            raise InputError("base_offset", f"must be 0..7, got {self.base_offset}")

    def encode(self) -> int:
        """bits 13:0 start >> 4, 29:16 LBO >> 4, 45:32 SBO >> 4, 51:49 base offset,
        63:62 swizzle mode."""
        return (
            (self.start_bytes >> 4)
            | (self.lbo_bytes >> 4) << 16
            | (self.sbo_bytes >> 4) << 32
            | self.base_offset << 49
            | SWIZZLE_MODES[self.swizzle] << 62
        )

    @classmethod
    def decode(cls, value: int) -> MatrixDescriptor:
        value = int(value)
        if not 0 <= value < 1 << 64:
            raise InputError("descriptor", f"must be a 64-bit value, got {value}")
        mode = {v: k for k, v in SWIZZLE_MODES.items()}[value >> 62 & 3]
        return cls(
            start_bytes=(value & 0x3FFF) << 4,
            lbo_bytes=(value >> 16 & 0x3FFF) << 4,
            sbo_bytes=(value >> 32 & 0x3FFF) << 4,
            swizzle=mode,
            base_offset=value >> 49 & 7,
        )


def swizzle_address(address: np.ndarray | int, swizzle: str) -> np.ndarray:
    """The byte address a swizzled layout really uses for logical `address`: 16-byte
    chunk bits [4, 4+B) XOR row bits [7, 7+B) (B = 3, 2, 1 for 128, 64, 32 bytes)."""
    bits = _SWIZZLE_BITS[swizzle]
    address = np.asarray(address, dtype=np.int64)
    mask = (1 << bits) - 1
    return address ^ (((address >> 7) & mask) << 4)


def read_operand(
    smem: np.ndarray, descriptor: MatrixDescriptor | int, mn: int, k: int, major: str
) -> np.ndarray:
    """The `mn x k` fp16 operand (A: M x K, B: N x K) the tensor core reads from `smem`
    (uint8 bytes, offset 0 = a 1 KiB-aligned address) through `descriptor`.

    Canonical layouts in fp16 elements (PTX ISA), W = swizzle bytes / 16:
      K-major   ((8, m), (T, 2k)) : ((W T, SBO), (1, T))     row mn, column k
      MN-major  ((T, W, m), (8, k)) : ((1, T, LBO), (W T, SBO))
    then the swizzle on the resulting byte address.
    """
    if isinstance(descriptor, int | np.integer):
        descriptor = MatrixDescriptor.decode(int(descriptor))
    if descriptor.swizzle == "none" or descriptor.base_offset:
        raise InputError("descriptor", "only swizzled layouts with base offset 0 are emulated")
    if major not in ("K", "MN"):
        raise InputError("major", f"must be 'K' or 'MN', got {major!r}")
    width = {"128B": 8, "64B": 4, "32B": 2}[descriptor.swizzle]  # 16-byte units per row
    row_elems = width * _T
    i = np.arange(mn)[:, None]
    j = np.arange(k)[None, :]
    if major == "K":
        if k > row_elems:
            raise InputError("k", f"a K-major {descriptor.swizzle} row holds {row_elems} fp16")
        offset = 2 * ((i % 8) * row_elems + j) + (i // 8) * descriptor.sbo_bytes
    else:
        offset = (
            2 * ((i % row_elems) + (j % 8) * row_elems)
            + (i // row_elems) * descriptor.lbo_bytes
            + (j // 8) * descriptor.sbo_bytes
        )
    address = swizzle_address(descriptor.start_bytes + offset, descriptor.swizzle)
    if address.max() + 2 > smem.size:
        raise InputError("descriptor", "the operand reaches past the end of shared memory")
    lo = smem[address].astype(np.uint16)
    hi = smem[address + 1].astype(np.uint16)
    return (lo | hi << 8).view(np.float16)


# -- accumulators -----------------------------------------------------------------------
def accumulator_owner(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (128, n / 2): register v of warpgroup thread `tid` holds D
    element (rows[tid, v], cols[tid, v]) of the 64 x n fp32 accumulator.

    Warp w = tid / 32 owns rows 16w .. 16w + 15; inside them register v follows the
    mma.sync m16n8 C layout of column block v / 4: row g + 8 ((v / 2) % 2), column
    8 (v / 4) + 2 t + v % 2 with g = lane / 4, t = lane % 4.
    """
    if n % 8 or not 8 <= n <= 256:
        raise InputError("n", f"must be a multiple of 8 in 8..256, got {n}")
    tid = np.arange(WARPGROUP_THREADS)[:, None]
    v = np.arange(n // 2)[None, :]
    lane = tid % 32
    rows = 16 * (tid // 32) + lane // 4 + 8 * ((v // 2) % 2)
    cols = 8 * (v // 4) + 2 * (lane % 4) + v % 2
    return rows, cols


def wgmma_dense(
    smem: np.ndarray,
    desc_a: MatrixDescriptor | int,
    desc_b: MatrixDescriptor | int,
    n: int,
    d: np.ndarray | None,
    *,
    scale_d: bool = True,
) -> np.ndarray:
    """`wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 d, desc_a, desc_b, scale_d,
    1, 1, 0, 1`: A (64 x 16) K-major, B (16 x n) N-major; returns D (128, n / 2) fp32.
    `scale_d=False` ignores `d` (the instruction's D = A B)."""
    a = read_operand(smem, desc_a, WGMMA_M, DENSE_WGMMA_K, "K").astype(np.float64)
    b = read_operand(smem, desc_b, n, DENSE_WGMMA_K, "MN").astype(np.float64)
    rows, cols = accumulator_owner(n)
    product = (a @ b.T)[rows, cols]
    if scale_d:
        if d is None or np.shape(d) != rows.shape:
            raise InputError("d", f"needs shape {rows.shape} when scale_d is set")
        product = product + np.asarray(d, dtype=np.float64)
    return product.astype(np.float32)


# -- the dense sm_90a kernel ------------------------------------------------------------
def check_wgmma_config(config: KernelConfig) -> None:
    """InputError(`config`) unless the sm_90a kernels (cuda/wgmma.cuh) can be built from
    `config`: one warpgroup per 64 weight rows, whole 64-token swizzle atoms up to one
    m64n256 wgmma, and stages of one 128-byte swizzle row of weight per row (bk = 64)."""
    if config.mma_class != "wgmma":
        raise InputError("config", f"not a warpgroup-MMA config: {config.name}")
    if config.bm != 16 * config.warps or config.bn % 64 or config.bk != 64:
        raise InputError(
            "config",
            f"{config.name}: warpgroup-MMA kernels need bm = 64 per warpgroup (16 x warps), "
            "bn a multiple of 64 up to 256 and bk = 64",
        )
    if config.stages < 3:
        raise InputError("config", f"{config.name}: the wgmma pipeline needs 3 or more stages")


@dataclass(frozen=True)
class DenseWgmmaLayout:
    """One stage of `dense_wgmma.cu` in shared memory (tvw::wg::Layout) and the
    descriptors its K steps use."""

    config: KernelConfig

    def __post_init__(self) -> None:
        check_wgmma_config(self.config)
        if self.config.mma != "dense":
            raise InputError("config", f"not a dense config: {self.config.name}")

    @property
    def a_bytes(self) -> int:
        return self.config.bm * self.config.bk * 2

    @property
    def b_block_bytes(self) -> int:
        return self.config.bk * 128

    @property
    def stage_bytes(self) -> int:
        return self.a_bytes + self.config.bk * self.config.bn * 2

    def descriptors(self, stage: int, warpgroup: int, k_step: int) -> tuple[int, int]:
        """(desc_a, desc_b) of K step `k_step` of `warpgroup` on buffer `stage`, built as
        the kernel builds them: A 32 bytes further along its swizzled rows per K step,
        B two 1 KiB atoms further down per K step."""
        base = stage * self.stage_bytes
        a = MatrixDescriptor(base + warpgroup * 64 * 128 + 32 * k_step, 16, 1024)
        b = MatrixDescriptor(base + self.a_bytes + k_step * 2048, self.b_block_bytes, 1024)
        return a.encode(), b.encode()


def _swizzled_rows(rows: np.ndarray) -> np.ndarray:
    """A (rows x 64) fp16 block laid out as the 128-byte swizzle stores it: chunk c of
    row r at chunk c ^ (r % 8) of the row."""
    r = np.arange(rows.shape[0])[:, None]
    c = np.arange(8)[None, :]
    out = np.empty((rows.shape[0], 8, 8), dtype=np.float16)
    out[r, c ^ (r % 8)] = rows.reshape(rows.shape[0], 8, 8)
    return out.reshape(rows.shape[0], 64)


def blocked_weight(values: np.ndarray, config: KernelConfig) -> np.ndarray:
    """The dense weight (n x k_pad fp16) as `dense_wgmma.cu` reads it: per row tile t and
    stage s, the bm x 64 block at (t * k_pad / 64 + s) * bm * 64, each row's 16-byte
    chunks swizzled; rows past n are zeros. A stage is one contiguous bulk copy."""
    DenseWgmmaLayout(config)
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype != np.float16 or values.shape[1] % config.bk:
        raise InputError("values", f"must be fp16 n x k_pad with k_pad % {config.bk} == 0")
    n, k_pad = values.shape
    bm, bk = config.bm, config.bk
    tiles = -(-n // bm)
    padded = np.zeros((tiles * bm, k_pad), dtype=np.float16)
    padded[:n] = values
    blocks = padded.reshape(tiles, bm, k_pad // bk, bk).transpose(0, 2, 1, 3)
    out = np.empty_like(blocks)
    for t in range(tiles):
        for s in range(k_pad // bk):
            out[t, s] = _swizzled_rows(blocks[t, s])
    return out.reshape(-1)


def write_activation_stage(
    stage: np.ndarray, xt16: np.ndarray, xt_rows: np.ndarray, tok0: int, bn: int
) -> None:
    """Fill `stage` (the activation part of one stage, uint8) as the kernel's
    `wg::issue_activation_rows` does: stage row r is XT row xt_rows[r] (< 0: zeros), chunk
    c (8 tokens) of it at column block c / 8, row r, chunk (c % 8) ^ (r % 8); tokens at
    or past XT's width (m8) are zeros."""
    m8 = xt16.shape[1]
    view = stage.view(np.float16).reshape(bn // 64, len(xt_rows), 8, 8)
    view[...] = 0
    for r, row in enumerate(xt_rows):
        if row < 0:
            continue
        for c in range(bn // 8):
            tok = tok0 + 8 * c
            if tok < m8:
                view[c // 8, r, (c % 8) ^ (r % 8)] = xt16[row, tok : tok + 8]


def emulate_dense(
    encoded, x: np.ndarray, tasks: np.ndarray, *, weight_image: np.ndarray | None = None
) -> np.ndarray:
    """Y (M x N, fp32 of the fp16 output) as `dense_wgmma.cu` computes it for `encoded`
    (a dense encoding of a wgmma config), X (M x K) and the schedule's `tasks`: the
    blocked weight bulk-copied into each stage, the activation rows written by the
    kernel's rule, every wgmma read through the descriptors the kernel builds, the
    accumulators scattered by their owners, split tasks summed in fp32 and rounded once.
    `weight_image` replaces `blocked_weight(encoded.values, config)` (a test's way to
    feed the kernel a wrong layout)."""
    config = encoded.config
    layout = DenseWgmmaLayout(config)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != encoded.k:
        raise InputError("x", f"must be M x {encoded.k}, got shape {x.shape}")
    m = x.shape[0]
    m8 = -(-m // 8) * 8
    xt16 = np.zeros((encoded.k, m8), dtype=np.float16)
    xt16[:, :m] = x.T.astype(np.float16)
    if weight_image is None:
        weight_image = blocked_weight(encoded.values, config)
    image = np.ascontiguousarray(weight_image, dtype=np.float16).view(np.uint8)
    bm, bn, bk = config.bm, config.bn, config.bk
    n, k_pad = encoded.n, encoded.k_pad
    block_bytes = layout.a_bytes
    yt = np.zeros((n, m8), dtype=np.float32)
    partial = np.zeros((n, m8), dtype=np.float64)
    split_rows = np.zeros(n, dtype=bool)
    smem = np.zeros(layout.stage_bytes, dtype=np.uint8)  # one buffer: stages run in order
    for tile, block, k_begin, k_end in np.asarray(tasks, dtype=np.int64):
        tok0 = block * bn
        acc = [np.zeros((WARPGROUP_THREADS, bn // 2), np.float32) for _ in range(config.warps // 4)]
        for step in range((k_end - k_begin) // bk):
            src = (tile * (k_pad // bk) + k_begin // bk + step) * block_bytes
            smem[:block_bytes] = image[src : src + block_bytes]
            k0 = k_begin + step * bk
            rows = np.arange(k0, k0 + bk)
            rows[rows >= encoded.k] = -1
            write_activation_stage(smem[block_bytes:], xt16, rows, tok0, bn)
            for wg in range(config.warps // 4):
                for ks in range(bk // DENSE_WGMMA_K):
                    da, db = layout.descriptors(0, wg, ks)
                    first = step == 0 and ks == 0
                    acc[wg] = wgmma_dense(smem, da, db, bn, acc[wg], scale_d=not first)
        tile_out = np.zeros((bm, bn), dtype=np.float32)
        rows, cols = accumulator_owner(bn)
        for wg, regs in enumerate(acc):
            tile_out[64 * wg + rows, cols] = regs
        out_rows = np.arange(tile * bm, tile * bm + bm)
        keep = out_rows < n
        toks = np.arange(tok0, min(tok0 + bn, m8))
        sub = tile_out[keep][:, : toks.size]
        if k_begin == 0 and k_end == k_pad:
            yt[np.ix_(out_rows[keep], toks)] = sub.astype(np.float16)
        else:
            partial[np.ix_(out_rows[keep], toks)] += sub
            split_rows[out_rows[keep]] = True
    yt[split_rows] = partial[split_rows].astype(np.float32).astype(np.float16)
    return np.ascontiguousarray(yt[:, :m].T)
