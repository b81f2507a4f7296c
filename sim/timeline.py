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

Next to it, the per-SM utilisation picture (`utilisation_figure`, `tvwsim timeline
--utilisation FILE`): time cut into bins, and for every SM and bin the share of its
resident CTA slots that held a CTA (`sm_utilisation`). Where the Gantt chart shows which
CTA ran where, this shows how busy each SM was - a heatmap a course reads like a
profiler's SM-activity row: a cold band at the end is the tail, a cold SM a GPU the
launch did not fill. The panel above it is the mean over SMs, the utilisation curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.sim.result import SimResult

from tvwsim.errors import InputError
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


def sm_utilisation(result: SimResult, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges in microseconds, utilisation [SM, bin]) over the kernel's time.

    Utilisation of an SM in a bin = CTA-time inside the bin summed over its resident
    CTAs / (bin width x CTAs per SM): 1 when every slot held a CTA for the whole bin.
    Summed back over bins it gives every CTA's lifetime exactly once.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError("bins", f"must be a positive integer, got {bins!r}")
    end = float(result.kernel_cycles)
    edges = np.linspace(0.0, end if end > 0 else 1.0, bins + 1)
    slots = max(1, result.ctas_per_sm)
    busy = np.zeros((result.sm_count, bins))
    start, stop, sm = result.cta_start_cycles, result.cta_end_cycles, result.cta_sm
    for b in range(bins):
        overlap = np.clip(np.minimum(stop, edges[b + 1]) - np.maximum(start, edges[b]), 0, None)
        np.add.at(busy[:, b], sm[sm >= 0], overlap[sm >= 0])
    width = edges[1] - edges[0]
    return edges / result.clock_mhz, busy / (width * slots)


def utilisation_figure(result: SimResult, *, bins: int = 60) -> Figure:
    """Per-SM utilisation over time: a heatmap (SM x time bin) under the mean curve.

    The heatmap's array is exactly `sm_utilisation(result, bins)[1]`; the top panel's
    line its mean over SMs. A Figure not attached to pyplot.
    """
    from matplotlib.figure import Figure

    edges, util = sm_utilisation(result, bins)
    fig = Figure(figsize=(12, float(np.clip(0.04 * result.sm_count + 3.0, 4.0, 9.0))), dpi=110)
    fig.set_layout_engine("constrained")
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 4]})
    image = ax.imshow(
        util,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        extent=(edges[0], edges[-1], result.sm_count, 0),
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.03)
    bar.set_label("share of the SM's CTA slots busy")
    ax.set_ylabel("SM")
    ax.set_xlabel("time since launch, microseconds (launch overhead not drawn)")
    centres = (edges[:-1] + edges[1:]) / 2
    top.plot(centres, util.mean(axis=0), color="tab:blue", drawstyle="steps-mid")
    top.set_ylim(0, 1.05)
    top.set_ylabel("mean")
    top.set_title(
        f"{result.hardware}: {result.pattern} M={result.m} N={result.n} K={result.k}, "
        f"{result.config}, policy {result.policy} - {result.ctas} CTAs, "
        f"{result.ctas_per_sm}/SM, {result.kernel_us:.1f} us; mean SM utilisation "
        f"{util.mean():.0%}, bottleneck {result.bottleneck}",
        fontsize=9,
    )
    return fig


def draw_utilisation(result: SimResult, path: str | Path, **options) -> Path:
    """Write `utilisation_figure(result, **options)` to `path`, whole or not at all."""
    path = Path(path)
    fig = utilisation_figure(result, **options)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path


def draw_timeline(result: SimResult, path: str | Path, **options) -> Path:
    """Write `timeline_figure(result, **options)` to `path`, whole or not at all.

    The format follows the suffix (.png, .svg, .pdf); the file gets the normal mode.
    """
    path = Path(path)
    fig = timeline_figure(result, **options)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path
