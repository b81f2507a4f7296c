"""The fit: least squares of the model's efficiency parameters against measured times.

The model (`tvwsim.sim.engine`) takes almost everything from the datasheet. What a
datasheet cannot say is how much of each peak *our* kernels reach: the efficiency fields
at the end of `tvwsim.sim.hardware.Hardware` (FITTABLE), fitted here.

`scipy.optimize.least_squares` (trust-region reflective) on the residuals
log(simulated / measured median): relative errors, so a 10 us and a 10 ms kernel weigh
alike. Parameters are fitted as logarithms within BOUNDS (multiplicative steps, like the
residuals); the Jacobian is taken by finite differences of DIFF_STEP (3%) because the
simulator is a discrete-event model whose time moves in small jumps, not smoothly. Error
bars come from the Jacobian at the optimum (`_relative_std_errors`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tvwsim.sim.hardware import Hardware
from tvwsim.validate.replay import RowCase, RowSimulator, row_layout

from tvwsim.errors import InputError

DEFAULT_FIT = (
    "mma_efficiency_dense",
    "mma_efficiency_sparse",
    "dram_efficiency",
    "l2_efficiency",
    "cta_fixed_cycles",
    "launch_overhead_us",
)
"""What a fit to our own kernels fits by default; `--fit` narrows the set when the data
cannot see some of them."""
FITTABLE = (
    *DEFAULT_FIT,
    "wgmma_efficiency_dense",
    "wgmma_efficiency_sparse",
    "cuda_core_efficiency",
    "k_contiguous_stream_efficiency",
    "csr_nonzero_cycles",
)
"""Every field a fit may change: the warpgroup-MMA ones, the CUDA-core one and the cost
per nonzero (cuSPARSE CSR) and the layout's DRAM rate only describe library kernels."""

BOUNDS: dict[str, tuple[float, float]] = {
    "mma_efficiency_dense": (0.02, 1.0),
    "mma_efficiency_sparse": (0.02, 1.0),
    "dram_efficiency": (0.05, 1.0),
    "l2_efficiency": (0.05, 1.0),
    "cta_fixed_cycles": (1.0, 50_000.0),
    "launch_overhead_us": (0.01, 100.0),
    "wgmma_efficiency_dense": (0.02, 1.0),
    "wgmma_efficiency_sparse": (0.02, 1.0),
    "cuda_core_efficiency": (0.005, 1.0),
    "k_contiguous_stream_efficiency": (0.05, 1.0),
    "csr_nonzero_cycles": (0.01, 10_000.0),
}
"""Search ranges: efficiencies are fractions of a peak (`Hardware` refuses 0 and > 1);
the fixed costs are positive and far below any kernel of interest at the top."""

MIN_EXTRA_ROWS = 3
"""Training rows needed beyond one per fitted parameter: with exactly as many rows as
parameters any data fits perfectly and the residuals say nothing."""

DIFF_STEP = 0.03
MAX_NFEV = 40


def with_parameters(base: Hardware, names: Sequence[str], values: Sequence[float]) -> Hardware:
    """`base` with the fitted fields replaced (a new frozen Hardware)."""
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, values, strict=True)})


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


def default_fit(kind: str, hw: Hardware, rows: Sequence) -> tuple[str, ...]:
    """The fields a fit of `kind` rows ('tvwsim' or 'library') fits by default.

    Our kernels: DEFAULT_FIT. Library rows: the efficiency of the MMA class the library
    runs on `hw` (warpgroup MMA on Hopper, else mma.sync), the sparse one only when some
    rows are 2:4, the memory and fixed-cost fields, and the rate of K-contiguous operand
    streams when the rows hold both weight layouts."""
    if kind == "tvwsim":
        return DEFAULT_FIT
    prefix = "wgmma_efficiency" if hw.has_warpgroup_mma else "mma_efficiency"
    names = [f"{prefix}_dense"]
    if any(r["pattern"] == "vw" for r in rows):
        names.append(f"{prefix}_sparse")
    if any(r["pattern"] == "ew" for r in rows):
        names += ["cuda_core_efficiency", "csr_nonzero_cycles"]  # cuSPARSE CSR
    if not any(r["pattern"] in ("dense", "vw") for r in rows):
        names.remove(f"{prefix}_dense")  # no tensor-core row to see it
    if len({row_layout(r).w_k_contiguous for r in rows}) > 1:
        # Only rows of both weight layouts separate the K-contiguous stream's rate from
        # dram_efficiency (the weight is the stream of skinny GEMMs).
        names.append("k_contiguous_stream_efficiency")
    return (*names, "dram_efficiency", "l2_efficiency", "cta_fixed_cycles", "launch_overhead_us")


def check_fit_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))
    if not names:
        raise InputError("--fit", f"name at least one parameter from: {', '.join(FITTABLE)}")
    for name in names:
        if name not in FITTABLE:
            raise InputError("--fit", f"cannot fit {name!r}; fittable: {', '.join(FITTABLE)}")
    return names


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
