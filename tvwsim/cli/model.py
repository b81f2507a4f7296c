"""`tvwsim model`: simulate every GEMM of a whole model, per sparsity pattern.

    tvwsim model bert-base --hw a100 --sparsity 0.75
    tvwsim model resnet50 --hw h100 --batch 8 --sparsity 0.5,0.75,0.875 --plot resnet.png
    tvwsim model vgg16 --hw a100 --pattern dense,tw,tvw --policy longest-first --csv
    tvwsim model gnmt --hw a100 --batch 16 --json

The model is a workload catalog (traces/workloads/, `tvwsim.traces.catalog`); every GEMM is
pruned, encoded, scheduled and simulated (`tvwsim.sim.model`), and the output gives the
end-to-end time and speedup over dense per pattern and sparsity, and each GEMM's
speedup. Where the model's family has a real-weight trace (bert-base/large <- MiniLM-L6,
vgg16 <- VGG-16, resnet50 <- half-width ResNet-50) the sparse structure follows it,
scaled to the full-size shapes (`tvwsim.sim.model_traces`, `tvwsim.sim.trace_work`); elsewhere the
weights are seeded random. The output says which, per GEMM.

Before any work the memory and simulation events are estimated (`tvwsim.sim.cost`); a
model too large for this machine is refused with the estimate unless --force is given.
See docs/whole-models.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tvwsim.cli.args import parse_int, parse_library_config, parse_patterns, parse_sparsity_list
from tvwsim.cli.progress import add_progress_argument, progress_bar
from tvwsim.cli.simulate import add_force_argument, add_hardware_arguments
from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES
from tvwsim.schedule import POLICIES

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
DEFAULT_PATTERNS = "all"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "model",
        help="simulate a whole model (every GEMM of a forward pass) per sparsity pattern",
        description=(
            "Simulate every GEMM of a model's forward pass on a hardware preset, dense and "
            "with each sparsity pattern, and print the end-to-end time and speedup over "
            "dense per pattern and the speedup of each GEMM. The sparse structure follows "
            "a real-weight trace where the model's family has one (scaled to the full-size "
            "shapes), else seeded random weights; the output says which."
        ),
    )
    p.add_argument(
        "name", metavar="MODEL", help="workload catalog: bert-base, vgg16, ... or a .toml"
    )
    add_hardware_arguments(p)
    p.add_argument("--batch", default="1", metavar="B", help="batch size (default 1)")
    p.add_argument(
        "--seq", default="128", metavar="S", help="sequence length, for models that have one (128)"
    )
    p.add_argument(
        "--sparsity",
        default="0.75",
        metavar="S",
        help="target sparsity, or a comma list (default 0.75); vw always runs at 0.5",
    )
    p.add_argument(
        "--pattern",
        default=DEFAULT_PATTERNS,
        metavar="P",
        help=f"{', '.join(PATTERN_NAMES)}, a comma list of them, or all (the default); "
        "dense always runs (the baseline)",
    )
    p.add_argument(
        "--policy",
        default="natural",
        metavar="POLICY",
        help=f"tile order: {', '.join(POLICIES)} (default natural)",
    )
    p.add_argument(
        "--config",
        metavar="KIND",
        help="'auto': dense, vw and the attention GEMMs run as a vendor library would "
        "(cuBLAS, cuSPARSELt: tile, split-K, grouped order, warpgroup MMA on Hopper); the "
        "other patterns keep this project's kernels (default: this project's kernels)",
    )
    p.add_argument(
        "--trace",
        default="auto",
        metavar="SPEC",
        help="structure source: auto (the family's real-weight trace if any), none (seeded "
        "random weights) or a .json.gz trace file",
    )
    p.add_argument("--seed", default="0", metavar="N", help="seed of random weights and draws (0)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    out.add_argument("--csv", action="store_true", help="print CSV rows (GEMM x run) instead")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help=f"also draw end-to-end speedup per pattern and sparsity ({', '.join(PLOT_SUFFIXES)})",
    )
    add_force_argument(p)
    add_progress_argument(p)
    p.set_defaults(func=run_model)


def _check_plot(path: str | None) -> Path | None:
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError("--plot", f"must end in {', '.join(PLOT_SUFFIXES)}, got {out.name!r}")
    if not out.parent.is_dir():
        raise InputError("--plot", f"directory {str(out.parent)!r} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise InputError(
            "--plot",
            "needs matplotlib, a core dependency of tvwsim; reinstall it: pip install -e .",
        ) from err
    return out


def run_model(args: argparse.Namespace) -> int:
    from tvwsim.config import default_config
    from tvwsim.sim import model as sim_model
    from tvwsim.sim.cost import check_cost, model_cost
    from tvwsim.sim.model_traces import load_mapping
    from tvwsim.sim.presets import load_preset, parse_overrides
    from tvwsim.traces.catalog import load_workload

    # Everything is checked before any work: bad input fails in milliseconds.
    batch = parse_int("--batch", args.batch)
    seq = parse_int("--seq", args.seq)
    seed_text = str(args.seed).strip()
    if not seed_text.isdigit():
        raise InputError("--seed", f"must be a non-negative integer, got {args.seed!r}")
    patterns = parse_patterns("--pattern", args.pattern)
    runs = sim_model.model_runs(patterns, parse_sparsity_list("--sparsity", args.sparsity))
    if args.policy not in POLICIES:
        raise InputError("--policy", f"got {args.policy!r}; allowed: {', '.join(POLICIES)}")
    library = parse_library_config("--config", args.config)
    plot = _check_plot(args.plot)
    hw = load_preset(args.hw, parse_overrides(args.set), argument="--hw")
    workload = load_workload(args.name, batch=batch, seq=seq)
    # A CNN's shapes do not depend on --seq; then the output does not print it.
    seq_used = load_workload(args.name, batch=batch, seq=seq + 1).gemms != workload.gemms
    mapping = load_mapping(workload, args.trace)
    if not args.force:
        cost = model_cost(workload, runs, traced=mapping is not None)
        what = f"{workload.name} at batch {batch}" + (f", seq {seq}" if seq_used else "")
        check_cost(cost, argument="MODEL", what=what)
    configs = {run.pattern: default_config(run.pattern) for run in runs}

    notes = mapping.notes(runs, configs) if mapping is not None else []
    if mapping is None and args.trace == "auto":
        notes.append(f"note: {workload.name} has no real-weight trace in its family")
    steps = len(runs) * len(workload.gemms)
    with progress_bar(steps, "gemm", enabled=not args.no_progress) as step:
        result = sim_model.simulate_model(
            workload,
            hw,
            runs,
            policy=args.policy,
            seed=int(seed_text),
            profiles=mapping.profile if mapping is not None else None,
            on_step=step,
            trace_label=mapping.label if mapping is not None else None,
            notes=notes,
            library=library,
        )
    if not seq_used:
        result = dataclasses.replace(result, seq=None)

    if plot is not None:
        sim_model.draw_speedup_plot(result, plot)
    if args.json:
        print(json.dumps(sim_model.to_json(result, hw)))
    elif args.csv:
        sys.stdout.write(sim_model.to_csv(result))
    else:
        print(sim_model.format_summary(result, hw.description or ""))
        print()
        print(sim_model.format_layers(result))
        print()
        print(sim_model.format_footer(result))
        if plot is not None:
            print(f"wrote {plot}")
    return 0
