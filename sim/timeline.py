"""Timeline pictures: every CTA of a simulated launch as a bar on its SM.

The picture an architecture course draws on the board, from a real simulation:

- bottom panel, a Gantt chart: one row per SM, split into its resident slots; each CTA
  is a bar from dispatch to retirement, coloured by the weight tile it computes (tiles
  with more K are darker, so a skewed tile-wise schedule shows its heavy tiles);
- top panel: how many SMs hold at least one CTA over time. A flat top then a cliff is
  a balanced launch; a staircase at the end is a tail - a partial last wave, or a few
  heavy CTAs running alone while the rest of the GPU idles.

The dashed line marks the start of the tail (the first SM that runs out of work for
good). `timeline_figure` returns the matplotlib Figure; `draw_timeline` writes it to a
file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.sim.result import SimResult

from tvwsim.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def busy_sm_curve(result: SimResult) -> tuple[np.ndarray, np.ndarray]:
    """(times, busy SMs) as a step function: SMs holding at least one CTA over time."""
    busy = result.busy_intervals()
    edges = []
    for intervals in busy:
        for start, end in intervals:
            edges.append((start, 1))
            edges.append((end, -1))
    if not edges:
        return np.zeros(1), np.zeros(1)
    edges.sort()
    times = np.array([t for t, _ in edges])
    counts = np.cumsum([d for _, d in edges])
    return times, counts


def timeline_figure(
    result: SimResult,
    *,
    schedule=None,
    sparsity: float | None = None,
    max_sms: int | None = None,
) -> Figure:
    """`result` as a Gantt chart: a matplotlib Figure with two axes (busy SMs, CTAs).

    `schedule` (the `Schedule` that was simulated) lets bars be shaded by their tile's K
    length; `max_sms` draws only the first SMs (for very wide GPUs). The Figure is not
    attached to pyplot, so nothing global changes and nothing needs closing.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    us = 1.0 / result.clock_mhz
    sms = result.sm_count if max_sms is None else min(max_sms, result.sm_count)
    slots = max(1, result.ctas_per_sm)
    height = float(np.clip(0.06 * sms + 2.5, 4.0, 11.0))
    fig = Figure(figsize=(12, height), dpi=110, layout="constrained")
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 5]})

    # Colour: hue cycles over tiles (neighbours differ), lightness follows the tile's K.
    tiles = result.cta_tile
    n_tiles = int(tiles.max()) + 1 if tiles.size else 1
    k_len = None
    if schedule is not None:
        k_len = np.asarray(schedule.work.k_lengths, dtype=float)
    cmap = colormaps["tab10"]
    base = np.array([cmap(t % 10)[:3] for t in range(n_tiles)])
    if k_len is not None and k_len.size and k_len.max() > 0:
        weight = 0.35 + 0.65 * (k_len / k_len.max())
        colours = 1.0 - (1.0 - base) * weight[:, None]
    else:
        colours = base

    shown_ctas = (result.cta_sm >= 0) & (result.cta_sm < sms)
    start = result.cta_start_cycles[shown_ctas] * us
    width = (result.cta_end_cycles[shown_ctas] - result.cta_start_cycles[shown_ctas]) * us
    rows = result.cta_sm[shown_ctas] + result.cta_slot[shown_ctas] / slots
    ax.barh(
        rows,
        width,
        left=start,
        height=0.9 / slots,
        align="edge",
        color=colours[tiles[shown_ctas]],
        edgecolor="black",
        linewidth=0.2,
        label="CTA",
    )
    tail = result.tail_start_cycles * us
    end = result.kernel_cycles * us
    for axis in (top, ax):
        if result.tail_share > 0.005:
            axis.axvline(tail, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(sms, 0)
    # Whole SM numbers only: a row's slots sit between two ticks.
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, end * 1.01 if end > 0 else 1)
    ax.set_ylabel(f"SM (each row: {slots} resident slot{'s' if slots > 1 else ''})")
    ax.set_xlabel("time since launch, microseconds (launch overhead not drawn)")
    if result.tail_share > 0.005:
        ax.text(tail, sms * 0.99, f" tail {result.tail_share:.0%}", va="bottom", fontsize=8)

    times, counts = busy_sm_curve(result)
    top.step(times * us, counts, where="post", color="tab:blue")
    top.set_ylim(0, result.sm_count * 1.1)
    top.set_ylabel("busy SMs")
    shown = f"{sparsity:g}" if sparsity is not None else f"{result.achieved_sparsity:.2f}"
    top.set_title(
        f"{result.hardware}: {result.pattern} (sparsity {shown}) M={result.m} N={result.n} "
        f"K={result.k}, {result.config}, policy {result.policy}\n"
        f"{result.ctas} CTAs, {result.ctas_per_sm}/SM, {result.waves} wave(s), "
        f"{result.kernel_us:.1f} us kernel; bottleneck: {result.bottleneck} - "
        f"colour = weight tile" + (" (darker = more K)" if k_len is not None else ""),
        fontsize=9,
    )
    return fig


def draw_timeline(result: SimResult, path: str | Path, **options) -> Path:
    """Write `timeline_figure(result, **options)` to `path`, whole or not at all.

    The format follows the suffix (.png, .svg, .pdf); the file gets the normal mode.
    """
    path = Path(path)
    fig = timeline_figure(result, **options)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path
