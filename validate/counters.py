"""Hardware counters of a few points under Nsight Compute, as rows beside the timings.

Timing says how long a kernel took; the counters say why: how many bytes it moved from
DRAM and through L2, how often L2 hit, how busy the tensor pipe and the SMs were. The
model reports the same quantities (DRAM MB, L2 hit rate, utilisations), so the two can
be compared point by point.

Two halves, so the GPU machine only has to run one command and the reading happens on
the CPU:

- **profile** (on the GPU, under `ncu --profile-from-start off`): every point of a sweep
  spec is prepared, launched once warm, and launched once more inside a profiler range
  (`GpuExecutor.profile_once`); a `[profile] point KEY` marker line goes to stdout before
  each, so the console log says which profiled kernels belong to which point.
- **read** (anywhere): `ncu --import REPORT --csv --page raw` gives one CSV row per
  profiled kernel; `read_counters` joins it with the console log's markers and ncu's
  own `==PROF== Profiling "name" - ID:` lines into one `CounterRow` per kernel.

    python -m tvwsim.validate.counters metrics < ncu-query.txt      # metrics this ncu has
    ncu --profile-from-start off --metrics $(...) --export r \\
        python -m tvwsim.validate.counters profile --sweep counters > console.log
    ncu --import r.ncu-rep --csv --page raw > counters.csv
    python -m tvwsim.validate.counters read counters.csv console.log --out rows.jsonl
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tvwsim.errors import InputError
from tvwsim.io import write_atomic

METRICS: tuple[str, ...] = (
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_bytes.sum",
    "lts__t_sector_hit_rate.pct",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__inst_executed_pipe_tensor_op_hmma.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__cycles_elapsed.avg.per_second",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",
)
"""What we ask ncu for. Names differ between chips and ncu versions and one unknown
name fails the whole run, so `select_metrics` keeps those the installed ncu lists."""

FIELDS: dict[str, str] = {
    "gpu__time_duration.sum": "duration_ns",
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "lts__t_bytes.sum": "l2_bytes",
    "lts__t_sector_hit_rate.pct": "l2_hit_rate_pct",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": ("tensor_active_pct"),
    "sm__inst_executed_pipe_tensor_op_hmma.sum": "tensor_instructions",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_throughput_pct",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "memory_throughput_pct",
    "sm__cycles_elapsed.avg.per_second": "sm_clock_hz",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum": "smem_wavefronts",
}
"""ncu metric -> CounterRow.values key (units in the key, as everywhere in tvwsim)."""

MARKER = "[profile] point "
SKIP_MARKER = "[profile] skipped "
_PROF = re.compile(r'==PROF== Profiling "(?P<name>[^"]*)" - (?P<id>\d+):')


@dataclass(frozen=True)
class CounterRow:
    """One profiled kernel: which point launched it and what the counters read."""

    point: str
    """The sweep point's key (`SweepPoint.key`)."""
    kernel: str
    """The kernel's name as ncu reports it (demangled)."""
    profile_id: int
    """ncu's ID of the profiled launch, in launch order."""
    grid: str
    block: str
    values: dict[str, float] = field(default_factory=dict)
    """FIELDS' names -> values in base units (bytes, ns, Hz, percent)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- on the GPU machine ---------------------------------------------------------------------


def select_metrics(query_output: str, wanted: Sequence[str] = METRICS) -> list[str]:
    """The wanted metrics whose base name (before the first '.') `ncu --query-metrics`
    lists; the order of `wanted` is kept."""
    listed = {line.split()[0] for line in query_output.splitlines() if line.split()}
    return [m for m in wanted if m.split(".", 1)[0] in listed]


def profile_points(
    points: Iterable[Any],
    profile_once: Callable[[Any], None],
    write: Callable[[str], None] = print,
) -> tuple[int, int]:
    """Profile every point once; a point that cannot run is reported and skipped.

    Returns (profiled, skipped). Each point's marker is written before its launch, so a
    kernel ncu reports after marker i and before marker i+1 belongs to point i.
    """
    profiled = skipped = 0
    for point in points:
        write(MARKER + point.key)
        try:
            profile_once(point)
        except Exception as err:  # a point that fails must not stop the others
            write(f"{SKIP_MARKER}{point.key}: {type(err).__name__}: {err}")
            skipped += 1
        else:
            profiled += 1
    return profiled, skipped


# -- reading the report ---------------------------------------------------------------------


def _number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    if not text or text in ("n/a", "N/A"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_raw_csv(text: str) -> list[dict[str, str]]:
    """`ncu --csv --page raw`: a header row, a units row, then one row per kernel.

    Lines before the header (ncu's ==PROF== or ==WARNING== chatter) are skipped.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise InputError("counters CSV", 'has no header row starting with "ID"')
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = rows[0]
    body = rows[1:]
    if body and not (body[0] and body[0][0].strip()):  # the units row has no ID
        body = body[1:]
    return [dict(zip(header, row, strict=False)) for row in body if row and row[0].strip()]


def point_of_each_profile(console: str) -> dict[int, str]:
    """Profile ID -> point key, from the console log (markers and ==PROF== lines)."""
    owner: dict[int, str] = {}
    current: str | None = None
    for line in console.splitlines():
        if line.startswith(MARKER):
            current = line[len(MARKER) :].strip()
            continue
        match = _PROF.search(line)
        if match and current is not None:
            owner[int(match["id"])] = current
    return owner


def read_counters(csv_text: str, console: str) -> list[CounterRow]:
    """Join ncu's raw CSV with the console log into one row per profiled kernel."""
    owner = point_of_each_profile(console)
    rows = []
    for raw in parse_raw_csv(csv_text):
        profile_id = int(_number(raw.get("ID", "")) or 0)
        point = owner.get(profile_id)
        if point is None:
            continue  # launched outside any point's range (should not happen)
        values = {}
        for metric, key in FIELDS.items():
            value = _number(raw.get(metric, ""))
            if value is not None:
                values[key] = value
        rows.append(
            CounterRow(
                point=point,
                kernel=raw.get("Kernel Name", ""),
                profile_id=profile_id,
                grid=raw.get("Grid Size", ""),
                block=raw.get("Block Size", ""),
                values=values,
            )
        )
    return rows


# -- command line -----------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    from tvwsim.validate.gpu_executor import GpuExecutor
    from tvwsim.validate.spec import load_spec

    spec = load_spec(args.sweep, argument="--sweep")
    executor = GpuExecutor(build_dir=args.build_dir)
    done, skipped = profile_points(spec.points(), executor.profile_once)
    print(f"[profile] {done} points profiled, {skipped} skipped")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    print(",".join(select_metrics(sys.stdin.read())))
    return 0


def _text(name: str, path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as err:
        raise InputError(name, f"cannot be read: {err.strerror or err}") from None


def _read(args: argparse.Namespace) -> int:
    rows = read_counters(_text("CSV", args.csv), _text("CONSOLE", args.console))
    text = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rows)
    if args.out:
        write_atomic(args.out, text)
        print(f"{len(rows)} counter rows -> {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvwsim.validate.counters")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("profile", help="profile each point once (run under ncu)")
    p.add_argument("--sweep", default="counters", help="sweep name or spec file")
    p.add_argument("--build-dir", help="built kernels")
    p.set_defaults(func=_profile)
    m = sub.add_parser("metrics", help="METRICS that `ncu --query-metrics` (stdin) lists")
    m.set_defaults(func=_metrics)
    r = sub.add_parser("read", help="join ncu's raw CSV with the console log")
    r.add_argument("csv", metavar="CSV", help="ncu --import REPORT --csv --page raw")
    r.add_argument("console", metavar="CONSOLE", help="the profiled program's output")
    r.add_argument("--out", help="JSONL file (default: stdout)")
    r.set_defaults(func=_read)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
