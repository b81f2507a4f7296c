"""One batch of design points, simulated in one process: what a Dask task runs.

The unit of work is a `Unit`: one hardware point x one workload, with every run (pattern,
sparsity, config, policy) of that workload. A unit's runs stay together because each
row's speedup divides by the dense run of the same point, workload and policy. A batch
is a list of units; `evaluate_batch` returns their rows as plain dicts (the store's
columns, `tvwsim.explore.store`) and touches no file, so a worker on another machine
needs tvwsim installed and nothing else.

What stays warm in a worker process between batches:

- schedules of GEMM workloads (`_schedule`), keyed on everything that builds them and
  nothing about the hardware: the same GEMM on 500 hardware points is pruned, encoded
  and scheduled once per worker;
- the TileWorks of model workloads (`_works`, handed to `simulate_model`), for the same
  reason: on BERT-base, scaling the trace statistics and encoding them is about 70% of a
  whole-model run on one hardware point;
- the engine's result cache (`tvwsim.sim.engine.simulate`) and, inside one whole-model
  run, `simulate_model`'s reuse of identical layers;
- trace mappings of model workloads (`_mapping`);
- whole-model results (`_model_result`) of the kernels that do not use the sparse tensor
  core. Those kernels (dense, ew, bw, tw) never read the sparse core's fields
  (`SPARSE_MMA_FIELDS`), so they run on the point with those fields at their defaults
  (`seen_by`), and points that differ only in the sparse core share their simulations;
  `units` puts such points next to each other so that one batch holds them.

Nothing here depends on which worker runs a unit or in what order: a unit's rows are a
function of the unit alone, so a serial run and a Dask run give equal rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from tvwsim.explore.design import HardwarePoint
from tvwsim.explore.spec import ExploreSpec, Run, WorkloadSpec, kernel_config
from tvwsim.sim.hardware import Hardware

from tvwsim.config import AUTO
from tvwsim.pattern_spec import BASELINE_PATTERN, PATTERNS, VW_SPARSITY, mma_kind

SPARSE_MMA_FIELDS = (
    "sparse_tflop_ratio",
    "mma_efficiency_sparse",
    "wgmma_efficiency_sparse",
    "core_mma_sp_peak_fraction",
)
"""Hardware fields that only a kernel issuing sparse MMA (mma.sp: vw, tvw) reads: the 2:4
tensor core's rate (`tvwsim.sim.sm`). tests/explore checks that a dense-MMA kernel's
result does not move with them."""


@dataclass(frozen=True)
class Unit:
    """One hardware point x one workload, with all its runs: the smallest piece of work."""

    point: HardwarePoint
    workload: WorkloadSpec
    runs: tuple[Run, ...]
    seed: int

    @property
    def key(self) -> str:
        """'<point id>|<workload label>': what the store records as done."""
        return f"{self.point.id}|{self.workload.label}"


@functools.lru_cache(maxsize=256)
def _dense_mma_view(hw: Hardware) -> Hardware:
    defaults = {f.name: f.default for f in dataclasses.fields(hw) if f.name in SPARSE_MMA_FIELDS}
    # The record of what was changed is part of a Hardware's identity (and of the
    # engine's cache key): the view forgets the sparse core there too.
    kept = tuple((k, v) for k, v in hw.overrides if k not in SPARSE_MMA_FIELDS)
    return dataclasses.replace(hw, **defaults, overrides=kept)


def seen_by(pattern: str, hw: Hardware) -> Hardware:
    """`hw` as `pattern`'s kernels see it: for a kernel without sparse MMA, the sparse
    core's fields at their defaults, so that points differing only there are one point."""
    return hw if mma_kind(pattern) == "sparse" else _dense_mma_view(hw)


def units(spec: ExploreSpec) -> list[Unit]:
    """Every unit of `spec`, workload-major: consecutive units share a workload, so a
    batch reuses its schedules and trace mapping. Within a workload, points that differ
    only in the sparse core's fields come together (in design order otherwise): a batch
    then simulates their dense-MMA kernels once."""
    first: dict = {}
    for point in spec.points:
        first.setdefault(_dense_mma_view(point.hardware), len(first))
    points = sorted(spec.points, key=lambda p: first[_dense_mma_view(p.hardware)])
    return [
        Unit(point, workload, tuple(spec.runs(workload)), spec.seed)
        for workload in spec.workloads
        for point in points
    ]


def siblings(todo: Sequence[Unit]) -> list[list[Unit]]:
    """`todo` cut into runs of consecutive units of one workload whose points differ only
    in the sparse core's fields: a batch that holds a whole run simulates its dense-MMA
    kernels once (`units` puts such points together)."""
    groups: list[list[Unit]] = []
    last = None
    for unit in todo:
        key = (unit.workload, _dense_mma_view(unit.point.hardware))
        if groups and key == last:
            groups[-1].append(unit)
        else:
            groups.append([unit])
        last = key
    return groups


def row_key(unit: Unit, run: Run) -> str:
    """Identity of one row: unit, pattern, sparsity, config, policy."""
    return f"{unit.key}|{run.pattern}|{run.sparsity:.6g}|{run.config}|{run.policy}"


@functools.lru_cache(maxsize=64)
def _schedule(
    m: int, n: int, k: int, pattern: str, sparsity: float, config: str, policy: str, seed: int
):
    from tvwsim.kernels.prepare import schedule_for_shape

    return schedule_for_shape(
        m, n, k, pattern, sparsity, config=kernel_config(pattern, config), policy=policy, seed=seed
    )


@functools.lru_cache(maxsize=16)
def _workload(model: str, batch: int, seq: int):
    from tvwsim.traces.catalog import load_workload

    return load_workload(model, batch=batch, seq=seq)


@functools.lru_cache(maxsize=16)
def _works(model: str, batch: int, seq: int, trace: str, seed: int) -> dict:
    """The TileWorks of one model workload, kept for every hardware point: building them
    (trace statistics scaled, encoded) costs more than simulating them."""
    return {}


@functools.lru_cache(maxsize=16)
def _mapping(model: str, batch: int, seq: int, trace: str):
    from tvwsim.sim.model_traces import load_mapping

    return load_mapping(_workload(model, batch, seq), trace)


def _measure(result) -> dict:
    """The figures of one simulated GEMM that every row carries."""
    return {
        "time_us": float(result.time_us),
        "achieved_sparsity": float(result.achieved_sparsity),
        "bottleneck": result.bottleneck,
        "compute_utilisation": float(result.compute_utilisation),
        "l2_utilisation": float(result.l2_utilisation),
        "dram_utilisation": float(result.dram_utilisation),
        "l2_hit_rate": float(result.l2_hit_rate),
        "dram_bytes": float(result.dram_bytes),
    }


def _gemm_figures(unit: Unit) -> list[dict]:
    from tvwsim.sim.engine import simulate
    from tvwsim.sim.library import choose

    w, hw = unit.workload, unit.point.hardware
    out = []
    for run in unit.runs:
        if run.config == AUTO:
            # What a vendor library would run on this hardware point (its own tile,
            # split-K and grouped order; warpgroup MMA where the point has it).
            choice = choose(seen_by(run.pattern, hw), w.m, w.n, w.k, run.pattern)
            split = f" split-K {choice.split_k}" if choice.split_k > 1 else ""
            out.append({**_measure(choice.result), "kernel": choice.config.name + split})
            continue
        schedule = _schedule(
            w.m, w.n, w.k, run.pattern, run.sparsity, run.config, run.policy, unit.seed
        )
        out.append({**_measure(simulate(schedule, seen_by(run.pattern, hw))), "kernel": run.config})
    return out


Call = tuple[str, tuple[tuple[str, str], ...], str]
"""One `simulate_model` call of a model unit: policy, (pattern, config) pairs, MMA kind."""


def _model_calls(unit: Unit) -> dict[Call, list[Run]]:
    """The unit's runs grouped into `simulate_model` calls.

    The patterns at their first config run together, dense first, in two calls: those
    with dense MMA (on `seen_by`'s view of the point, shared with its sparse-core
    siblings) and those with sparse MMA. A pattern's other configs each take a call of
    their own beside dense at its first config - the baseline - except dense's own
    others, which run the whole model, not-prunable GEMMs included, in that config."""
    first: dict[str, str] = {}
    for run in unit.runs:
        first.setdefault(run.pattern, run.config)
    calls: dict[Call, list[Run]] = {}
    for run in unit.runs:
        configs = {**first, run.pattern: run.config}
        if run.config != first[run.pattern]:
            configs = {BASELINE_PATTERN: first[BASELINE_PATTERN], **{run.pattern: run.config}}
        key = (run.policy, tuple(configs.items()), mma_kind(run.pattern))
        calls.setdefault(key, []).append(run)
    return calls


@functools.lru_cache(maxsize=32)
def _model_result(w: WorkloadSpec, hw: Hardware, call: Call, runs: tuple, seed: int):
    """One whole-model simulation, kept for the next unit: a point's sparse-core siblings
    ask for the same dense-MMA runs on the same view of the hardware."""
    from tvwsim.sim.model import simulate_model

    policy, configs, _ = call
    mapping = _mapping(w.model, w.batch, w.seq, w.trace)
    return simulate_model(
        _workload(w.model, w.batch, w.seq),
        hw,
        runs,
        policy=policy,
        seed=seed,
        profiles=mapping.profile if mapping is not None else None,
        works=_works(w.model, w.batch, w.seq, w.trace, seed),
        configs={p: name if name == AUTO else kernel_config(p, name) for p, name in configs},
        # The dense baseline and the attention of a sparse-MMA call then come from the
        # engine's cache, filled by the dense-MMA call of the same point or a sibling.
        hardware_of=lambda pattern: seen_by(pattern, hw),
    )


def _model_figures(unit: Unit) -> list[dict]:
    from tvwsim.sim.library import LIBRARIES
    from tvwsim.sim.model import model_runs

    w, hw = unit.workload, unit.point.hardware
    figures: dict[Run, dict] = {}
    for call, runs_here in _model_calls(unit).items():
        patterns = list(dict.fromkeys(run.pattern for run in runs_here))
        # The spec's target sparsities: those of the patterns that take one (vw's fixed
        # 0.5 is not a target - passed on, it would run tw at 0.5 too).
        targets = [r.sparsity for r in runs_here if PATTERNS[r.pattern].fixed_sparsity is None]
        runs = tuple(model_runs(patterns, targets or [VW_SPARSITY]))
        result = _model_result(w, seen_by(patterns[0], hw), call, runs, unit.seed)
        by_run = {(r.pattern, r.sparsity): r for r in result.runs}
        for run in runs_here:
            model_run = by_run[(run.pattern, run.sparsity)]
            layers = result.of(model_run)
            total = result.total_us(model_run)
            by_bottleneck: dict[str, float] = {}
            for layer in layers:
                by_bottleneck[layer.bottleneck] = (
                    by_bottleneck.get(layer.bottleneck, 0.0) + layer.time_us
                )

            def weighted(name: str, by: str = "time_us", layers=layers) -> float:
                whole = sum(getattr(x, by) for x in layers)
                part = sum(getattr(x, name) * getattr(x, by) for x in layers)
                return float(part / whole) if whole else 0.0

            # A library's pick differs per GEMM shape: the row names the library.
            kernel = f"{AUTO}: {LIBRARIES[run.pattern]} per GEMM" if run.config == AUTO else None
            figures[run] = {
                "time_us": float(total),
                "achieved_sparsity": float(result.achieved_sparsity(model_run)),
                # The bottleneck that holds the most of the end-to-end time.
                "bottleneck": max(by_bottleneck, key=lambda b: (by_bottleneck[b], b)),
                "compute_utilisation": weighted("compute_utilisation"),
                "l2_utilisation": weighted("l2_utilisation"),
                "dram_utilisation": weighted("dram_utilisation"),
                # A share of bytes: each GEMM counts by the bytes it moves through L2.
                "l2_hit_rate": weighted("l2_hit_rate", "l2_bytes"),
                "dram_bytes": float(sum(x.dram_bytes for x in layers)),
                "kernel": kernel or run.config,
            }
    return [figures[run] for run in unit.runs]


def evaluate_unit(unit: Unit) -> list[dict]:
    """The rows of one unit, in run order."""
    from tvwsim.sim.presets import hardware_fields

    w, point, hw = unit.workload, unit.point, unit.point.hardware
    figures = _gemm_figures(unit) if w.kind == "gemm" else _model_figures(unit)
    # The baseline of every row: the first dense run of its policy (dense's first config).
    dense: dict[str, float] = {}
    for run, fig in zip(unit.runs, figures, strict=True):
        if run.pattern == BASELINE_PATTERN:
            dense.setdefault(run.policy, fig["time_us"])
    head = {
        "unit": unit.key,
        "point": point.id,
        "point_index": point.index,
        **{name: value for name, value in point.values},
        "workload": w.label,
        "workload_kind": w.kind,
        "model": w.model,
        "batch": w.batch,
        "seq": w.seq,
        "m": w.m,
        "n": w.n,
        "k": w.k,
    }
    hw_columns = {f"hw_{name}": getattr(hw, name) for name in hardware_fields()}
    rows = []
    for run, fig in zip(unit.runs, figures, strict=True):
        base_time = dense[run.policy]
        rows.append(
            {
                "key": row_key(unit, run),
                **head,
                "pattern": run.pattern,
                "sparsity": run.sparsity,
                "config": run.config,
                "kernel": fig["kernel"],
                "policy": run.policy,
                "time_us": fig["time_us"],
                "dense_time_us": base_time,
                "speedup": base_time / fig["time_us"],
                **{k: v for k, v in fig.items() if k not in ("time_us", "kernel")},
                "hardware": hw.label,
                **hw_columns,
            }
        )
    return rows


def evaluate_batch(batch: Sequence[Unit]) -> list[dict]:
    """The rows of every unit of a batch (the Dask task; also the serial path)."""
    return [row for unit in batch for row in evaluate_unit(unit)]
