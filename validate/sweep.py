"""Measurement sweeps: which GEMMs to time on a GPU, and the loop that times them.

A *sweep spec* (a small TOML file; `validate/sweeps/quick.toml` and `full.toml` ship with
the package) names shapes, patterns, sparsities, kernel configs, scheduling policies and
vendor baselines. It expands into *points*, one per kernel launch to time. Each point has
a deterministic *key* - a string of (implementation, pattern, shape, sparsity, config,
policy, seed) - which is what makes a sweep resumable: the measurement file
(`tvwsim.validate.dataset.MeasurementWriter`) remembers the keys already written, and a rerun
with the same `--out` skips them.

The runner (`run_sweep`) does not know what a GPU is. It asks an *executor* for three
things: a description of the device, a clock reading, and a `Measurement` of one point.
`GpuExecutor` (below) is the real one - our kernels through `tvwsim.kernels.launch`, the vendor
libraries through torch (`tvwsim.validate.baselines`), both timed with CUDA events - and the
tests drive the same runner with a fake executor, so resume, skipping and row layout are
checked on any machine.

How a point is timed (`time_launches`)
--------------------------------------
1. Correctness first: the output is poisoned (NaN), the kernel runs once, and the result is
   compared with the CPU twin (`tvwsim.kernels.reference`, which reads the same encoded buffers)
   on a subset of tokens (`check_rows`: all of them for small M, else the first 256 and
   the last 128, so the ragged last token block is always among them). Every output
   element must be finite. A point that fails still gets its row, with `correct: false`;
   calibration and comparison leave such rows out.
2. `warmup` untimed launches (module load, clocks ramping up, instruction cache).
3. `repeats` (at least 20) timed launches. Before each: the L2 is *flushed* by writing a
   buffer of twice its size, so every run reads its weight, activations and indices from
   DRAM as a single cold inference step would (and as the model assumes: its L2 starts
   empty); then, where torch is present, a short GPU sleep (`torch.cuda._sleep`) so the
   GPU is still busy when the host has queued the start event, the launch and the stop
   event - without that cushion the time between the events would include the host's
   launch latency. CUDA events on the default stream bracket the launch (for our kernels
   that is everything the GEMM needs: split-K workspace zeroing, the GEMM, the finalize
   pass). The row keeps every run's time and the median.

Row layout: docs/validation.md. Bad specs raise InputError naming the spec key.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tvwsim.validate.dataset import SCHEMA_VERSION, MeasurementWriter

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError

SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"
"""Where the shipped sweep specs live (package data)."""

KERNEL_PATTERNS = ("dense", "bw", "vw", "tw", "tvw")
"""Patterns with a tvwsim tensor-core kernel (ew runs only as the cuSPARSE CSR baseline)."""

BASELINES = ("cublas", "cusparselt", "cusparse-csr", "cusparse-bsr")
"""Vendor implementations, timed through torch on the same shapes."""

IMPLEMENTATIONS = ("tvwsim", *BASELINES)

BASELINE_PATTERN = {
    "cublas": "dense",
    "cusparselt": "vw",
    "cusparse-csr": "ew",
    "cusparse-bsr": "bw",
}
"""The sparsity pattern of the weight each vendor library multiplies."""

POLICIES = ("natural", "longest-first", "split")
EQUAL_TILE_PATTERNS = ("dense", "vw")
"""Every tile of these walks the same K, so every policy yields the natural schedule."""

VENDOR = "vendor"
"""`config` and `policy` of a baseline row: the library picks its own kernel and order."""

MIN_REPEATS = 20
DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
REL_TOLERANCE = 1e-2
"""Largest relative error a correct fp16 GEMM shows (same rule as `tvwsim kernels check`:
max |y - twin| / max |twin|)."""

CHECK_ALL_ROWS_UP_TO = 512
"""Tokens up to which every output row is checked against the CPU twin."""


# =====================================================================================
# Points and specs
# =====================================================================================
def format_sparsity(value: float) -> str:
    """Sparsity as it appears in keys: shortest exact-enough decimal ('0.75', '0')."""
    return f"{float(value):.6g}"


@dataclass(frozen=True)
class SweepPoint:
    """One kernel launch to time: what runs, on which GEMM, with which weight."""

    implementation: str
    """'tvwsim' (our kernel) or a vendor baseline (BASELINES)."""
    pattern: str
    m: int
    """Tokens (rows of X)."""
    n: int
    """Output features (rows of W)."""
    k: int
    sparsity: float
    """Target sparsity of the pruned weight."""
    config: KernelConfig | None
    """Our kernel's variant; None for vendor baselines."""
    policy: str
    """Scheduling policy of our kernel; 'vendor' for baselines."""
    seed: int = 0
    """Seed of the weight (`tvwsim.schedule.random_weight`) and of X."""
    block: int = 32
    """Block side of bw / BSR."""

    @property
    def key(self) -> str:
        """Deterministic identity of the point; resume skips keys already measured."""
        config = self.config.name if self.config is not None else VENDOR
        parts = [
            self.implementation,
            self.pattern,
            f"{self.m}x{self.n}x{self.k}",
            f"s{format_sparsity(self.sparsity)}",
            config,
            self.policy,
            f"seed{self.seed}",
        ]
        if self.pattern == "bw":
            parts.append(f"b{self.block}")
        return "/".join(parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.m, self.n, self.k)


@dataclass(frozen=True)
class TimingPlan:
    """How each point is timed."""

    warmup: int = DEFAULT_WARMUP
    """Untimed launches before the timed ones."""
    repeats: int = DEFAULT_REPEATS
    """Timed launches (at least MIN_REPEATS); the row keeps them all and their median."""


@dataclass(frozen=True)
class SweepGroup:
    """One block of a spec: the cross product of its lists is measured."""

    shapes: tuple[tuple[int, int, int], ...]
    patterns: tuple[str, ...]
    sparsities: tuple[float, ...]
    policies: tuple[str, ...]
    baselines: tuple[str, ...]
    seeds: tuple[int, ...]
    configs: Mapping[str, tuple[KernelConfig, ...]]
    """Our kernel variants per pattern (default: the pattern's default config)."""


@dataclass(frozen=True)
class SweepSpec:
    """A named sweep: groups of points plus how to time them."""

    name: str
    description: str
    groups: tuple[SweepGroup, ...]
    timing: TimingPlan
    block: int = 32
    hw: str | None = None
    """Preset whose shared-memory limit the configs are checked against (optional)."""
    source: str = ""
    """The file the spec came from."""

    def points(self) -> list[SweepPoint]:
        """Every point of every group, in order, duplicates (same key) dropped."""
        seen: set[str] = set()
        out: list[SweepPoint] = []
        for group in self.groups:
            for point in _group_points(group, self.block):
                if point.key not in seen:
                    seen.add(point.key)
                    out.append(point)
        return out


def _sparsities_for(pattern: str, sparsities: Sequence[float]) -> list[float]:
    """The sparsities a pattern is measured at (docs/validation.md, "Sweeps")."""
    if pattern == "dense":
        return [0.0]
    if pattern == "vw":
        return [0.5]  # 2:4 is 50% by definition
    if pattern == "tvw":
        return [s for s in sparsities if s >= 0.5]  # 2:4 inside tiles: at least 50%
    return list(sparsities)


def _group_points(group: SweepGroup, block: int) -> Iterable[SweepPoint]:
    # Shape-major, so an executor can keep one shape's weight and activations around.
    for m, n, k in group.shapes:
        for seed in group.seeds:
            for pattern in group.patterns:
                policies = ["natural"] if pattern in EQUAL_TILE_PATTERNS else group.policies
                for s in _sparsities_for(pattern, group.sparsities):
                    for config in group.configs.get(pattern, (default_config(pattern),)):
                        for policy in policies:
                            yield SweepPoint(
                                "tvwsim", pattern, m, n, k, s, config, policy, seed, block
                            )
            for baseline in group.baselines:
                pattern = BASELINE_PATTERN[baseline]
                for s in _sparsities_for(pattern, group.sparsities):
                    yield SweepPoint(baseline, pattern, m, n, k, s, None, VENDOR, seed, block)


# -- reading a spec ------------------------------------------------------------------------
_TOP_KEYS = {
    "name",
    "description",
    "hw",
    "block",
    "warmup",
    "repeats",
    "shapes",
    "patterns",
    "sparsities",
    "policies",
    "baselines",
    "seeds",
    "configs",
    "group",
}
_GROUP_KEYS = {
    "note",
    "shapes",
    "patterns",
    "sparsities",
    "policies",
    "baselines",
    "seeds",
    "configs",
}


def shipped_sweeps() -> list[str]:
    """Names of the sweep specs that ship with tvwsim."""
    return sorted(p.stem for p in SWEEP_DIR.glob("*.toml"))


def load_spec(name_or_path: str | os.PathLike, *, argument: str = "--spec") -> SweepSpec:
    """A shipped sweep by name ('quick', 'full') or a spec file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(argument, f"sweep spec {text!r} does not exist")
    else:
        path = SWEEP_DIR / f"{text}.toml"
        if not path.is_file():
            raise InputError(
                argument,
                f"unknown sweep {text!r}; shipped: {', '.join(shipped_sweeps())} "
                "(or give a spec file with --spec)",
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(argument, f"{path.name} is not valid TOML: {err}") from None
    return parse_spec(data, label=path.name, source=str(path))


def parse_spec(data: Mapping[str, Any], *, label: str = "spec", source: str = "") -> SweepSpec:
    """Check a spec's TOML data and build the SweepSpec (InputError naming the key)."""

    def fail(key: str, problem: str) -> InputError:
        return InputError(f"{label}: {key}", problem)

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    name = data.get("name", Path(label).stem)
    if not isinstance(name, str) or not name:
        raise fail("name", "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    block = _int(data.get("block", 32), "block", fail, minimum=8)
    if block % 8:
        raise fail("block", f"must be a multiple of 8 (whole 16-byte rows), got {block}")
    warmup = _int(data.get("warmup", DEFAULT_WARMUP), "warmup", fail, minimum=0)
    repeats = _int(data.get("repeats", DEFAULT_REPEATS), "repeats", fail, minimum=1)
    if repeats < MIN_REPEATS:
        raise fail("repeats", f"must be at least {MIN_REPEATS} (a median of few runs is noise)")
    hw_name = data.get("hw")
    hardware = None
    if hw_name is not None:
        if not isinstance(hw_name, str):
            raise fail("hw", "must be a preset name")
        from tvwsim.sim.presets import load_preset

        hardware = load_preset(hw_name, argument=f"{label}: hw")

    tables = data.get("group")
    if tables is None:
        tables = [{}]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("group", "must be an array of tables ([[group]])")
    groups = []
    for index, table in enumerate(tables):
        where = f"group[{index}]" if data.get("group") is not None else ""
        unknown = sorted(set(table) - _GROUP_KEYS)
        if unknown:
            raise fail(
                f"{where}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(_GROUP_KEYS))}"
            )
        merged = {key: table.get(key, data.get(key)) for key in _GROUP_KEYS}
        groups.append(_parse_group(merged, where, fail, block, hardware))
    spec = SweepSpec(
        name=name,
        description=description,
        groups=tuple(groups),
        timing=TimingPlan(warmup=warmup, repeats=repeats),
        block=block,
        hw=hw_name,
        source=source,
    )
    if not spec.points():
        raise fail("patterns", "the spec expands to no points")
    return spec


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _int(value: Any, key: str, fail: Callable, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _string_list(value: Any, key: str, fail: Callable, allowed: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f"must be a list of strings from: {', '.join(allowed)}")
    for v in value:
        if v not in allowed:
            raise fail(key, f"unknown {v!r}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))


def _parse_group(table: dict, where: str, fail: Callable, block: int, hardware) -> SweepGroup:
    shapes_raw = table.get("shapes")
    if not isinstance(shapes_raw, list) or not shapes_raw:
        raise fail(_key(where, "shapes"), "must be a non-empty list of [M, N, K]")
    shapes = []
    for shape in shapes_raw:
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise fail(
                _key(where, "shapes"),
                f"each shape is [M, N, K] of positive integers, got {shape!r}",
            )
        shapes.append(tuple(shape))

    patterns_raw = table.get("patterns") or []
    if "ew" in patterns_raw:
        raise fail(
            _key(where, "patterns"),
            "ew has no tvwsim kernel; list 'cusparse-csr' in baselines to time unstructured "
            "sparsity",
        )
    patterns = _string_list(patterns_raw, _key(where, "patterns"), fail, KERNEL_PATTERNS)
    baselines = _string_list(table.get("baselines"), _key(where, "baselines"), fail, BASELINES)
    if not patterns and not baselines:
        raise fail(_key(where, "patterns"), "a group needs patterns or baselines")
    policies = _string_list(
        table.get("policies") or ["natural"], _key(where, "policies"), fail, POLICIES
    )
    if not policies:
        raise fail(_key(where, "policies"), "must name at least one policy")

    sparsities_raw = table.get("sparsities") or []
    if not isinstance(sparsities_raw, list):
        raise fail(_key(where, "sparsities"), "must be a list of numbers in (0, 1)")
    sparsities = []
    for s in sparsities_raw:
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 < s < 1.0:
            raise fail(_key(where, "sparsities"), f"each must be a number in (0, 1), got {s!r}")
        sparsities.append(float(s))
    needs = [p for p in patterns if p in ("bw", "tw", "tvw")]
    needs += [b for b in baselines if b in ("cusparse-csr", "cusparse-bsr")]
    if needs and not sparsities:
        raise fail(_key(where, "sparsities"), f"{', '.join(needs)} need at least one sparsity")
    if "tvw" in patterns and not any(s >= 0.5 for s in sparsities):
        raise fail(
            _key(where, "sparsities"),
            "tvw applies 2:4 inside tiles, so it needs a sparsity of at least 0.5",
        )

    seeds_raw = table.get("seeds") or [0]
    if not isinstance(seeds_raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seeds_raw
    ):
        raise fail(_key(where, "seeds"), "must be a list of non-negative integers")

    configs_raw = table.get("configs") or {}
    if not isinstance(configs_raw, dict):
        raise fail(_key(where, "configs"), "must be a table: pattern = [config names]")
    configs = {}
    for pattern, names in configs_raw.items():
        key = _key(where, f"configs.{pattern}")
        if pattern not in KERNEL_PATTERNS:
            raise fail(key, f"unknown pattern; kernels exist for: {', '.join(KERNEL_PATTERNS)}")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise fail(key, "must be a non-empty list of config names like '128x128x32s3w4'")
        configs[pattern] = tuple(
            _check_config(pattern, n, key, block, hardware, fail) for n in names
        )
    for pattern in patterns:
        if pattern not in configs:
            configs[pattern] = (
                _check_config(
                    pattern,
                    default_config(pattern).name,
                    _key(where, "patterns"),
                    block,
                    hardware,
                    fail,
                ),
            )
    return SweepGroup(
        shapes=tuple(shapes),
        patterns=patterns,
        sparsities=tuple(dict.fromkeys(sparsities)),
        policies=policies,
        baselines=baselines,
        seeds=tuple(dict.fromkeys(seeds_raw)),
        configs=configs,
    )


def _check_config(
    pattern: str, name: str, key: str, block: int, hardware, fail: Callable
) -> KernelConfig:
    """A config name -> KernelConfig, refusing what no shipped kernel can run."""
    from tvwsim.kernels import build as kbuild

    mma = "sparse" if pattern in ("vw", "tvw") else "dense"
    try:
        config = KernelConfig.from_name(name, mma=mma)
        kbuild.check_pattern_config(pattern, config)
    except InputError as err:
        raise fail(key, f"{name!r}: {err.problem}") from None
    shipped = [c.name for c in kbuild.VARIANTS.get(pattern, [])]
    if config.name not in shipped:
        raise fail(
            key,
            f"{name!r} is not a built {pattern} variant; shipped: {', '.join(shipped)} "
            "(kernels/build.py VARIANTS)",
        )
    if pattern == "bw" and config.bm % block:
        raise fail(key, f"{name!r}: bw needs bm to be a multiple of the block ({block})")
    if hardware is not None:
        need = kbuild.kernel_smem_bytes(config)
        if need > hardware.smem_per_cta_bytes:
            raise fail(
                key,
                f"{name!r} needs {need} B shared memory per CTA; {hardware.name} allows "
                f"{hardware.smem_per_cta_bytes}",
            )
    return config


# =====================================================================================
# Executors and measurements
# =====================================================================================
@dataclass(frozen=True)
class Measurement:
    """What an executor reports for one point."""

    kernel: str
    """The entry point or vendor routine that ran, e.g. 'tvw_gemm' or 'torch.mm (cuBLAS)'."""
    times_us: tuple[float, ...]
    """Every timed run, in order."""
    max_rel_error: float | None
    """max |y - reference| / max |reference| over the checked tokens; None if unchecked."""
    achieved_sparsity: float
    schedule_digest: str | None = None
    """`tvwsim.schedule.Schedule.digest()` of the launched schedule (our kernels only)."""
    ctas: int | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    """Per-CTA resources of the kernel that ran: registers, smem_bytes, threads, ..."""
    timing: Mapping[str, Any] = field(default_factory=dict)
    """How it was timed: method, flush bytes, cushion, warmup, repeats."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (baseline dtype, checked token count, ...)."""


class PointSkipped(Exception):
    """The executor cannot measure this point here (e.g. a library lacks a routine).

    The point is reported, not written, so a later run (with the library present) can
    still measure it. Unlike other errors it never counts towards aborting the sweep.
    """


class Executor(Protocol):
    """What `run_sweep` needs from whatever runs the kernels."""

    def device_info(self) -> dict:
        """Static description of the device; must hold a 'name' string."""

    def read_clocks(self) -> dict:
        """The clocks right now (never raises; unknown values are None)."""

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        """Check and time one point; raise PointSkipped if it cannot run here."""


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep run did."""

    total: int
    """Points in the spec."""
    already_done: int
    """Points found in the output file and skipped."""
    measured: int
    """Rows written by this run."""
    incorrect: int
    """Of those, rows whose result did not match the CPU reference."""
    skipped: tuple[tuple[str, str], ...]
    """(key, reason) of points the executor could not run here."""
    failed: tuple[tuple[str, str], ...]
    """(key, error) of points that raised."""
    stopped: str | None
    """Why the run ended before the last point (budget, signal, failures), or None."""
    truncated_bytes: int
    """Bytes of a partial row an earlier interrupted run left and this run cut off."""
    elapsed_s: float

    @property
    def remaining(self) -> int:
        return self.total - self.already_done - self.measured


def build_row(
    point: SweepPoint,
    measurement: Measurement,
    device: Mapping[str, Any],
    clocks_before: Mapping[str, Any],
    clocks_after: Mapping[str, Any],
    *,
    sweep: str,
    date: str,
) -> dict:
    """One measurement row (schema in docs/validation.md)."""
    from tvwsim import __version__

    times = [float(t) for t in measurement.times_us]
    err = measurement.max_rel_error
    extra = dict(measurement.extra)
    if err is not None and not math.isfinite(err):
        extra["non_finite_output"] = True
    return {
        "schema": SCHEMA_VERSION,
        "point": point.key,
        "implementation": point.implementation,
        "device": {
            **dict(device),
            "clocks_before": dict(clocks_before),
            "clocks_after": dict(clocks_after),
        },
        "date": date,
        "sweep": sweep,
        "tvwsim_version": __version__,
        "kernel": measurement.kernel,
        "config": point.config.name if point.config is not None else VENDOR,
        "mma": point.config.mma if point.config is not None else VENDOR,
        "pattern": point.pattern,
        "policy": point.policy,
        "seed": point.seed,
        "block": point.block,
        "M": point.m,
        "N": point.n,
        "K": point.k,
        "target_sparsity": float(point.sparsity),
        "achieved_sparsity": float(measurement.achieved_sparsity),
        "schedule_digest": measurement.schedule_digest,
        "ctas": measurement.ctas,
        "resources": dict(measurement.resources),
        "timing": dict(measurement.timing),
        "times_us": times,
        "median_us": float(np.median(times)) if times else 0.0,
        # JSON has no infinity: a non-finite output (an element no kernel wrote, or an
        # overflow) is recorded as no error value, correct = false and a flag.
        "max_rel_error": None if err is None or not math.isfinite(err) else float(err),
        "tolerance": REL_TOLERANCE,
        "correct": None if err is None else bool(err <= REL_TOLERANCE),
        "extra": extra,
    }


class _Progress:
    """A tqdm bar on a terminal (points done, rate, time left); one line per point when
    tqdm is missing or the output is a log file (a bar's carriage returns garble logs)."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.monotonic()
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="point", dynamic_ncols=True)
        except ImportError:
            pass

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, key: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(key[-40:], refresh=False)
            self.bar.update(1)
        elif self.enabled:
            spent = time.monotonic() - self.start
            left = spent / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {key}  (about {left:.0f} s left)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(
    points: Sequence[SweepPoint],
    executor: Executor,
    out: str | os.PathLike,
    *,
    timing: TimingPlan = TimingPlan(),
    sweep: str = "",
    budget_s: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    max_consecutive_failures: int = 3,
    retry_failed: bool = False,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], str] | None = None,
) -> SweepSummary:
    """Measure every point not yet in `out`, appending one row per point as it finishes.

    - Points whose key is already in `out` are skipped (resume). A partial last line left
      by an interrupted run is cut off first; no finished row is ever changed.
    - `budget_s`: do not *start* a point once the time spent plus the mean time of a point
      so far would exceed it (a run under a hard limit then ends cleanly between points).
    - `should_stop`: polled between points (the CLI sets it on SIGTERM / SIGINT).
    - `PointSkipped` from the executor: reported and left for a later run. Any other
      exception: reported; `max_consecutive_failures` in a row end the sweep (a GPU whose
      context died fails every later point the same way).
    - The first failure of each streak - the likely culprit, the others being collateral
      damage of a dead context - is appended to `failed_log_path(out)`, and later runs skip
      the points listed there unless `retry_failed`: a kernel that crashes the GPU stops
      one run, not every run after it.
    """
    if now is None:
        from tvwsim.validate.device_info import utc_now as now
    started = clock()
    skipped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    measured = incorrect = 0
    stopped = None
    failed_log = failed_log_path(out)
    earlier_failures = {} if retry_failed else read_failed_log(failed_log)
    with MeasurementWriter(out) as log:
        todo = [p for p in points if p.key not in log.done]
        already = len(points) - len(todo)
        for p in todo:
            if p.key in earlier_failures:
                skipped.append((p.key, f"failed in an earlier run ({earlier_failures[p.key]})"))
        todo = [p for p in todo if p.key not in earlier_failures]
        bar = _Progress(len(todo), progress, sweep or "sweep")
        if skipped:
            bar.write(
                f"{len(skipped)} points failed in an earlier run ({failed_log.name}); skipped "
                "(--retry-failed runs them again)"
            )
        if log.truncated_bytes:
            bar.write(
                f"{Path(out).name}: cut {log.truncated_bytes} bytes of a row an interrupted "
                "run left unfinished"
            )
        if already:
            bar.write(f"{already} of {len(points)} points already in {Path(out).name}; skipped")
        device = dict(executor.device_info()) if todo else {}
        if todo:
            # One file, one GPU: resuming another GPU's file would mix two devices' rows.
            others = _device_names(out) - {device.get("name")}
            if others:
                raise InputError(
                    "--out",
                    f"{Path(out).name} holds measurements from {', '.join(sorted(others))}; "
                    f"this GPU is {device.get('name')!r}. Use another file",
                )
        consecutive = 0
        point_times: list[float] = []
        try:
            for point in todo:
                if should_stop is not None and should_stop():
                    stopped = "stop requested"
                    break
                if budget_s is not None:
                    spent = clock() - started
                    typical = float(np.mean(point_times)) if point_times else 0.0
                    if spent + typical > budget_s:
                        stopped = f"time budget of {budget_s:g} s reached"
                        break
                t0 = clock()
                try:
                    before = executor.read_clocks()
                    result = executor.measure(point, timing)
                    after = executor.read_clocks()
                except PointSkipped as why:
                    skipped.append((point.key, str(why)))
                    bar.write(f"skipped {point.key}: {why}")
                    bar.step(point.key)
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:  # noqa: BLE001 - reported, and bounded below
                    message = f"{type(err).__name__}: {err}"
                    failed.append((point.key, message))
                    bar.write(f"FAILED {point.key}: {message}")
                    bar.step(point.key)
                    if consecutive == 0:
                        _append_failure(failed_log, point.key, message, now())
                    consecutive += 1
                    if consecutive >= max_consecutive_failures:
                        stopped = f"{consecutive} points failed in a row"
                        break
                    continue
                consecutive = 0
                row = build_row(point, result, device, before, after, sweep=sweep, date=now())
                log.append(row)
                measured += 1
                if row["correct"] is False:
                    incorrect += 1
                    bar.write(
                        f"WRONG RESULT {point.key}: max rel error {result.max_rel_error:.3g} "
                        f"> {REL_TOLERANCE:g} (row kept with correct=false)"
                    )
                point_times.append(clock() - t0)
                bar.step(point.key)
        finally:
            bar.close()
    return SweepSummary(
        total=len(points),
        already_done=already,
        measured=measured,
        incorrect=incorrect,
        skipped=tuple(skipped),
        failed=tuple(failed),
        stopped=stopped,
        truncated_bytes=log.truncated_bytes,
        elapsed_s=clock() - started,
    )


def _device_names(path: str | os.PathLike) -> set[str]:
    """Device names of the complete rows in a measurement file (tolerant read)."""
    names = set()
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            names.add(str(json.loads(line)["device"]["name"]))
        except (ValueError, KeyError, TypeError):
            continue
    return names


def failed_log_path(out: str | os.PathLike) -> Path:
    """Where a sweep writing `out` records the points that raised: `<out>.failed.jsonl`."""
    out = Path(out)
    return out.with_name(out.name + ".failed.jsonl")


def read_failed_log(path: Path) -> dict[str, str]:
    """{point key: error} of earlier failures; tolerant (a damaged line is ignored)."""
    failures = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                failures[str(entry["point"])] = str(entry.get("error", ""))[:200]
            except (ValueError, KeyError, TypeError):
                continue
    return failures


def _append_failure(path: Path, key: str, error: str, date: str) -> None:
    line = json.dumps({"point": key, "error": error[:2000], "date": date}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class StopFlag:
    """Set by SIGTERM / SIGINT so a sweep ends between points, never inside a row write."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.reason is not None

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:
            # A second signal means "now": restore the default and re-raise it.
            self.restore()
            signal.raise_signal(signum)
            return
        self.reason = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


# =====================================================================================
# Timing and checking helpers (GPU-agnostic, so tests can drive them with fakes)
# =====================================================================================
class TimingEvent(Protocol):
    def record(self) -> None: ...
    def synchronize(self) -> None: ...
    def elapsed_ms(self, end: TimingEvent) -> float: ...


def time_launches(
    launch: Callable[[], Any],
    *,
    new_event: Callable[[], TimingEvent],
    flush: Callable[[], Any] | None,
    cushion: Callable[[], Any] | None,
    synchronize: Callable[[], Any],
    warmup: int,
    repeats: int,
) -> list[float]:
    """Microseconds of `repeats` launches, each after an L2 flush and a GPU-side cushion.

    The events bracket only the launch: the flush and the cushion run before the start
    event on the same stream, so they are not in the time, but they are still keeping
    the GPU busy while the host queues the start event, the launch and the stop event.
    """
    if repeats < 1:
        raise InputError("repeats", f"must be >= 1, got {repeats}")
    for _ in range(warmup):
        if flush is not None:
            flush()
        launch()
    synchronize()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush()
        if cushion is not None:
            cushion()
        start, end = new_event(), new_event()
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_ms(end) * 1000.0)
    return times


def check_rows(m: int) -> np.ndarray:
    """Token indices checked against the CPU twin: all for small M, else the first 256 and
    the last 128 (which hold the ragged last token block, the likeliest place for a bug)."""
    if m <= CHECK_ALL_ROWS_UP_TO:
        return np.arange(m)
    return np.unique(np.concatenate([np.arange(256), np.arange(m - 128, m)]))


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref|; inf if y holds a non-finite value (same rule as
    `tvwsim.kernels.launch.relative_error`)."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise InputError("y", f"shape {y.shape} differs from the reference's {ref.shape}")
    if not np.isfinite(y).all():
        return math.inf
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-6)
    return float(np.abs(y - ref).max(initial=0.0) / scale)


def make_activations(m: int, k: int, seed: int) -> np.ndarray:
    """Seeded standard-normal fp16 X (M x K); seed offset so X is not W's stream."""
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((m, k), dtype=np.float32).astype(np.float16)


@dataclass(frozen=True, eq=False)
class KernelInputs:
    """Everything our kernel needs for a point, built on the CPU."""

    pruned: Any
    """`tvwsim.kernels.patterns.Pruned`: mask, achieved sparsity, tile layout."""
    encoded: Any
    """`tvwsim.kernels.formats.encode` output: the buffers the kernel reads."""
    schedule: Any
    """`tvwsim.schedule.Schedule`: the CTA tasks, the same array the model simulates."""
    x: np.ndarray
    """fp16 activations, M x K."""


def kernel_inputs(point: SweepPoint, weight: np.ndarray | None = None) -> KernelInputs:
    """Prune, encode and schedule a point exactly as the model does for its shape.

    The weight is `tvwsim.schedule.random_weight(N, K, seed)` - the matrix
    `tvwsim.schedule.schedule_for_shape` prunes - and the schedule is built from the encoded
    buffers the kernel reads, so the schedule digest in a row is the digest calibration
    and comparison rebuild and simulate.
    """
    from tvwsim.kernels.formats import encode
    from tvwsim.kernels.patterns import prune_with_layout
    from tvwsim.kernels.prepare import random_weight
    from tvwsim.kernels.tile_work import tile_work

    from tvwsim.schedule import build_schedule

    if point.implementation != "tvwsim" or point.config is None:
        raise InputError("point", f"{point.key} is not one of our kernels")
    if weight is None:
        weight = random_weight(point.n, point.k, point.seed)
    config = point.config
    pruned = prune_with_layout(
        weight, point.pattern, point.sparsity, tile=config.bm, block=point.block
    )
    encoded = encode(
        weight, pruned.mask, point.pattern, config, layout=pruned.layout, block=point.block
    )
    work = tile_work(encoded, kept_weights=int(np.count_nonzero(pruned.mask)))
    schedule = build_schedule(work, point.m, point.policy)
    return KernelInputs(pruned, encoded, schedule, make_activations(point.m, point.k, point.seed))


def check_kernel_output(y: np.ndarray, inputs: KernelInputs) -> tuple[float, int]:
    """(max relative error vs the CPU twin on the checked tokens, tokens checked).

    Every element must have been written (the output was NaN-poisoned): a non-finite
    value anywhere is an infinite error, whatever the checked tokens say.
    """
    from tvwsim.kernels.reference import matmul

    rows = check_rows(inputs.x.shape[0])
    if not np.isfinite(y).all():
        return math.inf, int(rows.size)
    return relative_error(y[rows], matmul(inputs.x[rows], inputs.encoded)), int(rows.size)


def baseline_inputs(
    point: SweepPoint, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(X fp16, pruned W fp16 with zeros, achieved sparsity) for a vendor baseline: the
    same seeded weight pruned by our pruner, so vendor and our kernels keep equal weights."""
    from tvwsim.kernels.patterns import prune_with_layout
    from tvwsim.kernels.prepare import random_weight

    if weight is None:
        weight = random_weight(point.n, point.k, point.seed)
    pruned = prune_with_layout(weight, point.pattern, point.sparsity, block=point.block)
    w16 = np.where(pruned.mask, weight.astype(np.float16), np.float16(0))
    return make_activations(point.m, point.k, point.seed), w16, float(pruned.achieved_sparsity)


def check_baseline_output(y: np.ndarray, x16: np.ndarray, w16: np.ndarray) -> tuple[float, int]:
    """Like `check_kernel_output`, against fp32 X @ W.T of the fp16 operands."""
    rows = check_rows(x16.shape[0])
    if not np.isfinite(y).all():
        return math.inf, int(rows.size)
    ref = x16[rows].astype(np.float32) @ w16.astype(np.float32).T
    return relative_error(y[rows], ref), int(rows.size)


# =====================================================================================
# The GPU executor
# =====================================================================================
class _PycudaEvent:
    def __init__(self, cuda):
        self.event = cuda.Event()

    def record(self) -> None:
        self.event.record()

    def synchronize(self) -> None:
        self.event.synchronize()

    def elapsed_ms(self, end: _PycudaEvent) -> float:
        return float(self.event.time_till(end.event))


class _TorchEvent:
    def __init__(self, torch):
        self.event = torch.cuda.Event(enable_timing=True)

    def record(self) -> None:
        self.event.record()

    def synchronize(self) -> None:
        self.event.synchronize()

    def elapsed_ms(self, end: _TorchEvent) -> float:
        return float(self.event.elapsed_time(end.event))


CUSHION_CYCLES = 200_000
"""GPU sleep before each timed launch, in SM cycles (about 100 us at 2 GHz): longer than
the host needs to queue the start event, the launch and the stop event from Python."""


class GpuExecutor:
    """Our kernels through `tvwsim.kernels.launch`, vendor libraries through torch, CUDA events.

    Both run in the device's primary context on the legacy default stream (tvwsim.kernels.launch
    retains the primary context; torch uses it too), so torch's flush buffer, sleep kernel
    and events order correctly around PyCUDA launches. Without torch, flushing and events
    fall back to PyCUDA and there is no sleep cushion (the row's `timing` says so).
    """

    def __init__(self, *, build_dir: str | os.PathLike | None = None, device_index: int = 0):
        from tvwsim.kernels import launch
        from tvwsim.validate import baselines
        from tvwsim.validate.device_info import read_clocks, read_device_info

        self._launch = launch
        self._session = launch.session()  # InputError without pycuda or a device
        self._read_clocks = read_clocks
        self.device_index = device_index
        self.build_dir = build_dir
        info = read_device_info(device_index)
        self.info = info
        cuda = self._session.cuda
        self.arch = self._session.info.arch
        l2 = info.l2_bytes or int(
            self._session.cuda.Device(device_index).get_attribute(
                cuda.device_attribute.L2_CACHE_SIZE
            )
        )
        self.flush_bytes = 2 * max(int(l2), 1 << 20)
        self.torch = baselines.import_torch()
        self.baselines = baselines.TorchBaselines(self.torch) if self.torch else None
        if self.torch is not None:
            torch = self.torch
            self._flush_buffer = torch.empty(
                self.flush_bytes // 4, dtype=torch.int32, device="cuda"
            )
            self._flush = self._flush_buffer.zero_
            self._cushion = lambda: torch.cuda._sleep(CUSHION_CYCLES)
            self._event = lambda: _TorchEvent(torch)
            self._sync = torch.cuda.synchronize
            self.timing_method = {
                "method": "l2-flush",
                "flush_bytes": self.flush_bytes,
                "flush": "torch zero_ of a 2 x L2 buffer",
                "cushion": f"torch.cuda._sleep({CUSHION_CYCLES})",
                "events": "torch.cuda.Event, default stream",
            }
        else:
            self._flush_alloc = cuda.mem_alloc(self.flush_bytes)
            words = self.flush_bytes // 4
            self._flush = lambda: cuda.memset_d32(self._flush_alloc, 0, words)
            self._cushion = None
            self._event = lambda: _PycudaEvent(cuda)
            self._sync = cuda.Context.synchronize
            self.timing_method = {
                "method": "l2-flush",
                "flush_bytes": self.flush_bytes,
                "flush": "cuMemsetD32 of a 2 x L2 buffer",
                "cushion": None,
                "events": "pycuda Event, default stream",
            }
        self._weights: dict[tuple[int, int, int], np.ndarray] = {}

    # -- Executor protocol ---------------------------------------------------------------
    def device_info(self) -> dict:
        data = self.info.to_dict()
        data["arch"] = self.arch
        return data

    def read_clocks(self) -> dict:
        return self._read_clocks(self.device_index).to_dict()

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        if point.implementation == "tvwsim":
            return self._measure_ours(point, timing)
        if self.baselines is None:
            raise PointSkipped("torch is not importable here, so no vendor baselines")
        return self._measure_baseline(point, timing)

    # -- helpers ---------------------------------------------------------------------------
    def _weight(self, n: int, k: int, seed: int) -> np.ndarray:
        from tvwsim.kernels.prepare import random_weight

        key = (n, k, seed)
        if key not in self._weights:
            self._weights.clear()  # one shape at a time: points are shape-major
            self._weights[key] = random_weight(n, k, seed)
        return self._weights[key]

    def _time(self, launch: Callable[[], Any], timing: TimingPlan) -> tuple[list[float], dict]:
        times = time_launches(
            launch,
            new_event=self._event,
            flush=self._flush,
            cushion=self._cushion,
            synchronize=self._sync,
            warmup=timing.warmup,
            repeats=timing.repeats,
        )
        return times, {**self.timing_method, "warmup": timing.warmup, "repeats": timing.repeats}

    def _measure_ours(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        inputs = kernel_inputs(point, self._weight(point.n, point.k, point.seed))
        schedule = inputs.schedule
        prepared = self._launch.prepare(inputs.encoded, point.m, schedule, build_dir=self.build_dir)
        y = prepared.run(inputs.x, poison=True)
        err, checked = check_kernel_output(y, inputs)
        session = self._session
        # PreparedGemm.launch enqueues the whole operation (workspace zeroing, GEMM,
        # finalize) on the resident buffers; time_launches adds the flush and cushion.
        times, how = self._time(prepared.launch, timing)
        kernel = prepared.kernel
        resources = _function_resources(session.cuda, kernel.gemm)
        resources.update(
            smem_bytes=resources.get("shared_static_bytes", 0) + int(kernel.smem_bytes),
            shared_dynamic_bytes=int(kernel.smem_bytes),
            threads=point.config.threads,
            cubin=kernel.cubin.name,
        )
        return Measurement(
            kernel=f"{point.pattern}_gemm",
            times_us=tuple(times),
            max_rel_error=err,
            achieved_sparsity=float(inputs.pruned.achieved_sparsity),
            schedule_digest=schedule.digest(),
            ctas=int(schedule.n_tasks),
            resources=resources,
            timing=how,
            extra={
                "checked_tokens": checked,
                "split_tasks": bool(schedule.has_split_tasks),
                "finalize_regions": int(prepared.regions.shape[0]),
            },
        )

    def _measure_baseline(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        x16, w16, achieved = baseline_inputs(point, self._weight(point.n, point.k, point.seed))
        prepared = self.baselines.prepare(point.implementation, x16, w16, block=point.block)
        err, checked = check_baseline_output(prepared.run(), x16, w16)
        times, how = self._time(prepared.launch, timing)
        return Measurement(
            kernel=prepared.routine,
            times_us=tuple(times),
            max_rel_error=err,
            achieved_sparsity=achieved,
            timing=how,
            extra={"checked_tokens": checked, **prepared.info},
        )


def _function_resources(cuda, function) -> dict:
    """Registers, static shared and local memory of a loaded kernel (the cubin's truth)."""
    attr = cuda.function_attribute
    out = {}
    for key, name in (
        ("registers", "NUM_REGS"),
        ("shared_static_bytes", "SHARED_SIZE_BYTES"),
        ("local_bytes", "LOCAL_SIZE_BYTES"),
    ):
        try:
            out[key] = int(function.get_attribute(getattr(attr, name)))
        except Exception:  # noqa: BLE001 - a missing attribute is not worth a failed point
            pass
    return out
