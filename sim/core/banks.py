"""Shared-memory bank conflicts of the kernels' main loops, from the addresses they use.

Covers
------
`wavefronts` (how many passes of the 32 banks one warp-wide access needs) and
`replay_factors` (per kind of shared-memory instruction in a kernel's loop, the passes it
takes over the passes a conflict-free access of the same bytes would take), computed from
a Python twin of the kernels' stage layout and XOR swizzle (kernels/cuda/common.cuh:
`StageLayout`, `swz`, `ChunkPlan`, `warp_stage_dense` / `warp_stage_sparse`).

Scenario
--------
Shared memory is 32 banks of 4 bytes; one pass (a wavefront) serves at most one 4-byte
word per bank, any number of lanes reading that word. A 16-byte-per-lane access (LDS.128,
STS.128, a cp.async chunk) is served 8 lanes at a time, and ldmatrix one 8 x 8 matrix (8
row addresses of 16 bytes) at a time, so a conflict-free warp access of B bytes takes
B / 128 passes. The kernels store every row as 16-byte chunks at `chunk ^ f(row)`, which
puts the 8 rows of an ldmatrix in 8 different bank groups; unswizzled, rows whose stride
is a multiple of 128 bytes all land in one group and an ldmatrix matrix takes 8 passes.

The SASS loop does not say which tile an instruction addresses, but its opcode tells the
kinds apart: `LDSM...M88` reads the weight (A) tile, `LDSM...MT88` (transposed) the
activation (B) tile, `LDGSTS` (and, on Volta, the `STS` that replaces it) writes a
stage's A, metadata and B chunks, `LDS` reads 32 consecutive metadata words (never in
conflict). Every instruction of a kind gets that kind's mean over the stage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

from tvwsim.config import KernelConfig

BANKS = 32
BANK_BYTES = 4
WAVEFRONT_BYTES = BANKS * BANK_BYTES
CHUNK_BYTES = 16
WARP = 32

KINDS: tuple[str, ...] = ("ldsm_a", "ldsm_b", "fill", "lds")
"""Kinds of shared-memory instruction a loop holds (see `kind_of`)."""


def kind_of(opcode: str, cls: str) -> str | None:
    """The kind (KINDS) of a shared-memory instruction; None for any other."""
    if cls == "ldsm":
        return "ldsm_b" if ".MT88" in opcode else "ldsm_a"
    if cls in ("ldgsts", "sts"):
        return "fill"
    if cls == "lds":
        return "lds"
    return None


def wavefronts(lane_addresses: Sequence[int], bytes_per_lane: int) -> int:
    """Bank passes one warp-wide access needs: lanes are served `128 / bytes_per_lane` at
    a time (8 for 16-byte accesses and for ldmatrix's row addresses), and each group takes
    as many passes as the most distinct words any one bank must deliver."""
    per_phase = max(1, WAVEFRONT_BYTES // bytes_per_lane)
    total = 0
    for start in range(0, len(lane_addresses), per_phase):
        words: dict[int, set[int]] = defaultdict(set)
        for address in lane_addresses[start : start + per_phase]:
            for word in range(address // BANK_BYTES, (address + bytes_per_lane) // BANK_BYTES):
                words[word % BANKS].add(word)
        total += max(len(w) for w in words.values())
    return total


def swz(chunks: int, row: int, chunk: int, swizzle: bool = True) -> int:
    """Chunk index (from the tile's start) of row `row`, chunk `chunk` of a tile with
    `chunks` 16-byte chunks per row: common.cuh's `swz`, or the plain row-major place."""
    if not swizzle:
        return row * chunks + chunk
    if chunks >= 8:
        return row * chunks + (chunk ^ (row & 7))
    return row * chunks + (chunk ^ ((row // (8 // chunks)) & (chunks - 1)))


def _layout(config: KernelConfig) -> tuple[int, int, int, int]:
    """(A chunks per row, B chunks per row, A bytes, metadata bytes) of one stage."""
    sparse = config.mma == "sparse"
    a_elems = config.bk // 2 if sparse else config.bk
    e_bytes = (config.bm // 16) * (config.bk // 64) * 32 * 4 if sparse else 0
    return a_elems // 8, config.bn // 8, config.bm * a_elems * 2, e_bytes


def _ldsm_accesses(config: KernelConfig, swizzle: bool) -> dict[str, list[list[int]]]:
    """Per warp of the CTA, every ldmatrix.x4 of one stage: 32 lane addresses each
    (common.cuh `warp_stage_dense` / `warp_stage_sparse`)."""
    a_chunks, b_chunks, a_bytes, e_bytes = _layout(config)
    warps_m, warps_n = config.warp_grid
    wtm, wtn = config.bm // warps_m, config.bn // warps_n
    dense = config.mma == "dense"
    lanes = range(WARP)

    def place(base: int, chunks: int, rows_chunks) -> list[int]:
        return [base + CHUNK_BYTES * swz(chunks, r, c, swizzle) for r, c in rows_chunks]

    out: dict[str, list[list[int]]] = {"ldsm_a": [], "ldsm_b": []}
    for warp in range(config.warps):
        wm0, wn0 = (warp // warps_n) * wtm, (warp % warps_n) * wtn
        for ks in range(config.bk // (16 if dense else 32)):
            # A: lane l addresses row l % 16, 8-column half l / 16 of a 16 x 16 block.
            for mt in range(wtm // 16):
                rc = [(wm0 + mt * 16 + (ln & 15), ks * 2 + (ln >> 4)) for ln in lanes]
                out["ldsm_a"].append(place(0, a_chunks, rc))
            # B (transposed): dense 16 K x 16 tokens, sparse 32 K x 8 tokens per ldmatrix.
            if dense:
                rc_b = [[(ks * 16 + (ln & 15), (wn0 + j * 16) // 8 + (ln >> 4)) for ln in lanes]
                        for j in range(wtn // 16)]  # fmt: skip
            else:
                rc_b = [[(ks * 32 + ln, (wn0 + j * 8) // 8) for ln in lanes]
                        for j in range(wtn // 8)]  # fmt: skip
            out["ldsm_b"] += [place(a_bytes + e_bytes, b_chunks, rc) for rc in rc_b]
    return out


def _fill_accesses(config: KernelConfig, swizzle: bool) -> list[list[int]]:
    """Every warp's 16-byte cp.async chunks of one stage (common.cuh `ChunkPlan`: thread
    t takes chunks t, t + threads, ...), as 32 lane addresses per warp instruction."""
    a_chunks, b_chunks, a_bytes, e_bytes = _layout(config)
    threads = config.warps * WARP
    tiles = [(config.bm, a_chunks, 0, swizzle)]
    if e_bytes:  # metadata blocks of 8 chunks, never swizzled
        tiles.append((e_bytes // WAVEFRONT_BYTES, 8, a_bytes, False))
    tiles.append((config.bk, b_chunks, a_bytes + e_bytes, swizzle))
    out = []
    for rows, chunks, base, swizzled in tiles:
        total = rows * chunks
        for first in range(0, total, threads):
            for warp_first in range(first, min(first + threads, total), WARP):
                lanes = range(warp_first, min(warp_first + WARP, total))
                out.append([base + CHUNK_BYTES * swz(chunks, i // chunks, i % chunks, swizzled)
                            for i in lanes])  # fmt: skip
    return out


def _mean_replay(accesses: Iterable[list[int]], bytes_per_lane: int) -> float:
    """Mean over accesses of passes taken / passes a conflict-free access needs."""
    ratios = [
        wavefronts(a, bytes_per_lane) / -(-len(a) * bytes_per_lane // WAVEFRONT_BYTES)
        for a in accesses
    ]
    return sum(ratios) / len(ratios) if ratios else 1.0


@lru_cache(maxsize=512)
def replay_factors(config: KernelConfig, swizzle: bool = True) -> dict[str, float]:
    """Per kind (KINDS), the mean bank passes of one instruction of a stage of `config`'s
    kernel over a conflict-free instruction's: 1.0 everywhere for the shipped swizzle."""
    ldsm = _ldsm_accesses(config, swizzle)
    return {
        "ldsm_a": _mean_replay(ldsm["ldsm_a"], CHUNK_BYTES),
        "ldsm_b": _mean_replay(ldsm["ldsm_b"], CHUNK_BYTES),
        "fill": _mean_replay(_fill_accesses(config, swizzle), CHUNK_BYTES),
        "lds": 1.0,  # 32 consecutive metadata words: one pass
    }
