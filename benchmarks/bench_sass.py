"""What every kernel variant costs the SM, read from the compiled code (no GPU needed).

    python benchmarks/bench_sass.py                          # build all variants for sm_90
    python benchmarks/bench_sass.py --build-dir /tmp/kb      # reuse (or fill) a build dir
    python benchmarks/bench_sass.py --pattern vw,tvw --arch sm_80
    python benchmarks/bench_sass.py --build-dir NEW --baseline OLD   # before / after

Per variant: registers, dynamic shared memory and spill bytes (from the manifest, i.e.
ptxas -v) and the SASS instruction mix of the main loop: HMMA (tensor-core mma),
LDSM (ldmatrix), LDGSTS (cp.async), everything else, and two ordering figures:

  lead   instructions from the stage's barrier (BAR.SYNC; the loop head if none) to the
         first HMMA: the tensor core idles there (whatever of the next stage's cp.async
         issue was not interleaved with the mma, the first fragment loads);
  ldsm~  LDSM issued between the first and the last HMMA of the loop (fragment loads that
         overlap mma instead of preceding it);
  gap    the longest run of other instructions between two HMMA of the loop.

The main loop is the backward branch whose body holds the most HMMA (the K loop of
`pipeline` in common.cuh; every stage body inside it is unrolled). With --build-dir, a
cubin already there is read as is when the manifest lists it; missing ones are built.
With --baseline DIR the same figures of DIR's cubins are printed beside (old -> new).
Figures of the compiled code, not timings. The SASS reading (`sass_functions`,
`main_loop`, `loop_mix`) lives in tvwsim.kernels.build, shared with `tvwsim kernels list
--sass`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tvwsim.kernels import build as kbuild

from tvwsim.manifest import MANIFEST_NAME, BuiltKernel, read_manifest


def _key(k: BuiltKernel) -> tuple[str, str, int]:
    """(pattern, config, bw block or 0): one compiled cubin of an arch."""
    return (k.pattern, k.config, k.block)


def ensure_built(build_dir: Path, arch: str, patterns: list[str] | None) -> list[BuiltKernel]:
    """Manifest entries of every selected variant for `arch` in `build_dir` (bw: one per
    compiled block side), building the ones that are missing."""
    wanted = kbuild.selected_variants(patterns)
    keys = [(p, c.name, b or 0) for p, c in wanted for b in kbuild.variant_blocks(p)]
    have: dict[tuple[str, str, int], BuiltKernel] = {}
    if (build_dir / MANIFEST_NAME).exists():
        for k in read_manifest(build_dir).kernels:
            if k.arch == arch and (build_dir / k.cubin).exists():
                have[_key(k)] = k
    missing = [(p, c) for p, c in wanted if any(key[:2] == (p, c.name) and key not in have
                                                 for key in keys)]  # fmt: skip
    if missing:
        manifest = kbuild.build([arch], build_dir, variants=missing, probe=False, progress=None)
        have.update({_key(k): k for k in manifest.kernels if k.arch == arch})
    return [have[key] for key in keys]


def _baseline(build_dir: Path | None, arch: str) -> dict[tuple[str, str, int], BuiltKernel]:
    if build_dir is None:
        return {}
    return {
        _key(k): k
        for k in read_manifest(build_dir).kernels
        if k.arch == arch and (build_dir / k.cubin).exists()
    }


def _cell(new: int, old: int | None) -> str:
    return str(new) if old is None or old == new else f"{old}->{new}"


def report(build_dir: Path, arch: str, patterns: list[str] | None, baseline: Path | None) -> str:
    old = _baseline(baseline, arch)
    head = ("pattern", "variant", "regs", "smem_B", "spill_B", "HMMA", "LDSM", "LDGSTS",
            "other", "lead", "ldsm~", "gap")  # fmt: skip
    rows = [head]
    for k in ensure_built(build_dir, arch, patterns):
        mix = kbuild.loop_mix(build_dir / k.cubin, k.function)
        # A baseline built before bw had per-block cubins holds bw entries of block 0.
        before = old.get(_key(k)) or old.get((k.pattern, k.config, 0))
        bmix = kbuild.loop_mix(baseline / before.cubin, before.function) if before else None

        spill = k.spill_store_bytes + k.spill_load_bytes
        old_spill = before.spill_store_bytes + before.spill_load_bytes if before else None
        rows.append(
            (
                k.pattern,
                k.config if not k.block else f"{k.config} b{k.block}",
                _cell(k.registers, before.registers if before else None),
                str(k.shared_dynamic_bytes),
                _cell(spill, old_spill),
                _cell(mix.hmma, bmix.hmma if bmix else None),
                _cell(mix.ldsm, bmix.ldsm if bmix else None),
                _cell(mix.ldgsts, bmix.ldgsts if bmix else None),
                _cell(mix.other, bmix.other if bmix else None),
                _cell(mix.lead, bmix.lead if bmix else None),
                _cell(mix.ldsm_between_hmma, bmix.ldsm_between_hmma if bmix else None),
                _cell(mix.gap, bmix.gap if bmix else None),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="one arch (default sm_90)")
    parser.add_argument("--build-dir", type=Path, help="cubins to read (missing ones are built)")
    parser.add_argument("--pattern", help="comma-separated patterns (default: all)")
    parser.add_argument("--baseline", type=Path, help="an older build dir to compare with")
    args = parser.parse_args(argv)
    kbuild.parse_arch_list(args.arch)
    patterns = [p for p in args.pattern.split(",") if p] if args.pattern else None
    if args.build_dir is None:
        with tempfile.TemporaryDirectory(prefix="bench-sass-") as tmp:
            print(report(Path(tmp), args.arch, patterns, args.baseline))
    else:
        args.build_dir.mkdir(parents=True, exist_ok=True)
        print(report(args.build_dir, args.arch, patterns, args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
