"""`tvwsim simulate` and `tvwsim timeline`: run the GPU model on one GEMM.

    tvwsim simulate --hw a100 --shape 4096,3072,768 --pattern all --sparsity 0.75
    tvwsim simulate --hw h100 --shape 4096,3072,768 --pattern tw --sparsity 0.75 --json
    tvwsim simulate --hw a100 --set sm_count=216 --shape 8192,8192,8192 --pattern dense
    tvwsim timeline --hw a100 --shape 4096,3072,768 --pattern tw --sparsity 0.75 \\
        --policy longest-first --out tw.png

The GEMM is Y (M x N) = X (M x K) @ W.T with W N x K. Without --weights, W is the seeded
synthetic weight (--seed); with it, W is read from a .npy and must be N x K. The weight
is pruned with the pattern, encoded, scheduled with --policy and simulated on the
hardware preset (--hw, changed with --set key=value). Several patterns (a comma list, or
`all`) print one table: each pattern's time and speedup over dense (which always runs),
the fixed-sparsity patterns at their own sparsity (dense 0, vw 0.5).

Before any work the memory and the simulation events are estimated
(`tvwsim.sim.cost`); a GEMM too large for this machine is refused with the estimate
unless --force is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tvwsim.cli.args import parse_int, parse_patterns, parse_sparsity
from tvwsim.cli.progress import add_progress_argument, progress_bar
from tvwsim.config import AUTO
from tvwsim.errors import InputError
from tvwsim.pattern_spec import BASELINE_PATTERN, PATTERN_NAMES, check_sparsity, pattern_spec
from tvwsim.schedule import POLICIES

TIMELINE_SUFFIXES = (".png", ".svg", ".pdf")


def add_hardware_arguments(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--hw and --set, spelled and explained the same by every simulating command
    (`default`: the preset when --hw is not given; None makes --hw required)."""
    p.add_argument(
        "--hw",
        required=default is None,
        default=default,
        metavar="NAME",
        help="hardware preset (tvwsim hw list)" + (f"; default {default}" if default else ""),
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hardware field, e.g. --set sm_count=216 (repeatable); every "
        "output names the hardware with its overrides, 'a100 (sm_count=216)'",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="run the exact engine, one event per stage of every CTA (the reference; "
        "slower on big GEMMs) instead of skipping the repeats of a steady state",
    )


def add_force_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="simulate even when the estimated memory or simulation events exceed the "
        "limits (the error message states both)",
    )


def _add_gemm_arguments(p: argparse.ArgumentParser, *, several: bool) -> None:
    add_hardware_arguments(p)
    p.add_argument("--shape", required=True, metavar="M,N,K", help="GEMM shape; W is N x K")
    names = ", ".join(PATTERN_NAMES)
    p.add_argument(
        "--pattern",
        required=True,
        metavar="P",
        help=(
            f"{names}; or a comma list of them, or all (one table, dense added as the baseline)"
            if several
            else f"one of {names}"
        ),
    )
    p.add_argument(
        "--sparsity",
        metavar="S",
        help="fraction of weights removed, [0, 1); dense needs 0, vw 0.5 (their default)",
    )
    p.add_argument(
        "--weights", metavar="W.npy", help="N x K weight (default: seeded synthetic weight)"
    )
    p.add_argument(
        "--config",
        metavar="BMxBNxBK[sSwW]",
        help="kernel config: CTA tile (BM = the tw/tvw tile width), stages, warps, e.g. "
        "128x128x32 or 128x64x32s4w4 (default: the pattern's shipped kernel); 'auto': what a "
        "vendor library would run (dense: cuBLAS, vw: cuSPARSELt): its tile, split-K, grouped "
        "order and, on Hopper, warpgroup MMA",
    )
    p.add_argument(
        "--layout",
        metavar="TT",
        help="with --config auto: the operands' layout as cuBLAS transposes of the weight "
        "and the tokens (column-major): TT is ours (W and XT row-major, the default), TN "
        "torch.nn.Linear's, NN and NT a weight stored N-contiguous",
    )
    p.add_argument("--warps", metavar="W", help="warps per CTA (default: the config's)")
    p.add_argument("--stages", metavar="S", help="pipeline stages (default: the config's)")
    p.add_argument(
        "--policy",
        default="natural",
        metavar="POLICY",
        help=f"tile order: {', '.join(POLICIES)} (default natural)",
    )
    p.add_argument("--seed", default="0", metavar="N", help="seed of the synthetic weight (0)")
    p.add_argument("--block", default="32", metavar="B", help="bw block side (32)")
    p.add_argument(
        "--manifest",
        metavar="PATH",
        help="kernel manifest for registers/shared memory (default: the built kernels' "
        "manifest if there is one, else an estimate)",
    )
    add_force_argument(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate one sparse GEMM on a GPU model and report time and bottleneck",
        description=(
            "Prune an N x K weight with a pattern, build its tile schedule and simulate the "
            "kernel launch cycle by cycle (SimPy) on a hardware preset. Prints time, "
            "TFLOP/s, CTAs, waves, utilisation and the bottleneck."
        ),
    )
    _add_gemm_arguments(p, several=True)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_progress_argument(p)
    p.set_defaults(func=run_simulate)

    t = subparsers.add_parser(
        "timeline",
        help="draw the CTAs on the SMs over time (Gantt chart) for one simulated GEMM",
        description=(
            "Simulate one pattern like `simulate` and draw every CTA as a bar on its SM, "
            "coloured by weight tile: wave quantisation and an imbalanced tile-wise "
            "schedule's tail become visible."
        ),
    )
    _add_gemm_arguments(t, several=False)
    t.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help=f"picture to write ({', '.join(TIMELINE_SUFFIXES)})",
    )
    t.add_argument(
        "--utilisation",
        metavar="FILE",
        help="also draw each SM's utilisation over time (share of its CTA slots busy)",
    )
    t.set_defaults(func=run_timeline)


# -- argument parsing ----------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError("--shape", f"expected three positive integers M,N,K, got {text!r}")
    m, n, k = (int(p) for p in parts)
    return m, n, k


def _parse_int(name: str, text: str | None, *, minimum: int = 0) -> int | None:
    return None if text is None else parse_int(name, text, minimum=minimum)


def _layout(args: argparse.Namespace, *, auto: bool):
    """The operand layout --layout names (a library's DRAM rate depends on it); only with
    --config auto: our own kernels read one layout."""
    from tvwsim.sim.library import OURS, Layout

    text = getattr(args, "layout", None)
    if text is None:
        return OURS
    if not auto:
        raise InputError("--layout", "applies to --config auto: our kernels read W and XT (TT)")
    return Layout.from_blas(text, argument="--layout")


def _config(args: argparse.Namespace, pattern: str):
    """The kernel config for `pattern` from --config/--warps/--stages (else its default);
    AUTO when --config auto names a library's choice."""
    from tvwsim.config import KernelConfig, default_config

    mma = pattern_spec(pattern).mma
    warps = _parse_int("--warps", args.warps, minimum=1)
    stages = _parse_int("--stages", args.stages, minimum=1)
    if args.config is not None and args.config.strip() == AUTO:
        from tvwsim.sim.library import library_for

        library_for(pattern)  # InputError('--config') for a pattern no library multiplies
        if warps is not None or stages is not None:
            what = "--warps" if warps is not None else "--stages"
            raise InputError(what, "the library picks its own kernel with --config auto")
        return AUTO
    try:
        config = default_config(pattern)
        if args.config is not None:
            config = KernelConfig.from_name(args.config, mma=mma)
        changes = {}
        if warps is not None:
            changes["warps"] = warps
        if stages is not None:
            changes["stages"] = stages
        return dataclasses.replace(config, **changes) if changes else config
    except InputError as err:
        if err.argument in ("warps", "stages"):
            raise InputError(f"--{err.argument}", err.problem) from None
        detail = err.problem if err.argument == "tile" else f"{err.argument} {err.problem}"
        raise InputError("--config", f"{detail} (kernel for {pattern})") from None


def _weights_header(path: str | None, n: int, k: int) -> int | None:
    """Check a --weights file's shape and dtype without reading it; its element size."""
    if path is None:
        return None
    import numpy as np

    if not Path(path).is_file():
        raise InputError("--weights", f"{path}: no such file")
    try:
        w = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise InputError("--weights", f"{path} is not a readable .npy array ({err})") from None
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise InputError("--weights", f"{path} must hold a 2-D N x K array")
    if w.shape != (n, k):
        raise InputError(
            "--weights", f"{path} has shape {w.shape}; --shape says W is N x K = ({n}, {k})"
        )
    if not np.issubdtype(w.dtype, np.floating):
        raise InputError("--weights", f"{path} must hold floats, got dtype {w.dtype}")
    return int(w.dtype.itemsize)


def hardware_of(args: argparse.Namespace):
    """The effective Hardware of --hw and --set."""
    from tvwsim.sim.presets import load_preset, parse_overrides

    return load_preset(args.hw, parse_overrides(args.set), argument="--hw")


def _runs(args: argparse.Namespace, *, several: bool) -> list[tuple[str, float]]:
    """(pattern, sparsity) pairs to simulate; dense first when several are asked."""
    sparsity = parse_sparsity("--sparsity", args.sparsity)
    patterns = parse_patterns("--pattern", args.pattern, several=several)
    every = str(args.pattern).strip() == "all"
    if len(patterns) > 1 and BASELINE_PATTERN not in patterns:
        patterns.insert(0, BASELINE_PATTERN)
    runs = []
    for name in patterns:
        spec = pattern_spec(name)
        if spec.fixed_sparsity is not None and (sparsity is None or len(patterns) > 1):
            runs.append((name, spec.fixed_sparsity))  # dense at 0, vw at 0.5
        elif sparsity is None:
            raise InputError("--sparsity", f"{name} needs a sparsity {spec.allowed()}")
        elif every and not spec.accepts(sparsity):
            continue  # `all`: tvw needs a sparsity >= 0.5 (2:4 after tw)
        else:
            runs.append((name, check_sparsity(name, sparsity, argument="--sparsity")))
    return runs


def _check_fits(hw, pattern: str, config, manifest: str | None):
    """The kernel's resources, checked against the SM before any work (--config)."""
    from tvwsim.sim.occupancy import check_mma_class, occupancy, resources_for

    check_mma_class(hw, config, "--config")
    resources = resources_for(hw, pattern, config, manifest)
    try:
        occupancy(hw, resources)
    except InputError as err:
        if err.argument != "tile":
            raise
        raise InputError("--config", f"{config.name} for {pattern}: {err.problem}") from None
    return resources


def _simulate_all(args: argparse.Namespace, *, several: bool = True, progress: bool = False):
    """(hw, [(sparsity, schedule, result)]) of every run (`_simulate_runs`)."""
    hw, results, _ = _simulate_runs(args, several=several, progress=progress)
    return hw, results


def _simulate_runs(args: argparse.Namespace, *, several: bool = True, progress: bool = False):
    """Parse everything and estimate the cost first (bad input fails before any work),
    then simulate each run. Returns hw, [(sparsity, schedule, result)] and the
    `LibraryChoice` of each pattern run with --config auto."""
    from tvwsim.config import default_config
    from tvwsim.kernels.prepare import schedule_for_shape
    from tvwsim.sim.cost import check_cost, gemm_cost, total_cost
    from tvwsim.sim.engine import simulate

    m, n, k = parse_shape(args.shape)
    runs = _runs(args, several=several)
    if args.policy not in POLICIES:
        raise InputError("--policy", f"got {args.policy!r}; allowed: {', '.join(POLICIES)}")
    seed = _parse_int("--seed", args.seed)
    block = _parse_int("--block", args.block, minimum=1)
    if args.manifest is not None and not Path(args.manifest).is_file():
        raise InputError("--manifest", f"{args.manifest}: no such file")
    hw = hardware_of(args)
    element_bytes = _weights_header(args.weights, n, k)
    configs = {pattern: _config(args, pattern) for pattern, _ in runs}
    layout = _layout(args, auto=AUTO in configs.values())
    resources = {p: _check_fits(hw, p, c, args.manifest) for p, c in configs.items() if c != AUTO}
    if not args.force:
        # A library's kernels cost about what the pattern's own kernel costs to simulate;
        # it simulates a few of them (SHORTLIST), so the estimate counts that many.
        from tvwsim.sim.library import SHORTLIST

        cost = total_cost(
            gemm_cost(
                m,
                n,
                k,
                p,
                s,
                default_config(p) if configs[p] == AUTO else configs[p],
                weight_bytes_per_element=element_bytes,
            )
            for p, s in runs
            for _ in range(SHORTLIST if configs[p] == AUTO else 1)
        )
        patterns = ", ".join(p for p, _ in runs)
        check_cost(cost, argument="--shape", what=f"M,N,K = {m},{n},{k} ({patterns})")
    weights = None
    if args.weights is not None:
        import numpy as np

        weights = np.load(args.weights, allow_pickle=False)

    results = []
    choices = {}
    with progress_bar(len(runs), "pattern", enabled=progress and len(runs) > 1) as step:
        for pattern, sparsity in runs:
            if configs[pattern] == AUTO:
                from tvwsim.sim.library import choose

                choice = choices[pattern] = choose(hw, m, n, k, pattern, layout=layout)
                results.append((sparsity, choice.schedule, choice.result))
                step(pattern)
                continue
            schedule = schedule_for_shape(
                m,
                n,
                k,
                pattern,
                sparsity,
                config=configs[pattern],
                policy=args.policy,
                seed=seed,
                weights=weights,
                block=block,
            )
            results.append((sparsity, schedule, simulate(schedule, hw, resources[pattern])))
            step(pattern)
    return hw, results, choices


# -- output ------------------------------------------------------------------------------
def result_record(hw, sparsity: float, result) -> dict:
    """The JSON object of one simulated GEMM (keys documented in docs/model.md)."""
    from tvwsim.sim.presets import hardware_record

    data = result.to_dict()
    record = {
        "hardware": result.hardware,
        **hardware_record(hw),
        "pattern": result.pattern,
        "sparsity": sparsity,
        "M": result.m,
        "N": result.n,
        "K": result.k,
        "cycles": result.cycles,
        "time_us": result.time_us,
        "tflops": result.useful_tflops,
        "ctas": result.ctas,
        "waves": result.waves,
        "bottleneck": result.bottleneck,
    }
    for key in ("m", "n", "k", "hardware", "pattern"):
        data.pop(key, None)
    record.update(data)
    return record


def _text_single(hw, sparsity: float, r) -> str:
    lines = [
        f"{r.hardware}, {hw.description or hw.name}: {r.pattern} at sparsity {sparsity:g} "
        f"(achieved {r.achieved_sparsity:.4f}), M={r.m} N={r.n} K={r.k}",
        f"kernel        {r.config} ({r.math_label}), policy {r.policy}",
        f"grid          {r.ctas} CTAs, {r.ctas_per_sm} per SM (limited by "
        f"{r.occupancy_limited_by}; {r.registers_per_thread} registers, "
        f"{r.smem_bytes_per_cta} B shared memory, {r.resources_source}), {r.waves} wave(s)",
        f"time          {r.time_us:.2f} us = kernel {r.kernel_us:.2f} us + launch "
        f"{r.launch_cycles / r.clock_mhz:.2f} us"
        + (
            f" + split-K passes {r.reduction_cycles / r.clock_mhz:.2f} us"
            if r.reduction_cycles
            else ""
        ),
        f"throughput    {r.useful_tflops:.1f} TFLOP/s useful, "
        f"{r.dense_equivalent_tflops:.1f} TFLOP/s dense-equivalent",
        f"utilisation   compute {r.compute_utilisation:.0%}, L2 {r.l2_utilisation:.0%}, "
        f"DRAM {r.dram_utilisation:.0%} (L2 hit rate {r.l2_hit_rate:.0%}, "
        f"DRAM {r.dram_bytes / 1e6:.1f} MB)",
        f"bottleneck    {r.bottleneck}: {r.bottleneck_detail}; tail {r.tail_share:.0%}",
    ]
    return "\n".join(lines)


def _text_table(hw, results, m: int, n: int, k: int) -> str:
    dense = next((r for _, _, r in results if r.pattern == BASELINE_PATTERN), None)
    header = (
        f"{hw.label}: M={m} N={n} K={k}, policy {results[0][2].policy}"
        f"{'' if dense is None else f', dense {dense.time_us:.2f} us'}"
    )
    cols = (
        "pattern",
        "sparsity",
        "kernel",
        "CTAs",
        "waves",
        "time_us",
        "speedup",
        "TFLOP/s",
        "bottleneck",
    )
    rows = []
    for sparsity, _, r in results:
        speedup = "" if dense is None else f"{dense.time_us / r.time_us:.2f}x"
        kernel = r.config if r.compute_unit == "tensor" else f"{r.config} (CUDA cores)"
        rows.append(
            (
                r.pattern,
                f"{sparsity:g}",
                kernel,
                str(r.ctas),
                str(r.waves),
                f"{r.time_us:.2f}",
                speedup,
                f"{r.useful_tflops:.1f}",
                r.bottleneck,
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [header, fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    out = [line.rstrip() for line in out]
    out.append("speedup = dense time / pattern time; TFLOP/s counts kept weights only")
    return "\n".join(out)


def run_simulate(args: argparse.Namespace) -> int:
    hw, results, choices = _simulate_runs(args, progress=not args.no_progress)
    m, n, k = parse_shape(args.shape)
    several = len(results) > 1
    if args.json:
        from tvwsim.sim.presets import hardware_record

        records = [result_record(hw, s, r) for s, _, r in results]
        for rec, (_, _, r) in zip(records, results, strict=True):
            if r.pattern in choices:
                rec["library"] = choices[r.pattern].to_dict()
        if several:
            dense = next((r for _, _, r in results if r.pattern == BASELINE_PATTERN), None)
            for rec, (_, _, r) in zip(records, results, strict=True):
                rec["speedup_over_dense"] = dense.time_us / r.time_us if dense else None
            payload = {
                "hardware": hw.label,
                **hardware_record(hw),
                "pattern": args.pattern,
                "sparsity": parse_sparsity("--sparsity", args.sparsity),
                "M": m,
                "N": n,
                "K": k,
                "results": records,
            }
        else:
            payload = records[0]
        print(json.dumps(payload, sort_keys=False))
    elif several:
        print(_text_table(hw, results, m, n, k))
        for choice in choices.values():
            print(f"{choice.result.pattern}: {_library_line(choice)}")
    else:
        sparsity, _, r = results[0]
        print(_text_single(hw, sparsity, r))
        if r.pattern in choices:
            print(f"library       {_library_line(choices[r.pattern])}")
    return 0


def _library_line(choice) -> str:
    """What --config auto picked, and out of how many candidates."""
    simulated = sum(1 for c in choice.candidates if c.simulated_us is not None)
    return (
        f"{choice.describe()}, {choice.schedule.policy} order, layout {choice.layout.blas}; "
        f"best of {simulated} simulated "
        f"from {len(choice.candidates)} candidates (tile x split-K) ranked in closed form"
    )


def run_timeline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in TIMELINE_SUFFIXES:
        raise InputError("--out", f"must end in {', '.join(TIMELINE_SUFFIXES)}, got {out.name!r}")
    if not out.parent.is_dir():
        raise InputError("--out", f"directory {str(out.parent)!r} does not exist")
    utilisation = None if args.utilisation is None else Path(args.utilisation)
    if utilisation is not None:
        if utilisation.suffix.lower() not in TIMELINE_SUFFIXES:
            raise InputError(
                "--utilisation",
                f"must end in {', '.join(TIMELINE_SUFFIXES)}, got {utilisation.name!r}",
            )
        if not utilisation.parent.is_dir():
            raise InputError(
                "--utilisation", f"directory {str(utilisation.parent)!r} does not exist"
            )
    hw, results = _simulate_all(args, several=False)
    sparsity, schedule, result = results[0]

    from tvwsim.sim.timeline import draw_timeline, draw_utilisation

    draw_timeline(result, out, schedule=schedule, sparsity=sparsity)
    if utilisation is not None:
        draw_utilisation(result, utilisation)
    print(
        f"wrote {out}: {result.hardware}, {result.ctas} CTAs on {result.sm_count} SMs, "
        f"{result.time_us:.2f} us, bottleneck {result.bottleneck}"
    )
    if utilisation is not None:
        print(f"wrote {utilisation}: per-SM utilisation over time")
    return 0
