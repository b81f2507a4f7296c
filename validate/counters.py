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
import math
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


# -- the model beside the counters ------------------------------------------------------------


def point_row(key: str) -> dict[str, Any]:
    """The fields of a measured row that `tvwsim.validate.replay.row_case` needs, parsed
    back from a point key ('tvwsim/tw/4096x3072x768/s0.75/128x128x32s3w4/natural/seed0')."""
    parts = key.split("/")
    if len(parts) < 7 or parts[0] != "tvwsim":
        raise InputError("point", f"not a key of one of our kernels: {key!r}")
    m, n, k = (int(v) for v in parts[2].split("x"))
    row: dict[str, Any] = {
        "point": key,
        "pattern": parts[1],
        "M": m,
        "N": n,
        "K": k,
        "target_sparsity": float(parts[3][1:]),
        "config": parts[4],
        "policy": parts[5],
        "seed": int(parts[6].removeprefix("seed")),
        "median_us": 0.0,
    }
    if len(parts) > 7 and parts[7].startswith("b"):
        row["block"] = int(parts[7][1:])
    return row


@dataclass(frozen=True)
class CounterComparison:
    """One point of our kernels: what ncu read (its kernels summed) and what the model says."""

    point: str
    measured_us: float
    """ncu's gpu__time_duration, summed over the point's kernels (GEMM and finalize)."""
    simulated_us: float
    """The model's kernel time (launch overhead left out, as ncu leaves it out)."""
    measured_dram_mb: float
    simulated_dram_mb: float
    measured_l2_hit: float | None
    simulated_l2_hit: float
    measured_tensor_active: float | None
    """Tensor pipe active share of the GEMM kernel's cycles (0-1)."""
    simulated_compute_utilisation: float

    @property
    def dram_ratio(self) -> float:
        return self.simulated_dram_mb / self.measured_dram_mb if self.measured_dram_mb else math.inf


def compare_counters(
    rows: Sequence[CounterRow],
    hw: Any,
    resources_of: Callable[[str], Any] = lambda key: None,
) -> list[CounterComparison]:
    """Simulate each profiled point of our kernels on `hw` and set it beside ncu's reading.

    `resources_of(key)` gives the per-CTA resources the kernel ran with (None: the model
    estimates them); vendor points are left out (the model has no vendor kernel class).
    """
    from tvwsim.sim.engine import simulate
    from tvwsim.validate.replay import row_case

    by_point: dict[str, list[CounterRow]] = {}
    for row in rows:
        by_point.setdefault(row.point, []).append(row)
    out = []
    for key, kernels in by_point.items():
        if not key.startswith("tvwsim/"):
            continue
        case = row_case(point_row(key))
        # The reference engine: counters are checked against the model itself.
        result = simulate(case.schedule, hw, resources_of(key), cache=False, exact=True)
        gemm = max(kernels, key=lambda r: r.values.get("duration_ns", 0.0))

        def total(field_name: str, kernels: list[CounterRow] = kernels) -> float:
            return sum(r.values.get(field_name, 0.0) for r in kernels)

        hit = gemm.values.get("l2_hit_rate_pct")
        tensor = gemm.values.get("tensor_active_pct")
        out.append(
            CounterComparison(
                point=key,
                measured_us=total("duration_ns") / 1e3,
                simulated_us=float(result.kernel_us),
                measured_dram_mb=(total("dram_read_bytes") + total("dram_write_bytes")) / 1e6,
                simulated_dram_mb=float(result.dram_bytes) / 1e6,
                measured_l2_hit=None if hit is None else hit / 100.0,
                simulated_l2_hit=float(result.l2_hit_rate),
                measured_tensor_active=None if tensor is None else tensor / 100.0,
                simulated_compute_utilisation=float(result.compute_utilisation),
            )
        )
    return out


def comparison_table(comparisons: Sequence[CounterComparison]) -> str:
    """A text table: per point, time, DRAM MB, L2 hit rate and tensor activity, ncu | model."""

    def pct(v: float | None) -> str:
        return "  -  " if v is None else f"{100 * v:5.1f}"

    lines = [
        f"{'point':58} {'time us':>17} {'DRAM MB':>17} {'L2 hit %':>13} {'tensor %':>13}",
        f"{'':58} {'ncu':>8} {'model':>8} {'ncu':>8} {'model':>8} {'ncu':>6} {'model':>6} "
        f"{'ncu':>6} {'model':>6}",
    ]
    for c in comparisons:
        lines.append(
            f"{c.point[:58]:58} {c.measured_us:8.1f} {c.simulated_us:8.1f} "
            f"{c.measured_dram_mb:8.1f} {c.simulated_dram_mb:8.1f} "
            f"{pct(c.measured_l2_hit):>6} {pct(c.simulated_l2_hit):>6} "
            f"{pct(c.measured_tensor_active):>6} {pct(c.simulated_compute_utilisation):>6}"
        )
    return "\n".join(lines)


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


def _load_counter_rows(path: str) -> list[CounterRow]:
    rows = []
    for line in _text("COUNTERS", path).splitlines():
        if line.strip():
            data = json.loads(line)
            rows.append(CounterRow(**data))
    return rows


def _compare(args: argparse.Namespace) -> int:
    from tvwsim.sim.presets import load_preset
    from tvwsim.validate.replay import row_config, row_resources

    hw = load_preset(args.hw, argument="--hw")
    measured: dict[str, Any] = {}
    for path in args.measured or []:
        for line in _text("--measured", path).splitlines():
            if line.strip().endswith("}"):
                row = json.loads(line)
                if row.get("implementation") == "tvwsim":
                    measured[(row["pattern"], row["config"])] = row

    def resources_of(key: str) -> Any:
        parts = key.split("/")
        row = measured.get((parts[1], parts[4]))
        return None if row is None else row_resources(row, row_config(row))

    comparisons = compare_counters(_load_counter_rows(args.counters), hw, resources_of)
    if args.json:
        print(json.dumps([asdict(c) for c in comparisons], indent=1))
    else:
        print(f"ncu counters vs the model on {hw.name}")
        print(comparison_table(comparisons))
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
    c = sub.add_parser("compare", help="the model beside the counters of our kernels")
    c.add_argument("counters", metavar="COUNTERS", help="counters.jsonl from `read`")
    c.add_argument("--hw", required=True, help="hardware preset, e.g. h200")
    c.add_argument(
        "--measured",
        nargs="*",
        metavar="FILE",
        help="measurement files whose rows give each kernel's registers and shared memory",
    )
    c.add_argument("--json", action="store_true", help="one JSON list")
    c.set_defaults(func=_compare)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
