"""The roofline: peak compute and memory bandwidth of a preset, with GEMMs placed on it.

The picture every architecture course draws (Williams, Waterman and Patterson, CACM
2009): attainable FLOP/s = min(peak compute, bandwidth x arithmetic intensity), on
log-log axes. A GEMM left of the ridge point cannot reach the compute peak whatever its
kernel does; right of it, only its kernel (tiles, waves, occupancy) keeps it below.

- `Roof.of(hw)` takes the preset's datasheet peaks: dense tensor-core FLOP/s
  (`dense_flops_per_clk_per_sm x sm_count x clock`), DRAM and L2 bandwidth. The
  achievable roof (`x mma_efficiency_dense`, `x dram_efficiency`) is drawn dashed: it is
  what the model lets a perfect kernel reach.
- `RooflinePoint.of(result)` places one simulated GEMM: its arithmetic intensity is the
  dense GEMM's FLOPs over its *compulsory* DRAM bytes (X, W and Y once each: what a
  student computes by hand), its height the simulated dense-equivalent TFLOP/s. The
  intensity the simulation really saw (FLOPs over the simulated DRAM bytes, lower when
  operands are re-read from DRAM) is kept as `simulated_intensity`.

`roofline_figure` draws both; the plotted coordinates are exactly the points' fields
(the tests read them back from the Figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tvwsim.sim.hardware import Hardware
from tvwsim.sim.result import SimResult

from tvwsim.errors import InputError
from tvwsim.io import atomic_output
from tvwsim.schedule import ELEMENT_BYTES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Roof:
    """A preset's roofs, in TFLOP/s and TB/s (1 TB = 1e12 bytes)."""

    label: str
    peak_tflops: float
    """Dense tensor-core peak from the datasheet figures."""
    achievable_tflops: float
    """peak x mma_efficiency_dense: the model's ceiling for a dense mma.sync kernel."""
    sparse_peak_tflops: float
    """peak x sparse_tflop_ratio (0: no sparse tensor core)."""
    dram_tbps: float
    achievable_dram_tbps: float
    l2_tbps: float

    @classmethod
    def of(cls, hw: Hardware) -> Roof:
        if not isinstance(hw, Hardware):
            raise InputError("hw", f"must be a tvwsim.sim.hardware.Hardware, got {type(hw)}")
        peak = hw.dense_flops_per_clk_per_sm * hw.sm_count * hw.clock_mhz * 1e6 / 1e12
        return cls(
            label=hw.label,
            peak_tflops=peak,
            achievable_tflops=peak * hw.mma_efficiency_dense,
            sparse_peak_tflops=peak * hw.sparse_tflop_ratio,
            dram_tbps=hw.dram_bandwidth_gbps / 1e3,
            achievable_dram_tbps=hw.dram_bandwidth_gbps * hw.dram_efficiency / 1e3,
            l2_tbps=hw.l2_bandwidth_gbps / 1e3,
        )

    def attainable(self, intensity: float, *, level: str = "dram") -> float:
        """min(peak, bandwidth x intensity) in TFLOP/s; `level` is 'dram' or 'l2'."""
        bandwidth = {"dram": self.dram_tbps, "l2": self.l2_tbps}.get(level)
        if bandwidth is None:
            raise InputError("level", f"must be 'dram' or 'l2', got {level!r}")
        return min(self.peak_tflops, bandwidth * intensity)

    @property
    def ridge(self) -> float:
        """FLOP per DRAM byte where the DRAM roof meets the compute peak."""
        return self.peak_tflops / self.dram_tbps


def compulsory_bytes(m: int, n: int, k: int) -> int:
    """fp16 bytes a dense M x N x K GEMM must move at least: X, W and Y once each."""
    return ELEMENT_BYTES * (m * k + n * k + m * n)


@dataclass(frozen=True)
class RooflinePoint:
    """One simulated GEMM on the roofline."""

    name: str
    m: int
    n: int
    k: int
    intensity: float
    """2MNK / compulsory bytes (FLOP per byte)."""
    tflops: float
    """Simulated dense-equivalent TFLOP/s (2MNK / time)."""
    simulated_intensity: float
    """2MNK / the DRAM bytes the simulation moved."""
    bottleneck: str

    @classmethod
    def of(cls, result: SimResult, name: str | None = None) -> RooflinePoint:
        m, n, k = result.m, result.n, result.k
        flops = 2.0 * m * n * k
        return cls(
            name=name or f"{m}x{n}x{k}",
            m=m,
            n=n,
            k=k,
            intensity=flops / compulsory_bytes(m, n, k),
            tflops=result.dense_equivalent_tflops,
            simulated_intensity=flops / result.dram_bytes if result.dram_bytes else float("inf"),
            bottleneck=result.bottleneck,
        )


def roofline_figure(
    roof: Roof, points: Sequence[RooflinePoint] = (), *, title: str | None = None
) -> Figure:
    """The roofline of `roof` with `points` as markers (log-log); a Figure not attached to
    pyplot. The first scatter collection holds the points, in order, at (intensity,
    tflops)."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    low = min([0.5, *(p.intensity / 2 for p in points)])
    high = max([roof.ridge * 20, *(p.intensity * 2 for p in points)])
    x = np.logspace(np.log10(low), np.log10(high), 200)
    ax.plot(x, np.minimum(roof.peak_tflops, roof.dram_tbps * x), color="black", label="DRAM roof")
    ax.plot(
        x,
        np.minimum(roof.peak_tflops, roof.l2_tbps * x),
        color="tab:grey",
        linewidth=0.8,
        label="L2 roof",
    )
    ax.plot(
        x,
        np.minimum(roof.achievable_tflops, roof.achievable_dram_tbps * x),
        color="black",
        linestyle="--",
        linewidth=0.8,
        label="achievable (preset efficiencies)",
    )
    if roof.sparse_peak_tflops > roof.peak_tflops:
        ax.axhline(roof.sparse_peak_tflops, color="tab:purple", linestyle=":", label="2:4 peak")
    if points:
        ax.scatter(
            [p.intensity for p in points],
            [p.tflops for p in points],
            c=[f"C{i % 10}" for i in range(len(points))],
            zorder=3,
        )
        for i, p in enumerate(points):
            ax.annotate(
                f"{p.name} ({p.bottleneck})",
                (p.intensity, p.tflops),
                textcoords="offset points",
                xytext=(4, 4 + 7 * (i % 3)),
                fontsize=7,
                color=f"C{i % 10}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity, FLOP per compulsory DRAM byte")
    ax.set_ylabel("TFLOP/s (dense-equivalent)")
    ax.axvline(roof.ridge, color="tab:red", linewidth=0.6, linestyle=":")
    ax.set_title(
        title
        or f"{roof.label}: peak {roof.peak_tflops:.0f} TFLOP/s, DRAM {roof.dram_tbps:.2f} TB/s, "
        f"ridge {roof.ridge:.0f} FLOP/B",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    return fig


def draw_roofline(roof: Roof, points: Sequence[RooflinePoint], path: str | Path, **options) -> Path:
    """Write `roofline_figure(roof, points)` to `path` (.png, .svg, .pdf), whole or not at all."""
    path = Path(path)
    fig = roofline_figure(roof, points, **options)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path
