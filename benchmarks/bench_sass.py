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
Figures of the compiled code, not timings.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tvwsim.kernels import build as kbuild

from tvwsim.manifest import MANIFEST_NAME, BuiltKernel, read_manifest

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_FUNC = re.compile(r"Function\s*:\s*(\S+)")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class LoopMix:
    """The SASS instruction mix of one kernel's main loop."""

    instructions: int
    hmma: int
    ldsm: int
    ldgsts: int
    lead: int
    ldsm_between_hmma: int
    gap: int

    @property
    def other(self) -> int:
        return self.instructions - self.hmma - self.ldsm - self.ldgsts


def sass_functions(cubin: Path) -> dict[str, list[tuple[int, str, str]]]:
    """Per function: (address, opcode with modifiers, operands) of every instruction."""
    result: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    for line in kbuild.dump_sass(cubin).splitlines():
        hdr = _FUNC.search(line)
        if hdr:
            current = result.setdefault(hdr.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return result


def main_loop(instrs: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The instructions of the backward-branch loop holding the most HMMA ([] if none)."""
    best: list[tuple[int, str, str]] = []
    best_mma = 0
    for addr, op, args in instrs:
        if op.split(".")[0] != "BRA":
            continue
        target = _TARGET.search(args)
        if not target or int(target.group(1), 16) >= addr:
            continue
        start = int(target.group(1), 16)
        body = [i for i in instrs if start <= i[0] <= addr]
        mma = sum(1 for i in body if i[1].startswith("HMMA"))
        if mma > best_mma:
            best, best_mma = body, mma
    return best


def loop_mix(cubin: Path, function: str) -> LoopMix:
    body = main_loop(sass_functions(cubin)[function])
    kinds = [op.split(".")[0] for _, op, _ in body]
    hmma_at = [i for i, k in enumerate(kinds) if k == "HMMA"]
    first, last = (hmma_at[0], hmma_at[-1]) if hmma_at else (0, -1)
    bars = [i for i, k in enumerate(kinds[:first]) if k == "BAR"]
    start = bars[-1] + 1 if bars else 0
    return LoopMix(
        instructions=len(body),
        hmma=len(hmma_at),
        ldsm=kinds.count("LDSM"),
        ldgsts=kinds.count("LDGSTS"),
        lead=first - start,
        ldsm_between_hmma=kinds[first : last + 1].count("LDSM"),
        gap=max((b - a - 1 for a, b in zip(hmma_at, hmma_at[1:], strict=False)), default=0),
    )


def ensure_built(build_dir: Path, arch: str, patterns: list[str] | None) -> list[BuiltKernel]:
    """Manifest entries of every selected variant for `arch` in `build_dir`, building the
    ones that are missing."""
    wanted = kbuild.selected_variants(patterns)
    have: dict[tuple[str, str], BuiltKernel] = {}
    if (build_dir / MANIFEST_NAME).exists():
        for k in read_manifest(build_dir).kernels:
            if k.arch == arch and (build_dir / k.cubin).exists():
                have[(k.pattern, k.config)] = k
    missing = [(p, c) for p, c in wanted if (p, c.name) not in have]
    if missing:
        manifest = kbuild.build([arch], build_dir, variants=missing, probe=False, progress=None)
        have.update({(k.pattern, k.config): k for k in manifest.kernels if k.arch == arch})
    return [have[(p, c.name)] for p, c in wanted]


def _baseline(build_dir: Path | None, arch: str) -> dict[tuple[str, str], BuiltKernel]:
    if build_dir is None:
        return {}
    return {
        (k.pattern, k.config): k
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
        mix = loop_mix(build_dir / k.cubin, k.function)
        before = old.get((k.pattern, k.config))
        bmix = loop_mix(baseline / before.cubin, before.function) if before else None

        spill = k.spill_store_bytes + k.spill_load_bytes
        old_spill = before.spill_store_bytes + before.spill_load_bytes if before else None
        rows.append(
            (
                k.pattern,
                k.config,
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
