"""What a simulation will cost before it runs: host memory and SimPy events.

Covers: an estimate of the peak memory and the event count of simulating one GEMM (or a
whole model), and a guard that refuses a run that would not fit, with one `InputError`
that says the estimate and the limit. A typo such as `--shape 4096,1000000000,768` would
otherwise ask numpy for terabytes, or run for days without a word.

Scenario: a `tvwsim simulate` call prunes and encodes an N x K weight, builds one task
per (weight tile, token block) and runs the engine, which processes about one event per
pipeline stage of every task plus two for its epilogue. The estimate follows those three
steps:

    memory  = weight: N x K x (its bytes + 1 byte of mask) + 6 bytes per kept weight
              (fp16 value + int32 index, the CSR upper bound), for patterns whose work
              depends on the values (or any pattern pruning a given --weights file)
            + tile work: weight tiles x padded K x 8 bytes (int64 gathered-row lists)
            + tasks x 500 bytes (schedule row, engine bookkeeping, per-CTA result arrays)
    events  = tasks x (K steps a task runs + 2)   (+ one per resident-CTA slot, left out)

where tasks = ceil(N / bm) x ceil(M / bn) and a task runs all ceil(K / bk) steps, except
tw and tvw, whose tiles keep only part of K (1 - sparsity, before tvw's 2:4 step).
The per-weight and per-task figures are measured peaks (resident set) of the current
implementation, rounded up; the estimate is meant to be within a factor of two, which
is all a guard needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec

GENERATED_WEIGHT_BYTES = 4
"""A seeded random weight is float32."""
MASK_BYTES_PER_WEIGHT = 1
"""The pruning mask is one bool per weight."""
ENCODED_BYTES_PER_KEPT = 6
"""Per kept weight in the encoding: fp16 value and int32 index (CSR, the largest)."""
ROW_LIST_BYTES = 8
"""One int64 entry of a tile's gathered-row list, per padded K position."""
TASK_BYTES = 500
"""Per CTA task: the schedule row, the engine's per-task state and the result arrays
(measured about 440 bytes)."""
EPILOGUE_EVENTS = 2
"""Events of a task beyond its K steps: the wait for the last stage and the store."""

EVENTS_LIMIT = 100_000_000
"""Default most events: about 10 minutes at EVENTS_PER_SECOND. The shipped `deepbench`
catalog at one sparsity (about 66 million events) still runs; a typo in a shape, which
asks for billions, does not."""
EVENTS_PER_SECOND = 150_000
"""Rough engine speed per CPU second (a dense 4096^3 GEMM: 133 336 events in 0.9 s; a
loaded machine gets less), only to say how long a refused run would take."""
MEMORY_FRACTION = 0.8
"""Share of the memory available now that a run may plan to use."""


@dataclass(frozen=True)
class SimulationCost:
    """Estimated peak host memory and SimPy events of a simulation."""

    memory_bytes: int
    """Peak memory of the largest single GEMM (one weight is held at a time)."""
    events: int
    """SimPy events of every simulated launch together."""

    def __add__(self, other: SimulationCost) -> SimulationCost:
        """GEMMs simulated one after another: memory peaks do not add, events do."""
        return SimulationCost(
            max(self.memory_bytes, other.memory_bytes), self.events + other.events
        )


@dataclass(frozen=True)
class CostLimits:
    """The most a simulation may cost before the guard refuses it."""

    memory_bytes: int
    events: int = EVENTS_LIMIT


def gemm_cost(
    m: int,
    n: int,
    k: int,
    pattern: str,
    sparsity: float,
    config: KernelConfig,
    *,
    weight_bytes_per_element: int | None = None,
) -> SimulationCost:
    """Estimate simulating one M x N x K GEMM with `pattern` (module docstring).

    `weight_bytes_per_element` is the element size of a weight the caller supplies
    (then it is pruned whatever the pattern); None means the seeded random weight, which
    dense and vw never draw.
    """
    spec = pattern_spec(pattern)
    weights = n * k
    memory = 0
    if weight_bytes_per_element is not None or not spec.regular:
        element = weight_bytes_per_element or GENERATED_WEIGHT_BYTES
        kept = weights * (1.0 - sparsity)
        memory += weights * (element + MASK_BYTES_PER_WEIGHT)
        memory += math.ceil(kept * ENCODED_BYTES_PER_KEPT)
    tiles = -(-n // config.bm)
    k_steps = -(-k // config.bk)
    memory += tiles * k_steps * config.bk * ROW_LIST_BYTES
    tasks = tiles * -(-m // config.bn)
    memory += tasks * TASK_BYTES
    steps = k_steps
    if spec.tiled:
        # A tile keeps (1 - sparsity) of K; tvw's 2:4 step then halves what it stores,
        # not the K steps it walks.
        nm_keep = spec.nm[0] / spec.nm[1] if spec.nm else 1.0
        steps = math.ceil(k_steps * min(1.0, (1.0 - sparsity) / nm_keep))
    return SimulationCost(int(memory), int(tasks * (steps + EPILOGUE_EVENTS)))


def total_cost(costs: Iterable[SimulationCost]) -> SimulationCost:
    """Several GEMMs simulated one after another."""
    total = SimulationCost(0, 0)
    for cost in costs:
        total = total + cost
    return total


def available_memory_bytes() -> int:
    """Memory available to a new allocation now (Linux MemAvailable), else physical RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 2**40  # unknown: do not refuse on memory grounds


def default_limits() -> CostLimits:
    """MEMORY_FRACTION of the memory available now, and EVENTS_LIMIT events."""
    return CostLimits(int(available_memory_bytes() * MEMORY_FRACTION), EVENTS_LIMIT)


def check_cost(
    cost: SimulationCost,
    limits: CostLimits | None = None,
    *,
    argument: str = "--shape",
    what: str = "this GEMM",
) -> None:
    """Raise one InputError naming `argument` when `cost` exceeds `limits`.

    The message gives each estimate that is over, its limit, and the way past (`--force`).
    """
    limits = default_limits() if limits is None else limits
    over = []
    if cost.memory_bytes > limits.memory_bytes:
        over.append(
            f"about {format_bytes(cost.memory_bytes)} of memory "
            f"(limit {format_bytes(limits.memory_bytes)}, {MEMORY_FRACTION:.0%} of what is "
            "available now)"
        )
    if cost.events > limits.events:
        over.append(
            f"{format_count(cost.events)} simulation events, {format_duration(cost.events)} "
            f"(limit {format_count(limits.events)})"
        )
    if over:
        raise InputError(
            argument,
            f"simulating {what} would take {' and '.join(over)}; use a smaller size, or "
            "pass --force to run it anyway",
        )


def format_bytes(nbytes: float) -> str:
    """'2.8 TiB', '512 MiB': binary units, three significant digits."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int) -> str:
    """'about 2,013 million', 'about 45,000': rounded, for messages."""
    if count >= 10_000_000:
        return f"about {count / 1e6:,.0f} million"
    return f"about {round(count, -3 if count >= 10_000 else 0):,}"


def format_duration(events: int) -> str:
    """How long `events` take at EVENTS_PER_SECOND, in words."""
    seconds = events / EVENTS_PER_SECOND
    if seconds < 120:
        return f"about {seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"about {seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"about {seconds / 3600:.0f} h"
    return f"about {seconds / 86400:.0f} days"


def model_cost(workload, runs, *, traced: bool) -> SimulationCost:
    """Estimate `tvwsim.sim.model.simulate_model(workload, hw, runs)` with the shipped
    kernels: GEMMs one after another (memory: the largest; events: all added up).

    Identical launches are simulated once, so a GEMM counts once per run - `count` times
    for a value-dependent pattern when `traced` (each instance may follow another trace
    layer) - and a non-prunable GEMM once, as its batched launch.
    """
    from tvwsim.sim.model import batched_launches

    costs: dict[tuple, SimulationCost] = {}
    for gemm in workload.gemms:
        if not gemm.prunable:
            _, per_launch = batched_launches(workload, gemm)
            key = (gemm.m * per_launch, gemm.n, gemm.k, "dense", 0.0)
            costs[key] = gemm_cost(*key, default_config("dense"))
            continue
        for run in runs:
            key = (gemm.m, gemm.n, gemm.k, run.pattern, run.sparsity)
            one = gemm_cost(*key, default_config(run.pattern))
            if traced and not pattern_spec(run.pattern).regular:
                # Instances may follow different trace layers: each is its own launch.
                key = (*key, gemm.name)
                one = SimulationCost(one.memory_bytes, one.events * gemm.count)
            costs[key] = one  # equal launches elsewhere in the model are simulated once
    return total_cost(costs.values())
