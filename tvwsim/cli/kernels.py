"""`tvwsim kernels ...`: build the CUDA kernels and check them on a GPU.

    tvwsim kernels list                       # the shipped variants, warp grids, shared memory
    tvwsim kernels build [--arch sm_80,sm_90] [--build-dir DIR] [--jobs N]
    tvwsim kernels check [--quick] [--build-dir DIR]

`build` needs only nvcc (no GPU): it writes one cubin per (pattern, config, arch) and the
resource manifest the simulator reads (kernels/build.py) into the kernel directory
($TVWSIM_KERNEL_DIR, else ~/.cache/tvwsim/kernels; tvwsim/manifest.py), where `check` and
`simulate` find them from any working directory. `check` needs a CUDA device and
PyCUDA (`pip install -e ".[gpu]"`): it pins the mma.sp fragment layout with a one-warp
probe and compares every kernel variant with its CPU twin (kernels/checks.py), printing
one table row per check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tvwsim.cli.args import parse_patterns
from tvwsim.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernels",
        help="build the CUDA kernels (nvcc) or check them on a GPU",
        description="Build the tensor-core GEMM kernels, or check them against the CPU twins.",
    )
    sub = p.add_subparsers(dest="kernels_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _no_action(p))

    ls = sub.add_parser(
        "list",
        help="list the shipped kernel variants",
        description=(
            "Print every shipped (pattern, config) with its threads, warp grid (warps along "
            "the weight rows x along the tokens) and dynamic shared memory."
        ),
    )
    ls.set_defaults(func=run_list)

    b = sub.add_parser(
        "build",
        help="compile every kernel variant with nvcc and write the resource manifest",
        description=(
            "Compile each shipped variant to <pattern>-<config>-<arch>.cubin and record "
            "registers, shared memory, stack and spills (ptxas -v) in manifest.json."
        ),
    )
    b.add_argument("--arch", default="sm_80,sm_90", help="comma-separated (default sm_80,sm_90)")
    b.add_argument(
        "--build-dir",
        metavar="DIR",
        help="where the cubins and manifest.json go, the folder `kernels check` and "
        "`validate` read with --build-dir (default: the kernel directory, "
        "$TVWSIM_KERNEL_DIR or ~/.cache/tvwsim/kernels)",
    )
    b.add_argument("--jobs", metavar="N", help="parallel nvcc jobs (default: CPU count)")
    b.add_argument(
        "--pattern",
        metavar="P",
        help="only these patterns: one, a comma list of them, or all (the default)",
    )
    b.set_defaults(func=run_build)

    c = sub.add_parser(
        "check",
        help="run every kernel on the GPU and compare with its CPU twin",
        description=(
            "One-warp mma / mma.sp probes against the numpy emulation, then every kernel "
            "variant on several shapes (ragged included) and every scheduling policy against "
            "tvwsim.kernels.reference. Needs a CUDA device and PyCUDA."
        ),
    )
    c.add_argument("--quick", action="store_true", help="one variant per pattern")
    c.add_argument(
        "--build-dir",
        metavar="DIR",
        help="cubins from `kernels build` (default: the kernel directory, as for build)",
    )
    c.set_defaults(func=run_check)


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_list(args: argparse.Namespace) -> int:
    from tvwsim.kernels.build import VARIANTS

    print(
        f"{'pattern':8} {'config':16} {'mma':7} {'threads':>7} {'warp_grid':>9} "
        f"{'warp_tile':>9} {'smem_bytes':>10}"
    )
    for pattern, configs in VARIANTS.items():
        for c in configs:
            grid = "{} x {}".format(*c.warp_grid)
            tile = "{}x{}".format(*c.warp_tile)
            print(
                f"{pattern:8} {c.name:16} {c.mma:7} {c.threads:>7} {grid:>9} {tile:>9} "
                f"{c.smem_bytes:>10}"
            )
    return 0


def run_build(args: argparse.Namespace) -> int:
    from tvwsim.kernels import build as kbuild
    from tvwsim.manifest import kernel_dir

    archs = kbuild.parse_arch_list(args.arch)
    jobs = None
    if args.jobs is not None:
        try:
            jobs = int(args.jobs)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise InputError("--jobs", f"must be a positive integer, got {args.jobs!r}")
    patterns = None
    if args.pattern is not None:
        patterns = parse_patterns("--pattern", args.pattern, allowed=tuple(kbuild.VARIANTS))
    variants = kbuild.selected_variants(patterns)
    out = args.build_dir if args.build_dir is not None else str(kernel_dir())
    start = time.perf_counter()
    try:
        manifest = kbuild.build(
            archs,
            out,
            variants=variants,
            jobs=jobs or os.cpu_count() or 1,
            progress=lambda line: print(line, flush=True),
        )
    except kbuild.BuildError as err:
        print(f"tvwsim kernels build: error: {err}", file=sys.stderr)
        return 1
    spilling = [k for k in manifest.kernels if k.spill_store_bytes or k.spill_load_bytes]
    print(
        f"built {len(variants) * len(archs)} kernels for {', '.join(archs)} in "
        f"{time.perf_counter() - start:.1f} s -> {os.path.join(out, kbuild.MANIFEST_NAME)}"
    )
    if spilling:
        names = ", ".join(f"{k.pattern} {k.config} {k.arch}" for k in spilling)
        print(f"warning: these kernels spill to local memory: {names}", file=sys.stderr)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tvwsim.kernels import checks, device

    info = device.device_info()  # InputError (exit 2) without pycuda or a GPU
    print(f"device: {info.name} ({info.arch}, {info.sm_count} SMs)")
    header = f"{'kernel':24} {'shape':18} {'policy':28} {'max_rel_error':>13}  result"
    print(header)
    print("-" * len(header))

    def show(r: checks.CheckResult) -> None:
        verdict = "PASS" if r.passed else "FAIL"
        note = f"  {r.note}" if r.note else ""
        print(f"{r.name:24} {r.shape:18} {r.policy:28} {r.max_rel_error:>13.2e}  {verdict}{note}")
        sys.stdout.flush()

    results = checks.run_all_checks(quick=args.quick, build_dir=args.build_dir, progress=show)
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed (tolerance {checks.REL_TOLERANCE:g})")
    return 1 if failed else 0
