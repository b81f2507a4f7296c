"""`tvwsim kernels ...`: build the CUDA kernels and check them on a GPU.

    tvwsim kernels list [--arch sm_90] [--build-dir DIR] [--sass] [--json]
                                              # the shipped variants, their resources
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
import json
import os
import sys
import time
from pathlib import Path

from tvwsim.cli.args import parse_int, parse_patterns
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
            "the weight rows x along the tokens), warp tile and shared-memory footprint; "
            "registers per thread, spill bytes and shared memory as compiled for --arch "
            "(from the manifest of `kernels build`, '-' for a variant not built); and the "
            "CTAs per SM on the a100 and h200 presets, by the simulator's occupancy rule "
            "from the kernel the manifest lists for that GPU's arch, else from the "
            "simulator's estimate (marked '~')."
        ),
    )
    ls.add_argument(
        "--arch",
        default="sm_90",
        help="whose manifest entries give the compiled columns (default sm_90)",
    )
    ls.add_argument(
        "--build-dir",
        metavar="DIR",
        help="a folder of `kernels build --build-dir DIR` (default: the kernel directory, "
        "$TVWSIM_KERNEL_DIR or ~/.cache/tvwsim/kernels)",
    )
    ls.add_argument(
        "--sass",
        action="store_true",
        help="add the main loop's SASS instruction mix (HMMA, LDSM, LDGSTS, other) of each "
        "built cubin (cuobjdump; no GPU)",
    )
    ls.add_argument("--json", action="store_true", help="print a JSON list of objects instead")
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


LIST_PRESETS = ("a100", "h200")
"""The GPUs whose CTAs per SM `kernels list` shows."""


def run_list(args: argparse.Namespace) -> int:
    from tvwsim.kernels import build as kbuild
    from tvwsim.manifest import MANIFEST_NAME, Manifest, kernel_dir, read_manifest
    from tvwsim.sim.occupancy import occupancy, resources_for
    from tvwsim.sim.presets import load_preset

    arch = kbuild.parse_arch_list(args.arch)
    if len(arch) != 1:
        raise InputError("--arch", f"one arch, e.g. sm_90, got {args.arch!r}")
    arch = arch[0]
    if args.build_dir is not None:
        directory = Path(args.build_dir).expanduser()
        if not directory.is_dir():
            raise InputError("--build-dir", f"{directory} is not a directory")
        if not (directory / MANIFEST_NAME).is_file():
            raise InputError(
                "--build-dir",
                f"{directory} has no {MANIFEST_NAME}; run `tvwsim kernels build "
                f"--build-dir {directory}` first",
            )
    else:
        directory = kernel_dir()
    manifest_path = directory / MANIFEST_NAME
    manifest = (
        read_manifest(manifest_path, argument="--build-dir")
        if manifest_path.is_file()
        else Manifest(nvcc="", kernels=())
    )
    presets = {name: load_preset(name) for name in LIST_PRESETS}

    rows = []
    for pattern, configs in kbuild.VARIANTS.items():
        for c, block in ((c, b) for c in configs for b in kbuild.variant_blocks(pattern)):
            entry = manifest.find(pattern, c.name, arch, block)
            row: dict = {
                "pattern": pattern,
                "config": c.name,
                "block": block,
                "mma": c.mma,
                "threads": c.threads,
                "warp_grid": list(c.warp_grid),
                "warp_tile": list(c.warp_tile),
                "smem_bytes": c.smem_bytes,
                "arch": arch,
                "built": entry is not None,
                "registers": entry.registers if entry else None,
                "spill_store_bytes": entry.spill_store_bytes if entry else None,
                "spill_load_bytes": entry.spill_load_bytes if entry else None,
                "shared_bytes": (
                    entry.shared_static_bytes + entry.shared_dynamic_bytes if entry else None
                ),
                "ctas_per_sm": {},
            }
            for name, hw in presets.items():
                # The simulator's own rule: the manifest entry a GPU of hw.arch runs, else
                # the estimate from the KernelConfig.
                res = resources_for(
                    hw, pattern, c, manifest_path if manifest_path.is_file() else None, block
                )
                try:
                    occ = occupancy(hw, res)
                    ctas, limited_by = occ.ctas_per_sm, occ.limited_by
                except InputError as err:  # one CTA does not fit at all
                    ctas, limited_by = 0, f"does not fit: {err.problem}"
                row["ctas_per_sm"][name] = {
                    "ctas": ctas,
                    "limited_by": limited_by,
                    "source": res.source,
                    "registers": res.registers_per_thread,
                }
            if args.sass:
                row["sass"] = None
                cubin = directory / entry.cubin if entry else None
                if cubin is not None and cubin.is_file():
                    try:
                        mix = kbuild.loop_mix(cubin, entry.function)
                    except kbuild.BuildError as err:
                        raise InputError("--sass", str(err)) from None
                    row["sass"] = {
                        "hmma": mix.hmma,
                        "ldsm": mix.ldsm,
                        "ldgsts": mix.ldgsts,
                        "other": mix.other,
                        "instructions": mix.instructions,
                    }
            rows.append(row)

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_list_table(rows, sass=args.sass))
    where = manifest_path if manifest_path.is_file() else f"{directory} (no {MANIFEST_NAME})"
    print(f"\nregs, spill_B, built_smem_B: the {arch} kernels of {where}; '-' = not built.")
    print(
        "ctas_<gpu>: CTAs per SM (the simulator's occupancy rule) from the kernel built for "
        "that GPU's arch;\n'~' = none is built, so from the simulator's estimate."
    )
    return 0


def _list_table(rows: list[dict], *, sass: bool) -> str:
    """The fixed-width table of `kernels list`: a header, then one line per variant."""

    def dash(value: object) -> str:
        return "-" if value is None else str(value)

    head = ["pattern", "config", "mma", "threads", "warp_grid", "warp_tile", "smem_B"]
    head += ["regs", "spill_B", "built_smem_B"]
    head += [f"ctas_{name}" for name in LIST_PRESETS]
    if sass:
        head += ["HMMA", "LDSM", "LDGSTS", "other"]
    table = [head]
    for r in rows:
        spill = None
        if r["built"]:
            spill = r["spill_store_bytes"] + r["spill_load_bytes"]
        cells = [
            r["pattern"],
            r["config"] if r["block"] is None else f"{r['config']} b{r['block']}",
            r["mma"],
            str(r["threads"]),
            "{} x {}".format(*r["warp_grid"]),
            "{}x{}".format(*r["warp_tile"]),
            str(r["smem_bytes"]),
            dash(r["registers"]),
            dash(spill),
            dash(r["shared_bytes"]),
        ]
        for name in LIST_PRESETS:
            occ = r["ctas_per_sm"][name]
            cells.append(f"{occ['ctas']}{'~' if occ['source'] != 'manifest' else ''}")
        if sass:
            mix = r.get("sass")
            for key in ("hmma", "ldsm", "ldgsts", "other"):
                cells.append(dash(mix[key] if mix else None))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text_columns = 3  # pattern, config, mma: left-aligned; numbers right-aligned
    lines = []
    for row in table:
        parts = [
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def run_build(args: argparse.Namespace) -> int:
    from tvwsim.kernels import build as kbuild
    from tvwsim.manifest import kernel_dir

    archs = kbuild.parse_arch_list(args.arch)
    jobs = None if args.jobs is None else parse_int("--jobs", args.jobs)
    patterns = None
    if args.pattern is not None:
        patterns = parse_patterns("--pattern", args.pattern, allowed=tuple(kbuild.VARIANTS))
    # sm_90a in --arch adds the warpgroup-MMA variants (built for sm_90a only).
    variants = kbuild.selected_variants(patterns, wgmma=kbuild.WGMMA_ARCH in archs)
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
    count = sum(
        len(kbuild.variant_blocks(p)) for a in archs for p, c in variants if kbuild.builds_for(c, a)
    )
    print(
        f"built {count} kernels for {', '.join(archs)} in "
        f"{time.perf_counter() - start:.1f} s -> {os.path.join(out, kbuild.MANIFEST_NAME)}"
    )
    if spilling:
        names = ", ".join(
            f"{k.pattern} {k.config}{f' b{k.block}' if k.block else ''} {k.arch}" for k in spilling
        )
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
