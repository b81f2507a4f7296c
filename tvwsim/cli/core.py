"""`tvwsim core`: one kernel's main loop on one SM, cycle by cycle (the teaching view).

    tvwsim core --hw a100 --kernel tvw-128x128x64s3w4 [--ctas N] [--cycles 200]
                [--no-swizzle] [--set key=value]... [--json]

Prints what limits the kernel's steady-state K stage on that GPU: the stage's cycles
from the cycle-level core (docs/model.md 5.7) next to the efficiency model's figure, the
critical resource, each pipe's utilisation, the loop's instruction mix, the stall
reasons, and an issue-slot picture of the first `--cycles` cycles of the steady state
(one row per warp: which class it issued, or why it waited).
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "core",
        help="one kernel's main loop on one SM, cycle by cycle (what limits a stage)",
        description=(
            "Run the cycle-level SM core on a shipped kernel's SASS main loop and show its "
            "critical resource, pipe utilisation, instruction mix and issue slots."
        ),
    )
    p.add_argument("--hw", required=True, metavar="NAME", help="hardware preset (tvwsim hw list)")
    p.add_argument(
        "--kernel",
        required=True,
        metavar="PATTERN-CONFIG",
        help="a shipped variant, e.g. tvw-128x128x64s3w4 or bw-128x128x32s3w4-b64 "
        "(tvwsim kernels list)",
    )
    p.add_argument("--ctas", metavar="N", help="co-resident CTAs (default: the occupancy model's)")
    p.add_argument(
        "--cycles", default="200", metavar="N", help="cycles of the issue-slot picture (0: none)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hardware field, e.g. --set core_issue_width=2 (repeatable)",
    )
    p.add_argument(
        "--no-swizzle",
        action="store_true",
        help="what if the tiles were stored row-major: the same loop with its bank conflicts",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_core)


def _core(args: argparse.Namespace) -> int:
    from tvwsim.cli.args import parse_int
    from tvwsim.sim.core.kernel import analyse_kernel, parse_kernel
    from tvwsim.sim.presets import load_preset, parse_overrides

    hw = load_preset(args.hw, parse_overrides(args.set), argument="--hw")
    pattern, config, block = parse_kernel(args.kernel)
    ctas = parse_int("--ctas", args.ctas) if args.ctas is not None else None
    cycles = parse_int("--cycles", args.cycles, minimum=0)
    found = analyse_kernel(
        hw, pattern, config, block, ctas=ctas, picture_cycles=cycles, arch_argument="--hw",
        swizzle=not args.no_swizzle,
    )  # fmt: skip
    if args.json:
        print(json.dumps(_record(found), indent=2))
    else:
        print(_text(found))
    return 0


def _mix(stream) -> dict[str, int]:
    from tvwsim.kernels.sass_stream import CLASSES

    counts = {c: stream.count(c) for c in CLASSES}
    return {c: n for c, n in counts.items() if n}


def _record(found) -> dict:
    r = found.result
    return {
        "kernel": f"{found.pattern}-{found.config.name}",
        "block": found.block,
        "hardware": found.hw.label,
        "code": r.stream.arch,
        "swizzled": found.swizzle,
        "ctas": r.ctas,
        "ctas_limited_by": found.limited_by,
        "warps": r.warps,
        "cycles_per_stage_per_cta": r.cycles_per_stage,
        "sm_cycles_per_stage": found.sm_cycles_per_stage,
        "efficiency_model_cycles_per_stage": found.efficiency_cycles,
        "bound": r.bound,
        "utilisation": r.utilisation,
        "stalls": r.stalls,
        "instruction_mix_per_warp_per_stage": _mix(r.stream),
        "mma_flops_per_clk": r.mma_flops_per_clk,
        "window": list(r.window),
        "picture": r.picture,
    }


def _text(found) -> str:
    from tvwsim.sim.core.model import STALL_SYMBOL, SYMBOL

    r, hw = found.result, found.hw
    s = r.stream
    peak = hw.sparse_flops_per_clk_per_sm if s.config.mma == "sparse" else (
        hw.dense_flops_per_clk_per_sm
    )  # fmt: skip
    from tvwsim.sim.core.streams import STREAM_ARCHS

    code = f"{s.arch} code" if s.arch in STREAM_ARCHS else f"sm_80 code as {s.arch} runs it"
    layout = "" if found.swizzle else ", tiles row-major (no swizzle)"
    lines = [
        f"{found.pattern}-{found.config.name}{f' b{found.block}' if found.block else ''} on "
        f"{hw.label} ({code}, nvcc {s.nvcc.split()[-1] if s.nvcc else '?'}{layout}): "
        f"{r.ctas} CTA(s) per SM ({found.limited_by}), {r.warps} warps on "
        f"{r.params.sub_partitions} schedulers",
        "",
        f"  cycles per K stage, one CTA:   {r.cycles_per_stage:8.1f}",
        f"  SM cycles per CTA-stage:       {found.sm_cycles_per_stage:8.1f}  "
        f"(efficiency model: {found.efficiency_cycles:.1f})",
        f"  tensor work:                   {r.mma_flops_per_clk:8.1f} FLOP/clk = "
        f"{r.mma_flops_per_clk / peak:.0%} of the {peak:g} peak",
        f"  critical resource:             {r.bound}",
        "",
        "utilisation (steady state)",
    ]
    for name, value in sorted(r.utilisation.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<8} {value:6.1%}  {'#' * round(40 * min(value, 1.0))}")
    lines += ["", "instruction mix, per warp per stage"]
    mix = _mix(s)
    lines.append(
        "  " + ", ".join(f"{c} {n}" for c, n in mix.items()) + f"  ({sum(mix.values())} in all)"
    )
    lines += ["", "what the warps did (share of warp-cycles)"]
    for name, value in list(r.stalls.items())[:8]:
        lines.append(f"  {name:<20} {value:6.1%}")
    if r.picture:
        legend = ", ".join(
            f"{sym}={cls}" for cls, sym in SYMBOL.items() if cls not in ("hmma_sp", "sts", "stg")
        )
        waits = ", ".join(f"'{sym}'={why}" for why, sym in STALL_SYMBOL.items())
        lines += [
            "",
            f"issue slots from cycle {r.picture_start} (one row per warp; scheduler = warp "
            f"mod {r.params.sub_partitions})",
            f"  issued: {legend} (M also HMMA.SP, S LDS/STS, g LDG/STG)",
            f"  waiting: {waits}",
        ]
        width = 100
        for start in range(0, len(r.picture[0]), width):
            lines.append(f"  cycle +{start}")
            for w, row in enumerate(r.picture):
                lines.append(
                    f"  w{w:<2} s{w % r.params.sub_partitions} |{row[start : start + width]}"
                )
    return "\n".join(lines)
