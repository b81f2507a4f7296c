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

Method, one module per step
---------------------------
1. Rows and split (`tvwsim.validate.split`): our correct kernels (or, `kind` 'library',
   the cuBLAS / cuSPARSELt rows, published or measured) from one device that matches the
   base preset; a deterministic shape-disjoint split by sha256 of the shape.
2. Replay (`tvwsim.validate.replay`): each training row's schedule is rebuilt exactly as
   the GPU sweep built it, its digest checked, and simulated with the row's resources; a
   library row is replayed as the kernel `tvwsim.sim.library` picks for it on the base
   preset (warpgroup MMA on Hopper: then the `wgmma_efficiency_*` fields are fitted).
3. Fit (`tvwsim.validate.fit`): least squares on log(simulated / measured) over the
   fitted fields, as logarithms within bounds, with error bars from the Jacobian.
4. The calibrated preset (`calibrated_hardware`, written by
   `tvwsim.sim.presets.write_preset` over the base preset's file, so every source
   comment stays): the base preset with the fitted fields replaced; its
   `[extra.calibration]` names the measurement files and their sha256, the split, the
   fitted values with their standard errors, and the residuals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tvwsim.sim.hardware import Hardware
from tvwsim.validate.dataset import load_rows
from tvwsim.validate.fit import (
    MAX_NFEV,
    MIN_EXTRA_ROWS,
    FitResult,
    check_fit_names,
    default_fit,
    fit_parameters,
)
from tvwsim.validate.replay import row_case
from tvwsim.validate.split import (
    MAX_TRAIN_STAGES,
    Split,
    check_device,
    check_kind,
    default_kind,
    fitted_to,
    model_rows,
    row_stages,
    split_shapes,
)

from tvwsim.errors import InputError


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
    """Rows not used: the other kind of rows, incorrect results, held-out shapes."""
    kind: str = "tvwsim"
    """'tvwsim' (our kernels) or 'library' (vendor library rows)."""
    fitted_to: str = ""
    """What the fit saw, in words (`tvwsim.validate.split.fitted_to`)."""
    too_large_rows: int = 0
    """Training-shape rows left out for their size (`max_stages`)."""
    max_stages: int | None = None


def calibrate(
    paths: Sequence[str | Path],
    base: Hardware,
    names: Sequence[str] | None = None,
    *,
    kind: str | None = None,
    only: Sequence[str] | None = None,
    max_stages: int | None = MAX_TRAIN_STAGES,
    max_nfev: int = MAX_NFEV,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Read the measurement files, split, rebuild schedules and fit (module docstring).

    `kind` 'tvwsim' fits to our kernels' rows, 'library' to the vendor library rows
    (default: ours when the files hold any); `names` default to `default_fit(kind)`.
    Training rows over `max_stages` (`row_stages`; None: no limit) are left out; `only`
    keeps the rows of those implementations alone."""
    rows, files = load_rows(paths)
    return calibrate_rows(
        rows,
        files,
        base,
        names,
        kind=kind,
        only=only,
        max_stages=max_stages,
        max_nfev=max_nfev,
        jobs=jobs,
        progress=progress,
    )


def calibrate_rows(
    rows: Sequence[dict],
    files: Sequence[dict],
    base: Hardware,
    names: Sequence[str] | None = None,
    *,
    kind: str | None = None,
    only: Sequence[str] | None = None,
    max_stages: int | None = MAX_TRAIN_STAGES,
    max_nfev: int = MAX_NFEV,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """`calibrate` on rows already read (`tvwsim.validate.dataset.load_rows`)."""
    kind = default_kind(rows) if kind is None else check_kind(kind)
    device = check_device(rows, base)
    usable = model_rows(rows, kind, only)
    if not usable:
        what = "tvwsim kernels" if kind == "tvwsim" else "cuBLAS or cuSPARSELt"
        raise InputError("--measured", f"no correct rows of {what} (--rows {kind})")
    names = check_fit_names(default_fit(kind, base, usable) if names is None else names)
    split = split_shapes((r["M"], r["N"], r["K"]) for r in usable)
    train = [r for r in usable if not split.is_held_out(r)]
    too_large = [r for r in train if max_stages is not None and row_stages(r) > max_stages]
    if too_large and progress:
        progress(
            f"leaving {len(too_large)} training rows over {max_stages} CTA stages out of the "
            "fit (--max-stages)"
        )
    train = [r for r in train if max_stages is None or row_stages(r) <= max_stages]
    need = len(names) + MIN_EXTRA_ROWS
    if len(train) < need:
        raise InputError(
            "--measured",
            f"{len(train)} training rows ({len(usable)} usable, "
            f"{len(usable) - len(train) - len(too_large)} on held-out shapes, "
            f"{len(too_large)} over --max-stages) for {len(names)} parameters; need at least "
            f"{need}. Measure more shapes or fit fewer parameters (--fit)",
        )
    if progress:
        progress(f"rebuilding {len(train)} schedules")
    cases = [row_case(r, base) for r in train]
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
        kind=kind,
        fitted_to=fitted_to(train, kind),
        too_large_rows=len(too_large),
        max_stages=max_stages,
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
        "rows": cal.kind,
        "fitted_to": cal.fitted_to,
        "max_stages": cal.max_stages if cal.max_stages is not None else "none",
        "rows_left_out_for_size": cal.too_large_rows,
    }
    return dataclasses.replace(
        fit.hardware,
        name=name,
        description=f"{cal.base.description or cal.base.name}, calibrated on {cal.device_name}",
        source=f"{cal.base.name} preset with {', '.join(fit.values)} fitted by tvwsim "
        f"calibrate to {fit.n_rows} rows of {cal.fitted_to} from {files}",
        extra=extra,
    )


def default_preset_name(base: str, kind: str, rows: Sequence) -> str:
    """The calibrated preset's name says what it was fitted to: 'h200-calibrated' (our
    kernels), 'h200-library-calibrated' (library rows we measured),
    'v100-published-calibrated' (published library rows)."""
    if kind == "tvwsim":
        return f"{base}-calibrated"
    published = rows and all(r.get("origin") == "published" for r in rows)
    return f"{base}-{'published' if published else 'library'}-calibrated"


def preset_comments(cal: Calibration) -> dict[str, str]:
    """Per-field comments of the written preset: fitted values with their error bars, and
    the lines calibration rewrote (every other line keeps the base preset's source)."""
    comments = {
        "description": f"{cal.base.name}'s, and the device it was calibrated on",
        "source": "tvwsim calibrate; files, split and fit in [extra.calibration]",
    }
    for p in cal.fit.parameters:
        err = "not identifiable" if p.rel_std_error is None else f"+-{100 * p.rel_std_error:.2g}%"
        bound = ", AT BOUND" if p.at_bound else ""
        comments[p.name] = (
            f"fitted ({err}{bound}; {cal.base.name} had {p.initial:g}) on {cal.fit.n_rows} rows"
        )
    return comments
