"""`Hardware`: a GPU described as data.

One frozen dataclass; presets are TOML files in `sim/presets/` (one per GPU, every figure
with its source in a comment). Any field can be overridden to describe hypothetical
hardware (`Hardware.with_overrides`, `--set key=value` on the command line). The last
group of fields are the model's efficiency parameters: the shipped presets carry
documented first guesses, a calibrated preset carries values fitted to measurements.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tvwsim.sim.memory import l2_policy

from tvwsim.errors import InputError
from tvwsim.manifest import check_arch


@dataclass(frozen=True)
class Hardware:
    """A GPU for the model. Rates are per SM per SM clock cycle unless the name says else."""

    name: str
    """Preset name, e.g. 'a100'."""
    description: str = ""
    """Human-readable part name, e.g. 'NVIDIA A100 SXM4 40 GB'."""
    arch: str = ""
    """Compute target of its kernels, 'sm_NN' or 'sm_NNa' (e.g. 'sm_80'): picks the
    compiled kernels' resources from the kernel manifest. '' for a GPU no kernel is
    built for (hypothetical hardware): its kernels' resources are estimated."""

    # -- compute ----------------------------------------------------------------------
    sm_count: int = 108
    """Streaming multiprocessors."""
    clock_mhz: float = 1410.0
    """SM clock the model assumes (cycles are SM cycles)."""
    dense_flops_per_clk_per_sm: float = 2048.0
    """fp16 tensor-core FLOP/clock/SM with fp32 accumulation (mma.sync m16n8k16)."""
    sparse_tflop_ratio: float = 2.0
    """Sparse (2:4, mma.sp) over dense tensor-core rate in logical FLOPs; 0 = no sparse
    tensor core (a 2:4 kernel then runs its logical work on the dense rate)."""
    cuda_core_flops_per_clk_per_sm: float = 128.0
    """fp32 FMA FLOP/clock/SM on the CUDA cores (unstructured sparse kernels)."""

    # -- on-chip resources ------------------------------------------------------------
    smem_per_sm_bytes: int = 167936
    """Shared memory per SM usable by CTAs."""
    smem_per_cta_bytes: int = 166912
    """Largest shared memory one CTA may allocate (opt-in maximum)."""
    regs_per_sm: int = 65536
    """32-bit registers per SM."""
    max_regs_per_thread: int = 255
    """Register limit per thread."""
    max_threads_per_sm: int = 2048
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    smem_bytes_per_clk_per_sm: float = 128.0
    """Shared-memory bandwidth per SM (32 banks x 4 bytes)."""
    has_cp_async: bool = True
    """Asynchronous global->shared copies (sm_80+); without it loads stage through
    registers and overlap less."""
    has_warpgroup_mma: bool = False
    """Hopper's warpgroup MMA (wgmma, sm_90a): the tensor core reads its operands from
    shared memory. Only vendor libraries use it here (`tvwsim.sim.library`); this
    project's kernels are mma.sync class."""

    # -- memory system ------------------------------------------------------------------
    l2_bytes: int = 41943040
    """L2 cache capacity."""
    l2_policy: str = "lru"
    """The L2 residency model that decides hits (`tvwsim.sim.memory.L2_POLICIES`); 'lru':
    least recently used chunks, with per-row residency of activation chunks, outputs
    written through to DRAM; 'lru-writeback': the same, outputs kept in L2 as dirty lines
    until evicted."""
    l2_bandwidth_gbps: float = 5400.0
    """L2 bandwidth, GB/s (10^9 bytes/s)."""
    dram_bandwidth_gbps: float = 1555.0
    """DRAM peak bandwidth, GB/s."""
    l2_latency_cycles: float = 220.0
    """Load latency of an L2 hit."""
    dram_latency_cycles: float = 540.0
    """Load latency of a DRAM access."""
    launch_overhead_us: float = 4.0
    """Kernel launch overhead, counted once per kernel."""

    # -- efficiency parameters (assumed in shipped presets; tvwsim calibrate fits them)
    dram_efficiency: float = 0.85
    """Achieved fraction of DRAM peak bandwidth."""
    l2_efficiency: float = 0.85
    """Achieved fraction of L2 bandwidth."""
    mma_efficiency_dense: float = 0.85
    """Achieved fraction of the dense tensor-core rate in a main loop."""
    mma_efficiency_sparse: float = 0.85
    """Achieved fraction of the sparse tensor-core rate in a main loop."""
    wgmma_efficiency_dense: float = 0.78
    """Achieved fraction of the dense tensor-core rate by warpgroup-MMA (library) kernels;
    used only where `has_warpgroup_mma`."""
    wgmma_efficiency_sparse: float = 0.6
    """Achieved fraction of the sparse tensor-core rate by wgmma.sp (library) kernels."""
    k_contiguous_stream_efficiency: float = 1.0
    """Fraction of `dram_efficiency` a vendor library kernel reaches while streaming an
    operand stored with K contiguous (short row segments per tile) rather than M or N
    contiguous; 1: no difference (`tvwsim.sim.library.layout_hardware`)."""
    cuda_core_efficiency: float = 0.85
    """Achieved fraction of the CUDA-core FMA rate in ew's CSR SpMM main loop."""
    csr_nonzero_cycles: float = 10.0
    """SM cycles a vendor CSR SpMM (cuSPARSE) spends per stored nonzero besides its FMAs:
    row pointer walk, index and value loads, the gather's address
    (`tvwsim.sim.library.cusparse_csr_us`)."""
    cta_fixed_cycles: float = 500.0
    """Per-CTA fixed cost: launch into a slot, index setup, epilogue bookkeeping."""

    # -- the SM core (tvwsim.sim.core: the kernels' SASS loops, cycle by cycle) ---------
    core_sub_partitions: int = 4
    """SM sub-partitions (processing blocks), each with its own warp scheduler, tensor
    core and pipes; a quarter of the SM's rates each."""
    core_issue_width: int = 1
    """Instructions one warp scheduler issues per clock."""
    core_mma_sync_peak_fraction: float = 1.0
    """Share of `dense_flops_per_clk_per_sm` that mma.sync (HMMA) issue can reach: 1 where
    the peak is an mma.sync peak (Ampere), below 1 where it needs wgmma (Hopper)."""
    core_mma_sp_peak_fraction: float = 1.0
    """Share of the sparse (2:4) rate that mma.sp (HMMA.SP) issue can reach."""
    core_hmma_latency_cycles: float = 33.0
    """Cycles from an HMMA m16n8k16 (fp32 accumulate) issue to its result (a dependent
    HMMA's earliest issue)."""
    core_hmma_sp_latency_cycles: float = 33.0
    """Likewise for HMMA.SP m16n8k32."""
    core_lsu_interval_cycles: float = 4.0
    """Cycles between two memory instructions (LDSM, LDS, STS, LDGSTS, LDG) of one
    scheduler: 32 lanes over its load/store units."""
    core_smem_latency_cycles: float = 30.0
    """Cycles from a shared-memory read leaving the port to its registers (ldmatrix, LDS)."""
    core_alu_interval_cycles: float = 2.0
    """Cycles between two instructions on one scheduler's integer (or FMA) pipe: 32 lanes
    over 16 units."""
    core_alu_latency_cycles: float = 4.0
    """Cycles from an ALU / FMA instruction to a dependent one."""
    core_barrier_cycles: float = 20.0
    """Cycles from the last warp's arrival at BAR.SYNC to the CTA's release."""
    core_model: bool = False
    """True: the engine takes our kernels' stage time from the core model above (their
    SASS loop, cycle by cycle; docs/model.md 5.7) instead of FLOPs / (rate x
    mma_efficiency). Kernels with no stored loop (vendor libraries, configs we do not
    ship, GPUs without an arch of ours) keep the efficiency rule."""

    source: str = ""
    """Where the figures come from (a calibrated preset names its measurement files)."""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    """Free-form provenance (calibration split, residuals); never used by the model."""
    overrides: tuple[tuple[str, object], ...] = ()
    """(field, value) pairs `with_overrides` changed from the preset `name` names, in
    order: with `name` they say which GPU this is (`label`), so every output can say it."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "arch":
                if self.arch != "":
                    check_arch(self.arch, "arch")
                continue
            if f.name == "l2_policy":
                l2_policy(self.l2_policy)  # InputError('l2_policy') for an unknown name
                continue
            if f.name in ("name", "description", "source", "extra", "overrides"):
                continue
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise InputError(f.name, f"must be true or false, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f.name, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                # float('nan') passes every `<=` check below, so refuse it up front.
                raise InputError(f.name, f"must be a finite number, got {value!r}")
            if f.type in ("int", int) and not float(value).is_integer():
                raise InputError(f.name, f"must be an integer, got {value!r}")
            # Normalise so that 108.0 from a file is the int 108 the engine can range() over,
            # and an int clock from TOML prints like every other float field.
            normal = int(value) if f.type in ("int", int) else float(value)
            object.__setattr__(self, f.name, normal)
            value = normal
            if f.name == "sparse_tflop_ratio":
                if value != 0 and not 1.0 <= value <= 16.0:
                    raise InputError(f.name, f"must be 0 (none) or in [1, 16], got {value!r}")
            elif "_efficiency" in f.name or f.name.endswith("_fraction"):
                if not 0.0 < value <= 1.0:
                    raise InputError(f.name, f"must be in (0, 1], got {value!r}")
            elif f.name in ("cta_fixed_cycles", "launch_overhead_us"):
                if value < 0:
                    raise InputError(f.name, f"must be >= 0, got {value!r}")
            elif value <= 0:
                raise InputError(f.name, f"must be > 0, got {value!r}")
        if self.smem_per_cta_bytes > self.smem_per_sm_bytes:
            raise InputError(
                "smem_per_cta_bytes",
                f"{self.smem_per_cta_bytes} exceeds smem_per_sm_bytes {self.smem_per_sm_bytes}",
            )

    # -- derived ------------------------------------------------------------------------
    @property
    def has_sparse_tensor_cores(self) -> bool:
        return self.sparse_tflop_ratio > 0

    @property
    def sparse_flops_per_clk_per_sm(self) -> float:
        """Logical (dense-equivalent) FLOP/clock/SM of 2:4 mma.sp; dense rate if none."""
        ratio = self.sparse_tflop_ratio if self.has_sparse_tensor_cores else 1.0
        return self.dense_flops_per_clk_per_sm * ratio

    @property
    def dense_peak_tflops(self) -> float:
        return self.dense_flops_per_clk_per_sm * self.sm_count * self.clock_mhz * 1e6 / 1e12

    @property
    def dram_bytes_per_cycle(self) -> float:
        """Peak DRAM bytes per SM clock cycle, whole GPU."""
        return self.dram_bandwidth_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def l2_bytes_per_cycle(self) -> float:
        """Peak L2 bytes per SM clock cycle, whole GPU."""
        return self.l2_bandwidth_gbps * 1e9 / (self.clock_mhz * 1e6)

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.clock_mhz

    def with_overrides(self, overrides: dict[str, object]) -> Hardware:
        """A copy with fields replaced; unknown keys and bad values raise InputError."""
        known = {f.name: f for f in dataclasses.fields(self) if f.name not in NOT_OVERRIDABLE}
        changes = {}
        for key, value in overrides.items():
            if key not in known:
                raise InputError(
                    "--set", f"unknown hardware field {key!r}; known: {', '.join(sorted(known))}"
                )
            changes[key] = coerce_field(key, known[key].type, value)
        changed = dataclasses.replace(self, **changes)
        # Record the normalised values (216.0 given for an int field is 216).
        recorded = {**dict(self.overrides), **{key: getattr(changed, key) for key in changes}}
        return dataclasses.replace(changed, overrides=tuple(recorded.items()))

    @property
    def label(self) -> str:
        """The preset's name and what was overridden: 'a100', 'a100 (sm_count=216)'."""
        if not self.overrides:
            return self.name
        changed = ", ".join(f"{key}={_value_text(value)}" for key, value in self.overrides)
        return f"{self.name} ({changed})"


NOT_OVERRIDABLE = ("extra", "overrides")
"""Fields `--set` cannot change: free-form provenance and the record of overrides."""


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def coerce_field(key: str, type_name: object, value: object) -> object:
    """Turn a command-line string (or TOML value) into the field's type, or raise."""
    type_name = getattr(type_name, "__name__", type_name)
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if type_name == "bool":
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if type_name == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if type_name == "float":
            return float(text)
    except ValueError:
        wanted = {"int": "an integer", "float": "a number", "bool": "true or false"}
        problem = f"expected {wanted.get(type_name, type_name)}, got {value!r}"
        raise InputError(key, problem) from None
    return text
