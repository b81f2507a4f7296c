"""`tvwsim simulate` and `tvwsim timeline`: run the GPU model on one GEMM.

    tvwsim simulate --hw a100 --shape 4096,3072,768 --pattern all --sparsity 0.75
    tvwsim simulate --hw h100 --shape 4096,3072,768 --pattern tw --sparsity 0.75 --json
    tvwsim simulate --hw a100 --set sm_count=216 --shape 8192,8192,8192 --pattern dense
    tvwsim timeline --hw a100 --shape 4096,3072,768 --pattern tw --sparsity 0.75 \\
        --policy longest-first --out tw.png

The GEMM is Y (M x N) = X (M x K) @ W.T with W N x K. Without --weights, W is a seeded
Gaussian (--seed); with it, W is read from a .npy and must be N x K. The weight is
pruned with the pattern, encoded, scheduled with --policy and simulated on the hardware
preset (--hw, changed with --set key=value). `--pattern all` runs every pattern at the
given sparsity (vw at its fixed 0.5, dense at 0) and prints each one's time and speedup
over dense.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from tvwsim.cli.args import parse_int
from tvwsim.errors import InputError

ALL_PATTERNS = ("dense", "ew", "bw", "vw", "tw", "tvw")
VW_SPARSITY = 0.5
TIMELINE_SUFFIXES = (".png", ".svg", ".pdf")


def _add_gemm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", required=True, metavar="NAME", help="hardware preset (tvwsim hw list)")
    p.add_argument("--shape", required=True, metavar="M,N,K", help="GEMM shape; W is N x K")
    p.add_argument(
        "--pattern", required=True, metavar="P", help="dense, ew, bw, vw, tw, tvw (or all)"
    )
    p.add_argument(
        "--sparsity",
        metavar="S",
        help="fraction of weights removed, [0, 1); dense needs 0, vw 0.5 (their default)",
    )
    p.add_argument("--weights", metavar="W.npy", help="N x K weight (default: seeded Gaussian)")
    p.add_argument(
        "--tile",
        metavar="BMxBNxBK",
        help="CTA tile, e.g. 128x128x32 or 128x64x32s4w4 (default: the pattern's kernel)",
    )
    p.add_argument("--warps", metavar="W", help="warps per CTA (default 4)")
    p.add_argument("--stages", metavar="S", help="pipeline stages (default 3)")
    p.add_argument(
        "--policy",
        default="natural",
        metavar="POLICY",
        help="tile order: natural, longest-first or split (default natural)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hardware field, e.g. --set sm_count=216 (repeatable)",
    )
    p.add_argument("--seed", default="0", metavar="N", help="seed of the random weight (0)")
    p.add_argument("--block", default="32", metavar="B", help="bw block side (32)")
    p.add_argument(
        "--manifest",
        metavar="PATH",
        help="kernel manifest for registers/shared memory (default build/kernels/manifest.json "
        "if present, else an estimate)",
    )


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
    _add_gemm_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run_simulate)

    t = subparsers.add_parser(
        "timeline",
        help="draw the CTAs on the SMs over time (Gantt chart) for one simulated GEMM",
        description=(
            "Simulate like `simulate` and draw every CTA as a bar on its SM, coloured by "
            "weight tile: wave quantisation and an imbalanced tile-wise schedule's tail "
            "become visible."
        ),
    )
    _add_gemm_arguments(t)
    t.add_argument("--out", required=True, metavar="FILE.png", help="picture to write")
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


def _parse_sparsity(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError("--sparsity", f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise InputError("--sparsity", f"must be in [0, 1), got {value}")
    return value


def _config(args: argparse.Namespace, pattern: str):
    """The kernel config for `pattern` from --tile/--warps/--stages (else its default)."""
    import dataclasses

    from tvwsim.config import KernelConfig, default_config

    mma = "sparse" if pattern in ("vw", "tvw") else "dense"
    warps = _parse_int("--warps", args.warps, minimum=1)
    stages = _parse_int("--stages", args.stages, minimum=1)
    try:
        config = default_config(pattern)
        if args.tile is not None:
            config = KernelConfig.from_name(args.tile, mma=mma)
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
        raise InputError("--tile", f"{detail} (kernel for {pattern})") from None


def _load_weights(path: str | None, n: int, k: int):
    if path is None:
        return None
    import numpy as np

    try:
        w = np.load(path, allow_pickle=False)
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
    return w


def _hardware(args: argparse.Namespace):
    from tvwsim.sim.presets import load_preset, parse_overrides

    return load_preset(args.hw, parse_overrides(args.set), argument="--hw")


def _runs(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(pattern, sparsity) pairs to simulate."""
    sparsity = _parse_sparsity(args.sparsity)
    if args.pattern == "all":
        if sparsity is None:
            raise InputError("--sparsity", "--pattern all needs a sparsity for ew, bw, tw, tvw")
        runs = [("dense", 0.0)]
        for p in ALL_PATTERNS[1:]:
            if p == "vw":
                runs.append((p, VW_SPARSITY))
            elif p == "tvw" and sparsity < VW_SPARSITY:
                continue  # tvw applies 2:4 after tw: it cannot be sparser than 50% less
            else:
                runs.append((p, sparsity))
        return runs
    if args.pattern not in ALL_PATTERNS:
        raise InputError(
            "--pattern", f"got {args.pattern!r}; allowed: {', '.join(ALL_PATTERNS)}, all"
        )
    if sparsity is None:
        if args.pattern == "dense":
            sparsity = 0.0
        elif args.pattern == "vw":
            sparsity = VW_SPARSITY
        else:
            raise InputError("--sparsity", f"{args.pattern} needs a sparsity in [0, 1)")
    return [(args.pattern, sparsity)]


def _simulate_all(args: argparse.Namespace, *, single: bool = False):
    """Parse everything first (so bad input fails before any work), then simulate."""
    from tvwsim.kernels.prepare import schedule_for_shape
    from tvwsim.schedule import POLICIES
    from tvwsim.sim.engine import simulate
    from tvwsim.sim.occupancy import resources_for

    m, n, k = parse_shape(args.shape)
    runs = _runs(args)
    if single and len(runs) != 1:
        raise InputError("--pattern", "timeline draws one pattern; got all")
    if args.policy not in POLICIES:
        raise InputError("--policy", f"got {args.policy!r}; allowed: {', '.join(POLICIES)}")
    seed = _parse_int("--seed", args.seed)
    block = _parse_int("--block", args.block, minimum=1)
    if args.manifest is not None and not Path(args.manifest).is_file():
        raise InputError("--manifest", f"{args.manifest}: no such file")
    hw = _hardware(args)
    weights = _load_weights(args.weights, n, k)
    configs = {pattern: _config(args, pattern) for pattern, _ in runs}
    resources = {p: resources_for(hw, p, c, args.manifest) for p, c in configs.items()}

    results = []
    for pattern, sparsity in runs:
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
    return hw, results


# -- output ------------------------------------------------------------------------------
def result_record(hw, sparsity: float, result) -> dict:
    """The JSON object of one simulated GEMM (keys documented in docs/model.md)."""
    data = result.to_dict()
    record = {
        "hardware": hw.name,
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
        f"{hw.name} ({hw.description or hw.name}): {r.pattern} at sparsity {sparsity:g} "
        f"(achieved {r.achieved_sparsity:.4f}), M={r.m} N={r.n} K={r.k}",
        f"kernel        {r.config} ({r.mma} mma), policy {r.policy}",
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
    dense = next((r for _, _, r in results if r.pattern == "dense"), None)
    header = (
        f"{hw.name}: M={m} N={n} K={k}, policy {results[0][2].policy}"
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
        rows.append(
            (
                r.pattern,
                f"{sparsity:g}",
                r.config,
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
    hw, results = _simulate_all(args)
    m, n, k = parse_shape(args.shape)
    if args.json:
        records = [result_record(hw, s, r) for s, _, r in results]
        if args.pattern == "all":
            dense = next((r for _, _, r in results if r.pattern == "dense"), None)
            for rec, (_, _, r) in zip(records, results, strict=True):
                rec["speedup_over_dense"] = dense.time_us / r.time_us if dense else None
            payload = {
                "hardware": hw.name,
                "pattern": "all",
                "sparsity": _parse_sparsity(args.sparsity),
                "M": m,
                "N": n,
                "K": k,
                "results": records,
            }
        else:
            payload = records[0]
        print(json.dumps(payload, sort_keys=False))
    elif args.pattern == "all":
        print(_text_table(hw, results, m, n, k))
    else:
        sparsity, _, r = results[0]
        print(_text_single(hw, sparsity, r))
    return 0


def run_timeline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in TIMELINE_SUFFIXES:
        raise InputError("--out", f"must end in {', '.join(TIMELINE_SUFFIXES)}, got {out.name!r}")
    if not out.parent.is_dir():
        raise InputError("--out", f"directory {str(out.parent)!r} does not exist")
    hw, results = _simulate_all(args, single=True)
    sparsity, schedule, result = results[0]

    from tvwsim.sim.timeline import draw_timeline

    # Draw into a temporary file beside the target, then rename: no half-written picture.
    fd, tmp = tempfile.mkstemp(prefix=".timeline-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        draw_timeline(result, tmp, schedule=schedule, sparsity=sparsity)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(
        f"wrote {out}: {result.ctas} CTAs on {result.sm_count} SMs, {result.time_us:.2f} us, "
        f"bottleneck {result.bottleneck}"
    )
    return 0
