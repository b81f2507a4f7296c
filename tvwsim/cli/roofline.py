"""`tvwsim roofline`: a preset's roofline with dense GEMMs placed on it (sim/roofline.py).

    tvwsim roofline bert-base --hw a100 --plot roof.png
    tvwsim roofline --hw h100 --shape 16,4096,4096 4096,4096,4096 --config auto --json

Every GEMM (the distinct shapes of a model's catalog, or each `--shape`) is simulated
dense, with this project's kernel or (`--config auto`) the one a vendor library would
pick; the table gives its arithmetic intensity (FLOP per compulsory DRAM byte), its
simulated TFLOP/s, the roof above it and the share of that roof it reaches. A point
far below its roof is held down by its kernel (tiles, waves, latency), not by the GPU.
"""

from __future__ import annotations

import argparse
import json

from tvwsim.cli.args import parse_int, parse_library_config
from tvwsim.cli.simulate import add_force_argument, add_hardware_arguments, parse_shape
from tvwsim.errors import InputError

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "roofline",
        help="a preset's roofline with each dense GEMM of a model (or --shape) placed on it",
        description=(
            "Peak dense tensor-core TFLOP/s and DRAM / L2 bandwidth of a preset, and for each "
            "GEMM its arithmetic intensity (2MNK over the bytes of X, W and Y once each) and "
            "simulated dense TFLOP/s: a table, --json, or a picture (--plot)."
        ),
    )
    p.add_argument(
        "name", nargs="?", metavar="MODEL", help="workload catalog: bert-base, ... or a .toml"
    )
    add_hardware_arguments(p)
    p.add_argument(
        "--shape", nargs="+", metavar="M,N,K", help="GEMM shapes instead of (or besides) a model"
    )
    p.add_argument("--batch", default="1", metavar="B", help="batch size (default 1)")
    p.add_argument(
        "--seq", default="128", metavar="S", help="sequence length, for models that have one (128)"
    )
    p.add_argument(
        "--config",
        metavar="KIND",
        help="'auto': each GEMM runs as cuBLAS would (tile menu, split-K; docs/model.md 5.6); "
        "default: this project's 128x128x32 kernel",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", metavar="FILE", help=f"draw the roofline ({', '.join(PLOT_SUFFIXES)})")
    add_force_argument(p)
    p.set_defaults(func=run_roofline)


def gemms_of(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    """(name, M, N, K) of every distinct GEMM asked for, model GEMMs first."""
    found: dict[tuple[int, int, int], list[str]] = {}
    if args.name is not None:
        from tvwsim.traces.catalog import load_workload

        batch = parse_int("--batch", args.batch)
        seq = parse_int("--seq", args.seq)
        for g in load_workload(args.name, batch=batch, seq=seq).gemms:
            found.setdefault((g.m, g.n, g.k), []).append(g.name)
    for text in args.shape or []:
        m, n, k = parse_shape(text)
        found.setdefault((m, n, k), []).append(f"{m}x{n}x{k}")
    if not found:
        raise InputError("--shape", "give a MODEL or at least one --shape M,N,K")
    # GEMMs of one shape are one point, named after the first ("attn.q +3": q, k, v, out).
    return [
        (names[0] + (f" +{len(names) - 1}" if len(names) > 1 else ""), m, n, k)
        for (m, n, k), names in found.items()
    ]


def run_roofline(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tvwsim.config import default_config
    from tvwsim.sim.cost import check_cost, gemm_cost, total_cost
    from tvwsim.sim.presets import load_preset, parse_overrides
    from tvwsim.sim.roofline import Roof, RooflinePoint, draw_roofline

    library = parse_library_config("--config", args.config)
    plot = None
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() not in PLOT_SUFFIXES:
            raise InputError("--plot", f"must end in {', '.join(PLOT_SUFFIXES)}, got {plot.name!r}")
        if not plot.parent.is_dir():
            raise InputError("--plot", f"directory {str(plot.parent)!r} does not exist")
    hw = load_preset(args.hw, parse_overrides(args.set), argument="--hw")
    gemms = gemms_of(args)
    if not args.force:
        cost = total_cost(
            gemm_cost(m, n, k, "dense", 0.0, default_config("dense")) for _, m, n, k in gemms
        )
        check_cost(cost, argument="--shape", what=f"{len(gemms)} dense GEMM(s)")
    points = [
        RooflinePoint.of(simulate_dense(hw, m, n, k, library), name) for name, m, n, k in gemms
    ]
    roof = Roof.of(hw)
    if args.json:
        print(json.dumps(roofline_record(roof, points), indent=2))
    else:
        print(roofline_table(roof, points))
    if plot is not None:
        draw_roofline(roof, points, plot)
        if not args.json:
            print(f"roofline written to {plot}")
    return 0


def simulate_dense(hw, m: int, n: int, k: int, library: bool):
    """The dense GEMM's SimResult: our default kernel, or a library's pick (`auto`)."""
    import tvwsim

    if library:
        from tvwsim.sim.library import choose

        return choose(hw, m, n, k, "dense").result
    return tvwsim.simulate(tvwsim.schedule_for_shape(m, n, k, "dense", 0.0), hw)


def roofline_record(roof, points) -> dict:
    from dataclasses import asdict

    return {
        "hardware": roof.label,
        "roof": asdict(roof) | {"ridge": roof.ridge},
        "points": [asdict(p) | {"attainable_tflops": roof.attainable(p.intensity)} for p in points],
    }


def roofline_table(roof, points) -> str:
    lines = [
        f"{roof.label}: dense peak {roof.peak_tflops:.0f} TFLOP/s "
        f"(achievable {roof.achievable_tflops:.0f}), DRAM {roof.dram_tbps:.2f} TB/s, "
        f"L2 {roof.l2_tbps:.2f} TB/s, ridge {roof.ridge:.0f} FLOP/B",
        "",
    ]
    header = ("gemm", "MxNxK", "FLOP/B", "TFLOP/s", "roof", "of roof", "bottleneck")
    rows = []
    for p in points:
        top = roof.attainable(p.intensity)
        rows.append(
            (
                p.name,
                f"{p.m}x{p.n}x{p.k}",
                f"{p.intensity:.1f}",
                f"{p.tflops:.1f}",
                f"{top:.0f}",
                f"{p.tflops / top:.0%}",
                p.bottleneck,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i in (0, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(lines)
