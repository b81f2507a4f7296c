"""Benchmark: the cycle-level core's stage time of every shipped kernel, beside the
efficiency rule's (docs/model.md 5.3 and 5.7).

    python benchmarks/bench_core.py [--hw a100,h200,v100]

For each shipped variant (bw with its smallest block, the loop the engine runs) and each
preset: the CTAs per SM the occupancy model allows, the SM cycles per CTA-stage from the
core model (`tvwsim core`'s figure), the cycles `TensorCoreMma` charges the same full
stage by its efficiency rule, and the core's critical resource. A variant whose tile does
not fit on a GPU is marked so. Prints one Markdown table (what docs/model.md 5.7 shows)
and the seconds the core runs took. Model output, not measurements.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwsim.kernels.build import VARIANTS, variant_blocks  # noqa: E402
from tvwsim.sim.core.kernel import analyse_kernel  # noqa: E402
from tvwsim.sim.presets import load_preset  # noqa: E402

from tvwsim.errors import InputError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="a100,h200,v100", help="comma-separated presets")
    args = parser.parse_args()
    presets = [load_preset(name.strip(), argument="--hw") for name in args.hw.split(",")]

    head = ["kernel"]
    for hw in presets:
        head += [f"{hw.name} CTAs", f"{hw.name} core", f"{hw.name} eff.", f"{hw.name} bound"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    start = time.perf_counter()
    runs = 0
    for pattern, configs in VARIANTS.items():
        block = min(variant_blocks(pattern)) or None
        for config in configs:
            name = f"{pattern}-{config.name}" + (f" b{block}" if block else "")
            row = [name]
            for hw in presets:
                try:
                    found = analyse_kernel(hw, pattern, config, block)
                except InputError as err:
                    if err.argument != "tile":
                        raise
                    row += ["-", "does not fit", "-", "-"]  # shared memory per CTA
                    continue
                runs += 1
                row += [
                    str(found.result.ctas),
                    f"{found.sm_cycles_per_stage:.0f}",
                    f"{found.efficiency_cycles:.0f}",
                    found.result.bound,
                ]
            print("| " + " | ".join(row) + " |")
    print(f"\n{runs} core runs in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
