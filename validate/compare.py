"""Simulated vs measured: how well the model predicts kernels it was not fitted to.

`tvwsim compare --measured FILE... --hw PRESET` simulates every held-out row (the shapes
`tvwsim.validate.split.split_shapes` keeps out of training; `--all-rows` for every row) on
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

Plots of a comparison: `tvwsim.validate.plots`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tvwsim.sim.hardware import Hardware
from tvwsim.validate.dataset import load_rows
from tvwsim.validate.replay import RowCase, row_case
from tvwsim.validate.split import (
    Split,
    check_device,
    check_kind,
    default_kind,
    model_rows,
    shape_name,
    split_shapes,
)

from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES

WORST = 5


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
    kind: str | None = None,
    only: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Simulate the held-out (or all) rows of our kernels (or, `kind` 'library', of the
    vendor libraries the model has: cuBLAS, cuSPARSELt) on `hw` (module docstring)."""
    if not rows:
        raise InputError("--measured", "no rows to compare")
    kind = default_kind(rows) if kind is None else check_kind(kind)
    if any_device:
        names = sorted({str(r["device"]["name"]) for r in rows})
        device = ", ".join(names)
    else:
        device = check_device(rows, hw)
    ours = model_rows(rows, kind, only)
    if not ours:
        what = "tvwsim kernels" if kind == "tvwsim" else "cuBLAS or cuSPARSELt"
        raise InputError("--measured", f"no correct rows of {what} to compare (--rows {kind})")
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
    for r in rows if kind == "tvwsim" else ():  # library rows: the dense reference is cuBLAS
        if r["implementation"] == "cublas" and r.get("correct") is not False:
            cublas[_shape(r)] = min(cublas.get(_shape(r), math.inf), float(r["median_us"]))

    cases: dict[str, RowCase] = {}
    simulated: dict[str, float] = {}

    def sim(row: Mapping) -> float:
        key = row["point"]
        if key not in simulated:
            cases[key] = row_case(row, hw)
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
        hardware=hw.label,
        device=device,
        rows=("all" if all_rows else "held-out") + ("" if kind == "tvwsim" else " library"),
        split=split,
        points=tuple(points),
        per_pattern=_per_pattern(points),
    )


def _per_pattern(points: Sequence[ComparedPoint]) -> dict:
    groups: dict[str, list[ComparedPoint]] = defaultdict(list)
    for p in points:
        groups[p.pattern].append(p)
    out = {}
    for pattern in sorted(groups, key=pattern_rank):
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


def pattern_rank(pattern: str) -> int:
    """Where a pattern goes in reports: the registry's order."""
    return PATTERN_NAMES.index(pattern) if pattern in PATTERN_NAMES else len(PATTERN_NAMES)


def compare_files(
    paths: Sequence[str | Path],
    hw: Hardware,
    *,
    all_rows: bool = False,
    any_device: bool = False,
    kind: str | None = None,
    only: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    rows, _ = load_rows(paths)
    return compare_rows(
        rows,
        hw,
        all_rows=all_rows,
        any_device=any_device,
        kind=kind,
        only=only,
        progress=progress,
    )


# =====================================================================================
# Output
# =====================================================================================
def pct(value: float | None) -> str:
    """A fraction as a percentage for reports; '-' when there is none."""
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def num(value: float | None, fmt: str = ".3f") -> str:
    """A number for reports; '-' when there is none."""
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def format_text(c: Comparison) -> str:
    """The default report: overall metrics, per pattern, the five worst points."""
    lines = [
        f"simulated on {c.hardware} vs measured on {c.device}: {c.n} {c.rows} rows "
        f"({len(c.split.held_out)} held-out shape(s): "
        f"{', '.join(shape_name(s) for s in c.split.held_out) or 'none'})",
        "",
        f"  time MAPE                      {pct(c.time_mape)}",
        f"  speedup over our dense, MAPE   {pct(c.speedup_mape)}",
        f"  speedup over cuBLAS, MAPE      {pct(c.speedup_cublas_mape)}",
        f"  Spearman rank correlation      {num(c.spearman)}",
    ]
    if c.schedule_mismatches:
        lines.append(
            f"  warning: {c.schedule_mismatches} rows' rebuilt schedules differ from the "
            "ones measured"
        )
    lines += ["", f"  {'pattern':<8}{'n':>5}{'time MAPE':>12}{'sim/meas':>11}{'speedup MAPE':>15}"]
    for pattern, s in c.per_pattern.items():
        lines.append(
            f"  {pattern:<8}{s['n']:>5}{pct(s['time_mape']):>12}"
            f"{num(s['median_ratio']):>11}{pct(s['speedup_mape']):>15}"
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
