"""Simulated vs measured: how well the model predicts kernels it was not fitted to.

`tvwsim compare --measured FILE... --hw PRESET` simulates every held-out row (the shapes
`tvwsim.validate.calibrate.split_shapes` keeps out of training; `--all-rows` for every row) on
the preset and sets the prediction next to the measurement:

- **time**: simulated vs measured median kernel time;
- **speedup over our dense kernel**: for a sparse row, (dense time / sparse time) on the
  same shape, simulated on both sides vs measured on both sides. The dense reference is
  our dense kernel's fastest correct measured row of that shape (and that same row
  simulated). Speedups are what the paper's argument rests on, and a model can predict
  ratios well even when a common factor in absolute time is off;
- **speedup over cuBLAS**: measured cuBLAS time / our kernel's time. The model has no
  cuBLAS, so the simulated column divides the *measured* cuBLAS time by our simulated
  time; its error is therefore our kernel's time error, seen as the ratio a reader
  quotes.

Metrics (`Comparison`):

- MAPE, mean absolute percentage error: mean of |sim - meas| / meas (for times and for
  each speedup);
- Spearman rank correlation of simulated and measured times: does the model order the
  kernels right? (1 = same order; insensitive to a common scale error);
- the five worst points by |log(sim / meas)| - the place to look first.

Plots (`--plot DIR`, matplotlib Agg): `time_scatter.png`, log-log simulated vs measured
time per pattern with the y = x line and a +-25% band; `speedup_bars.png`, speedup over
our dense kernel per pattern and sparsity, measured bar next to simulated bar (geometric
mean over shapes, configs and policies).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tvwsim.sim.hardware import Hardware
from tvwsim.validate.calibrate import (
    RowCase,
    Split,
    check_device,
    load_rows,
    model_rows,
    row_case,
    shape_name,
    split_shapes,
)

from tvwsim.errors import InputError

WORST = 5
PATTERN_ORDER = ("dense", "bw", "vw", "tw", "tvw", "ew")


@dataclass(frozen=True)
class ComparedPoint:
    """One measured row and its simulation."""

    point: str
    pattern: str
    shape: str
    sparsity: float
    config: str
    policy: str
    measured_us: float
    simulated_us: float
    speedup_dense_measured: float | None = None
    speedup_dense_simulated: float | None = None
    speedup_cublas_measured: float | None = None
    speedup_cublas_simulated: float | None = None
    schedule_matches: bool | None = None

    @property
    def log_ratio(self) -> float:
        return math.log(self.simulated_us / self.measured_us)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["error"] = self.simulated_us / self.measured_us - 1.0
        return data


@dataclass(frozen=True)
class Comparison:
    """Simulated vs measured over a set of rows."""

    hardware: str
    device: str
    rows: str
    """'held-out' or 'all'."""
    split: Split
    points: tuple[ComparedPoint, ...]
    per_pattern: Mapping[str, Mapping[str, float | int | None]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def time_mape(self) -> float:
        return mape([p.simulated_us for p in self.points], [p.measured_us for p in self.points])

    @property
    def speedup_mape(self) -> float | None:
        pairs = [
            (p.speedup_dense_simulated, p.speedup_dense_measured)
            for p in self.points
            if p.speedup_dense_measured is not None and p.pattern != "dense"
        ]
        return mape(*zip(*pairs, strict=True)) if pairs else None

    @property
    def speedup_cublas_mape(self) -> float | None:
        pairs = [
            (p.speedup_cublas_simulated, p.speedup_cublas_measured)
            for p in self.points
            if p.speedup_cublas_measured is not None
        ]
        return mape(*zip(*pairs, strict=True)) if pairs else None

    @property
    def spearman(self) -> float | None:
        return spearman([p.simulated_us for p in self.points], [p.measured_us for p in self.points])

    @property
    def schedule_mismatches(self) -> int:
        return sum(1 for p in self.points if p.schedule_matches is False)

    def worst(self, count: int = WORST) -> list[ComparedPoint]:
        return sorted(self.points, key=lambda p: -abs(p.log_ratio))[:count]

    def to_dict(self) -> dict:
        return _json_safe(
            {
                "hardware": self.hardware,
                "device": self.device,
                "rows": self.rows,
                "n": self.n,
                "time_mape": self.time_mape,
                "speedup_mape": self.speedup_mape,
                "speedup_cublas_mape": self.speedup_cublas_mape,
                "spearman": self.spearman,
                "worst": [p.to_dict() for p in self.worst()],
                "per_pattern": {k: dict(v) for k, v in self.per_pattern.items()},
                "schedule_mismatches": self.schedule_mismatches,
                "split": self.split.to_dict(),
                "points": [p.to_dict() for p in self.points],
            }
        )


def mape(simulated: Sequence[float], measured: Sequence[float]) -> float:
    """Mean of |simulated - measured| / measured."""
    s = np.asarray(simulated, dtype=float)
    m = np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(s - m) / m)) if m.size else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation, None with fewer than 3 points or no variation."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# =====================================================================================
# The comparison
# =====================================================================================
def _shape(row: Mapping) -> tuple[int, int, int]:
    return (int(row["M"]), int(row["N"]), int(row["K"]))


def compare_rows(
    rows: Sequence[Mapping],
    hw: Hardware,
    *,
    all_rows: bool = False,
    any_device: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Simulate the held-out (or all) rows of our kernels on `hw` (module docstring)."""
    if not rows:
        raise InputError("--measured", "no rows to compare")
    if any_device:
        names = sorted({str(r["device"]["name"]) for r in rows})
        device = ", ".join(names)
    else:
        device = check_device(rows, hw)
    ours = model_rows(rows)
    if not ours:
        raise InputError("--measured", "no correct rows of tvwsim kernels to compare")
    split = split_shapes(_shape(r) for r in ours)
    chosen = ours if all_rows else [r for r in ours if split.is_held_out(r)]
    if not chosen:
        raise InputError(
            "--measured",
            f"no held-out rows: all {len(ours)} rows are on training shapes "
            f"({len(split.train)} shape(s)); measure more shapes or use --all-rows",
        )

    # References per shape: our fastest correct dense row, and cuBLAS.
    dense_ref: dict[tuple, Mapping] = {}
    for r in ours:
        if r["pattern"] == "dense":
            best = dense_ref.get(_shape(r))
            if best is None or r["median_us"] < best["median_us"]:
                dense_ref[_shape(r)] = r
    cublas: dict[tuple, float] = {}
    for r in rows:
        if r["implementation"] == "cublas" and r.get("correct") is not False:
            cublas[_shape(r)] = min(cublas.get(_shape(r), math.inf), float(r["median_us"]))

    cases: dict[str, RowCase] = {}
    simulated: dict[str, float] = {}

    def sim(row: Mapping) -> float:
        key = row["point"]
        if key not in simulated:
            cases[key] = row_case(row)
            simulated[key] = cases[key].simulate_us(hw)
        return simulated[key]

    points = []
    for index, r in enumerate(chosen):
        sim_us = sim(r)
        meas_us = float(r["median_us"])
        shape = _shape(r)
        ref = dense_ref.get(shape)
        sd_meas = sd_sim = sc_meas = sc_sim = None
        if ref is not None:
            sd_meas = float(ref["median_us"]) / meas_us
            sd_sim = sim(ref) / sim_us
        if shape in cublas:
            sc_meas = cublas[shape] / meas_us
            sc_sim = cublas[shape] / sim_us
        points.append(
            ComparedPoint(
                point=r["point"],
                pattern=r["pattern"],
                shape=shape_name(shape),
                sparsity=float(r["target_sparsity"]),
                config=r["config"],
                policy=r["policy"],
                measured_us=meas_us,
                simulated_us=sim_us,
                speedup_dense_measured=sd_meas,
                speedup_dense_simulated=sd_sim,
                speedup_cublas_measured=sc_meas,
                speedup_cublas_simulated=sc_sim,
                schedule_matches=cases[r["point"]].digest_matches,
            )
        )
        if progress:
            progress(index + 1, len(chosen))
    return Comparison(
        hardware=hw.name,
        device=device,
        rows="all" if all_rows else "held-out",
        split=split,
        points=tuple(points),
        per_pattern=_per_pattern(points),
    )


def _per_pattern(points: Sequence[ComparedPoint]) -> dict:
    groups: dict[str, list[ComparedPoint]] = defaultdict(list)
    for p in points:
        groups[p.pattern].append(p)
    out = {}
    for pattern in sorted(groups, key=_pattern_rank):
        ps = groups[pattern]
        ratios = [p.simulated_us / p.measured_us for p in ps]
        speed = [
            (p.speedup_dense_simulated, p.speedup_dense_measured)
            for p in ps
            if p.speedup_dense_measured is not None and pattern != "dense"
        ]
        out[pattern] = {
            "n": len(ps),
            "time_mape": mape([p.simulated_us for p in ps], [p.measured_us for p in ps]),
            "median_ratio": float(np.median(ratios)),
            "speedup_mape": mape(*zip(*speed, strict=True)) if speed else None,
        }
    return out


def _pattern_rank(pattern: str) -> int:
    return PATTERN_ORDER.index(pattern) if pattern in PATTERN_ORDER else len(PATTERN_ORDER)


def compare_files(
    paths: Sequence[str | Path],
    hw: Hardware,
    *,
    all_rows: bool = False,
    any_device: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    rows, _ = load_rows(paths)
    return compare_rows(rows, hw, all_rows=all_rows, any_device=any_device, progress=progress)


# =====================================================================================
# Output
# =====================================================================================
def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def format_text(c: Comparison) -> str:
    """The default report: overall metrics, per pattern, the five worst points."""
    lines = [
        f"simulated on {c.hardware} vs measured on {c.device}: {c.n} {c.rows} rows "
        f"({len(c.split.held_out)} held-out shape(s): "
        f"{', '.join(shape_name(s) for s in c.split.held_out) or 'none'})",
        "",
        f"  time MAPE                      {_pct(c.time_mape)}",
        f"  speedup over our dense, MAPE   {_pct(c.speedup_mape)}",
        f"  speedup over cuBLAS, MAPE      {_pct(c.speedup_cublas_mape)}",
        f"  Spearman rank correlation      {_num(c.spearman)}",
    ]
    if c.schedule_mismatches:
        lines.append(
            f"  warning: {c.schedule_mismatches} rows' rebuilt schedules differ from the "
            "ones measured"
        )
    lines += ["", f"  {'pattern':<8}{'n':>5}{'time MAPE':>12}{'sim/meas':>11}{'speedup MAPE':>15}"]
    for pattern, s in c.per_pattern.items():
        lines.append(
            f"  {pattern:<8}{s['n']:>5}{_pct(s['time_mape']):>12}"
            f"{_num(s['median_ratio']):>11}{_pct(s['speedup_mape']):>15}"
        )
    lines += ["", f"  worst {min(WORST, c.n)} by |log(sim / meas)|:"]
    header = f"  {'pattern':<8}{'shape':<18}{'s':>7}  {'config':<16}{'policy':<14}"
    lines.append(header + f"{'meas us':>10}{'sim us':>10}{'error':>9}")
    for p in c.worst():
        lines.append(
            f"  {p.pattern:<8}{p.shape:<18}{p.sparsity:>7.4g}  {p.config:<16}{p.policy:<14}"
            f"{p.measured_us:>10.2f}{p.simulated_us:>10.2f}"
            f"{100 * (p.simulated_us / p.measured_us - 1):>8.1f}%"
        )
    return "\n".join(lines)


def _save_figure(fig, path: Path) -> None:
    """Write a PNG atomically: a reader never sees half a picture."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


COLORS = {
    "dense": "#4d4d4d",
    "bw": "#1f77b4",
    "vw": "#ff7f0e",
    "tw": "#2ca02c",
    "tvw": "#d62728",
}
MARKERS = {"dense": "o", "bw": "s", "vw": "^", "tw": "D", "tvw": "v"}


def write_plots(c: Comparison, directory: str | Path) -> list[Path]:
    """The two pictures (module docstring) into `directory`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    # 1. log-log scatter of simulated vs measured time, one colour per pattern.
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    meas = np.array([p.measured_us for p in c.points])
    sim = np.array([p.simulated_us for p in c.points])
    lo = 0.8 * min(meas.min(), sim.min())
    hi = 1.25 * max(meas.max(), sim.max())
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", lw=1, label="simulated = measured")
    ax.fill_between(line, line / 1.25, line * 1.25, color="0.9", label="within 25%")
    for pattern in sorted({p.pattern for p in c.points}, key=_pattern_rank):
        ps = [p for p in c.points if p.pattern == pattern]
        ax.scatter(
            [p.measured_us for p in ps],
            [p.simulated_us for p in ps],
            label=f"{pattern} ({len(ps)})",
            color=COLORS.get(pattern, "#9467bd"),
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
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
        axis.set_tick_params(which="minor", labelsize=7)
    ax.set_aspect("equal")
    ax.set_xlabel("measured kernel time (us)")
    ax.set_ylabel(f"simulated kernel time on {c.hardware} (us)")
    rho = _num(c.spearman, ".2f")
    which = "held-out shapes" if c.rows == "held-out" else "all rows"
    ax.set_title(
        f"{c.n} kernels ({which}) on {c.device}\ntime MAPE {_pct(c.time_mape)}, Spearman {rho}",
        fontsize=10,
    )
    ax.grid(True, which="both", color="0.85", lw=0.5)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    path = out / "time_scatter.png"
    _save_figure(fig, path)
    plt.close(fig)
    written.append(path)

    # 2. speedup over our dense kernel per (pattern, sparsity): measured next to simulated.
    groups: dict[tuple[str, float], list[ComparedPoint]] = defaultdict(list)
    for p in c.points:
        if p.pattern != "dense" and p.speedup_dense_measured is not None:
            groups[(p.pattern, p.sparsity)].append(p)
    keys = sorted(groups, key=lambda key: (_pattern_rank(key[0]), key[1]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(keys) + 2.0), 4.2))
    if keys:
        x = np.arange(len(keys))
        gm_meas = [_geomean([p.speedup_dense_measured for p in groups[key]]) for key in keys]
        gm_sim = [_geomean([p.speedup_dense_simulated for p in groups[key]]) for key in keys]
        colors = [COLORS.get(key[0], "#9467bd") for key in keys]
        ax.bar(x - 0.2, gm_meas, 0.4, color=colors, label="measured")
        ax.bar(x + 0.2, gm_sim, 0.4, color=colors, alpha=0.45, hatch="//", label="simulated")
        for xi, value in zip(x, gm_meas, strict=True):
            ax.text(xi - 0.2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        for xi, value in zip(x, gm_sim, strict=True):
            ax.text(xi + 0.2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        # Legend in neutral grey: the colour is the pattern, the hatching the source.
        ax.legend(
            handles=[
                matplotlib.patches.Patch(facecolor="0.35", label="measured"),
                matplotlib.patches.Patch(
                    facecolor="0.35", alpha=0.45, hatch="//", label="simulated"
                ),
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
    which = "held-out shapes" if c.rows == "held-out" else "all rows"
    ax.set_title(
        f"speedup per pattern and sparsity (geometric mean), {which}\n"
        f"measured on {c.device} (solid) vs simulated on {c.hardware} (hatched)",
        fontsize=10,
    )
    ax.grid(True, axis="y", color="0.85", lw=0.5)
    path = out / "speedup_bars.png"
    _save_figure(fig, path)
    plt.close(fig)
    written.append(path)
    return written


def _geomean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=float)))))
