"""What a sweep measures: points, how each is timed, and what an executor reports back.

Covers the vocabulary every part of validation shares - the spec that expands into
points, the runner that writes a row per point, the GPU executor and the vendor
baselines that measure them: implementations, the `SweepPoint` and its key, the
`TimingPlan`, the `Measurement` an executor returns, and `PointSkipped`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tvwsim.config import KernelConfig

BASELINES = ("cublas", "cusparselt", "cusparse-csr", "cusparse-bsr")
"""Vendor implementations, timed through torch on the same shapes."""

IMPLEMENTATIONS = ("tvwsim", *BASELINES)

BASELINE_PATTERN = {
    "cublas": "dense",
    "cusparselt": "vw",
    "cusparse-csr": "ew",
    "cusparse-bsr": "bw",
}
"""The sparsity pattern of the weight each vendor library multiplies."""

VENDOR = "vendor"
"""`config` and `policy` of a baseline row: the library picks its own kernel and order."""

MIN_REPEATS = 20
"""Fewest timed launches a point may have: a median of few runs is noise."""
DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
DEFAULT_BLOCK = 32
"""Block side of bw / BSR when a spec names none."""


def format_sparsity(value: float) -> str:
    """Sparsity as it appears in keys: shortest exact-enough decimal ('0.75', '0')."""
    return f"{float(value):.6g}"


@dataclass(frozen=True)
class SweepPoint:
    """One kernel launch to time: what runs, on which GEMM, with which weight."""

    implementation: str
    """'tvwsim' (our kernel) or a vendor baseline (BASELINES)."""
    pattern: str
    m: int
    """Tokens (rows of X)."""
    n: int
    """Output features (rows of W)."""
    k: int
    sparsity: float
    """Target sparsity of the pruned weight."""
    config: KernelConfig | None
    """Our kernel's variant; None for vendor baselines."""
    policy: str
    """Scheduling policy of our kernel; 'vendor' for baselines."""
    seed: int = 0
    """Seed of the weight (`tvwsim.kernels.prepare.synthetic_weight`) and of X."""
    block: int = DEFAULT_BLOCK
    """Block side of bw / BSR."""

    @property
    def key(self) -> str:
        """Deterministic identity of the point; resume skips keys already measured."""
        config = self.config.name if self.config is not None else VENDOR
        parts = [
            self.implementation,
            self.pattern,
            f"{self.m}x{self.n}x{self.k}",
            f"s{format_sparsity(self.sparsity)}",
            config,
            self.policy,
            f"seed{self.seed}",
        ]
        if self.pattern == "bw":
            parts.append(f"b{self.block}")
        return "/".join(parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.m, self.n, self.k)


@dataclass(frozen=True)
class TimingPlan:
    """How each point is timed."""

    warmup: int = DEFAULT_WARMUP
    """Untimed launches before the timed ones."""
    repeats: int = DEFAULT_REPEATS
    """Timed launches (at least MIN_REPEATS); the row keeps them all and their median."""


@dataclass(frozen=True)
class Measurement:
    """What an executor reports for one point."""

    kernel: str
    """The entry point or vendor routine that ran, e.g. 'tvw_gemm' or 'torch.mm (cuBLAS)'."""
    times_us: tuple[float, ...]
    """Every timed run, in order."""
    max_rel_error: float | None
    """max |y - reference| / max |reference| over the checked tokens; None if unchecked."""
    achieved_sparsity: float
    schedule_digest: str | None = None
    """`tvwsim.schedule.Schedule.digest()` of the launched schedule (our kernels only)."""
    ctas: int | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    """Per-CTA resources of the kernel that ran: registers, smem_bytes, threads, ..."""
    timing: Mapping[str, Any] = field(default_factory=dict)
    """How it was timed: method, flush bytes, cushion, warmup, repeats."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (baseline dtype, checked token count, ...)."""


class PointSkipped(Exception):
    """The executor cannot measure this point here (e.g. a library lacks a routine).

    The point is reported, not written, so a later run (with the library present) can
    still measure it. Unlike other errors it never counts towards aborting the sweep.
    """
