"""What a vendor GEMM library would run for one GEMM on one GPU (`--config auto`).

A user exploring hardware compares against what cuBLAS or cuSPARSELt does on it, not
against this project's fixed 128 x 128 kernels. Libraries differ from a single kernel in
four ways that matter to the model (docs/model.md 5.6):

1. *A menu of tiles.* From 256-wide tiles for large GEMMs down to 16-token tiles for a
   handful of tokens, where most of a 128 x 128 tile would be padding.
2. *Split-K.* When the output has too few tiles to fill the GPU (a long K with few
   tokens), K is cut into pieces that run on different SMs and add fp32 partial sums.
3. *Rasterised CTA order.* Tiles are issued in groups (the `grouped` schedule policy) so
   that the CTAs resident at one moment share operand panels in L2.
4. *The MMA class.* On Hopper the libraries use warpgroup MMA (`wgmma`, operands read
   from shared memory by the tensor core; `tvwsim.sim.sm.WarpgroupMma`) with its own
   efficiency fields; elsewhere mma.sync, like our kernels.
5. *The operand layout* (`Layout`): a library multiplies operands stored either way, and
   streams a K-contiguous operand from DRAM at a lower rate than an M- or N-contiguous
   one on some GPUs (`k_contiguous_stream_efficiency`, `layout_hardware`).

The choice works like a library's heuristic: every candidate of the menu (tile x split
factor) that fits on the SM is estimated in closed form (`estimate_cycles`: waves of
compute, compulsory DRAM bytes, L2 fill bytes, per-CTA fixed cost), the SHORTLIST best
are simulated by the engine, and the fastest simulated one is the choice. Only the
patterns a vendor library multiplies are covered: dense (cuBLAS) and vw (2:4,
cuSPARSELt).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass

from tvwsim.kernels.tile_work import regular_tile_work
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.occupancy import estimate_resources, occupancy
from tvwsim.sim.result import SimResult
from tvwsim.sim.sm import math_pipe_for

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.schedule import ELEMENT_BYTES, INDEX_BYTES, Schedule, build_schedule

LIBRARIES = {"dense": "cuBLAS", "vw": "cuSPARSELt"}
"""The pattern each modelled library multiplies, and the library's name."""

LIBRARY_POLICY = "grouped"
"""CTA order of every library kernel: rasterised in groups (tvwsim.schedule)."""

SHORTLIST = 3
"""Candidates (best by closed-form estimate) that the engine simulates."""

# (bm, bn, bk_dense, warps, stages): the tile menu. bm is the weight side (output
# features), bn the tokens. Larger tiles reuse operands more; smaller ones waste less on
# padding and make more CTAs. The sizes are the usual ones of CUTLASS's and cuBLAS's
# kernel names (256x128, 128x256, 128x128, 128x64, 64x64, and narrow-token tiles down to
# 16 tokens); stages are reduced below when shared memory does not hold them.
MMA_SYNC_TILES = (
    (256, 128, 32, 8, 3),
    (128, 256, 32, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 5),
    (128, 32, 32, 4, 5),
    (128, 16, 32, 4, 5),
)
WGMMA_TILES = (
    (128, 256, 64, 8, 4),
    (256, 128, 64, 8, 4),
    (128, 128, 64, 4, 5),
    (128, 64, 64, 4, 6),
    (64, 128, 64, 4, 6),
    (64, 64, 64, 4, 6),
    (128, 32, 64, 4, 6),
    (64, 16, 64, 4, 6),
)
SPLIT_FACTORS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
"""Split-K factors a library may pick (only while the split output stays under about
two waves and every piece keeps at least two stages)."""


@dataclass(frozen=True)
class Layout:
    """Which operands of the GEMM are stored with K contiguous.

    Our kernels and baselines read W (N x K) row-major, K contiguous, and the activations
    as XT (K x M) row-major, M contiguous (docs/design.md); torch.nn.Linear reads X
    (M x K) row-major, K contiguous. In cuBLAS terms (column-major, A the weight, B the
    tokens; traces/published/README.md) ours is "TT" and torch.nn.Linear's "TN".
    """

    w_k_contiguous: bool = True
    x_k_contiguous: bool = False

    @property
    def blas(self) -> str:
        """The transposes in cuBLAS terms (column-major, A the weight, B the tokens)."""
        return ("T" if self.w_k_contiguous else "N") + ("N" if self.x_k_contiguous else "T")

    @classmethod
    def from_blas(cls, transposes: str, *, argument: str = "--layout") -> Layout:
        """'NN', 'TN', 'NT' or 'TT' (A = the weight, B = the tokens, column-major)."""
        text = str(transposes).strip().upper()
        if len(text) != 2 or any(c not in "NT" for c in text):
            raise InputError(
                argument, f"got {transposes!r}; allowed: NN, NT, TN, TT (transposes of A, B)"
            )
        return cls(w_k_contiguous=text[0] == "T", x_k_contiguous=text[1] == "N")


OURS = Layout()
"""W with K contiguous, activations as XT with M contiguous: our kernels' and baselines'."""


def layout_hardware(hw: Hardware, layout: Layout, schedule: Schedule) -> Hardware:
    """`hw` with the DRAM efficiency a library kernel reaches on `layout`'s operands.

    A stage of a K-contiguous operand is many short row segments (128 rows at K step 32:
    64 bytes from each row, rows K x 2 bytes apart), of an M- or N-contiguous one a few
    long ones. DeepBench's V100 and T4 cuBLAS rows stream a K-contiguous weight at
    0.4-1.0 of the rate of the same weight stored N-contiguous (docs/validation.md,
    "Published silicon"). The engine has one DRAM server, so the launch gets the
    byte-weighted rate of its compulsory streams: each K-contiguous operand at
    `dram_efficiency x k_contiguous_stream_efficiency`, the others (and the output,
    written N-contiguous) at `dram_efficiency`.
    """
    factor = hw.k_contiguous_stream_efficiency
    if factor >= 1.0 or not (layout.w_k_contiguous or layout.x_k_contiguous):
        return hw
    w_bytes = float(schedule.work.weight_bytes)
    x_bytes = float(schedule.m * schedule.k * ELEMENT_BYTES)
    y_bytes = float(schedule.m * schedule.n * ELEMENT_BYTES)
    seconds = (
        (w_bytes / factor if layout.w_k_contiguous else w_bytes)
        + (x_bytes / factor if layout.x_k_contiguous else x_bytes)
        + y_bytes
    )
    efficiency = hw.dram_efficiency * (w_bytes + x_bytes + y_bytes) / seconds
    return dataclasses.replace(hw, dram_efficiency=efficiency)


@dataclass(frozen=True)
class Candidate:
    """One kernel a library could run: a tile, a split factor, and what it would cost."""

    config: KernelConfig
    split_k: int
    estimate_us: float
    """Closed-form estimate (`estimate_cycles`) used to shortlist."""
    simulated_us: float | None
    """The engine's time, for the shortlisted candidates; None for the others."""


@dataclass(frozen=True)
class LibraryChoice:
    """The kernel a library's heuristic picks for one GEMM, and its simulated run."""

    library: str
    """'cuBLAS' or 'cuSPARSELt' (LIBRARIES)."""
    config: KernelConfig
    split_k: int
    schedule: Schedule
    result: SimResult
    candidates: tuple[Candidate, ...]
    """Every candidate considered, best estimate first."""
    layout: Layout = OURS
    """How the operands lie in memory (the DRAM rate of K-major streams depends on it)."""

    def describe(self) -> str:
        split = f", split-K {self.split_k}" if self.split_k > 1 else ""
        return f"{self.library}-like {self.config.name} ({self.config.mma_class}{split})"

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "config": self.config.name,
            "mma_class": self.config.mma_class,
            "split_k": self.split_k,
            "policy": LIBRARY_POLICY,
            "layout": self.layout.blas,
            "candidates": [
                {
                    "config": c.config.name,
                    "split_k": c.split_k,
                    "estimate_us": c.estimate_us,
                    "simulated_us": c.simulated_us,
                }
                for c in self.candidates
            ],
        }


def library_for(pattern: str, *, argument: str = "--config") -> str:
    """The library that multiplies `pattern`; InputError for patterns no library has."""
    if pattern not in LIBRARIES:
        raise InputError(
            argument,
            f"auto picks what a vendor library runs, and libraries multiply "
            f"{', '.join(f'{p} ({lib})' for p, lib in LIBRARIES.items())}; {pattern} has no "
            "library model: name a config of ours instead",
        )
    return LIBRARIES[pattern]


def menu(hw: Hardware, pattern: str) -> list[KernelConfig]:
    """The tile configs a library could run for `pattern` on `hw` that fit on an SM."""
    library_for(pattern)
    mma = "sparse" if pattern == "vw" else "dense"
    wgmma = hw.has_warpgroup_mma
    tiles = WGMMA_TILES if wgmma else MMA_SYNC_TILES
    out = []
    for bm, bn, bk, warps, stages in tiles:
        if mma == "sparse":
            bk = max(bk, 64)  # mma.sp steps K by 64 (tvwsim.config.SPARSE_K_GRANULE)
        for s in range(stages, 1, -1):
            config = KernelConfig(
                bm=bm,
                bn=bn,
                bk=bk,
                warps=warps,
                stages=s,
                mma=mma,
                mma_class="wgmma" if wgmma else "mma.sync",
            )
            if _fits(hw, config):
                out.append(config)
                break
    return out


def _fits(hw: Hardware, config: KernelConfig) -> bool:
    try:
        occupancy(hw, estimate_resources(config))
    except InputError:
        return False
    return True


def split_factors(hw: Hardware, m: int, n: int, k: int, config: KernelConfig) -> list[int]:
    """Split-K factors worth trying: 1, and more while the pieces stay under about two
    waves of one CTA per SM and each keeps at least two stages."""
    tiles = -(-n // config.bm) * -(-m // config.bn)
    stages = -(-k // config.bk)
    return [
        s for s in SPLIT_FACTORS if s == 1 or (tiles * s <= 2 * hw.sm_count and stages >= 2 * s)
    ]


def estimate_cycles(hw: Hardware, schedule: Schedule) -> float:
    """Closed-form cycles of a launch, for ranking candidates (not a prediction).

    The largest of: the busiest SM's math (its CTAs' stages one after another: resident
    CTAs share the pipe), the compulsory DRAM bytes (each operand and the output once,
    plus the split-K workspace), and the L2 fill bytes (every stage's operands); plus the
    per-CTA fixed cost per wave, a DRAM latency for the pipeline to fill, and the launch.
    """
    config, work = schedule.config, schedule.work
    res = estimate_resources(config)
    per_sm = occupancy(hw, res).ctas_per_sm
    stage = math_pipe_for(schedule).stage_cycles(schedule, hw)
    stages = schedule.task_stages()
    ctas = schedule.n_tasks
    busiest = -(-ctas // hw.sm_count)
    math_cycles = busiest * float(stages.mean() if ctas else 0.0) * float(stage.mean())
    out_bytes = schedule.m * schedule.n * ELEMENT_BYTES
    split_bytes = 2 * 4 * schedule.m * schedule.n if schedule.has_split_tasks else 0
    dram_bytes = work.weight_bytes + schedule.m * schedule.k * ELEMENT_BYTES + out_bytes
    dram_cycles = (dram_bytes + split_bytes) / (hw.dram_bytes_per_cycle * hw.dram_efficiency)
    fill = config.weight_stage_bytes + config.activation_stage_bytes
    l2_cycles = float(stages.sum()) * fill / (hw.l2_bytes_per_cycle * hw.l2_efficiency)
    waves = -(-ctas // (hw.sm_count * per_sm))
    launch = hw.launch_overhead_us * hw.clock_mhz
    return (
        launch
        + max(math_cycles, dram_cycles, l2_cycles)
        + waves * hw.cta_fixed_cycles
        + hw.dram_latency_cycles
    )


_CACHE_SIZE = 512
_cache: OrderedDict[tuple, LibraryChoice] = OrderedDict()


def choose(
    hw: Hardware,
    m: int,
    n: int,
    k: int,
    pattern: str = "dense",
    *,
    shortlist: int = SHORTLIST,
    layout: Layout = OURS,
) -> LibraryChoice:
    """The kernel a library would run for an M x N x K GEMM of `pattern` on `hw`, with its
    simulated result (module docstring), its operands stored as `layout` says. Cached per
    (hw, shape, pattern, shortlist, layout)."""
    from tvwsim.sim.engine import simulate

    library = library_for(pattern)
    key = (hw, m, n, k, pattern, shortlist, layout)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    ranked: list[tuple[float, KernelConfig, int, Schedule]] = []
    for config in menu(hw, pattern):
        # A library kernel's work is regular (the shape's alone): one per tile, whatever
        # the split; the schedule adds the grouped order and the split.
        work = regular_tile_work(pattern, n, k, config)
        for split in split_factors(hw, m, n, k, config):
            schedule = build_schedule(work, m, LIBRARY_POLICY, split_k=split)
            cycles = estimate_cycles(layout_hardware(hw, layout, schedule), schedule)
            ranked.append((cycles / hw.clock_mhz, config, split, schedule))
    if not ranked:
        raise InputError("--hw", f"no library tile fits on an SM of {hw.label}")
    ranked.sort(key=lambda c: c[0])
    best: tuple[float, int, SimResult] | None = None
    simulated: dict[int, float] = {}
    for i, (_, config, _, schedule) in enumerate(ranked[: max(1, shortlist)]):
        result = simulate(
            schedule, layout_hardware(hw, layout, schedule), estimate_resources(config)
        )
        simulated[i] = result.time_us
        if best is None or result.time_us < best[0] - 1e-9:
            best = (result.time_us, i, result)
    assert best is not None
    _, index, result = best
    _, config, split, schedule = ranked[index]
    candidates = tuple(
        Candidate(config=c, split_k=s, estimate_us=e, simulated_us=simulated.get(i))
        for i, (e, c, s, _) in enumerate(ranked)
    )
    choice = LibraryChoice(
        library=library,
        config=config,
        split_k=split,
        schedule=schedule,
        result=result,
        candidates=candidates,
        layout=layout,
    )
    _cache[key] = choice
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return choice


def cusparse_csr_us(
    hw: Hardware, m: int, n: int, k: int, nnz: float, *, element_bytes: int = ELEMENT_BYTES
) -> float:
    """Time of a cuSPARSE CSR SpMM, Y (M x N) = X W^T with W (N x K) holding `nnz`
    stored nonzeros, in closed form (docs/model.md 5.6).

    cuSPARSE's CSR SpMM is no tiled kernel: rows of W are split over the SMs and each
    stored nonzero is visited once, whatever the tokens, then multiplied into all M
    tokens on the CUDA cores. So a nonzero costs `csr_nonzero_cycles` of an SM (row
    pointer walk, index and value loads, the gather's address) plus M FMAs at
    `cuda_core_flops_per_clk_per_sm / 2 x cuda_core_efficiency`. The measured times have
    that shape: nnz x (c0 + c1 x M), with c0 far above one FMA (docs/validation.md,
    "Published silicon"). DRAM sets a floor: the CSR arrays (a value and an int32 index
    per nonzero, N + 1 row pointers), X and Y once each.
    """
    if min(m, n, k) <= 0 or nnz < 0:
        raise InputError("shape", f"got M={m}, N={n}, K={k}, nnz={nnz}: need positive sizes")
    fma_per_cycle = hw.cuda_core_flops_per_clk_per_sm / 2.0 * hw.cuda_core_efficiency
    math_cycles = nnz * (hw.csr_nonzero_cycles + m / fma_per_cycle) / hw.sm_count
    dram_bytes = (
        nnz * (element_bytes + INDEX_BYTES)
        + (n + 1) * INDEX_BYTES
        + (m * k + m * n) * element_bytes
    )
    dram_cycles = dram_bytes / (hw.dram_bytes_per_cycle * hw.dram_efficiency)
    kernel_cycles = max(math_cycles, dram_cycles) + hw.dram_latency_cycles
    return kernel_cycles / hw.clock_mhz + hw.launch_overhead_us


def library_tflops(choice: LibraryChoice) -> float:
    """Dense-equivalent TFLOP/s of the chosen kernel (2 M N K / time)."""
    r = choice.result
    return 2.0 * r.m * r.n * r.k / (r.time_us * 1e-6) / 1e12 if r.time_us > 0 else math.nan
