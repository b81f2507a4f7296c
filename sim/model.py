"""Whole-model simulation: every GEMM of a forward pass, per sparsity pattern.

A model is a workload catalog (`tvwsim.traces.catalog`): a list of GEMM shapes, each run `count`
times per forward pass. `simulate_model` times all of them on one hardware preset for a
list of (pattern, sparsity) runs and adds them up:

    end-to-end time(run) = sum over GEMMs of the simulated time of all its launches
    speedup(run)         = end-to-end time(dense) / end-to-end time(run)

The GEMMs run one after the other (layer i+1 needs layer i's output), so times add; the
model does not overlap kernels of different layers.

Where each GEMM's sparse structure comes from
---------------------------------------------
- dense and vw: from the shape alone - every tile is alike whatever the weight values
  (`tvwsim.kernels.tile_work.regular_tile_work`).
- ew, bw, tw, tvw, when the caller passes a `ProfileFn` that knows a real-weight trace
  layer for this GEMM: that layer's statistics scaled to the full-size shape
  (`tvwsim.sim.trace_work`). Instances of one catalog entry may take different trace layers
  (BERT-base layer 7's FFN1 and layer 8's are different matrices), so the profile is
  asked per instance.
- otherwise: the seeded synthetic weight (`tvwsim.kernels.prepare.synthetic_weight`: a
  Gaussian with log-normal row and column scales, skewed like trained layers), pruned and
  encoded by `prepare_weight` - the same work `tvwsim simulate --shape M,N,K --seed S`
  builds.

Every result says which (`LayerResult.structure`).

GEMMs that are not prunable (attention scores and context: activation x activation)
run dense in every pattern. A real implementation computes all heads and sequences of
one layer in one batched launch, so the model does the same: the catalog's `count` is
split into `launches` = the model's layer count (the largest `count` among its prunable
GEMMs, when it divides) of `count / launches` instances each, and one launch is
simulated as one GEMM whose M stacks those instances (same tiles, FLOPs and activation
traffic; the small per-instance "weight" operand is read once instead of once per
instance, a slight under-count of its DRAM bytes). Without a clean split, every instance
is its own launch.

Identical schedules share one simulation: the engine caches results by schedule digest,
and the work of equal (shape, pattern, sparsity, structure) is built once.
"""

from __future__ import annotations

import csv
import io
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.kernels.prepare import config_for, mask_work, prepare_weight, synthetic_weight
from tvwsim.kernels.tile_work import regular_tile_work
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.library import LIBRARIES, choose
from tvwsim.sim.result import SimResult
from tvwsim.sim.trace_work import LayerProfile, trace_tile_work
from tvwsim.traces.catalog import Gemm, Workload

from tvwsim.config import AUTO, KernelConfig
from tvwsim.errors import InputError
from tvwsim.io import atomic_output
from tvwsim.pattern_spec import (
    BASELINE_PATTERN,
    PATTERN_NAMES,
    REGULAR_PATTERNS,
    VALUE_DEPENDENT_PATTERNS,
    pattern_spec,
)
from tvwsim.schedule import POLICIES, TileWork, build_schedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STRUCTURE_SHAPE = "independent of weight values"
STRUCTURE_DENSE = "dense (not prunable)"
STRUCTURE_TRACE = {
    "tw": "kept-K from real weights",
    "tvw": "kept-K from real weights",
    "bw": "kept blocks from real weights",
    "ew": "row lengths from real weights",
}

ProfileFn = Callable[[Gemm, int, str, float, KernelConfig], "LayerProfile | None"]
"""(gemm, instance index 0 .. count-1, pattern, sparsity, kernel config) -> the
real-weight profile whose statistics that instance's weight should have, or None for a
seeded random weight. Called only for ew, bw, tw and tvw."""

StepFn = Callable[[str], None]
"""Called once per (run, GEMM) pair when it is done, with a short label (progress bars)."""


@dataclass(frozen=True, order=True)
class ModelRun:
    """One (pattern, sparsity) the whole model is simulated in."""

    pattern: str
    sparsity: float

    @property
    def label(self) -> str:
        """'tw 0.75', 'dense'."""
        if not pattern_spec(self.pattern).prunes:
            return self.pattern
        return f"{self.pattern} {self.sparsity:g}"


def model_runs(patterns: Sequence[str], sparsities: Sequence[float]) -> list[ModelRun]:
    """The runs for `patterns` x `sparsities`, dense first (the baseline, always present).

    vw runs once, at its fixed 0.5; tvw only at sparsities >= 0.5 (it applies 2:4 after
    tw); dense once at 0; ew, bw and tw at every sparsity. Raises InputError for an
    unknown pattern, a sparsity outside (0, 1), or nothing sparse left to run.
    """
    patterns = list(dict.fromkeys(patterns))
    bad = [p for p in patterns if p not in PATTERN_NAMES]
    if bad or not patterns:
        raise InputError(
            "--pattern",
            f"got {','.join(bad) or 'nothing'}; allowed: {', '.join(PATTERN_NAMES)}",
        )
    values = []
    for s in sparsities:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 < s < 1.0:
            raise InputError("--sparsity", f"each sparsity must be a number in (0, 1), got {s!r}")
        values.append(float(s))
    values = sorted(set(values))
    if not values:
        raise InputError("--sparsity", "give at least one sparsity in (0, 1)")
    baseline = ModelRun(BASELINE_PATTERN, pattern_spec(BASELINE_PATTERN).fixed_sparsity)
    runs = [baseline]
    for pattern in patterns:
        if pattern != BASELINE_PATTERN:
            spec = pattern_spec(pattern)
            runs.extend(ModelRun(pattern, s) for s in spec.sparsities_for(values))
    if len(runs) == 1 and patterns != [BASELINE_PATTERN]:
        needs = "; ".join(
            f"{p} needs a sparsity {pattern_spec(p).allowed()}"
            for p in patterns
            if p != BASELINE_PATTERN
        )
        raise InputError("--sparsity", f"{needs}; got {', '.join(map(str, values))}")
    return runs


@dataclass(frozen=True)
class LayerResult:
    """One catalog GEMM in one run: all `count` instances together."""

    gemm: str
    pattern: str
    sparsity: float
    m: int
    n: int
    k: int
    count: int
    """Instances per forward pass (the catalog's count)."""
    prunable: bool
    launches: int
    """Kernel launches for all instances (count, or fewer when batched)."""
    time_us: float
    """Simulated time of all launches."""
    weights: int
    """Weights of all instances (n * k * count; 0 when not prunable)."""
    kept_weights: int
    """Kept weights of all instances."""
    structure: str
    """Where the sparse structure came from: 'kept-K from real weights', 'seeded random
    weights', 'independent of weight values' or 'dense (not prunable)'."""
    sources: tuple[str, ...] = ()
    """The trace layers the instances followed (distinct, in order); empty otherwise."""
    distinct: int = 1
    """Distinct structures among the instances (one per trace layer followed, or one
    random weight); each is simulated once."""
    bottleneck: str = ""
    """Bottleneck of the instance that takes the most time in total."""
    compute_utilisation: float = 0.0
    """Compute share of the launches (`SimResult.compute_utilisation`), weighted by time."""
    l2_utilisation: float = 0.0
    """L2 bandwidth share of the launches, weighted by time."""
    dram_utilisation: float = 0.0
    """DRAM bandwidth share of the launches, weighted by time."""
    dram_bytes: float = 0.0
    """DRAM bytes of all launches."""
    l2_bytes: float = 0.0
    """Bytes of all launches through L2."""
    l2_hit_rate: float = 0.0
    """L2 hit rate of the launches (`SimResult.l2_hit_rate`), weighted by their L2 bytes."""

    @property
    def uses_trace(self) -> bool:
        return bool(self.sources)


@dataclass(frozen=True, eq=False)
class ModelResult:
    """A whole model simulated in several runs."""

    model: str
    description: str
    hardware: str
    batch: int
    seq: int | None
    """None when no GEMM of the model depends on the sequence length (CNNs)."""
    policy: str
    seed: int
    runs: tuple[ModelRun, ...]
    layers: tuple[LayerResult, ...]
    """Run-major: for each run, every catalog GEMM in catalog order."""
    simulations: int
    """Distinct launches actually simulated (the rest were cache hits)."""
    trace_label: str | None = None
    """The real-weight trace the structure came from, when one did: 'MiniLM-L6 trace'."""
    notes: tuple[str, ...] = field(default=())
    """Free-form lines about the structure source (from the caller)."""

    def of(self, run: ModelRun) -> list[LayerResult]:
        """The layers of one run, in catalog order."""
        return [r for r in self.layers if (r.pattern, r.sparsity) == (run.pattern, run.sparsity)]

    def total_us(self, run: ModelRun) -> float:
        """End-to-end time of one forward pass in `run`."""
        return float(sum(r.time_us for r in self.of(run)))

    @property
    def dense(self) -> ModelRun:
        return self.runs[0]

    def speedup(self, run: ModelRun) -> float:
        """End-to-end dense time / this run's."""
        return self.total_us(self.dense) / self.total_us(run)

    def achieved_sparsity(self, run: ModelRun) -> float:
        """1 - kept / weights over all prunable GEMMs of the model."""
        rows = self.of(run)
        weights = sum(r.weights for r in rows)
        return 1.0 - sum(r.kept_weights for r in rows) / weights if weights else 0.0

    def not_prunable_us(self) -> float:
        """Time of the GEMMs that run dense in every pattern (attention products)."""
        return float(sum(r.time_us for r in self.of(self.dense) if not r.prunable))


# =====================================================================================
# Simulation
# =====================================================================================
def batched_launches(workload: Workload, gemm: Gemm) -> tuple[int, int]:
    """(launches, instances per launch) of a non-prunable GEMM (module docstring)."""
    layers = max((g.count for g in workload.gemms if g.prunable), default=0)
    if layers > 0 and gemm.count % layers == 0:
        return layers, gemm.count // layers
    return gemm.count, 1


class _Simulator:
    """The caches of one `simulate_model` call (work per structure, the last weight)."""

    def __init__(
        self,
        hw: Hardware,
        policy: str,
        seed: int,
        manifest,
        works=None,
        library=False,
        configs=None,
        hardware_of=None,
    ):
        from tvwsim.sim.engine import simulate

        self.hw, self.policy, self.seed, self.manifest = hw, policy, seed, manifest
        self.hardware_of = hardware_of or (lambda pattern: hw)
        """The hardware a pattern's kernels run on (`simulate_model`'s `hardware_of`)."""
        configs = dict(configs or {})
        self.library = {p for p in LIBRARIES if library or configs.get(p) == AUTO}
        """Patterns run as a vendor library would (`tvwsim.sim.library`)."""
        self.configs = {p: c for p, c in configs.items() if c != AUTO}
        """Kernel config per pattern where it is not the pattern's own (`config_for`)."""
        self._simulate = simulate
        self.works: dict[tuple, TileWork] = {} if works is None else works
        self.weight_key: tuple | None = None
        self.weight: np.ndarray | None = None
        self.digests: set[tuple] = set()

    def random_work(self, n: int, k: int, pattern: str, sparsity: float, config) -> TileWork:
        key = ("random", n, k, pattern, sparsity, config)
        if key not in self.works:
            if (n, k) != self.weight_key:
                # One weight at a time: a VGG fc6 weight is 400 MB of float32, a DeepBench
                # 1024 x 500000 one 2 GB.
                self.drop_weight()
                self.weight = synthetic_weight(n, k, seed=self.seed)
                self.weight_key = (n, k)
            prepared = prepare_weight(self.weight, pattern, sparsity, config, buffers=False)
            self.works[key] = prepared.work
        return self.works[key]

    def drop_weight(self) -> None:
        """Forget the random weight; only its (small) TileWorks stay cached."""
        self.weight, self.weight_key = None, None

    def shape_work(self, n: int, k: int, pattern: str, config) -> TileWork:
        key = ("shape", n, k, pattern, config)
        if key not in self.works:
            self.works[key] = regular_tile_work(pattern, n, k, config)
        return self.works[key]

    def trace_work(
        self, profile: LayerProfile, n: int, k: int, sparsity: float, config
    ) -> TileWork:
        key = ("trace", profile.label, profile.pattern, profile.sparsity, n, k, sparsity, config)
        if key not in self.works:
            self.works[key] = trace_tile_work(profile, n, k, sparsity, config, seed=self.seed)
        return self.works[key]

    def config(self, pattern: str) -> KernelConfig:
        """The kernel config `pattern`'s GEMMs run (a library pattern: the work's only)."""
        return self.configs.get(pattern) or config_for(pattern)

    def run(self, work: TileWork, m: int) -> SimResult:
        hw = self.hardware_of(work.pattern)
        if work.pattern in self.library:
            choice = choose(hw, m, work.n, work.k, work.pattern)
            self.digests.add((choice.schedule.digest(), work.pattern))
            return choice.result
        schedule = build_schedule(work, m, self.policy)
        self.digests.add((schedule.digest(), schedule.pattern))
        return self._simulate(schedule, hw, manifest=self.manifest)


def simulate_model(
    workload: Workload,
    hw: Hardware,
    runs: Sequence[ModelRun],
    *,
    policy: str = "natural",
    seed: int = 0,
    profiles: ProfileFn | None = None,
    on_step: StepFn | None = None,
    manifest: str | Path | None = None,
    trace_label: str | None = None,
    notes: Sequence[str] = (),
    works: dict | None = None,
    library: bool = False,
    configs: Mapping[str, KernelConfig | str] | None = None,
    hardware_of: Callable[[str], Hardware] | None = None,
) -> ModelResult:
    """Simulate every GEMM of `workload` in every run (dense must be the first run).

    `profiles` gives real-weight structure per GEMM instance (see ProfileFn); `seed` is
    the seed of the random weights of the GEMMs it has none for, and of the positions
    drawn for the traced ones. `on_step` is called after each (run, GEMM) pair.

    `works`: a dict that keeps the TileWorks built here for the next call. The work does
    not depend on the hardware, so a caller simulating one workload on many hardware
    points (`tvwsim.explore`) passes the same dict every time - with the same `seed` and
    `profiles`, which its keys do not include - and builds each work once.

    `library`: the GEMMs a vendor library multiplies (dense, the non-prunable attention
    GEMMs, vw) run as the kernel `tvwsim.sim.library` picks (`--config auto`: cuBLAS,
    cuSPARSELt); the other patterns keep this project's kernels.

    `configs`: pattern -> the kernel config its GEMMs run instead of the pattern's own
    (`config_for`), or `AUTO` for a pattern a library multiplies (`library` for that
    pattern alone). The GEMMs that are not prunable run dense's entry in every run.

    `hardware_of`: pattern -> the hardware its kernels run on (default: `hw`). It must
    give results equal to `hw`'s: `tvwsim.explore` hands kernels without sparse MMA a
    view of `hw` that ignores the sparse core, so that the engine's result cache serves
    points that differ only there.
    """
    if not runs or runs[0].pattern != BASELINE_PATTERN:
        raise InputError("runs", f"the first run must be {BASELINE_PATTERN} (the baseline)")
    if policy not in POLICIES:
        raise InputError("--policy", f"got {policy!r}; allowed: {', '.join(POLICIES)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError("--seed", f"must be a non-negative integer, got {seed!r}")
    bad = [p for p, c in (configs or {}).items() if c == AUTO and p not in LIBRARIES]
    if bad:
        raise InputError("configs", f"{bad[0]}: {AUTO!r} is for {', '.join(LIBRARIES)} only")
    sim = _Simulator(
        hw, policy, int(seed), manifest, works, library, configs, hardware_of=hardware_of
    )
    per_gemm: dict[tuple[str, ModelRun], LayerResult] = {}
    # GEMM-major, so that one random weight serves all runs before the next is drawn.
    for gemm in workload.gemms:
        for run in runs:
            per_gemm[(gemm.name, run)] = _simulate_gemm(sim, workload, gemm, run, profiles)
            if on_step is not None:
                on_step(f"{run.label} {gemm.name}")
        # Every run has its work now: the weight is not needed again (a later GEMM of the
        # same shape finds its works in the cache).
        sim.drop_weight()
    layers = tuple(per_gemm[(g.name, run)] for run in runs for g in workload.gemms)
    return ModelResult(
        model=workload.name,
        description=workload.description,
        hardware=hw.label,
        batch=workload.batch,
        seq=workload.seq,
        policy=policy + (" (dense, vw: library kernels, --config auto)" if library else ""),
        seed=int(seed),
        runs=tuple(runs),
        layers=layers,
        simulations=len(sim.digests),
        trace_label=trace_label,
        notes=tuple(notes),
    )


def _simulate_gemm(
    sim: _Simulator, workload: Workload, gemm: Gemm, run: ModelRun, profiles: ProfileFn | None
) -> LayerResult:
    base = dict(gemm=gemm.name, pattern=run.pattern, sparsity=run.sparsity, m=gemm.m, n=gemm.n)
    base.update(k=gemm.k, count=gemm.count, prunable=gemm.prunable)
    if not gemm.prunable:
        launches, per_launch = batched_launches(workload, gemm)
        config = sim.config(BASELINE_PATTERN)
        work = sim.shape_work(gemm.n, gemm.k, BASELINE_PATTERN, config)
        result = sim.run(work, gemm.m * per_launch)
        return LayerResult(
            **base,
            launches=launches,
            time_us=launches * result.time_us,
            weights=0,
            kept_weights=0,
            structure=STRUCTURE_DENSE,
            bottleneck=result.bottleneck,
            **_utilisations([(launches, result)]),
        )

    config = sim.config(run.pattern)
    n, k = gemm.n, gemm.k
    if pattern_spec(run.pattern).regular:
        groups = {None: (sim.shape_work(n, k, run.pattern, config), gemm.count)}
        structure = STRUCTURE_SHAPE
    else:
        groups = {}
        for instance in range(gemm.count):
            profile = None
            if profiles is not None:
                profile = profiles(gemm, instance, run.pattern, run.sparsity, config)
            key = None if profile is None else profile.label
            if key in groups:
                groups[key] = (groups[key][0], groups[key][1] + 1)
            elif profile is None:
                groups[key] = (sim.random_work(n, k, run.pattern, run.sparsity, config), 1)
            else:
                groups[key] = (sim.trace_work(profile, n, k, run.sparsity, config), 1)
        traced = [key for key in groups if key is not None]
        if traced and None in groups:
            structure = f"{STRUCTURE_TRACE[run.pattern]} + seeded random weights"
        elif traced:
            structure = STRUCTURE_TRACE[run.pattern]
        else:
            structure = "seeded random weights"

    time_us, kept, slowest, launched = 0.0, 0, (-1.0, ""), []
    for work, times in groups.values():
        result = sim.run(work, gemm.m)
        time_us += times * result.time_us
        kept += times * work.kept_weights
        slowest = max(slowest, (times * result.time_us, result.bottleneck))
        launched.append((times, result))
    sources = tuple(key for key in groups if key is not None)
    return LayerResult(
        **base,
        launches=gemm.count,
        time_us=time_us,
        weights=n * k * gemm.count,
        kept_weights=kept,
        structure=structure,
        sources=sources,
        distinct=len(groups),
        bottleneck=slowest[1],
        **_utilisations(launched),
    )


def _utilisations(launched: Sequence[tuple[int, SimResult]]) -> dict[str, float]:
    """Time-weighted compute, L2 and DRAM shares, the L2 and DRAM bytes and the byte-weighted
    L2 hit rate of (launches, result) pairs: what a design-space exploration (`tvwsim.explore`)
    reports for a whole model."""
    total = sum(times * r.time_us for times, r in launched)
    out = {"dram_bytes": float(sum(times * r.dram_bytes for times, r in launched))}
    for name in ("compute_utilisation", "l2_utilisation", "dram_utilisation"):
        weighted = sum(times * r.time_us * getattr(r, name) for times, r in launched)
        out[name] = float(weighted / total) if total else 0.0
    # A hit rate is a share of bytes, so the launches count by the bytes they move.
    out["l2_bytes"] = float(sum(times * r.l2_bytes for times, r in launched))
    hits = sum(times * r.l2_bytes * r.l2_hit_rate for times, r in launched)
    out["l2_hit_rate"] = float(hits / out["l2_bytes"]) if out["l2_bytes"] else 0.0
    return out


def simulate_pruned_layers(
    layers: Sequence[tuple[np.ndarray, object | None]],
    pattern: str,
    m: int,
    hw: Hardware,
    *,
    tile: int | None = None,
    policy: str = "natural",
    manifest: str | Path | None = None,
) -> list[SimResult]:
    """Simulate GEMMs whose pruned masks are given: one (mask, tile layout or None) each.

    Every mask (N x K bool) becomes work through `tvwsim.kernels.prepare.mask_work` (the
    encoder with values 1.0: the work does not depend on them) and is scheduled for `m`
    tokens. `tile` is the tw/tvw tile width G (the kernel's bm; default the pattern's
    kernel). dense ignores the masks' contents and uses their shapes.
    """
    import dataclasses

    from tvwsim.sim.engine import simulate

    config = config_for(pattern)
    if tile is not None and pattern_spec(pattern).tiled and tile != config.bm:
        config = dataclasses.replace(config, bm=int(tile))
    results = []
    for mask, layout in layers:
        work = mask_work(mask, pattern, config, layout=layout)
        results.append(simulate(build_schedule(work, m, policy), hw, manifest=manifest))
    return results


# =====================================================================================
# Output: text tables, JSON, CSV, plot
# =====================================================================================
def structure_lines(result: ModelResult) -> list[str]:
    """What the sparse structure came from, in words: one line per kind of source."""
    lines = []
    sparse = [r for r in result.layers if r.prunable and r.pattern in VALUE_DEPENDENT_PATTERNS]
    prunable = [g for g in result.of(result.dense) if g.prunable]
    traced = sorted({r.gemm for r in sparse if r.uses_trace}, key=_order(result))
    random = sorted({r.gemm for r in sparse if "random" in r.structure}, key=_order(result))
    if traced:
        label = result.trace_label or "a real-weight trace"
        which = _names(traced, random, len(prunable))
        lines.append(
            f"weights: kept-K from real weights ({label}, scaled) - also its kept blocks (bw) "
            f"and row lengths (ew) - for {len(traced)} of {len(prunable)} prunable GEMMs "
            f"({which})"
        )
    if random:
        which = _names(random, traced, len(prunable))
        lines.append(
            f"weights: seeded random weights (skewed Gaussian, seed {result.seed}) for "
            f"{len(random)} of {len(prunable)} prunable GEMMs ({which})"
        )
    if any(r.pattern in REGULAR_PATTERNS for r in result.layers):
        regular = " and ".join(REGULAR_PATTERNS)
        lines.append(f"weights: {regular} work depends on the shape only, not on the values")
    lines.extend(result.notes)
    return lines


def _names(these: list[str], others: list[str], total: int, most: int = 8) -> str:
    """'all', the names, 'all but ...' or the first few: a line that stays readable."""
    if len(these) == total:
        return "all"
    if len(these) <= most:
        return ", ".join(these)
    if others and len(others) <= most:
        return f"all but {', '.join(others)}"
    return f"{', '.join(these[:most])}, ... ({len(these) - most} more)"


def _order(result: ModelResult) -> Callable[[str], int]:
    names = [r.gemm for r in result.of(result.dense)]
    return names.index


def format_summary(result: ModelResult, hw_description: str = "") -> str:
    """Header, the per-run end-to-end table and the structure lines."""
    head = (
        f"{result.model} on {result.hardware}"
        f"{f', {hw_description}' if hw_description else ''}: batch {result.batch}, "
        f"{_seq(result)}policy {result.policy}"
    )
    cols = ("pattern", "sparsity", "achieved", "time_us", "speedup", "attn_us")
    rows = []
    attention = result.not_prunable_us()
    for run in result.runs:
        rows.append(
            (
                run.pattern,
                f"{run.sparsity:g}",
                f"{result.achieved_sparsity(run):.4f}",
                f"{result.total_us(run):.1f}",
                f"{result.speedup(run):.2f}x",
                f"{attention:.1f}",
            )
        )
    if not attention:
        cols, rows = cols[:-1], [row[:-1] for row in rows]
    return "\n".join([head, *structure_lines(result), "", *_table(cols, rows)])


def format_layers(result: ModelResult) -> str:
    """Per-GEMM table: shape, count, dense time, each run's speedup over dense."""
    sparse_runs = result.runs[1:]
    cols = ("gemm", "MxNxK", "count", "weights", "dense_us") + tuple(
        run.label for run in sparse_runs
    )
    rows = []
    for dense in result.of(result.dense):
        cells = [
            dense.gemm,
            f"{dense.m}x{dense.n}x{dense.k}",
            str(dense.count),
            _weights_cell(result, dense.gemm),
            f"{dense.time_us:.1f}",
        ]
        for run in sparse_runs:
            layer = next(r for r in result.of(run) if r.gemm == dense.gemm)
            cells.append(f"{dense.time_us / layer.time_us:.2f}x")
        rows.append(tuple(cells))
    return "\n".join(_table(cols, rows))


def _weights_cell(result: ModelResult, gemm: str) -> str:
    layers = [r for r in result.layers if r.gemm == gemm]
    if not layers[0].prunable:
        return "dense"
    sparse = [r for r in layers if r.pattern in VALUE_DEPENDENT_PATTERNS]
    if not sparse:
        return "shape"
    traced = any(r.uses_trace for r in sparse)
    random = any("random" in r.structure for r in sparse)
    return "trace+random" if traced and random else "trace" if traced else "random"


def format_footer(result: ModelResult) -> str:
    """What the columns mean, and the non-prunable GEMMs."""
    lines = [
        "speedup = dense end-to-end time / the run's; time_us = one forward pass, all GEMMs "
        "in sequence; achieved = sparsity over all prunable weights",
        "weights column: trace = structure from the real-weight trace (scaled), random = "
        "seeded random weights, shape = dense/vw only",
    ]
    fixed = [r for r in result.of(result.dense) if not r.prunable]
    if fixed:
        total = result.total_us(result.dense)
        names = ", ".join(r.gemm for r in fixed)
        launches = sum(r.launches for r in fixed)
        lines.append(
            f"not prunable ({names}: activation x activation): dense in every pattern, "
            f"{launches} batched launches, {result.not_prunable_us():.1f} us "
            f"({result.not_prunable_us() / total:.0%} of dense) in every total (attn_us)"
        )
    lines.append(f"{result.simulations} distinct launches simulated")
    return "\n".join(lines)


def _seq(result: ModelResult) -> str:
    return "" if result.seq is None else f"seq {result.seq}, "


def _table(cols: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def to_json(result: ModelResult, hw: Hardware | None = None) -> dict:
    """One JSON-ready object: settings, per-run totals, per-layer rows; with `hw` (the
    hardware simulated) also its overrides and every field value."""
    from tvwsim.sim.presets import hardware_record

    dense_of = {r.gemm: r.time_us for r in result.of(result.dense)}
    return {
        "model": result.model,
        "description": result.description,
        "hardware": result.hardware,
        **(hardware_record(hw) if hw is not None else {}),
        "batch": result.batch,
        "seq": result.seq,
        "policy": result.policy,
        "seed": result.seed,
        "trace": result.trace_label,
        "structure": structure_lines(result),
        "simulations": result.simulations,
        "runs": [
            {
                "pattern": run.pattern,
                "sparsity": run.sparsity,
                "achieved_sparsity": result.achieved_sparsity(run),
                "time_us": result.total_us(run),
                "speedup": result.speedup(run),
                "not_prunable_us": result.not_prunable_us(),
            }
            for run in result.runs
        ],
        "layers": [
            {
                **asdict(r),
                "sources": list(r.sources),
                "speedup": dense_of[r.gemm] / r.time_us,
            }
            for r in result.layers
        ],
    }


CSV_COLUMNS = (
    "model", "hardware", "batch", "seq", "policy", "gemm", "m", "n", "k", "count",
    "prunable", "launches", "pattern", "sparsity", "time_us", "dense_time_us", "speedup",
    "achieved_sparsity", "structure", "sources", "bottleneck",
)  # fmt: skip


def to_csv(result: ModelResult) -> str:
    """One row per layer x run (CSV_COLUMNS), plus one 'TOTAL' row per run."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    head = [result.model, result.hardware, result.batch, result.seq, result.policy]
    dense_of = {r.gemm: r.time_us for r in result.of(result.dense)}
    for run in result.runs:
        for r in result.of(run):
            achieved = 1.0 - r.kept_weights / r.weights if r.weights else 0.0
            writer.writerow(
                head
                + [r.gemm, r.m, r.n, r.k, r.count, r.prunable, r.launches, r.pattern]
                + [r.sparsity, f"{r.time_us:.6f}", f"{dense_of[r.gemm]:.6f}"]
                + [f"{dense_of[r.gemm] / r.time_us:.4f}", f"{achieved:.6f}", r.structure]
                + [";".join(r.sources), r.bottleneck]
            )
        writer.writerow(
            head
            + ["TOTAL", "", "", "", "", "", "", run.pattern, run.sparsity]
            + [f"{result.total_us(run):.6f}", f"{result.total_us(result.dense):.6f}"]
            + [f"{result.speedup(run):.4f}", f"{result.achieved_sparsity(run):.6f}", "", "", ""]
        )
    return out.getvalue()


def speedup_figure(result: ModelResult) -> Figure:
    """Bar chart of end-to-end speedup over dense: groups = sparsities, bars = patterns.

    One bar container per pattern (its label the pattern's name), bar heights the
    speedups; a matplotlib Figure not attached to pyplot (nothing to close).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    sparse = list(result.runs[1:])
    sparsities = sorted({run.sparsity for run in sparse})
    patterns = [p for p in PATTERN_NAMES if any(run.pattern == p for run in sparse)]
    colours = colormaps["tab10"]
    width = 0.8 / max(1, len(patterns))
    fig = Figure(figsize=(max(6.0, 1.6 * len(sparsities) + 3), 4.2), dpi=120, layout="tight")
    ax = fig.subplots()
    for i, pattern in enumerate(patterns):
        xs, ys = [], []
        for j, s in enumerate(sparsities):
            run = next((r for r in sparse if r.pattern == pattern and r.sparsity == s), None)
            if run is not None:
                xs.append(j + (i - (len(patterns) - 1) / 2) * width)
                ys.append(result.speedup(run))
        bars = ax.bar(xs, ys, width, label=pattern, color=colours(PATTERN_NAMES.index(pattern)))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="dense")
    ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
    fixed = [
        f"{p}: its fixed {pattern_spec(p).fixed_sparsity:g}"
        for p in patterns
        if pattern_spec(p).fixed_sparsity is not None
    ]
    ax.set_xlabel("target sparsity" + (f" ({'; '.join(fixed)})" if fixed else ""))
    ax.set_ylabel("end-to-end speedup over dense")
    random = {r.gemm for r in result.layers if "random" in r.structure}
    source = f"structure: {result.trace_label}, scaled" if result.trace_label else "random weights"
    if result.trace_label and random:
        source += f" ({len(random)} GEMM{'s' if len(random) > 1 else ''} random)"
    ax.set_title(
        f"{result.model} on {result.hardware}, batch {result.batch}, {_seq(result)}"
        f"policy {result.policy}\n{source}; dense {result.total_us(result.dense):.0f} us",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=min(len(patterns) + 1, 7), loc="upper left")
    ax.set_ylim(0, max(1.2, 1.18 * max(result.speedup(r) for r in sparse)) if sparse else 1.2)
    ax.grid(axis="y", alpha=0.3)
    return fig


def draw_speedup_plot(result: ModelResult, path: str | Path) -> Path:
    """Write `speedup_figure(result)` to `path` (format from the suffix: .png, .svg, .pdf),
    whole or not at all, with the normal file mode."""
    path = Path(path)
    fig = speedup_figure(result)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path
