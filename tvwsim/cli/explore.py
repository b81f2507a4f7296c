"""`tvwsim explore`: a design-space exploration on Dask, and its report.

    tvwsim explore sparse-tc --store runs/sparse-tc            # a shipped spec, all cores
    tvwsim explore my-space.toml --store runs/mine --workers 2
    tvwsim explore my-space.toml --store runs/mine --scheduler tcp://10.0.0.5:8786
    tvwsim explore report runs/sparse-tc --fields sm_count,sparse_tflop_ratio

The spec (`tvwsim.explore.spec`, docs/explore.md) is checked whole before anything runs.
The store (`--store DIR`: `--out` names a file in every tvwsim command, a store is a
folder) gets one Parquet file per finished batch; running the same command again
resumes where it stopped. `report` is a word, not a spec: a spec file named `report`
is `./report.toml`.
"""

from __future__ import annotations

import argparse
import sys

from tvwsim.cli.args import parse_int
from tvwsim.cli.progress import add_progress_argument, progress_bar
from tvwsim.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explore",
        help="design-space exploration: many hardware points on Dask, a Parquet store",
        description=(
            "Simulate every point of a design space (hardware fields on a grid or a "
            "Latin-hypercube/Sobol sample, workloads, patterns, sparsities) on a Dask "
            "cluster - local by default - into a resumable Parquet store; or, as "
            "`tvwsim explore report DIR`, print its best points and draw speedup "
            "heatmaps, per-pattern sensitivity and the fastest pattern per region."
        ),
    )
    p.add_argument(
        "spec",
        metavar="SPEC",
        help="a shipped spec (sparse-tc, memory-wall, future-gpu) or a .toml file; or the "
        "word report, followed by the store DIR",
    )
    p.add_argument("dir", nargs="?", metavar="DIR", help="(report) the store to report on")
    run = p.add_argument_group("running a spec")
    run.add_argument("--store", metavar="DIR", help="the store folder (new, or resumed)")
    run.add_argument(
        "--workers",
        metavar="N",
        help="local Dask worker processes (default: one per core); 0 runs in this process",
    )
    run.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, tcp://HOST:PORT"
    )
    run.add_argument(
        "--scheduler-file", metavar="FILE", help="an existing Dask scheduler's JSON file"
    )
    run.add_argument(
        "--batch-size", metavar="N", help="units (hardware point x workload) per task (auto)"
    )
    run.add_argument(
        "--max-batches", metavar="N", help="stop after writing N batches; rerun to go on"
    )
    add_progress_argument(run)
    rep = p.add_argument_group("report")
    rep.add_argument("--top", default="10", metavar="N", help="best points to list (10)")
    rep.add_argument(
        "--fields", metavar="X,Y", help="two varied fields of the heatmaps (the first two)"
    )
    rep.add_argument("--sparsity", metavar="S", help="target sparsity to report (the spec's first)")
    rep.add_argument("--plot-dir", metavar="DIR", help="where the pictures go (DIR/_report)")
    p.set_defaults(func=run_explore)


RUN_OPTIONS = ("store", "workers", "scheduler", "scheduler_file", "batch_size", "max_batches")
REPORT_OPTIONS = ("fields", "sparsity", "plot_dir")


def _only(args: argparse.Namespace, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(args, n) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise InputError(option, f"is not an option of {what}")


def run_explore(args: argparse.Namespace) -> int:
    if args.spec == "report":
        return run_report(args)
    if args.dir is not None:
        raise InputError(
            "DIR", f"only `explore report DIR` takes a folder; give --store {args.dir}"
        )
    _only(args, REPORT_OPTIONS, "a run (they belong to `tvwsim explore report`)")
    if args.store is None:
        raise InputError("--store", "required: the folder of the Parquet store")
    if args.scheduler is not None and args.scheduler_file is not None:
        raise InputError("--scheduler", "give --scheduler or --scheduler-file, not both")
    if args.scheduler is not None and "://" not in args.scheduler:
        raise InputError("--scheduler", f"an address like tcp://HOST:8786, got {args.scheduler!r}")
    remote = args.scheduler is not None or args.scheduler_file is not None
    if remote and args.workers is not None:
        raise InputError("--workers", "sizes a local cluster; an existing one has its own workers")
    workers = None if args.workers is None else parse_int("--workers", args.workers, minimum=0)
    batch_size = None if args.batch_size is None else parse_int("--batch-size", args.batch_size)
    max_batches = None if args.max_batches is None else parse_int("--max-batches", args.max_batches)

    from tvwsim.explore.evaluate import units
    from tvwsim.explore.runner import run_exploration
    from tvwsim.explore.spec import load_spec
    from tvwsim.explore.store import Store

    spec = load_spec(args.spec)
    store = Store(args.store, spec)
    every = units(spec)
    done = store.done_units()
    todo_rows = sum(len(u.runs) for u in every if u.key not in done)
    print(
        f"{spec.name}: {len(spec.points)} hardware points x {len(spec.workloads)} workloads, "
        f"{len(spec.points) * spec.rows_per_point} rows; {len(done)} of {len(every)} units "
        f"already in {args.store}",
        file=sys.stderr,
    )
    with progress_bar(todo_rows, "row", enabled=not args.no_progress, desc=spec.name) as step:

        def on_batch(rows: int, label: str) -> None:
            for _ in range(rows):
                step(label)

        try:
            summary = run_exploration(
                spec,
                store,
                workers=workers,
                scheduler=args.scheduler,
                scheduler_file=args.scheduler_file,
                batch_size=batch_size,
                max_batches=max_batches,
                on_batch=on_batch,
            )
        except KeyboardInterrupt:
            print(
                f"{spec.name}: stopped; {len(store.done_units())} of {len(every)} units are in "
                f"{args.store}, the batches in flight are lost; run the same command to resume",
                file=sys.stderr,
            )
            raise
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    state = "complete" if summary.complete else "incomplete: run the same command to resume"
    print(
        f"wrote {summary.rows} rows ({summary.done} units, {summary.batches} batches) in "
        f"{summary.seconds:.1f} s on {summary.workers or 'no'} Dask worker(s), "
        f"{rate:.2f} rows/s; store {state}"
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    if args.dir is None:
        raise InputError("DIR", "`tvwsim explore report DIR` needs the store folder")
    _only(args, RUN_OPTIONS, "`explore report`")
    from tvwsim.cli.args import parse_sparsity
    from tvwsim.explore.report import report

    fields = None
    if args.fields is not None:
        fields = [f.strip() for f in args.fields.split(",") if f.strip()]
        if not 1 <= len(fields) <= 2:
            raise InputError("--fields", f"one or two varied fields X,Y, got {args.fields!r}")
    text, _ = report(
        args.dir,
        top=parse_int("--top", args.top),
        fields=fields,
        sparsity=parse_sparsity("--sparsity", args.sparsity),
        plot_dir=args.plot_dir,
    )
    print(text)
    return 0
