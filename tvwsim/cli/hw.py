"""`tvwsim hw`: list the hardware presets and show one, optionally with overrides.

    tvwsim hw list [--json]
    tvwsim hw show NAME [--set key=value]... [--json]

`show` prints every field with its unit, marks the fields changed by `--set`, and adds the
derived figures a reader checks first (tensor peaks, machine balance), so a hypothetical
GPU can be inspected before it is simulated.
"""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    hw = subparsers.add_parser(
        "hw",
        help="hardware presets: list them, show one (with --set overrides)",
        description="Hardware presets: TOML descriptions of GPUs the model can simulate.",
    )
    actions = hw.add_subparsers(dest="hw_action", metavar="ACTION")
    hw.set_defaults(func=lambda args: _usage(hw))

    listing = actions.add_parser(
        "list",
        help="list the presets found on the lookup path",
        description=(
            "List the presets: the shipped ones, then those in the directories of "
            "TVWSIM_PRESET_PATH (os.pathsep-separated)."
        ),
    )
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    listing.set_defaults(func=_list)

    show = actions.add_parser(
        "show",
        help="show every field of a preset, with overrides applied",
        description="Show one preset's fields, units and derived peaks.",
    )
    show.add_argument(
        "name", metavar="NAME", help="preset name (see `tvwsim hw list`) or a .toml file"
    )
    show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set sm_count=256 (repeatable)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- handlers ------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> int:
    from tvwsim.errors import InputError
    from tvwsim.sim.presets import PATH_ENV, find_preset_files, load_preset_file

    rows = []
    for preset in find_preset_files():
        row: dict[str, object] = {
            "name": preset.name,
            "file": str(preset.path),
            "shipped": preset.shipped,
            "shadowed": preset.shadowed,
        }
        try:
            hardware = load_preset_file(preset.path)
        except (InputError, OSError) as err:
            # One broken user file should not hide the others; report it in its row.
            row["error"] = str(err)
        else:
            row.update(
                description=hardware.description,
                sm_count=hardware.sm_count,
                clock_mhz=hardware.clock_mhz,
                dense_peak_tflops=round(hardware.dense_peak_tflops, 1),
                sparse_peak_tflops=_sparse_peak(hardware),
                dram_bandwidth_gbps=hardware.dram_bandwidth_gbps,
                l2_bytes=hardware.l2_bytes,
            )
        rows.append(row)

    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    print(
        f"{'name':<16} {'SMs':>4} {'MHz':>6} {'dense TF':>9} {'2:4 TF':>8} "
        f"{'DRAM GB/s':>10} {'L2 MB':>6}  description"
    )
    for row in rows:
        note = ""
        if not row["shipped"]:
            note = f"  [{'shadowed, ' if row['shadowed'] else ''}{row['file']}]"
        if "error" in row:
            print(f"{row['name']:<16} error: {row['error']}{note}")
            continue
        sparse = "-" if row["sparse_peak_tflops"] is None else f"{row['sparse_peak_tflops']:.1f}"
        print(
            f"{row['name']:<16} {row['sm_count']:>4} {row['clock_mhz']:>6.0f} "
            f"{row['dense_peak_tflops']:>9.1f} {sparse:>8} {row['dram_bandwidth_gbps']:>10.0f} "
            f"{row['l2_bytes'] / 2**20:>6.0f}  {row['description']}{note}"
        )
    extra_dirs = os.environ.get(PATH_ENV, "")
    print(
        f"\nTF = dense fp16 tensor TFLOP/s (fp32 accumulate); 2:4 TF = logical TFLOP/s with "
        f"sparse tensor cores ('-' = none).\nUser presets: {PATH_ENV}="
        f"{extra_dirs if extra_dirs else '(not set)'}"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from tvwsim.sim.presets import apply_overrides, find_preset, load_preset_file, parse_overrides

    overrides = parse_overrides(args.overrides)
    preset = find_preset(args.name, argument="NAME")
    hardware = load_preset_file(preset.path)
    if overrides:
        hardware = apply_overrides(hardware, overrides)

    fields = _field_values(hardware)
    derived = _derived(hardware)
    if args.json:
        record = {
            "label": hardware.label,
            **fields,
            "extra": hardware.extra,
            "derived": derived,
            "preset_file": str(preset.path),
            "overrides": {key: fields[key] for key in overrides},
        }
        print(json.dumps(record, indent=2))
        return 0

    origin = "shipped" if preset.shipped else "user"
    print(f"{hardware.label}: {hardware.description}")
    print(f"file: {preset.path} ({origin})")
    for key, value in fields.items():
        if key in _GROUPS:
            print(f"\n{_heading(key, hardware)}")
        if key in ("name", "description", "source"):
            continue
        mark = "*" if key in overrides else " "
        print(f" {mark}{key:<32} {_format(key, value)}")
    print("\nderived")
    for key, value in derived.items():
        text = "-" if value is None else f"{value:,.1f}"
        print(f"  {key:<32} {text}")
    print(f"\nsource: {hardware.source}")
    if overrides:
        print("* set on the command line")
    return 0


# -- helpers -------------------------------------------------------------------------------
# The first field of each group (dataclass order) starts a heading in `hw show`.
_GROUPS = {
    "sm_count": "compute (rates per SM per SM clock cycle)",
    "smem_per_sm_bytes": "on-chip resources",
    "l2_bytes": "memory system",
    "dram_efficiency": "efficiency parameters",
}
CALIBRATED = "fitted to measurements by tvwsim calibrate: see [extra.calibration]"
ASSUMED = "assumed first guesses, not fitted; tvwsim calibrate fits them to measurements"


def _heading(key: str, hardware) -> str:
    """A group's heading; the efficiency group says whether its values were fitted."""
    if key != "dram_efficiency":
        return _GROUPS[key]
    fitted = "calibration" in hardware.extra
    return f"{_GROUPS[key]} ({CALIBRATED if fitted else ASSUMED})"


_UNITS = {"_mhz": "MHz", "_gbps": "GB/s", "_cycles": "cycles", "_us": "us"}


def _field_values(hardware) -> dict[str, object]:
    import dataclasses

    return {
        f.name: getattr(hardware, f.name)
        for f in dataclasses.fields(hardware)
        if f.name not in ("extra", "overrides")
    }


def _format(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_bytes"):
        size = f"{value / 2**20:g} MiB" if value >= 2**20 else f"{value / 2**10:g} KiB"
        return f"{value:,} bytes ({size})"
    for suffix, unit in _UNITS.items():
        if key.endswith(suffix):
            return f"{value:g} {unit}"
    if key == "sparse_tflop_ratio" and value == 0:
        return "0 (no sparse tensor cores)"
    if key == "arch" and not value:
        return "none (kernel resources are estimated, never read from a build)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sparse_peak(hardware) -> float | None:
    if not hardware.has_sparse_tensor_cores:
        return None
    return round(hardware.dense_peak_tflops * hardware.sparse_tflop_ratio, 1)


def _derived(hardware) -> dict[str, float | None]:
    """The figures a reader checks first; each is a one-line formula of the fields."""
    cuda_tflops = (
        hardware.cuda_core_flops_per_clk_per_sm * hardware.sm_count * hardware.clock_mhz / 1e6
    )
    return {
        "dense_peak_tflops": hardware.dense_peak_tflops,
        "sparse_peak_tflops": (
            hardware.dense_peak_tflops * hardware.sparse_tflop_ratio
            if hardware.has_sparse_tensor_cores
            else None
        ),
        "cuda_core_peak_tflops": cuda_tflops,
        "dram_bytes_per_cycle": hardware.dram_bytes_per_cycle,
        "l2_bytes_per_cycle": hardware.l2_bytes_per_cycle,
        # FLOP per DRAM byte at which a kernel turns from memory- to compute-bound.
        "machine_balance_flop_per_byte": hardware.dense_peak_tflops
        * 1e12
        / (hardware.dram_bandwidth_gbps * 1e9),
    }
