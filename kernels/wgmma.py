"""Hopper warpgroup MMA in numpy: shared-memory descriptors, swizzle and accumulators.

Covers the CPU side of the sm_90a kernels (`cuda/wgmma.cuh`, `cuda/<pattern>_wgmma.cu`):

- `MatrixDescriptor`: the 64-bit shared-memory matrix descriptor of `wgmma.mma_async`
  (PTX ISA, "Matrix Descriptor Format"), encoded and decoded bit for bit;
- `read_operand`: what the tensor core reads through a descriptor - the canonical
  K-major and MN-major layouts with the 128-, 64- and 32-byte swizzles, the swizzle
  applied to the byte address it computes (PTX ISA, "Shared Memory Matrix Layout");
- `accumulator_owner`: which register of which of the 128 threads holds each element of
  the 64 x N fp32 accumulator;
- `wgmma_dense` / `wgmma_sparse`: one `wgmma.mma_async.m64nNk16` / `.sp.m64nNk32`
  (A K-major, B N-major, fp16 in, fp32 accumulate), registers in, registers out;
- the kernels' own side: `weight_image` (the K-blocked, pre-swizzled weight with its
  metadata that the launcher hands the kernels), `write_activation_stage` (where the
  kernels' cp.async puts each activation chunk) and `emulate` (a whole kernel, task by
  task, descriptor by descriptor, through the epilogue), which the tests compare with
  the CPU twin.

The readers (descriptor + address swizzle) and the writers (the kernels' chunk rule,
`chunk ^ (row % 8)` for 128-byte rows) are written independently on purpose: they agree
only if the kernels' layout is the one the tensor core expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvwsim.kernels.mma_sp import expand_sparse_a

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

__all__ = [
    "SWIZZLE_MODES",
    "MatrixDescriptor",
    "swizzle_address",
    "read_operand",
    "accumulator_owner",
    "wgmma_dense",
    "wgmma_sparse",
    "check_wgmma_config",
    "WgmmaLayout",
    "swizzle_rows",
    "weight_image",
    "write_activation_stage",
    "emulate",
    "pipeline_events",
    "check_pipeline",
    "check_producer_protocol",
    "ProbeCase",
    "probe_case",
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
    a = read_operand(smem, desc_a, WGMMA_M, DENSE_WGMMA_K, "K")
    return _accumulate(a, read_operand(smem, desc_b, n, DENSE_WGMMA_K, "MN"), d, scale_d)


def wgmma_sparse(
    smem: np.ndarray,
    desc_a: MatrixDescriptor | int,
    desc_b: MatrixDescriptor | int,
    n: int,
    e_regs: np.ndarray,
    selector: int,
    d: np.ndarray | None,
    *,
    scale_d: bool = True,
) -> np.ndarray:
    """`wgmma.mma_async.sp.sync.aligned.m64n{n}k32.f32.f16.f16 d, desc_a, desc_b, e,
    selector, scale_d, 1, 1, 0, 1`: A the 64 x 16 stored values (K-major) of a 64 x 32
    2:4 matrix, B (32 x n) N-major, `e_regs` (128,) the warpgroup's metadata registers.
    Warp w's lanes place rows 16w .. 16w + 15 exactly as mma.sp m16n8k32 does
    (`mma_sp.expand_sparse_a`); that is the documented layout the probe pins on silicon."""
    e = np.asarray(e_regs)
    if e.shape != (WARPGROUP_THREADS,):
        raise InputError("e_regs", f"must have shape (128,), got {e.shape}")
    stored = read_operand(smem, desc_a, WGMMA_M, DENSE_WGMMA_K, "K")
    a = np.concatenate(
        [
            expand_sparse_a(stored[16 * w : 16 * w + 16], e[32 * w : 32 * w + 32], selector)
            for w in range(4)
        ]
    )
    return _accumulate(a, read_operand(smem, desc_b, n, 2 * DENSE_WGMMA_K, "MN"), d, scale_d)


def _accumulate(a: np.ndarray, b: np.ndarray, d: np.ndarray | None, scale_d: bool) -> np.ndarray:
    """D = A @ B.T (+ D) in the owners' registers; fp16 products are exact, the sum is
    rounded once to fp32 (silicon may differ in the last bits: compare with a tolerance)."""
    rows, cols = accumulator_owner(b.shape[0])
    product = (a.astype(np.float64) @ b.astype(np.float64).T)[rows, cols]
    if scale_d:
        if d is None or np.shape(d) != rows.shape:
            raise InputError("d", f"needs shape {rows.shape} when scale_d is set")
        product = product + np.asarray(d, dtype=np.float64)
    return product.astype(np.float32)


# -- the sm_90a kernels -----------------------------------------------------------------
def check_wgmma_config(config: KernelConfig) -> None:
    """InputError(`config`) unless the sm_90a kernels (cuda/wgmma.cuh) can be built from
    `config`: one warpgroup per 64 weight rows, whole 64-token swizzle atoms up to one
    m64n256 wgmma, and stages of 64 logical K (one 128-byte dense or 64-byte compressed
    swizzle row of weight per row)."""
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
    if config.mma == "sparse" and config.bm % 128:
        # A 2:4 weight block is bm x 64 bytes + bm / 16 x 128 bytes of metadata; the
        # activation tile after it must start on a 1 KiB swizzle atom.
        raise InputError(
            "config", f"{config.name}: 2:4 warpgroup-MMA kernels need bm a multiple of 128"
        )


@dataclass(frozen=True)
class WgmmaLayout:
    """One stage of the sm_90a kernels in shared memory (`tvw::wg::Layout`) and the
    descriptors their K steps use."""

    config: KernelConfig

    def __post_init__(self) -> None:
        check_wgmma_config(self.config)

    @property
    def sparse(self) -> bool:
        return self.config.mma == "sparse"

    @property
    def a_row_bytes(self) -> int:
        """One weight row of a stage: 64 fp16 (128-byte swizzle) or 32 compressed (64-byte)."""
        return self.config.bk if self.sparse else 2 * self.config.bk

    @property
    def a_bytes(self) -> int:
        return self.config.bm * self.a_row_bytes

    @property
    def e_bytes(self) -> int:
        """2:4 metadata of a stage: BM / 16 blocks of 32 words (one per 64 logical K)."""
        return (self.config.bm // 16) * (self.config.bk // 64) * 128 if self.sparse else 0

    @property
    def weight_bytes(self) -> int:
        """One K-blocked weight block: what one bulk copy moves per stage."""
        return self.a_bytes + self.e_bytes

    @property
    def b_block_bytes(self) -> int:
        return self.config.bk * 128

    @property
    def stage_bytes(self) -> int:
        return self.weight_bytes + self.config.bk * self.config.bn * 2

    @property
    def k_per_mma(self) -> int:
        return 2 * DENSE_WGMMA_K if self.sparse else DENSE_WGMMA_K

    def descriptors(self, stage: int, warpgroup: int, k_step: int) -> tuple[int, int]:
        """(desc_a, desc_b) of K step `k_step` of `warpgroup` on buffer `stage`, built as
        `tvw::wg::mainloop` builds them: A 32 bytes further along its swizzled rows per
        step (16 values, dense or stored), B k_per_mma / 8 atoms of 1 KiB further down."""
        base = stage * self.stage_bytes
        swizzle = "64B" if self.sparse else "128B"
        a_start = base + warpgroup * 64 * self.a_row_bytes + 32 * k_step
        a = MatrixDescriptor(a_start, 16, 8 * self.a_row_bytes, swizzle)
        b_start = base + self.weight_bytes + k_step * self.k_per_mma // 8 * 1024
        b = MatrixDescriptor(b_start, self.b_block_bytes, 1024)
        return a.encode(), b.encode()


def swizzle_rows(rows: np.ndarray) -> np.ndarray:
    """(..., rows x 64 or 32) fp16 blocks as the 128- or 64-byte swizzle stores them: chunk
    c of row r at chunk c ^ (r % 8) (8 chunks a row) or c ^ ((r / 2) % 4) (4 chunks). An
    XOR permutation is its own inverse: applied to stored blocks it gives the rows back."""
    n_rows, chunks = rows.shape[-2], rows.shape[-1] // 8
    r = np.arange(n_rows)[:, None]
    c = np.arange(chunks)[None, :]
    permuted = c ^ (r % 8) if chunks == 8 else c ^ ((r // 2) % 4)
    grouped = rows.reshape(*rows.shape[:-1], chunks, 8)
    out = np.empty_like(grouped)
    out[..., r, permuted, :] = grouped
    return out.reshape(rows.shape)


_LEGAL_PAD_WORD = 0x44444444
"""Metadata of padded rows (zero values): positions (0, 1) in every group - legal for
::ordered_metadata, so every wgmma.sp of a ragged tile stays defined."""


def _tile_blocks(encoded) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per row tile: (values bm x k_len or bm x k_len/2, metadata [bm/16, k_len/64, 32]
    or None), rows past the encoding's zero-padded."""
    config = encoded.config
    bm = config.bm
    if hasattr(encoded, "k_ptr"):  # tw, tvw: each tile's own block
        tiles = range(encoded.n_row_tiles)
        values = [encoded.tile_values(t) for t in tiles]
        sparse = getattr(encoded, "sparse", False)
        meta = [encoded.tile_metadata(t) for t in tiles] if sparse else [None] * len(values)
        return list(zip(values, meta, strict=True))
    tiles = encoded.n_row_tiles
    values = np.zeros((tiles * bm, encoded.values.shape[1]), dtype=np.float16)
    values[: encoded.values.shape[0]] = encoded.values
    meta = None
    if getattr(encoded, "metadata", None) is not None:  # vw
        stored = encoded.metadata
        meta = np.full((tiles * bm // 16, *stored.shape[1:]), _LEGAL_PAD_WORD, dtype=np.uint32)
        meta[: stored.shape[0]] = stored
    return [
        (
            values[t * bm : (t + 1) * bm],
            None if meta is None else meta[t * bm // 16 : (t + 1) * bm // 16],
        )
        for t in range(tiles)
    ]


def weight_image(encoded) -> np.ndarray:
    """The weight buffer the sm_90a kernels read (uint8): per row tile, per stage of 64
    logical K, one block of `WgmmaLayout.weight_bytes` - the stage's rows swizzled as
    shared memory holds them, then (2:4) the rows' lane-ordered metadata words for those
    K - tile after tile, so tile t's stage s is block `first(t) + s` with first(t) =
    t * k_len / 64 (dense, vw) or k_ptr[t] / 64 (tw, tvw). A stage is one bulk copy."""
    layout = WgmmaLayout(encoded.config)
    stage_values = layout.a_row_bytes // 2
    tiles = []
    for values, meta in _tile_blocks(encoded):
        rows, stages = values.shape[0], values.shape[1] // stage_values
        if stages == 0:  # a tile that keeps no K has no block
            continue
        # (stages, rows, stage_values): each stage's block, swizzled all at once
        blocks = values.reshape(rows, stages, stage_values).transpose(1, 0, 2)
        parts = [swizzle_rows(blocks).view(np.uint8).reshape(stages, -1)]
        if meta is not None:  # (rows / 16, stages, 32) -> each stage's words after it
            parts.append(np.ascontiguousarray(meta.transpose(1, 0, 2)).view(np.uint8))
            parts[-1] = parts[-1].reshape(stages, -1)
        tiles.append(np.concatenate(parts, axis=1).ravel())
    if not tiles:
        return np.zeros(0, dtype=np.uint8)
    return np.concatenate(tiles)


def write_activation_stage(
    stage: np.ndarray, xt16: np.ndarray, xt_rows: np.ndarray, tok0: int, bn: int
) -> None:
    """Fill `stage` (the activation part of one stage, uint8) as the kernel's
    `wg::issue_activation_rows` does: stage row r is XT row xt_rows[r] (< 0: zeros), chunk
    c (8 tokens) of it at column block c / 8, row r, chunk (c % 8) ^ (r % 8); tokens at
    or past XT's width (m8) are zeros."""
    m8 = xt16.shape[1]
    view = stage[: len(xt_rows) * bn * 2].view(np.float16).reshape(bn // 64, len(xt_rows), 8, 8)
    view[...] = 0
    for r, row in enumerate(xt_rows):
        if row < 0:
            continue
        for c in range(bn // 8):
            tok = tok0 + 8 * c
            if tok < m8:
                view[c // 8, r, (c % 8) ^ (r % 8)] = xt16[row, tok : tok + 8]


def pipeline_events(k_steps: int, stages: int, *, ahead: int | None = None) -> list[tuple]:
    """The program order of `wg::mainloop` for one task, as events: ("issue", step, buf)
    (the stage's copies start), ("wait", step, buf, parity) (its cp.async group and its
    mbarrier phase), ("sync",) (__syncthreads), ("compute", step, buf) (its wgmma batch)
    and ("retire", step) (wgmma.wait_group: that batch no longer reads shared memory).
    The loop copies `ahead` stages ahead of the one it computes: STAGES - 2 (the default),
    because one wgmma batch stays in flight past the barrier."""
    ahead = stages - 2 if ahead is None else ahead
    events: list[tuple] = []
    for s in range(ahead):
        if s < k_steps:
            events.append(("issue", s, s % stages))
    for it in range(k_steps):
        events.append(("wait", it, it % stages, (it // stages) & 1))
        events.append(("sync",))
        nxt = it + ahead
        if nxt < k_steps:
            events.append(("issue", nxt, nxt % stages))
        events.append(("compute", it, it % stages))
        if it >= 1:
            events.append(("retire", it - 1))  # wait_group 1: only batch `it` in flight
    if k_steps:
        events.append(("retire", k_steps - 1))  # wait_group 0 before the epilogue
    return events


def check_pipeline(events: list[tuple]) -> None:
    """InputError(`events`) at the first hazard: a copy into a buffer whose last batch
    had not retired in every warpgroup by the preceding __syncthreads, a wait or compute
    on a buffer that holds another stage, or an mbarrier parity that is not the phase the
    stage's bulk copy completes (each copy into a buffer completes that buffer's next
    phase)."""
    holds: dict[int, int] = {}
    copies: dict[int, int] = {}
    retired: set[int] = set()
    retired_everywhere: set[int] = set()
    for event in events:
        kind = event[0]
        if kind == "sync":
            retired_everywhere = set(retired)
        elif kind == "retire":
            retired.add(event[1])
        elif kind == "issue":
            _, step, buf = event
            if buf in holds and holds[buf] not in retired_everywhere:
                raise InputError(
                    "events",
                    f"stage {step} overwrites buffer {buf} while stage {holds[buf]} may read it",
                )
            holds[buf] = step
            copies[buf] = copies.get(buf, 0) + 1
        else:  # wait, compute
            _, step, buf, *parity = event
            if holds.get(buf) != step:
                raise InputError(
                    "events", f"{kind} of stage {step}: buffer {buf} holds {holds.get(buf)}"
                )
            if parity and parity[0] != (copies[buf] - 1) & 1:
                raise InputError(
                    "events", f"stage {step} waits for parity {parity[0]} of buffer {buf}"
                )


def check_producer_protocol(k_steps: int, stages: int, *, lag: int = 1) -> None:
    """InputError(`protocol`) unless the producer / consumer loops of `wg::mainloop` (a
    `producer_warps` config) run to the end without a hazard. The two roles run as
    sequential programs, one op at a time as far as the barriers let them, in the two
    extreme orders: the producer as far ahead as it can get, and the consumer:

      producer  for step: [wait empty[step % S] for its (step / S - 1)-th phase]
                          copy step into buffer step % S;
                          [arrive on full for step - lag, whose copies landed]
                then arrive on full for the last `lag` steps
      consumer  for it: wait full[it % S] for its (it / S)-th phase; read buffer it % S;
                        [retire it - 1 and release its buffer: arrive on empty]

    A hazard is a copy into a buffer a consumer may still read, a read of a buffer that
    holds another stage, a wait whose barrier is two phases ahead (a parity wait cannot
    tell those apart), or a deadlock."""
    producer = []
    for step in range(k_steps):
        if step >= stages:
            producer.append(("wait_empty", step % stages, step // stages - 1))
        producer.append(("copy", step))
        if step >= lag:
            producer.append(("arrive_full", step - lag))
    producer += [("arrive_full", step) for step in range(max(0, k_steps - lag), k_steps)]
    consumer = []
    for it in range(k_steps):
        consumer += [("wait_full", it % stages, it // stages), ("read", it)]
        if it >= 1:
            consumer.append(("release", it - 1))
    for ahead in ("producer", "consumer"):
        _run_protocol(producer, consumer, stages, ahead)


def _run_protocol(producer: list, consumer: list, stages: int, ahead: str) -> None:
    full = [0] * stages  # completed phases per buffer
    empty = [0] * stages
    holds: dict[int, int] = {}
    released: set[int] = set()
    pc = {"producer": 0, "consumer": 0}
    programs = {"producer": producer, "consumer": consumer}

    def step(role: str) -> bool:
        """Run `role`'s next op if the barriers let it; False when it must wait."""
        op = programs[role][pc[role]]
        kind = op[0]
        if kind in ("wait_full", "wait_empty"):
            _, buf, phase = op
            done = (full if kind == "wait_full" else empty)[buf]
            if done <= phase:
                return False
            if done > phase + 1:
                raise InputError("protocol", f"{role} waits on a barrier two phases ahead")
        elif kind == "copy":
            buf = op[1] % stages
            if buf in holds and holds[buf] not in released:
                raise InputError("protocol", f"stage {op[1]} overwrites stage {holds[buf]}")
            holds[buf] = op[1]
        elif kind == "arrive_full":
            full[op[1] % stages] += 1
        elif kind == "read":
            if holds.get(op[1] % stages) != op[1]:
                raise InputError("protocol", f"stage {op[1]} is read from another stage's buffer")
        else:  # release
            released.add(op[1])
            empty[op[1] % stages] += 1
        pc[role] += 1
        return True

    order = [ahead, "consumer" if ahead == "producer" else "producer"]
    while any(pc[r] < len(programs[r]) for r in order):
        progressed = False
        for role in order:
            while pc[role] < len(programs[role]) and step(role):
                progressed = True
        if not progressed:
            raise InputError(
                "protocol",
                f"deadlock at producer op {pc['producer']}, consumer op {pc['consumer']}",
            )


def _task_view(encoded, tile: int) -> tuple[int, int, np.ndarray | None, np.ndarray]:
    """(first weight block of the tile, the tile's K length, its kept-K list or None for
    consecutive K, its output rows (-1: not stored)) as the kernels compute them."""
    bm, bk = encoded.config.bm, encoded.config.bk
    if hasattr(encoded, "k_ptr"):
        kp, kt = int(encoded.k_ptr[tile]), int(encoded.k_ptr[tile + 1] - encoded.k_ptr[tile])
        return kp // bk, kt, encoded.tile_k_index(tile), encoded.tile_rows(tile)
    k_len = encoded.k_pad
    rows = np.arange(tile * bm, (tile + 1) * bm)
    return tile * (k_len // bk), k_len, None, np.where(rows < encoded.n, rows, -1)


def emulate(
    encoded, x: np.ndarray, tasks: np.ndarray, *, weight_image_bytes: np.ndarray | None = None
) -> np.ndarray:
    """Y (M x N, fp32 of the fp16 output) as the sm_90a kernel of `encoded`'s pattern
    computes it (dense, tw, vw, tvw with a wgmma config) for X (M x K) and the schedule's
    `tasks`: each stage's weight block copied from `weight_image`, its activation rows
    written by the kernel's rule (gathered through k_index for tw/tvw), every wgmma (.sp)
    read through the descriptors the kernel builds with the metadata registers it loads,
    accumulators scattered by their owners, rows through the row map; split tasks summed
    in fp32 and rounded once (the finalize pass), rows no task writes zero.
    `weight_image_bytes` replaces `weight_image(encoded)` (a test's way to feed the
    kernel a wrong layout)."""
    config = encoded.config
    layout = WgmmaLayout(config)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != encoded.k:
        raise InputError("x", f"must be M x {encoded.k}, got shape {x.shape}")
    m = x.shape[0]
    m8 = -(-m // 8) * 8
    xt16 = np.zeros((encoded.k, m8), dtype=np.float16)
    xt16[:, :m] = x.T.astype(np.float16)
    image = weight_image(encoded) if weight_image_bytes is None else weight_image_bytes
    image = np.ascontiguousarray(image).view(np.uint8)
    bm, bn, bk = config.bm, config.bn, config.bk
    n_out = encoded.n
    yt = np.zeros((n_out, m8), dtype=np.float32)
    partial = np.zeros((n_out, m8), dtype=np.float64)
    split_rows = np.zeros(n_out, dtype=bool)
    # The kernel's ring of STAGES buffers, filled and read in its program order.
    smem = np.zeros(config.stages * layout.stage_bytes, dtype=np.uint8)
    owner_rows, owner_cols = accumulator_owner(bn)
    for tile, block, k_begin, k_end in np.asarray(tasks, dtype=np.int64):
        first, k_len, k_index, out_rows = _task_view(encoded, int(tile))
        tok0 = block * bn
        acc = [None] * (config.warps // 4)
        events = pipeline_events(int((k_end - k_begin) // bk), config.stages)
        if config.producer_warps:  # the same ring, filled by the producer warpgroup
            check_producer_protocol(int((k_end - k_begin) // bk), config.stages)
        else:
            check_pipeline(events)
        for kind, step, buf, *_ in (e for e in events if e[0] in ("issue", "compute")):
            base = buf * layout.stage_bytes
            if kind == "issue":
                src = (first + k_begin // bk + step) * layout.weight_bytes
                smem[base : base + layout.weight_bytes] = image[src : src + layout.weight_bytes]
                k0 = k_begin + step * bk
                if k_index is None:
                    rows = np.arange(k0, k0 + bk)
                    rows[rows >= encoded.k] = -1
                else:
                    rows = k_index[k0 : k0 + bk]
                b_stage = smem[base + layout.weight_bytes : base + layout.stage_bytes]
                write_activation_stage(b_stage, xt16, rows, tok0, bn)
                continue
            words = smem[base + layout.a_bytes : base + layout.weight_bytes].view(np.uint32)
            for wg in range(config.warps // 4):
                for ks in range(bk // layout.k_per_mma):
                    da, db = layout.descriptors(buf, wg, ks)
                    first_step = step == 0 and ks == 0
                    if layout.sparse:
                        e = words[128 * wg : 128 * wg + 128]
                        acc[wg] = wgmma_sparse(
                            smem, da, db, bn, e, ks % 2, acc[wg], scale_d=not first_step
                        )
                    else:
                        acc[wg] = wgmma_dense(smem, da, db, bn, acc[wg], scale_d=not first_step)
        tile_out = np.zeros((bm, bn), dtype=np.float32)
        for wg, regs in enumerate(acc):
            if regs is not None:
                tile_out[64 * wg + owner_rows, owner_cols] = regs
        keep = out_rows >= 0
        toks = np.arange(tok0, min(tok0 + bn, m8))
        sub = tile_out[keep][:, : toks.size]
        if k_begin == 0 and k_end == k_len:
            yt[np.ix_(out_rows[keep], toks)] = sub.astype(np.float16)
        else:
            partial[np.ix_(out_rows[keep], toks)] += sub
            split_rows[out_rows[keep]] = True
    yt[split_rows] = partial[split_rows].astype(np.float32).astype(np.float16)
    return np.ascontiguousarray(yt[:, :m].T)


# -- the one-warpgroup probe (cuda/wgmma_probe.cu) -----------------------------------------
PROBE_CONFIGS = {
    False: KernelConfig(bm=128, bn=256, bk=64, stages=4, warps=8, mma="dense", mma_class="wgmma"),
    True: KernelConfig(bm=128, bn=256, bk=64, stages=4, warps=8, mma="sparse", mma_class="wgmma"),
}
"""The stage layouts the probes use: the shipped sm_90a variants' (build.WGMMA_VARIANTS)."""


@dataclass(frozen=True)
class ProbeCase:
    """Everything one wgmma (.sp) probe launch takes: one stage's shared-memory bytes, the
    descriptor fields a kernel's K step uses, C, and (2:4) the metadata registers."""

    image: np.ndarray
    """uint8: one stage exactly as the kernels hold it (weight block, then activations)."""
    a_offset: int
    a_sbo: int
    a_swizzle: int
    """Descriptor swizzle code (SWIZZLE_MODES): 1 = 128-byte (dense A), 2 = 64-byte (2:4)."""
    b_offset: int
    b_lbo: int
    b_sbo: int
    c: np.ndarray
    """(128, 128) fp32: every thread's accumulators before the instruction."""
    e: np.ndarray | None = None
    """(128,) uint32 metadata registers (2:4 only); lanes the selector skips hold garbage."""
    selector: int = 0

    @property
    def sparse(self) -> bool:
        return self.e is not None

    def descriptors(self) -> tuple[int, int]:
        swizzle = {v: k for k, v in SWIZZLE_MODES.items()}[self.a_swizzle]
        a = MatrixDescriptor(self.a_offset, 16, self.a_sbo, swizzle)
        return a.encode(), MatrixDescriptor(self.b_offset, self.b_lbo, self.b_sbo).encode()

    def expected(self) -> np.ndarray:
        """D (128, 128) by the emulation (`wgmma_dense` / `wgmma_sparse`)."""
        da, db = self.descriptors()
        if self.sparse:
            return wgmma_sparse(self.image, da, db, 256, self.e, self.selector, self.c)
        return wgmma_dense(self.image, da, db, 256, self.c)


def probe_case(sparse: bool, seed: int, selector: int = 0) -> tuple[ProbeCase, np.ndarray]:
    """A random probe case and the D plain matrix math gives for it (the emulation's own
    check). One warpgroup's K step of the shipped layout: a random warpgroup (its 64 rows)
    and K step (dense: any of 4; 2:4: the selector's k32), random fp16 values, every
    legal 2:4 position pair, random C, garbage metadata in the lanes not read."""
    from tvwsim.kernels.formats import encode

    rng = np.random.default_rng(seed)
    config = PROBE_CONFIGS[sparse]
    layout = WgmmaLayout(config)
    w = rng.standard_normal((config.bm, config.bk))
    mask = None
    if sparse:
        mask = np.zeros(w.shape, dtype=bool)
        pairs = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
        picked = pairs[rng.integers(0, 6, (config.bm, config.bk // 4))]  # (bm, groups, 2)
        groups = np.arange(config.bk // 4)[None, :, None] * 4
        np.put_along_axis(mask, (groups + picked).reshape(config.bm, -1), True, axis=1)
        w = np.where(mask, w, 0)
    encoded = encode(w.astype(np.float32), mask, "vw" if sparse else "dense", config)
    xt = rng.standard_normal((config.bk, config.bn)).astype(np.float16)
    image = np.zeros(layout.stage_bytes, dtype=np.uint8)
    image[: layout.weight_bytes] = weight_image(encoded)
    write_activation_stage(image[layout.weight_bytes :], xt, np.arange(config.bk), 0, config.bn)
    warpgroup = int(rng.integers(0, config.warps // 4))
    k_step = selector if sparse else int(rng.integers(0, config.bk // DENSE_WGMMA_K))
    da, db = (MatrixDescriptor.decode(v) for v in layout.descriptors(0, warpgroup, k_step))
    c = rng.standard_normal((WARPGROUP_THREADS, config.bn // 2)).astype(np.float32)
    e = None
    if sparse:
        words = image[layout.a_bytes : layout.weight_bytes].view(np.uint32)
        e = words[128 * warpgroup : 128 * warpgroup + 128].copy()
        unread = (np.arange(128) & 3) // 2 != selector
        e[unread] = rng.integers(0, 2**32, int(unread.sum()), dtype=np.uint32)
    case = ProbeCase(
        image=image,
        a_offset=da.start_bytes,
        a_sbo=da.sbo_bytes,
        a_swizzle=SWIZZLE_MODES[da.swizzle],
        b_offset=db.start_bytes,
        b_lbo=db.lbo_bytes,
        b_sbo=db.sbo_bytes,
        c=c,
        e=e,
        selector=selector,
    )
    k = layout.k_per_mma
    rows = slice(64 * warpgroup, 64 * warpgroup + 64)
    logical = encoded.decode()[rows, k * k_step : k * k_step + k].astype(np.float64)
    plain = logical @ xt[k * k_step : k * k_step + k].astype(np.float64)
    owner_rows, owner_cols = accumulator_owner(config.bn)
    return case, (plain[owner_rows, owner_cols] + c).astype(np.float32)
