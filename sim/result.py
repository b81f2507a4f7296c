"""`SimResult`: what one simulated GEMM launch did, and why it took as long as it did.

Besides the headline figures (cycles, microseconds, TFLOP/s) a result keeps every CTA's
SM, slot and start/end cycle - the raw material of the timeline picture - and the busy
time of each shared resource, from which the bottleneck is named:

    compute share  = tensor/CUDA-core busy cycles summed over SMs / (SMs that had work x
                     kernel cycles)
    L2 share       = L2 server busy cycles / kernel cycles
    DRAM share     = DRAM server busy cycles before the kernel's end / kernel cycles
    tail share     = (kernel end - first moment an SM that had work runs out of it for
                      good) / kernel cycles

Every share is a fraction of the same time base, the kernel's cycles, so none exceeds 1.
The DRAM server needs care: an output tile's write-back is queued on it when the CTA
stores the tile, but the CTA does not wait for it (the tile sits in L2), so the last
write-backs can still be queued when the last CTA retires. Busy cycles after the kernel's
end are not part of the kernel's time; `dram_busy_until_cycles` says when the server
went idle, and the share counts only the busy cycles before the end (the server is busy
without a gap from the end until then: every request was queued before the end).

Rule (`name_bottleneck`), first match wins:

1. the largest of the compute, L2 and DRAM shares is at least BOUND_SHARE (0.75):
   'compute' or 'memory bandwidth' (the detail says L2 or DRAM) - the resource is busy
   three quarters of the time, so speeding anything else up cannot help much;
2. the tail share is at least TAIL_SHARE (0.30): 'imbalance tail' - a large part of the
   run has some SMs already idle while others still work: a partial last wave (wave
   quantisation) or a few heavy CTAs (skewed tw tiles);
3. otherwise 'latency' - no resource is saturated and the SMs are not idle for lack of
   work: CTAs wait on loads that too few stages or too few resident CTAs cannot cover.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from tvwsim.config import WGMMA_SUFFIX
from tvwsim.pattern_spec import pattern_spec

BOUND_SHARE = 0.75
TAIL_SHARE = 0.30
BOTTLENECKS = ("compute", "memory bandwidth", "latency", "imbalance tail")


def name_bottleneck(
    compute_share: float,
    l2_share: float,
    dram_share: float,
    tail_share: float,
    *,
    math_unit: str = "tensor/CUDA cores",
) -> tuple[str, str]:
    """(bottleneck, detail) by the rule in the module docstring; `math_unit` names what
    the compute share measures in the detail."""
    shares = {"compute": compute_share, "L2": l2_share, "DRAM": dram_share}
    # Stable choice on ties: compute, then L2, then DRAM.
    top = max(shares, key=lambda name: shares[name])
    if shares[top] >= BOUND_SHARE:
        if top == "compute":
            return "compute", f"{math_unit} busy {compute_share:.0%} of the time"
        return "memory bandwidth", f"{top} busy {shares[top]:.0%} of the time"
    if tail_share >= TAIL_SHARE:
        return "imbalance tail", f"{tail_share:.0%} of the time some SMs had run out of work"
    return "latency", (
        f"nothing saturated (compute {compute_share:.0%}, L2 {l2_share:.0%}, "
        f"DRAM {dram_share:.0%}): loads in flight do not cover their latency"
    )


@dataclass(frozen=True, eq=False)
class SimResult:
    """One simulated kernel launch. Cycles are SM clock cycles."""

    hardware: str
    """The effective hardware: preset name and overrides, 'a100 (sm_count=216)'."""
    pattern: str
    policy: str
    config: str
    """Kernel variant name, e.g. '128x128x32s3w4'."""
    mma: str
    """The config's mma kind, 'dense' or 'sparse'; ew's math runs on CUDA cores instead
    (`compute_unit`)."""
    m: int
    n: int
    k: int
    achieved_sparsity: float
    """1 - kept weights / (N x K)."""
    clock_mhz: float

    cycles: float
    """Total: launch overhead + kernel + split-K passes."""
    kernel_cycles: float
    """From the first CTA's dispatch to the last CTA's retirement."""
    launch_cycles: float
    reduction_cycles: float
    """Split-K workspace zero-fill and fp32 -> fp16 conversion passes (0 without splits)."""

    useful_flops: float
    """2 x M x kept weights."""
    dense_flops: float
    """2 x M x N x K: the dense GEMM's work."""

    ctas: int
    ctas_per_sm: int
    occupancy_limited_by: str
    resources_source: str
    """'manifest' (compiled kernel) or 'estimate' (from the config)."""
    registers_per_thread: int
    smem_bytes_per_cta: int
    waves: int
    """ceil(ctas / (SMs x CTAs per SM))."""
    sm_count: int

    compute_busy_cycles: float
    """Tensor-core (CUDA-core for ew) busy cycles summed over all SMs."""
    l2_busy_cycles: float
    dram_busy_cycles: float
    """All DRAM service, including write-backs still queued at the kernel's end."""
    l2_bytes: float
    """Bytes moved through L2 (loads and stores)."""
    dram_bytes: float
    """Bytes moved to or from DRAM (misses, output write-back, split-K passes)."""
    l2_hit_rate: float

    tail_start_cycles: float
    """First moment an SM that had work runs out of it for good (kernel-relative)."""
    events: int
    """SimPy events processed (a measure of simulation cost)."""

    cta_sm: np.ndarray = field(repr=False)
    """int32 [ctas]: SM that ran CTA i."""
    cta_slot: np.ndarray = field(repr=False)
    """int32 [ctas]: resident slot of that SM (0 .. ctas_per_sm-1)."""
    cta_start_cycles: np.ndarray = field(repr=False)
    """float64 [ctas]: dispatch time, kernel-relative."""
    cta_end_cycles: np.ndarray = field(repr=False)
    """float64 [ctas]: retirement time, kernel-relative."""
    cta_tile: np.ndarray = field(repr=False)
    """int32 [ctas]: weight tile of CTA i (for colouring timelines)."""
    dram_busy_until_cycles: float | None = None
    """When the DRAM server finished its last request, kernel-relative: after
    `kernel_cycles` when output write-backs were still queued at the end. None from an
    engine that does not say; the DRAM share then counts every busy cycle."""

    # -- derived figures ------------------------------------------------------------------
    @property
    def time_us(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def kernel_us(self) -> float:
        return self.kernel_cycles / self.clock_mhz

    @property
    def useful_tflops(self) -> float:
        """Useful (kept-weight) FLOPs per second over the whole time, in TFLOP/s."""
        return self.useful_flops / (self.time_us * 1e-6) / 1e12

    @property
    def dense_equivalent_tflops(self) -> float:
        """The dense GEMM's FLOPs over this time: what a dense kernel would need to reach."""
        return self.dense_flops / (self.time_us * 1e-6) / 1e12

    def _share(self, busy: float, servers: int = 1) -> float:
        if self.kernel_cycles <= 0:
            return 0.0
        return busy / (servers * self.kernel_cycles)

    @property
    def compute_utilisation(self) -> float:
        """Mean fraction of the kernel time the tensor (or CUDA) cores of the SMs that had
        work were busy. SMs the grid never reached are left out here (a grid smaller than
        the GPU is visible in `sms_used`), so a few CTAs that saturate their own SMs'
        tensor cores still read as compute-bound."""
        return self._share(self.compute_busy_cycles, max(1, self.sms_used))

    @property
    def sms_used(self) -> int:
        """SMs that ran at least one CTA."""
        return int(np.unique(self.cta_sm[self.cta_sm >= 0]).size)

    @property
    def l2_utilisation(self) -> float:
        return self._share(self.l2_busy_cycles)

    @property
    def dram_busy_in_kernel_cycles(self) -> float:
        """DRAM busy cycles before the kernel's end (module docstring)."""
        if self.dram_busy_until_cycles is None:
            return self.dram_busy_cycles
        after_end = max(0.0, self.dram_busy_until_cycles - self.kernel_cycles)
        return max(0.0, self.dram_busy_cycles - after_end)

    @property
    def dram_utilisation(self) -> float:
        return self._share(self.dram_busy_in_kernel_cycles)

    @property
    def compute_unit(self) -> str:
        """'tensor' (mma on tensor cores) or 'cuda' (ew's CSR SpMM on CUDA cores)."""
        return pattern_spec(self.pattern).compute_unit

    @property
    def math_label(self) -> str:
        """Where the math ran, in words: 'dense mma.sync on tensor cores', ..."""
        if self.compute_unit == "cuda":
            return "CSR SpMM on CUDA cores, no tensor cores"
        if self.config.endswith(WGMMA_SUFFIX):
            kind = "sparse wgmma.sp" if self.mma == "sparse" else "dense wgmma"
            return f"{kind} (warpgroup MMA) on tensor cores"
        return f"{'sparse mma.sp' if self.mma == 'sparse' else 'dense mma.sync'} on tensor cores"

    @property
    def tail_share(self) -> float:
        """Fraction of the kernel time after the first SM ran out of work for good."""
        if self.kernel_cycles <= 0:
            return 0.0
        return max(0.0, (self.kernel_cycles - self.tail_start_cycles) / self.kernel_cycles)

    @property
    def bottleneck(self) -> str:
        """One of BOTTLENECKS (rule in the module docstring)."""
        return self._bottleneck()[0]

    @property
    def bottleneck_detail(self) -> str:
        detail = self._bottleneck()[1]
        if self.sms_used < self.sm_count:
            detail += f"; only {self.sms_used} of {self.sm_count} SMs had work ({self.ctas} CTAs)"
        return detail

    def _bottleneck(self) -> tuple[str, str]:
        return name_bottleneck(
            self.compute_utilisation,
            self.l2_utilisation,
            self.dram_utilisation,
            self.tail_share,
            math_unit="CUDA cores" if self.compute_unit == "cuda" else "tensor cores",
        )

    def busy_intervals(self) -> list[np.ndarray]:
        """Per SM, float64 [k, 2] disjoint (start, end) intervals when it held a CTA."""
        out = []
        for sm in range(self.sm_count):
            pick = self.cta_sm == sm
            starts, ends = self.cta_start_cycles[pick], self.cta_end_cycles[pick]
            order = np.argsort(starts, kind="stable")
            merged: list[list[float]] = []
            for s, e in zip(starts[order], ends[order], strict=True):
                if merged and s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([float(s), float(e)])
            out.append(np.array(merged, dtype=np.float64).reshape(-1, 2))
        return out

    def to_dict(self, *, include_ctas: bool = False) -> dict:
        """Plain JSON-ready figures (per-CTA arrays only when asked)."""
        skip = {"cta_sm", "cta_slot", "cta_start_cycles", "cta_end_cycles", "cta_tile"}
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        if self.compute_unit == "cuda":
            data["mma"] = None  # no tensor-core instruction: the config only sets the tiling
        data.update(
            compute_unit=self.compute_unit,
            dram_busy_in_kernel_cycles=self.dram_busy_in_kernel_cycles,
            sms_used=self.sms_used,
            time_us=self.time_us,
            kernel_us=self.kernel_us,
            useful_tflops=self.useful_tflops,
            dense_equivalent_tflops=self.dense_equivalent_tflops,
            compute_utilisation=self.compute_utilisation,
            l2_utilisation=self.l2_utilisation,
            dram_utilisation=self.dram_utilisation,
            tail_share=self.tail_share,
            bottleneck=self.bottleneck,
            bottleneck_detail=self.bottleneck_detail,
        )
        if include_ctas:
            for name in sorted(skip):
                data[name] = getattr(self, name).tolist()
        return data
