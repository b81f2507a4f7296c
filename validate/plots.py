"""Pictures of a comparison (`tvwsim.validate.compare.Comparison`).

- `time_scatter`: simulated vs measured kernel time on log-log axes, one colour and
  marker per pattern, with the y = x line and a +-25% band;
- `speedup_bars`: speedup over our dense kernel per pattern and sparsity, the measured
  bar next to the simulated (hatched) one, each the geometric mean over shapes, configs
  and policies.

Each returns a matplotlib `Figure` (no pyplot state, no display needed), so a caller
can show it, save it or inspect it; `write_plots` saves both as PNGs, whole or not at all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter
from tvwsim.validate.compare import ComparedPoint, Comparison, num, pattern_rank, pct

from tvwsim.io import atomic_output

COLORS = {
    "dense": "#4d4d4d",
    "bw": "#1f77b4",
    "vw": "#ff7f0e",
    "tw": "#2ca02c",
    "tvw": "#d62728",
}
MARKERS = {"dense": "o", "bw": "s", "vw": "^", "tw": "D", "tvw": "v"}
OTHER_COLOR = "#9467bd"
BAND = 1.25
"""The shaded band around y = x: within 25%."""


def _minor_label(value: float, _pos: object = None) -> str:
    """Minor ticks of a log axis labelled at 2 and 5 times a power of ten only: labelling all
    eight crowds a decade into one unreadable run of digits ('400500600...')."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2.0, 5.0)) else ""


def _which(c: Comparison) -> str:
    what = "held-out shapes" if c.rows.startswith("held-out") else "all rows"
    return what + (", library kernels" if c.rows.endswith("library") else "")


def time_scatter(c: Comparison) -> Figure:
    """Log-log scatter of simulated vs measured time, one colour per pattern."""
    fig = Figure(figsize=(6.4, 6.0))
    ax = fig.subplots()
    meas = np.array([p.measured_us for p in c.points])
    sim = np.array([p.simulated_us for p in c.points])
    lo = 0.8 * min(meas.min(), sim.min())
    hi = 1.25 * max(meas.max(), sim.max())
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", lw=1, label="simulated = measured")
    ax.fill_between(line, line / BAND, line * BAND, color="0.9", label="within 25%")
    for pattern in sorted({p.pattern for p in c.points}, key=pattern_rank):
        ps = [p for p in c.points if p.pattern == pattern]
        ax.scatter(
            [p.measured_us for p in ps],
            [p.simulated_us for p in ps],
            label=f"{pattern} ({len(ps)})",
            color=COLORS.get(pattern, OTHER_COLOR),
            marker=MARKERS.get(pattern, "o"),
            s=36,
            edgecolor="white",
            linewidth=0.5,
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    # Plain numbers on the log axes ("20", not "2 x 10^1"): microseconds are read, not computed.
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(_minor_label))
        axis.set_tick_params(which="minor", labelsize=7)
    ax.set_aspect("equal")
    ax.set_xlabel("measured kernel time (us)")
    ax.set_ylabel(f"simulated kernel time on {c.hardware} (us)")
    ax.set_title(
        f"{c.n} kernels ({_which(c)}) on {c.device}\n"
        f"time MAPE {pct(c.time_mape)}, Spearman {num(c.spearman, '.2f')}",
        fontsize=10,
    )
    ax.grid(True, which="both", color="0.85", lw=0.5)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    return fig


def speedup_groups(c: Comparison) -> dict[tuple[str, float], list[ComparedPoint]]:
    """The sparse rows with a dense reference, by (pattern, sparsity), in report order."""
    groups: dict[tuple[str, float], list[ComparedPoint]] = defaultdict(list)
    for p in c.points:
        if p.pattern != "dense" and p.speedup_dense_measured is not None:
            groups[(p.pattern, p.sparsity)].append(p)
    return {key: groups[key] for key in sorted(groups, key=lambda k: (pattern_rank(k[0]), k[1]))}


def speedup_bars(c: Comparison) -> Figure:
    """Speedup over our dense kernel per (pattern, sparsity): measured next to simulated."""
    groups = speedup_groups(c)
    keys = list(groups)
    fig = Figure(figsize=(max(5.0, 0.9 * len(keys) + 2.0), 4.2))
    ax = fig.subplots()
    if keys:
        x = np.arange(len(keys))
        gm_meas = [geomean([p.speedup_dense_measured for p in groups[key]]) for key in keys]
        gm_sim = [geomean([p.speedup_dense_simulated for p in groups[key]]) for key in keys]
        colors = [COLORS.get(key[0], OTHER_COLOR) for key in keys]
        ax.bar(x - 0.2, gm_meas, 0.4, color=colors, label="measured")
        ax.bar(x + 0.2, gm_sim, 0.4, color=colors, alpha=0.45, hatch="//", label="simulated")
        for xi, value in zip(x, gm_meas, strict=True):
            ax.text(xi - 0.2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        for xi, value in zip(x, gm_sim, strict=True):
            ax.text(xi + 0.2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        # Legend in neutral grey: the colour is the pattern, the hatching the source.
        ax.legend(
            handles=[
                Patch(facecolor="0.35", label="measured"),
                Patch(facecolor="0.35", alpha=0.45, hatch="//", label="simulated"),
            ],
            fontsize=8,
        )
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f"{pat}\n{s:.4g}\n(n={len(groups[(pat, s)])})" for pat, s in keys], fontsize=8
        )
    else:
        ax.text(
            0.5, 0.5, "no sparse rows with a dense reference", ha="center", transform=ax.transAxes
        )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel("speedup over our dense kernel (x)")
    ax.set_title(
        f"speedup per pattern and sparsity (geometric mean), {_which(c)}\n"
        f"measured on {c.device} (solid) vs simulated on {c.hardware} (hatched)",
        fontsize=10,
    )
    ax.grid(True, axis="y", color="0.85", lw=0.5)
    return fig


PLOTS = {"time_scatter.png": time_scatter, "speedup_bars.png": speedup_bars}
"""File name -> figure, as `tvwsim compare --plot DIR` writes them."""


def write_plots(c: Comparison, directory: str | Path) -> list[Path]:
    """Both pictures as PNGs in `directory` (each whole or not at all); their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in PLOTS.items():
        path = out / name
        with atomic_output(path) as tmp:
            draw(c).savefig(tmp, dpi=130, bbox_inches="tight", format="png")
        written.append(path)
    return written


def geomean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=float)))))
