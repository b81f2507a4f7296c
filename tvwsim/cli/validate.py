"""`tvwsim validate`, `tvwsim calibrate`, `tvwsim compare`: the model meets the GPU.

    tvwsim validate --sweep quick --out traces/measured/h100-20260101.jsonl
    tvwsim validate --spec my-sweep.toml --out m.jsonl --budget-s 300
    tvwsim validate --sweep full --dry-run
    tvwsim calibrate --measured m.jsonl --hw h100 --out presets/h100-calibrated.toml
    tvwsim compare --measured m.jsonl --hw h100-calibrated [--json] [--plot-dir DIR]

`validate` needs a CUDA GPU and PyCUDA (torch for the vendor baselines); `--dry-run` lists
the points anywhere. `calibrate` and `compare` run on any machine. The method, the row
schema and the metrics: docs/validation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tvwsim.cli.args import parse_int
from tvwsim.cli.progress import add_progress_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    v = subparsers.add_parser(
        "validate",
        help="time our kernels and the vendor baselines over a sweep on this GPU",
        description=(
            "Run a measurement sweep on the current GPU: for every point build the "
            "encoding and schedule, check the kernel against its CPU twin, time it with "
            "CUDA events (L2 flushed, warm-up, median of >= 20 runs) and time cuBLAS, "
            "cuSPARSELt and cuSPARSE on the same shape. Rows are appended as they finish; "
            "rerunning with the same --out resumes."
        ),
    )
    which = v.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", metavar="NAME", help="a shipped sweep: quick or full")
    which.add_argument("--spec", metavar="FILE.toml", help="a sweep spec file")
    v.add_argument("--out", metavar="FILE.jsonl", help="measurement file (appended, resumed)")
    v.add_argument(
        "--budget-s",
        metavar="S",
        help="start no point after S seconds (a run under a hard time limit ends cleanly)",
    )
    v.add_argument(
        "--build-dir", metavar="DIR", help="built kernels (default: the kernel directory; else JIT)"
    )
    v.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the points that raised in an earlier run (FILE.failed.jsonl)",
    )
    v.add_argument("--dry-run", action="store_true", help="list the points; run nothing")
    add_progress_argument(v)
    v.set_defaults(func=run_validate)

    c = subparsers.add_parser(
        "calibrate",
        help="fit the model's efficiency parameters to measured kernel times",
        description=(
            "Least-squares fit of the efficiency fields of a hardware preset to the "
            "training split of measured rows; writes a calibrated preset naming its "
            "source files, their sha256, the split and the residuals."
        ),
    )
    c.add_argument("--measured", nargs="+", required=True, metavar="FILE", help="JSONL files")
    c.add_argument(
        "--hw",
        metavar="NAME",
        help="base preset, e.g. h100 (default: the shipped preset of the measured device, "
        "h200 for an NVIDIA H200)",
    )
    c.add_argument(
        "--out",
        metavar="PRESET.toml",
        help="calibrated preset (default in the current directory: BASE-calibrated.toml for "
        "our kernels, BASE-library-calibrated.toml for library rows, "
        "BASE-published-calibrated.toml for published ones)",
    )
    c.add_argument(
        "--rows",
        metavar="KIND",
        help="fit to 'tvwsim' (our kernels) or 'library' rows (cuBLAS, cuSPARSELt, replayed "
        "as the kernel a library would pick; published files hold these) (default: tvwsim "
        "when the files have any of our kernels)",
    )
    c.add_argument(
        "--only",
        metavar="IMPL,IMPL",
        help="only rows of these implementations, e.g. cublas,cusparselt",
    )
    c.add_argument("--force", action="store_true", help="replace an existing --out file")
    c.add_argument(
        "--fit",
        metavar="P,P,...",
        help="parameters to fit (default for our kernels: mma_efficiency_dense, "
        "mma_efficiency_sparse, l2_efficiency, dram_efficiency, cta_fixed_cycles, "
        "launch_overhead_us; for library rows the MMA class's efficiencies, wgmma_* on "
        "Hopper, instead of the mma ones)",
    )
    c.add_argument("--max-nfev", metavar="N", help="most fit iterations (default 40)")
    c.add_argument(
        "--max-stages",
        metavar="N",
        help="leave training rows larger than N CTA stages of a 128x128x32 kernel out of the "
        "fit, to keep it fast ('none': no limit; default 250000, about 3 s of simulation)",
    )
    c.add_argument("--jobs", metavar="N", help="simulate rows in N processes (default: CPU count)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_calibrate)

    m = subparsers.add_parser(
        "compare",
        help="simulated vs measured kernel time and speedup on held-out shapes",
        description=(
            "Simulate the held-out rows of measurement files on a preset and report time "
            "and speedup errors (MAPE), Spearman rank correlation and the worst points."
        ),
    )
    m.add_argument("--measured", nargs="+", required=True, metavar="FILE", help="JSONL files")
    m.add_argument(
        "--hw", required=True, metavar="NAME", help="hardware preset, e.g. h100-calibrated"
    )
    m.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hardware field (repeatable)",
    )
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.add_argument(
        "--plot-dir", metavar="DIR", help="write time_scatter.png and speedup_bars.png there"
    )
    m.add_argument("--all-rows", action="store_true", help="every row, not only held-out")
    m.add_argument(
        "--rows",
        metavar="KIND",
        help="compare 'tvwsim' (our kernels) or 'library' rows (cuBLAS, cuSPARSELt) "
        "(default: tvwsim when the files have any of our kernels)",
    )
    m.add_argument(
        "--only",
        metavar="IMPL,IMPL",
        help="only rows of these implementations, e.g. cublas,cusparselt",
    )
    m.add_argument(
        "--any-device",
        action="store_true",
        help="compare even if the preset describes another GPU than the rows",
    )
    m.set_defaults(func=run_compare)


# -- validate ------------------------------------------------------------------------------
def _positive_float(name: str, text: str | None) -> float | None:
    from tvwsim.errors import InputError

    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(name, f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise InputError(name, f"must be > 0, got {text!r}")
    return value


def _done_keys(path: Path) -> set[str]:
    """Keys of the complete rows in `path`, read without changing the file."""
    from tvwsim.io import read_jsonl_tolerant

    return {str(row["point"]) for row in read_jsonl_tolerant(path) if "point" in row}


def run_validate(args: argparse.Namespace) -> int:
    from tvwsim.errors import InputError
    from tvwsim.validate.runner import StopFlag, run_sweep
    from tvwsim.validate.spec import load_spec

    spec = load_spec(args.sweep, argument="--sweep") if args.sweep else load_spec(args.spec)
    budget = _positive_float("--budget-s", args.budget_s)
    points = spec.points()
    if args.dry_run:
        done = _done_keys(Path(args.out)) if args.out else set()
        ours = sum(p.implementation == "tvwsim" for p in points)
        print(
            f"sweep {spec.name}: {len(points)} points ({ours} tvwsim kernels, "
            f"{len(points) - ours} vendor baselines), {len(spec.groups)} group(s), "
            f"warm-up {spec.timing.warmup}, {spec.timing.repeats} timed runs each"
        )
        if args.out:
            print(f"{len(done & {p.key for p in points})} already in {args.out}")
        for p in points:
            mark = "done " if p.key in done else ""
            print(f"  {mark}{p.key}")
        return 0
    if not args.out:
        raise InputError("--out", "name the measurement file (JSON lines, appended and resumed)")
    out = Path(args.out)
    if out.exists() and not out.is_file():
        raise InputError("--out", f"{out} exists and is not a file")

    from tvwsim.validate.gpu_executor import GpuExecutor

    executor = GpuExecutor(build_dir=args.build_dir)
    device = executor.device_info()
    print(
        f"sweep {spec.name} on {device['name']} ({device.get('sm_count')} SMs, driver "
        f"{device.get('driver_version')}, CUDA {device.get('cuda_driver_version')}): "
        f"{len(points)} points -> {out}",
        flush=True,
    )
    if executor.baselines is None:
        print("torch is not importable: vendor baselines will be skipped", flush=True)
    stop = StopFlag().install()
    try:
        summary = run_sweep(
            points,
            executor,
            out,
            timing=spec.timing,
            sweep=spec.name,
            budget_s=budget,
            should_stop=stop,
            progress=not args.no_progress,
            retry_failed=args.retry_failed,
        )
    finally:
        stop.restore()
    print(
        f"{summary.measured} measured ({summary.incorrect} incorrect), "
        f"{summary.already_done} were already done, {len(summary.skipped)} skipped, "
        f"{len(summary.failed)} failed, {summary.remaining} left; {summary.elapsed_s:.0f} s"
    )
    for key, why in summary.skipped:
        print(f"  skipped {key}: {why}")
    for key, why in summary.failed:
        print(f"  failed  {key}: {why}")
    if summary.stopped:
        print(f"stopped early: {summary.stopped}. Rerun the same command to resume.")
    return 1 if summary.failed or summary.incorrect else 0


# -- calibrate -----------------------------------------------------------------------------
def _measured_device_preset(rows: list[dict]) -> str:
    """The shipped preset of the one device the measurement rows come from."""
    from tvwsim.errors import InputError
    from tvwsim.validate.split import preset_for_device

    devices = sorted({str(r["device"]["name"]) for r in rows})
    if len(devices) != 1:
        raise InputError(
            "--measured", f"rows come from {len(devices)} devices ({', '.join(devices)}); use one"
        )
    return preset_for_device(devices[0])


def run_calibrate(args: argparse.Namespace) -> int:
    from tvwsim.errors import InputError
    from tvwsim.sim.presets import (
        PATH_ENV,
        SHIPPED_DIR,
        find_preset,
        load_preset,
        preset_dirs,
        write_preset,
    )
    from tvwsim.validate.calibrate import (
        calibrate_rows,
        calibrated_hardware,
        default_preset_name,
        preset_comments,
    )
    from tvwsim.validate.dataset import load_rows
    from tvwsim.validate.device_info import utc_now
    from tvwsim.validate.fit import MAX_NFEV, check_fit_names
    from tvwsim.validate.split import MAX_TRAIN_STAGES, check_kind, default_kind, model_rows

    rows, files = load_rows(args.measured)
    if args.hw is None:
        args.hw = _measured_device_preset(rows)
    kind = default_kind(rows) if args.rows is None else check_kind(args.rows)
    if args.out is None:
        only = None if args.only is None else args.only.split(",")
        args.out = f"{default_preset_name(args.hw, kind, model_rows(rows, kind, only))}.toml"
    out = Path(args.out).expanduser()
    if out.suffix != ".toml":
        raise InputError("--out", f"a preset file is NAME.toml, got {out.name!r}")
    if (SHIPPED_DIR / out.name).exists() and out.resolve() != (SHIPPED_DIR / out.name).resolve():
        raise InputError(
            "--out",
            f"{out.stem!r} is a shipped preset's name, and a shipped preset always wins the "
            f"lookup; call it e.g. {out.stem}-calibrated.toml",
        )
    if out.exists() and not args.force:
        raise InputError("--out", f"{out} exists; pass --force to replace it")
    names = None
    if args.fit:
        names = check_fit_names([n.strip() for n in args.fit.split(",") if n.strip()])
    max_nfev = MAX_NFEV if args.max_nfev is None else parse_int("--max-nfev", args.max_nfev)
    if args.max_stages is None:
        max_stages = MAX_TRAIN_STAGES
    elif args.max_stages.strip().lower() == "none":
        max_stages = None
    else:
        max_stages = parse_int("--max-stages", args.max_stages, minimum=1)
    jobs = (os.cpu_count() or 1) if args.jobs is None else parse_int("--jobs", args.jobs)
    base = load_preset(args.hw, argument="--hw")
    quiet = args.json

    def progress(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    cal = calibrate_rows(
        rows,
        files,
        base,
        names,
        kind=kind,
        only=None if args.only is None else args.only.split(","),
        max_stages=max_stages,
        max_nfev=max_nfev,
        jobs=jobs,
        progress=progress,
    )
    hw = calibrated_hardware(cal, out.stem, date=utc_now())
    header = (
        f"{out.stem}: {base.name} calibrated by tvwsim calibrate on {cal.device_name},\n"
        f"fitted to {cal.fitted_to}.\n"
        "Only the fitted efficiency fields differ from the base preset; [extra.calibration]\n"
        "names the measurement files (sha256), the shape split and the fit residuals."
    )
    # Over the base preset's own file, so every figure keeps the comment naming its source.
    template = find_preset(args.hw, argument="--hw").path
    write_preset(hw, out, comments=preset_comments(cal), header=header, template=template)
    summary = cal.fit.summary()
    if args.json:
        print(
            json.dumps(
                {
                    "preset": out.stem,
                    "file": str(out),
                    "base": base.name,
                    "device": cal.device_name,
                    "rows": cal.kind,
                    "fitted_to": cal.fitted_to,
                    "parameters": {p.name: p.to_dict() for p in cal.fit.parameters},
                    "residuals": summary,
                    "split": cal.split.to_dict(),
                    "files": list(cal.files),
                    "schedule_digest_mismatches": cal.digest_mismatches,
                },
                indent=2,
            )
        )
    else:
        print(
            f"calibrated {base.name} on {cal.device_name}: {cal.fit.n_rows} training rows of "
            f"{cal.fitted_to}"
        )
        print(f"  {'parameter':<24}{'base':>10}{'fitted':>12}{'std err':>10}")
        for p in cal.fit.parameters:
            err = "-" if p.rel_std_error is None else f"{100 * p.rel_std_error:.2g}%"
            flag = "  at bound" if p.at_bound else ""
            print(f"  {p.name:<24}{p.initial:>10.4g}{p.value:>12.4g}{err:>10}{flag}")
        print(
            f"  train MAPE {100 * summary['initial_train_mape']:.1f}% -> "
            f"{100 * summary['train_mape']:.1f}%, rms log residual "
            f"{summary['rms_log_residual']:.4f}, {summary['nfev']} evaluations"
        )
        print(
            f"  held out {len(cal.split.held_out)} shape(s): "
            f"{', '.join(cal.split.to_dict()['held_out_shapes']) or 'none'}"
        )
        print(f"wrote {out}")
        on_path = any(out.parent.resolve() == d.resolve() for d in preset_dirs() if d.exists())
        if on_path:
            print(f"use it as --hw {out.stem} (tvwsim hw show {out.stem})")
        else:
            print(
                f"to use it by name: export {PATH_ENV}={out.parent.resolve()}"
                f"{os.pathsep}${PATH_ENV}; then tvwsim hw show {out.stem}"
            )
    return 0


# -- compare -------------------------------------------------------------------------------
def run_compare(args: argparse.Namespace) -> int:
    from tvwsim.sim.presets import load_preset, parse_overrides
    from tvwsim.validate.compare import compare_files, format_text
    from tvwsim.validate.plots import write_plots

    hw = load_preset(args.hw, parse_overrides(args.overrides), argument="--hw")
    comparison = compare_files(
        args.measured,
        hw,
        all_rows=args.all_rows,
        any_device=args.any_device,
        kind=args.rows,
        only=None if args.only is None else args.only.split(","),
    )
    plots = write_plots(comparison, args.plot_dir) if args.plot_dir else []
    if args.json:
        data = comparison.to_dict()
        data["plots"] = [str(p) for p in plots]
        print(json.dumps(data, indent=2))
    else:
        print(format_text(comparison))
        for path in plots:
            print(f"wrote {path}")
    return 0
