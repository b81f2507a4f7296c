"""Calibration: fit the model's few free parameters to kernel times measured on a GPU.

The model (`tvwsim.sim.engine`) takes almost everything from the datasheet: SM count, clock,
tensor-core rates, bandwidths, latencies, shared memory. What a datasheet cannot say is
how much of each peak *our* kernels reach. Those are the efficiency fields at the end of
`tvwsim.sim.hardware.Hardware`, and they are what calibration fits:

- `mma_efficiency_dense`: the mma.sync issue rate in a main loop. Pinned by few CTAs with
  a long K (each CTA has L2 and DRAM nearly to itself, so it is compute-bound): dense,
  tw, bw.
- `mma_efficiency_sparse`: the mma.sp issue rate. The same shapes for vw and tvw.
- `l2_efficiency`: the achieved fraction of L2 bandwidth. Pinned by large GEMMs that keep
  every SM busy: a 128 x 128 tile does bm*bn/(bm+bn) = 64 FLOP per byte it reads through
  L2, below the 180 an H100 needs at its tensor peak, so in the model they are L2-bound.
- `dram_efficiency`: the achieved fraction of DRAM peak. Small-M GEMMs that stream a big
  weight once.
- `cta_fixed_cycles`: the per-CTA launch, setup and epilogue cost. Visible only where
  CTAs run one after another on an SM - waves of short CTAs at low occupancy (large
  shared memory); with several CTAs resident per SM the fixed cost of one overlaps the
  others' work, and on a full GPU a CTA's own loads and stores take longer than it.
  Real sweeps determine it least well; its error bar says how well.
- `launch_overhead_us`: once per kernel. Tiny GEMMs, where nothing else takes time.

Each parameter moves the time of a different kind of GEMM, which is what makes them
separable: a sweep must hold all kinds (the shipped ones do). A parameter the data
cannot see gets no error bar (`FittedParameter.rel_std_error` is None) and stays near
the base preset's value; `--fit` restricts the fit to a subset. Everything else stays
fixed: the fit explains the measurements with a few knobs that have a physical meaning,
so a fitted value can be read ("our sparse main loop issues mma.sp at 41% of peak").

Method
------
1. Rows: our kernels only (`implementation == "tvwsim"`, vendor libraries run other
   kernels), correct ones only, from one device, which must match the base preset
   (`device_matches`).
2. Split (`split_shapes`), deterministic and shape-disjoint: each (M, N, K) is hashed
   with sha256; shapes whose hash, read as a fraction in [0, 1), is below
   HELD_OUT_FRACTION (0.3) are held out - every row of such a shape, whatever its
   pattern, config or policy. Training never sees a held-out shape, so `tvwsim compare`
   on the held-out rows tests prediction, not recall. The hash depends on nothing but the
   shape, so every file, machine and rerun splits alike. (With few shapes the hash may
   hold out none: then the shape with the smallest hash is held out, so there is always
   something to compare on; a single shape is never held out.)
3. Each training row's schedule is rebuilt exactly as the GPU sweep built it
   (`tvwsim.schedule.schedule_for_shape` with the row's shape, pattern, sparsity, config,
   policy and seed); its digest is checked against the row's `schedule_digest`. The
   kernel's per-CTA resources are the ones measured with the row (registers and shared
   memory of the cubin that ran).
4. Least squares (`scipy.optimize.least_squares`, trust-region reflective) on the
   residuals log(simulated / measured median): relative errors, so a 10 us and a 10 ms
   kernel weigh alike. Parameters are fitted as logarithms within the bounds in
   BOUNDS (multiplicative steps, like the residuals); the Jacobian is taken by finite
   differences of DIFF_STEP (3%) because the simulator is a discrete-event model whose
   time moves in small jumps, not smoothly.
5. The calibrated preset is the base preset with the fitted fields replaced, written as
   a complete preset (`tvwsim.sim.presets.write_preset`) whose `[extra.calibration]` names the
   measurement files and their sha256, the split, the fitted values with their standard
   errors, and the residuals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tvwsim.sim.hardware import Hardware

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

HELD_OUT_FRACTION = 0.3
"""Share of shapes (by hash) kept out of training."""

FITTABLE = (
    "mma_efficiency_dense",
    "mma_efficiency_sparse",
    "dram_efficiency",
    "l2_efficiency",
    "cta_fixed_cycles",
    "launch_overhead_us",
)
DEFAULT_FIT = FITTABLE
"""All six by default; `--fit` narrows the set when the data cannot see some of them."""

BOUNDS: dict[str, tuple[float, float]] = {
    "mma_efficiency_dense": (0.02, 1.0),
    "mma_efficiency_sparse": (0.02, 1.0),
    "dram_efficiency": (0.05, 1.0),
    "l2_efficiency": (0.05, 1.0),
    "cta_fixed_cycles": (1.0, 50_000.0),
    "launch_overhead_us": (0.01, 100.0),
}
"""Search ranges: efficiencies are fractions of a peak (`Hardware` refuses 0 and > 1);
the fixed costs are positive and far below any kernel of interest at the top."""

MIN_EXTRA_ROWS = 3
"""Training rows needed beyond one per fitted parameter: with exactly as many rows as
parameters any data fits perfectly and the residuals say nothing."""

DIFF_STEP = 0.03
MAX_NFEV = 40


# =====================================================================================
# Which rows, which device, which split
# =====================================================================================
def _alnum(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def device_family(hw: Hardware) -> str:
    """The GPU a preset describes, as matched against device names: the preset name's
    first segment ('h100' for 'h100', 'h100-calibrated', 'h100_lowclock')."""
    return _alnum(re.split(r"[-_.+]", hw.name, maxsplit=1)[0])


def device_matches(hw: Hardware, device_name: str) -> bool:
    """Whether measurements from `device_name` may be compared with preset `hw`.

    The rule: the preset's family (`device_family`, e.g. 'h100') must occur in the device
    name with everything but letters and digits removed ('NVIDIA H100 80GB HBM3' ->
    'nvidiah10080gbhbm3'), or the preset must have been calibrated on exactly that
    device name (`extra.calibration.device_names`). So h100 matches every H100 variant
    and not an H200; rtx3090 matches 'NVIDIA GeForce RTX 3090'.
    """
    calibration = hw.extra.get("calibration", {}) if isinstance(hw.extra, dict) else {}
    names = calibration.get("device_names", []) if isinstance(calibration, dict) else []
    if device_name in names:
        return True
    family = device_family(hw)
    return bool(family) and family in _alnum(device_name)


def check_device(rows: Sequence[Mapping], hw: Hardware, *, argument: str = "--hw") -> str:
    """The one device name of `rows`; InputError if they mix devices or `hw` is another."""
    names = sorted({str(r["device"]["name"]) for r in rows})
    if len(names) != 1:
        raise InputError(
            "--measured", f"rows come from several devices ({', '.join(names)}); use one"
        )
    if not device_matches(hw, names[0]):
        raise InputError(
            argument,
            f"preset {hw.name!r} ({hw.description or 'no description'}) describes another "
            f"GPU than the measurements' {names[0]!r} (rule: the preset family "
            f"{device_family(hw)!r} must appear in the device name)",
        )
    return names[0]


def shape_fraction(m: int, n: int, k: int) -> float:
    """sha256 of 'MxNxK' read as a fraction in [0, 1): the shape's place in the split."""
    digest = hashlib.sha256(f"{m}x{n}x{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


@dataclass(frozen=True)
class Split:
    """Which shapes train the model and which test it."""

    train: tuple[tuple[int, int, int], ...]
    held_out: tuple[tuple[int, int, int], ...]
    rule: str
    """How the split was made, in words (recorded in the calibrated preset)."""

    def is_held_out(self, row: Mapping) -> bool:
        return (row["M"], row["N"], row["K"]) in self.held_out

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "held_out_fraction": HELD_OUT_FRACTION,
            "train_shapes": [shape_name(s) for s in self.train],
            "held_out_shapes": [shape_name(s) for s in self.held_out],
        }


def split_shapes(shapes: Iterable[Sequence[int]]) -> Split:
    """Deterministic shape-disjoint split (module docstring, step 2)."""
    unique = sorted({tuple(int(v) for v in s) for s in shapes})
    frac = {s: shape_fraction(*s) for s in unique}
    held = [s for s in unique if frac[s] < HELD_OUT_FRACTION]
    rule = f"sha256('MxNxK') as a fraction < {HELD_OUT_FRACTION} -> held out"
    if not held and len(unique) >= 2:
        held = [min(unique, key=lambda s: frac[s])]
        rule += "; none fell below, so the shape with the smallest hash is held out"
    if held and len(held) == len(unique):
        keep = max(held, key=lambda s: frac[s])
        held.remove(keep)
        rule += "; all fell below, so the shape with the largest hash trains"
    train = [s for s in unique if s not in held]
    return Split(train=tuple(train), held_out=tuple(held), rule=rule)


def model_rows(rows: Iterable[Mapping]) -> list[dict]:
    """Rows the model describes: our kernels (not vendor libraries), results correct."""
    return [
        dict(r) for r in rows if r["implementation"] == "tvwsim" and r.get("correct") is not False
    ]


# =====================================================================================
# Simulating a measured row
# =====================================================================================
@dataclass(frozen=True, eq=False)
class RowCase:
    """A measured row, ready to simulate on any Hardware."""

    row: Mapping
    schedule: Any
    """`tvwsim.schedule.Schedule` rebuilt from the row."""
    resources: Any
    """`tvwsim.sim.occupancy.KernelResources` of the kernel that ran (or None: estimate)."""
    measured_us: float
    digest_matches: bool | None
    """Whether the rebuilt schedule's digest equals the row's (None if the row has none)."""

    def simulate_us(self, hw: Hardware) -> float:
        from tvwsim.sim.engine import simulate

        return float(simulate(self.schedule, hw, self.resources, cache=False).time_us)


def row_config(row: Mapping) -> KernelConfig:
    mma = row.get("mma")
    if mma not in ("dense", "sparse"):
        mma = "sparse" if row["pattern"] in ("vw", "tvw") else "dense"
    return KernelConfig.from_name(row["config"], mma=mma)


def row_resources(row: Mapping, config: KernelConfig):
    """Per-CTA resources recorded with the row, or None if it has none."""
    from tvwsim.sim.occupancy import KernelResources

    res = row.get("resources") or {}
    try:
        return KernelResources(
            registers_per_thread=int(res["registers"]),
            smem_bytes=int(res["smem_bytes"]),
            threads=int(res.get("threads", config.threads)),
            source="manifest",
        )
    except (KeyError, TypeError, ValueError):
        return None


def row_case(row: Mapping) -> RowCase:
    """Rebuild a row's schedule exactly as the sweep built it (seeded weight, pruner)."""
    from tvwsim.kernels.prepare import schedule_for_shape

    config = row_config(row)
    schedule = schedule_for_shape(
        int(row["M"]),
        int(row["N"]),
        int(row["K"]),
        row["pattern"],
        float(row["target_sparsity"]),
        config=config,
        policy=row["policy"],
        seed=int(row.get("seed", 0)),
        block=int(row.get("block", 32)),
    )
    recorded = row.get("schedule_digest")
    matches = None if not recorded else recorded == schedule.digest()
    return RowCase(
        row=row,
        schedule=schedule,
        resources=row_resources(row, config),
        measured_us=float(row["median_us"]),
        digest_matches=matches,
    )


def with_parameters(base: Hardware, names: Sequence[str], values: Sequence[float]) -> Hardware:
    """`base` with the fitted fields replaced (a new frozen Hardware)."""
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, values, strict=True)})


# =====================================================================================
# The fit
# =====================================================================================
@dataclass(frozen=True)
class FittedParameter:
    name: str
    initial: float
    """The base preset's value (clipped into the bounds): where the search started."""
    value: float
    lower: float
    upper: float
    rel_std_error: float | None
    """Standard error of the fitted value relative to it, from the Jacobian at the
    optimum (None when the data cannot determine it at all)."""
    at_bound: bool
    """True when the value sits on a bound: the data push beyond the allowed range."""

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["rel_std_error"] is None:
            out["rel_std_error"] = "not identifiable"
        return out


@dataclass(frozen=True)
class FitResult:
    """What `fit_parameters` found."""

    parameters: tuple[FittedParameter, ...]
    hardware: Hardware
    """The base hardware with the fitted values."""
    n_rows: int
    residuals_log: tuple[float, ...]
    """log(simulated / measured) per training row at the optimum."""
    initial_residuals_log: tuple[float, ...]
    nfev: int
    status: int
    message: str

    @property
    def values(self) -> dict[str, float]:
        return {p.name: p.value for p in self.parameters}

    def summary(self) -> dict:
        r = np.asarray(self.residuals_log)
        r0 = np.asarray(self.initial_residuals_log)
        return {
            "n_train_rows": self.n_rows,
            "rms_log_residual": float(np.sqrt(np.mean(r**2))),
            "initial_rms_log_residual": float(np.sqrt(np.mean(r0**2))),
            "train_mape": float(np.mean(np.abs(np.expm1(r)))),
            "initial_train_mape": float(np.mean(np.abs(np.expm1(r0)))),
            "max_abs_log_residual": float(np.max(np.abs(r))),
            "nfev": self.nfev,
            "status": self.status,
            "message": self.message,
        }


def check_fit_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))
    if not names:
        raise InputError("--fit", f"name at least one parameter from: {', '.join(FITTABLE)}")
    for name in names:
        if name not in FITTABLE:
            raise InputError("--fit", f"cannot fit {name!r}; fittable: {', '.join(FITTABLE)}")
    return names


_WORKER_CASES: Sequence[RowCase] = ()
"""The rows a worker process simulates; inherited from the parent through fork."""


def _simulate_rows(args: tuple[Hardware, list[int]]) -> list[float]:
    hw, indices = args
    return [_WORKER_CASES[i].simulate_us(hw) for i in indices]


class RowSimulator:
    """Simulates every row on a Hardware, in this process or in `jobs` forked workers.

    A fit evaluates all rows a few hundred times (once per step, once per parameter for
    each Jacobian), and a large GEMM takes a second to simulate, so a sweep of a few
    hundred rows is worth spreading over the cores. The workers are forked after the
    schedules are built, so they inherit them instead of pruning and encoding again.
    Rows are dealt to workers largest first (by pipeline stages, the engine's unit of
    work) onto the least loaded worker, so the workers finish together.
    """

    def __init__(self, cases: Sequence[RowCase], jobs: int = 1):
        import multiprocessing

        self.cases = list(cases)
        self.pool = None
        if jobs > 1 and len(self.cases) > 1 and "fork" in multiprocessing.get_all_start_methods():
            global _WORKER_CASES
            _WORKER_CASES = self.cases
            jobs = min(jobs, len(self.cases))
            cost = [float(c.schedule.task_stages().sum()) + 1.0 for c in self.cases]
            bins: list[list[int]] = [[] for _ in range(jobs)]
            load = [0.0] * jobs
            for i in sorted(range(len(cost)), key=lambda i: -cost[i]):
                j = load.index(min(load))
                bins[j].append(i)
                load[j] += cost[i]
            self.bins = bins
            self.pool = multiprocessing.get_context("fork").Pool(jobs)

    def __call__(self, hw: Hardware) -> np.ndarray:
        if self.pool is None:
            return np.array([c.simulate_us(hw) for c in self.cases])
        out = np.empty(len(self.cases))
        results = self.pool.map(_simulate_rows, [(hw, b) for b in self.bins])
        for indices, times in zip(self.bins, results, strict=True):
            out[indices] = times
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def fit_parameters(
    cases: Sequence[RowCase],
    base: Hardware,
    names: Sequence[str] = DEFAULT_FIT,
    *,
    max_nfev: int = MAX_NFEV,
    jobs: int = 1,
    progress: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Least-squares fit of `names` so that simulated times match the measured ones.

    `jobs` > 1 simulates the rows of each evaluation in that many worker processes (the
    result is identical: every simulation is deterministic). `progress(evaluations, rms)`
    is called after every evaluation of all rows. Raises InputError when there are fewer
    than len(names) + MIN_EXTRA_ROWS rows.
    """
    from scipy.optimize import least_squares

    names = check_fit_names(names)
    need = len(names) + MIN_EXTRA_ROWS
    if len(cases) < need:
        raise InputError(
            "--measured",
            f"{len(cases)} training rows for {len(names)} parameters; need at least {need} "
            f"(parameters + {MIN_EXTRA_ROWS}). Measure more shapes or fit fewer (--fit)",
        )
    lower = np.array([BOUNDS[n][0] for n in names])
    upper = np.array([BOUNDS[n][1] for n in names])
    start = np.clip([float(getattr(base, n)) for n in names], lower, upper)
    measured = np.array([c.measured_us for c in cases])
    calls = [0]
    evaluate = RowSimulator(cases, jobs)

    def residuals(logs: np.ndarray) -> np.ndarray:
        r = np.log(evaluate(with_parameters(base, names, np.exp(logs))) / measured)
        calls[0] += 1
        if progress is not None:
            progress(calls[0], float(np.sqrt(np.mean(r**2))))
        return r

    x0 = np.log(start)
    try:
        r0 = residuals(x0)
        result = least_squares(
            residuals,
            x0,
            bounds=(np.log(lower), np.log(upper)),
            method="trf",
            diff_step=DIFF_STEP,
            x_scale=1.0,
            max_nfev=max_nfev,
        )
    finally:
        evaluate.close()
    values = np.exp(result.x)
    errors = _relative_std_errors(result.jac, result.fun, len(names))
    params = []
    for i, name in enumerate(names):
        span = math.log(upper[i] / lower[i])
        at_bound = bool(
            abs(result.x[i] - math.log(lower[i])) < 1e-3 * span
            or abs(result.x[i] - math.log(upper[i])) < 1e-3 * span
        )
        params.append(
            FittedParameter(
                name=name,
                initial=float(start[i]),
                value=float(values[i]),
                lower=float(lower[i]),
                upper=float(upper[i]),
                rel_std_error=errors[i],
                at_bound=at_bound,
            )
        )
    return FitResult(
        parameters=tuple(params),
        hardware=with_parameters(base, names, values),
        n_rows=len(cases),
        residuals_log=tuple(float(v) for v in result.fun),
        initial_residuals_log=tuple(float(v) for v in r0),
        nfev=int(result.nfev),
        status=int(result.status),
        message=str(result.message),
    )


def _relative_std_errors(jac: np.ndarray, res: np.ndarray, p: int) -> list[float | None]:
    """Standard errors of the log-parameters (= relative errors of the parameters).

    cov = s^2 (J^T J)^-1 with s^2 = sum(r^2) / (n - p), the textbook linearisation at the
    optimum. A parameter whose Jacobian column is (numerically) zero - the data do not
    react to it - has no error bar: None.
    """
    jac = np.asarray(jac, dtype=float)
    n = jac.shape[0]
    dof = max(n - p, 1)
    s2 = float(np.sum(np.asarray(res) ** 2)) / dof
    column = np.linalg.norm(jac, axis=0)
    out: list[float | None] = []
    identifiable = column > 1e-9
    cov = np.full((p, p), np.nan)
    if identifiable.any():
        sub = jac[:, identifiable]
        cov_sub = np.linalg.pinv(sub.T @ sub) * s2
        idx = np.flatnonzero(identifiable)
        cov[np.ix_(idx, idx)] = cov_sub
    for i in range(p):
        if not identifiable[i] or not np.isfinite(cov[i, i]):
            out.append(None)
        else:
            out.append(float(math.sqrt(max(cov[i, i], 0.0))))
    return out


# =====================================================================================
# From files to a preset
# =====================================================================================
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_rows(paths: Sequence[str | Path]) -> tuple[list[dict], list[dict]]:
    """(rows, file records) of every measurement file, strictly checked.

    A file record is {name, sha256, rows}; the sha256 pins exactly which bytes were used.
    """
    from tvwsim.validate.dataset import read_measurements

    if not paths:
        raise InputError("--measured", "name at least one measurement file")
    rows: list[dict] = []
    files = []
    seen: set[str] = set()
    for path in paths:
        path = Path(path)
        file_rows = read_measurements(path)
        for row in file_rows:
            if row["point"] in seen:
                raise InputError(
                    "--measured", f"{path.name}: point {row['point']!r} appears in two files"
                )
            seen.add(row["point"])
        rows.extend(file_rows)
        files.append({"name": path.name, "sha256": file_sha256(path), "rows": len(file_rows)})
    return rows, files


@dataclass(frozen=True)
class Calibration:
    """A finished calibration: the fit, the split and where the data came from."""

    fit: FitResult
    split: Split
    files: tuple[dict, ...]
    device_name: str
    base: Hardware
    digest_mismatches: int
    """Training rows whose rebuilt schedule differs from the one measured."""
    skipped_rows: int
    """Rows not used: vendor baselines, incorrect results, held-out shapes."""


def calibrate(
    paths: Sequence[str | Path],
    base: Hardware,
    names: Sequence[str] = DEFAULT_FIT,
    *,
    max_nfev: int = MAX_NFEV,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Read the measurement files, split, rebuild schedules and fit (module docstring)."""
    names = check_fit_names(names)
    rows, files = load_rows(paths)
    device = check_device(rows, base)
    usable = model_rows(rows)
    if not usable:
        raise InputError(
            "--measured", "no correct rows of tvwsim kernels (vendor baselines are not fitted)"
        )
    split = split_shapes((r["M"], r["N"], r["K"]) for r in usable)
    train = [r for r in usable if not split.is_held_out(r)]
    need = len(names) + MIN_EXTRA_ROWS
    if len(train) < need:
        raise InputError(
            "--measured",
            f"{len(train)} training rows ({len(usable)} usable, {len(usable) - len(train)} on "
            f"held-out shapes) for {len(names)} parameters; need at least {need}. Measure "
            "more shapes or fit fewer parameters (--fit)",
        )
    if progress:
        progress(f"rebuilding {len(train)} schedules")
    cases = [row_case(r) for r in train]
    mismatches = sum(1 for c in cases if c.digest_matches is False)
    if progress and mismatches:
        progress(
            f"warning: {mismatches} rows' schedules differ from the ones measured (pruner or "
            "encoder changed since); they are fitted as rebuilt"
        )

    best = [math.inf]

    def report(evaluations: int, rms: float) -> None:
        # One line per improvement: the Jacobian's probing evaluations are noise to a reader.
        if progress and rms < best[0]:
            best[0] = rms
            progress(f"evaluation {evaluations}: rms log residual {rms:.4f} (best so far)")

    fit = fit_parameters(cases, base, names, max_nfev=max_nfev, jobs=jobs, progress=report)
    return Calibration(
        fit=fit,
        split=split,
        files=tuple(files),
        device_name=device,
        base=base,
        digest_mismatches=mismatches,
        skipped_rows=len(rows) - len(train),
    )


def calibrated_hardware(cal: Calibration, name: str, *, date: str) -> Hardware:
    """The base preset with the fitted values and the provenance in `extra`."""
    from tvwsim import __version__

    fit = cal.fit
    files = ", ".join(f"{f['name']} (sha256 {f['sha256'][:12]})" for f in cal.files)
    extra = dict(cal.base.extra)
    extra["calibration"] = {
        "base": cal.base.name,
        "date": date,
        "tvwsim_version": __version__,
        "device_names": [cal.device_name],
        "files": [dict(f) for f in cal.files],
        "split": cal.split.to_dict(),
        "parameters": {p.name: p.to_dict() for p in fit.parameters},
        "residuals": fit.summary(),
        "schedule_digest_mismatches": cal.digest_mismatches,
    }
    return dataclasses.replace(
        fit.hardware,
        name=name,
        description=f"{cal.base.description or cal.base.name}, calibrated on {cal.device_name}",
        source=f"{cal.base.name} preset with {', '.join(fit.values)} fitted by tvwsim "
        f"calibrate to {fit.n_rows} measured kernels from {files}",
        extra=extra,
    )


def preset_comments(cal: Calibration) -> dict[str, str]:
    """Per-field comments of the written preset: fitted values with their error bars."""
    comments = {}
    for p in cal.fit.parameters:
        err = "not identifiable" if p.rel_std_error is None else f"+-{100 * p.rel_std_error:.2g}%"
        bound = ", AT BOUND" if p.at_bound else ""
        comments[p.name] = (
            f"fitted ({err}{bound}; {cal.base.name} had {p.initial:g}) on {cal.fit.n_rows} rows"
        )
    return comments


# =====================================================================================
# Synthetic measurements (the model's own predictions; for tests and for teaching)
# =====================================================================================
def scaled_hardware(hw: Hardware, sm_count: int, name: str | None = None) -> Hardware:
    """`hw` cut down to `sm_count` SMs with L2 capacity and L2/DRAM bandwidth scaled alike.

    Per SM, everything stays as it was: the same compute, the same share of bandwidth and
    cache, so a GEMM that is L2-, DRAM- or compute-bound on the full GPU is bound the same
    way on the small one when its grid is scaled down too. Simulating it is much cheaper,
    which is what the calibration tests need.
    """
    f = sm_count / hw.sm_count
    return dataclasses.replace(
        hw,
        name=name or f"{hw.name}-{sm_count}sm",
        sm_count=int(sm_count),
        l2_bytes=int(hw.l2_bytes * f),
        l2_bandwidth_gbps=hw.l2_bandwidth_gbps * f,
        dram_bandwidth_gbps=hw.dram_bandwidth_gbps * f,
    )


def synthetic_rows(
    shapes_patterns: Sequence[tuple],
    hw: Hardware,
    *,
    noise: float = 0.0,
    seed: int = 0,
    device_name: str | None = None,
    repeats: int = 20,
    resources: Mapping[str, int] | None = None,
) -> list[dict]:
    """Measurement rows whose times are `hw`'s simulated times x (1 + noise).

    Each entry is ((M, N, K), pattern, sparsity, config, policy[, resources]), resources
    being {registers, smem_bytes} per CTA (default `resources`, else 128 registers and
    the config's shared memory). The per-run times are
    the simulated time scaled by (1 + e), e ~ N(0, noise) seeded, so the median carries
    the noise a real measurement would. Rows pass `tvwsim.validate.dataset.check_row`. With known
    parameters in `hw`, `calibrate` must find them again: that is the calibration test.
    """
    from tvwsim.kernels.prepare import schedule_for_shape
    from tvwsim.sim.engine import simulate
    from tvwsim.sim.occupancy import KernelResources
    from tvwsim.validate.dataset import SCHEMA_VERSION
    from tvwsim.validate.sweep import REL_TOLERANCE, SweepPoint

    rng = np.random.default_rng(seed)
    name = device_name or (hw.description or hw.name)
    rows = []
    for entry in shapes_patterns:
        (m, n, k), pattern, sparsity, config, policy = entry[:5]
        res = entry[5] if len(entry) > 5 else resources
        res = res or {"registers": 128, "smem_bytes": config.smem_bytes}
        point = SweepPoint("tvwsim", pattern, m, n, k, sparsity, config, policy)
        schedule = schedule_for_shape(m, n, k, pattern, sparsity, config=config, policy=policy)
        kr = KernelResources(int(res["registers"]), int(res["smem_bytes"]), config.threads)
        result = simulate(schedule, hw, kr, cache=False)
        times = result.time_us * (1.0 + noise * rng.standard_normal(repeats))
        times = np.maximum(times, 1e-3)
        rows.append(
            {
                "schema": SCHEMA_VERSION,
                "point": point.key,
                "implementation": "tvwsim",
                "device": {"name": name, "sm_count": hw.sm_count, "synthetic": True},
                "date": "2000-01-01T00:00:00Z",
                "kernel": f"{pattern}_gemm",
                "config": config.name,
                "mma": config.mma,
                "pattern": pattern,
                "policy": policy,
                "seed": 0,
                "block": 32,
                "M": m,
                "N": n,
                "K": k,
                "target_sparsity": float(sparsity),
                "achieved_sparsity": float(result.achieved_sparsity),
                "schedule_digest": schedule.digest(),
                "ctas": int(schedule.n_tasks),
                "resources": {
                    "registers": int(res["registers"]),
                    "smem_bytes": int(res["smem_bytes"]),
                    "threads": config.threads,
                },
                "timing": {"method": "synthetic", "noise": noise},
                "times_us": [float(t) for t in times],
                "median_us": float(np.median(times)),
                "max_rel_error": 0.0,
                "tolerance": REL_TOLERANCE,
                "correct": True,
                "extra": {},
            }
        )
    return rows
