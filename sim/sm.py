"""A streaming multiprocessor: its resident-CTA slots and the math pipe they share.

Covers
------
`Sm` (one SM: its slots and its pipe) and the math pipes: `TensorCoreMma` (mma.sync /
mma.sp, the tiled kernels), `WarpgroupMma` (Hopper's wgmma, what vendor libraries run on
sm_90) and `CudaCores` (ew's CSR SpMM). A pipe answers two questions:
how long does a stage hold me (`stage_cycles`, for every stage of a schedule at once), and
when is a stage queued now done (`reserve`).

Scenario
--------
The CTAs resident on one SM take turns on its math pipe, first come first served: a stage
queued while another CTA's stage is computing waits for it. So two compute-bound CTAs on
an SM each run at half speed and a CTA alone runs at full speed. A stage holds the pipe
for `max(FLOPs / (rate x efficiency), shared-memory bytes / shared-memory bandwidth)`
(docs/model.md 5.3).

Like the bandwidth servers (`tvwsim.sim.memory`) the pipe is analytic: `reserve` returns
the completion time at once, exact for a FIFO server fed in time order, which is how the
CTAs call it. A new kind of math unit (a Hopper warpgroup MMA, say) is a new `MathPipe`
subclass beside these two, chosen in `math_pipe_for`.
"""

from __future__ import annotations

import numpy as np
from tvwsim.sim.hardware import Hardware

from tvwsim.config import KernelConfig
from tvwsim.schedule import ELEMENT_BYTES, Schedule


def stage_smem_bytes(schedule: Schedule) -> float:
    """Shared-memory bytes one tensor-core stage of `schedule`'s kernel moves
    (`config_smem_bytes`)."""
    return config_smem_bytes(schedule.config)


def config_smem_bytes(c: KernelConfig) -> float:
    """Shared-memory bytes one mma.sync stage of kernel `c` moves: the fill by the stage's
    loads plus every warp's fragment reads (a warp reads the A rows of its warp row and
    the B columns of its warp column, so A is read warps_n times and B warps_m times)."""
    warps_m, warps_n = c.warp_grid  # the split the kernel is compiled with
    fill = c.weight_stage_bytes + c.activation_stage_bytes
    return fill + warps_n * c.weight_stage_bytes + warps_m * c.activation_stage_bytes


class MathPipe:
    """One SM's math unit, shared first-come-first-served by the SM's resident CTAs.

    Subclasses say how long a stage holds the pipe (`stage_cycles`); the queueing is here.
    """

    __slots__ = ("free_at", "busy_cycles")

    def __init__(self) -> None:
        self.free_at = 0.0
        """Time the last queued stage finishes."""
        self.busy_cycles = 0.0
        """Total time stages held the pipe: utilisation = busy_cycles / elapsed."""

    @staticmethod
    def stage_cycles(
        schedule: Schedule, hw: Hardware, ctas_per_sm: int | None = None
    ) -> np.ndarray:
        """float64 [stages of schedule.work]: cycles each stage holds the pipe, when
        `ctas_per_sm` CTAs share the SM (the launch's occupancy; None: unknown)."""
        raise NotImplementedError

    def reserve(self, now: float, cycles: float) -> float:
        """Queue a stage of `cycles` at `now` (non-decreasing across calls); return when done."""
        begin = self.free_at if self.free_at > now else now
        self.free_at = begin + cycles
        self.busy_cycles += cycles
        return self.free_at


class TensorCoreMma(MathPipe):
    """The tensor cores driven by mma.sync (dense) or mma.sp (2:4 sparse).

    A stage holds the pipe for FLOPs / (rate x mma_efficiency), floored by its
    shared-memory bytes; with `Hardware.core_model`, for the time the cycle-level core
    model gives the kernel's SASS loop (docs/model.md 5.7), where one is stored."""

    __slots__ = ()

    @staticmethod
    def stage_cycles(
        schedule: Schedule, hw: Hardware, ctas_per_sm: int | None = None
    ) -> np.ndarray:
        flops = schedule.work.stage_flops
        if hw.core_model:
            # The kernel's own SASS loop, cycle by cycle (tvwsim.sim.core), with the CTAs
            # that share the SM: the SM time of one CTA-stage, for a full stage.
            from tvwsim.sim.core.kernel import core_stage_cycles

            c = schedule.config
            core = core_stage_cycles(hw, schedule.pattern, c, ctas_per_sm)
            if core is not None:
                return core * flops / (2.0 * c.bm * c.bn * c.bk)
        return efficiency_stage_cycles(schedule.config, hw, flops)


def efficiency_stage_cycles(config: KernelConfig, hw: Hardware, flops):
    """The efficiency rule of `TensorCoreMma` (docs/model.md 5.3) for stages of `flops`
    (a number or an array): FLOPs / (rate x mma_efficiency), floored by the stage's
    shared-memory bytes."""
    if config.mma == "sparse" and hw.has_sparse_tensor_cores:
        rate = hw.sparse_flops_per_clk_per_sm * hw.mma_efficiency_sparse
    else:
        # No sparse tensor core: the 2:4 kernel's logical work runs densely.
        rate = hw.dense_flops_per_clk_per_sm * hw.mma_efficiency_dense
    # Every stage moves the same shared-memory bytes (padding and absent bw blocks
    # included), so a fast mma hits this floor.
    return np.maximum(flops / rate, config_smem_bytes(config) / hw.smem_bytes_per_clk_per_sm)


class WarpgroupMma(MathPipe):
    """Hopper's warpgroup MMA (wgmma / wgmma.sp), the class vendor libraries run on sm_90.

    The tensor core reads both operands from shared memory itself, so no warp loads
    fragments into registers: a stage's shared-memory traffic is the fill plus one read
    of the weight slice by the warpgroup that owns it and one read of the activation
    stage by every warpgroup (each covers its own rows of the weight side and every
    token of the tile). Its rate is the preset's `wgmma_efficiency_*` share of the peak.
    """

    __slots__ = ()

    @staticmethod
    def stage_cycles(
        schedule: Schedule, hw: Hardware, ctas_per_sm: int | None = None
    ) -> np.ndarray:
        c = schedule.config
        flops = schedule.work.stage_flops
        if c.mma == "sparse" and hw.has_sparse_tensor_cores:
            rate = hw.sparse_flops_per_clk_per_sm * hw.wgmma_efficiency_sparse
        else:
            rate = hw.dense_flops_per_clk_per_sm * hw.wgmma_efficiency_dense
        warpgroups = max(1, c.warps // 4)
        fill = c.weight_stage_bytes + c.activation_stage_bytes
        smem = fill + c.weight_stage_bytes + warpgroups * c.activation_stage_bytes
        return np.maximum(flops / rate, np.full(flops.shape, smem / hw.smem_bytes_per_clk_per_sm))


class CudaCores(MathPipe):
    """The fp32 FMA lanes, running ew's CSR SpMM (one FMA per kept weight and token)."""

    __slots__ = ()

    @staticmethod
    def stage_cycles(
        schedule: Schedule, hw: Hardware, ctas_per_sm: int | None = None
    ) -> np.ndarray:
        flops = schedule.work.stage_flops
        rate = hw.cuda_core_flops_per_clk_per_sm * hw.cuda_core_efficiency
        # Each FMA reads one activation element (2 B) from shared memory; the stage's
        # rows are staged there first.
        smem = flops / 2 * ELEMENT_BYTES + schedule.config.activation_stage_bytes
        return np.maximum(flops / rate, smem / hw.smem_bytes_per_clk_per_sm)


def math_pipe_for(schedule: Schedule) -> type[MathPipe]:
    """The pipe a schedule's kernel computes on: CUDA cores for ew, else the tensor cores
    driven the way its config says (mma.sync or warpgroup MMA)."""
    if schedule.work.compute_unit == "cuda":
        return CudaCores
    return WarpgroupMma if schedule.config.mma_class == "wgmma" else TensorCoreMma


class Sm:
    """One streaming multiprocessor: `slots` resident-CTA slots sharing one math pipe."""

    __slots__ = ("index", "slots", "math")

    def __init__(self, index: int, slots: int, math: MathPipe):
        self.index = index
        """Position on the GPU, 0 .. sm_count - 1."""
        self.slots = slots
        """CTAs resident at once (`Occupancy.ctas_per_sm`)."""
        self.math = math
        """The math pipe its resident CTAs share."""
