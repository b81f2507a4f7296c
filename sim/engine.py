"""The engine: a SimPy model of one GEMM kernel launch, counted in SM clock cycles.

Covers
------
The actors of a launch and `simulate`, its entry point:

- `Gpu` builds the launch (SMs, memory system, load path, dispatcher), runs it and
  assembles the `SimResult`;
- `Dispatcher` hands the schedule's tasks to CTA slots in schedule order;
- `Sm` (`tvwsim.sim.sm`): an SM's resident-CTA slots and the `MathPipe` they share,
  `TensorCoreMma` or `CudaCores`;
- `MemorySystem` (`tvwsim.sim.memory`): the GPU-wide L2 and DRAM bandwidth servers, the
  L2 policy chosen by `Hardware.l2_policy`, and the `LoadPath` a CTA loads through
  (`CpAsyncLoads`, or `RegisterStagedLoads` without cp.async);
- `cta()`: the SimPy process of one CTA, over the named `Stage`s of its K loop
  (`tvwsim.sim.stages`).

A new mechanism is a new class beside the old one, passed to `Gpu` (or, for an L2 policy,
named by a `Hardware` field): docs/model.md section 5 says where each plugs in.

Scenario
--------
A launch starts after a fixed launch overhead. Every SM has `ctas_per_sm` resident slots
(`tvwsim.sim.occupancy`). The dispatcher hands the tasks to slots in schedule order,
breadth-first over the SMs at the start (slot 0 of every SM, then slot 1, ...) and
afterwards to whichever slot frees up first. A CTA then

1. *prologue*: issues the loads of its first `depth` stages (`depth = stages - 1` with
   cp.async; 1 without it, where a load has to land in registers before the next one can
   be issued);
2. *K loop*, per stage s: waits until stage s has arrived and its own previous stage has
   been computed; issues the load of stage s + depth (the buffer just freed); and queues
   stage s on its SM's math pipe, which it shares first-come-first-served with the other
   CTAs resident on that SM;
3. *epilogue*: after its last stage is computed, stores its output tile (fp16 through L2
   to DRAM; an fp32 red.global.add into the split-K workspace at L2 for a split piece),
   pays `cta_fixed_cycles` of bookkeeping and frees its slot.

Granularity is the pipeline stage: one SimPy timeout per stage and CTA, plus two for the
epilogue. Loads and math are reserved analytically on FIFO servers at the moment they are
issued (the moment of issue is exact; the servers see requests in time order), so a
stage costs one event, not one per resource. Nothing depends on wall-clock time or
unseeded randomness: equal inputs give equal cycles.

Split-K schedules add two bandwidth-bound passes, counted serially: zero-filling the
fp32 workspace rows of split tiles before the launch and converting them to fp16 after
it (their own launch overhead is not counted: a real implementation fuses or graphs
them).

Fast-forward
------------
A big GEMM spends most of its time repeating itself. Unless asked for the exact engine
(`simulate(..., exact=True)`, `--exact`), a `SteadyState` (`tvwsim.sim.steady`) watches the
launch and, once every slot's state is seen repeating, moves every CTA whole periods
ahead at once (stages, or whole waves), adding the periods' busy time, bytes and L2
traffic, and returns to event-by-event detail for the tail. That is why each slot keeps
its progress in a `SlotRun` the fast-forward can move, and why the launch has two clocks:
SimPy's, and `Gpu.now()` = SimPy's plus what was skipped, which every recorded time uses.

`simulate` caches results keyed on (schedule digest, hardware, kernel resources, engine),
so identical layers of a network are simulated once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import simpy
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.memory import L2Policy, LoadPath, MemorySystem, load_path_for
from tvwsim.sim.occupancy import (
    KernelResources,
    Occupancy,
    check_mma_class,
    occupancy,
    resources_for,
)
from tvwsim.sim.result import SimResult
from tvwsim.sim.sm import MathPipe, Sm, math_pipe_for, stage_smem_bytes
from tvwsim.sim.stages import (
    DRAIN,
    IDLE,
    LOOP,
    STORE,
    CtaTask,
    SlotRun,
    Stage,
    StageTable,
    cta_tasks,
)
from tvwsim.sim.steady import SteadyState

from tvwsim.errors import InputError
from tvwsim.schedule import Schedule

__all__ = [
    "Dispatcher",
    "Gpu",
    "Stage",
    "clear_cache",
    "cta",
    "exact_engine",
    "simulate",
    "stage_smem_bytes",
]

_CACHE_SIZE = 256
_cache: OrderedDict[tuple, SimResult] = OrderedDict()

_exact_default: ContextVar[bool] = ContextVar("tvwsim_exact_engine", default=False)
"""What `simulate` runs when not told: the fast-forward (False) or the exact engine."""


@contextmanager
def exact_engine(exact: bool = True) -> Iterator[None]:
    """Within the block, `simulate` runs the exact engine (`exact`) unless a call says
    otherwise: how `--exact` reaches every simulation a command makes."""
    token = _exact_default.set(bool(exact))
    try:
        yield
    finally:
        _exact_default.reset(token)


def clear_cache() -> None:
    """Forget cached results (tests use it to time or re-run a simulation)."""
    _cache.clear()


def simulate(
    schedule: Schedule,
    hw: Hardware,
    resources: KernelResources | None = None,
    *,
    manifest: str | Path | None = None,
    cache: bool = True,
    exact: bool | None = None,
) -> SimResult:
    """Simulate one launch of `schedule` on `hw` and return its `SimResult`.

    `resources` (registers, shared memory per CTA) default to the compiled kernel's,
    read from the kernel manifest (`manifest`, default: the kernel directory's) when
    it lists this kernel for the hardware's arch, else to an estimate from the config.
    A kernel that does not fit on an SM raises InputError('tile').

    `exact`: run every stage of every CTA as an event (the reference engine) instead of
    skipping the repeats of a steady state (`tvwsim.sim.steady`, within a fraction of a
    percent of the exact time and much faster on big GEMMs); None: what the enclosing
    `exact_engine` block says, else the fast engine.
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a tvwsim.schedule.Schedule, got {type(schedule)}")
    if not isinstance(hw, Hardware):
        raise InputError("hw", f"must be a tvwsim.sim.hardware.Hardware, got {type(hw)}")
    check_mma_class(hw, schedule.config)
    if resources is None:
        resources = resources_for(hw, schedule.pattern, schedule.config, manifest)
    occ = occupancy(hw, resources)
    if exact is None:
        exact = _exact_default.get()
    key = (schedule.digest(), hw, resources, exact)
    if cache and key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    result = Gpu(schedule, hw, resources, occ, exact=exact).run()
    if cache:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


# -- the actors ------------------------------------------------------------------------------
def cta(env: simpy.Environment, gpu: Gpu, run: SlotRun, task: CtaTask) -> Iterator:
    """One CTA on slot `run`: prologue loads, the K loop, the epilogue (docs/model.md 5.2)."""
    loads, math, steady = gpu.loads, run.sm.math, gpu.steady
    now = env.now
    run.phase, run.task, run.stages = LOOP, task, gpu.stages.of_task(task)
    run.start, run.math_done = gpu.now(), now

    # Prologue: the loads of the first `depth` stages go out together.
    run.in_flight = deque(loads.load(stage, task, now) for stage in run.stages[: loads.depth])
    run.pos, run.next_load = 0, len(run.in_flight)
    if steady is not None:
        for pos in range(run.next_load):
            steady.loaded(task, pos)

    # K loop: wait for the stage and for our previous math, refill the freed buffer,
    # queue the stage on the SM's math pipe.
    while run.pos < len(run.stages):
        if steady is not None and run is steady.ref:
            run.wake = env.now
            steady.observe(env.now)  # may move every slot ahead: read the state again
        ready = run.in_flight[0]
        if run.math_done > ready:
            ready = run.math_done
        if ready > env.now:
            run.wake = ready
            yield gpu.wait_until(ready)
        run.in_flight.popleft()
        now, stages = env.now, run.stages
        if run.next_load < len(stages):
            stage = stages[run.next_load]
            run.in_flight.append(loads.load(stage, run.task, now))
            if steady is not None:
                steady.loaded(run.task, run.next_load)
            run.next_load += 1
        run.math_done = math.reserve(now, stages[run.pos].math_cycles)
        run.pos += 1

    # Epilogue: store the tile once the last stage is computed, then the fixed cost.
    run.phase = DRAIN
    if run.math_done > env.now:
        run.wake = run.math_done
        yield gpu.wait_until(run.math_done)
    stored = gpu.memory.write_tile(run.task, env.now)
    if steady is not None:
        steady.stored(run.task)
    run.phase, run.wake = STORE, stored + gpu.hw.cta_fixed_cycles
    yield gpu.wait_until(run.wake)
    gpu.record(run.task, run.sm, run.slot, run.start, gpu.now())
    run.phase, run.task = IDLE, None


def cta_slot(env: simpy.Environment, gpu: Gpu, run: SlotRun) -> Iterator:
    """One resident-CTA slot of an SM: runs the dispatcher's next task until none is left."""
    while (task := gpu.dispatcher.next_task(run.sm, run.slot)) is not None:
        yield from cta(env, gpu, run, task)
    if gpu.steady is not None:
        gpu.steady.retire(run)


class Dispatcher:
    """Hands the schedule's tasks to CTA slots in schedule order (docs/model.md 5.1).

    At launch the slots ask breadth-first over the SMs (slot 0 of every SM, then slot 1,
    ...); afterwards whichever slot frees first asks next. Another way to place CTAs (a
    thread-block cluster on one GPC, say) is a subclass that orders `slots` or answers
    `next_task` differently.
    """

    def __init__(self, tasks: list[CtaTask]):
        self.tasks = tasks
        self.next_index = 0
        """The next task to hand out."""

    def slots(self, sms: list[Sm]) -> list[tuple[Sm, int]]:
        """The (SM, slot) pairs that run tasks, in the order they first ask."""
        most = max((sm.slots for sm in sms), default=0)
        return [(sm, slot) for slot in range(most) for sm in sms if slot < sm.slots]

    def next_task(self, sm: Sm, slot: int) -> CtaTask | None:
        """The task for a slot that has just freed up, or None when none is left."""
        if self.next_index >= len(self.tasks):
            return None
        task = self.tasks[self.next_index]
        self.next_index += 1
        return task


class Gpu:
    """One kernel launch on a GPU: builds the actors, runs them, assembles the result.

    The defaults are what the kernels use on `hw`; pass a class to try another mechanism:
    `math_pipe` (a `MathPipe` subclass, one instance per SM), `load_path` (a `LoadPath`
    subclass), `l2_policy` (an `L2Policy` subclass, instead of the one `hw.l2_policy`
    names), `dispatcher` (a `Dispatcher` subclass).
    """

    def __init__(
        self,
        schedule: Schedule,
        hw: Hardware,
        resources: KernelResources,
        occ: Occupancy,
        *,
        math_pipe: type[MathPipe] | None = None,
        load_path: type[LoadPath] | None = None,
        l2_policy: type[L2Policy] | None = None,
        dispatcher: type[Dispatcher] = Dispatcher,
        exact: bool = False,
    ):
        self.schedule, self.hw, self.resources, self.occ = schedule, hw, resources, occ
        self.env = simpy.Environment()
        pipe = math_pipe or math_pipe_for(schedule)
        self.sms = [Sm(i, occ.ctas_per_sm, pipe()) for i in range(hw.sm_count)]
        self.memory = MemorySystem(hw, l2_policy)
        self.loads = (load_path or load_path_for(hw))(self.memory, schedule.config)
        self.stages = StageTable(
            schedule, pipe.stage_cycles(schedule, hw, ctas_per_sm=occ.ctas_per_sm)
        )
        self.tasks = cta_tasks(schedule)
        self.dispatcher = dispatcher(self.tasks)
        self.runs = [SlotRun(sm, slot) for sm, slot in self.dispatcher.slots(self.sms)]
        self.skipped_cycles = 0.0
        """Launch time the fast-forward skipped: `now()` is engine time plus this."""
        self.steady = None if exact else SteadyState.for_launch(self)
        """The fast-forward (`tvwsim.sim.steady`); None in the exact engine."""

        n = len(self.tasks)
        self.cta_sm = np.full(n, -1, dtype=np.int32)
        self.cta_slot = np.full(n, -1, dtype=np.int32)
        self.cta_start = np.zeros(n)
        self.cta_end = np.zeros(n)
        self.events = 0
        """SimPy events: one per slot process started and one per timeout."""

    def now(self) -> float:
        """The launch's time: engine time plus what the fast-forward skipped."""
        return self.env.now + self.skipped_cycles

    def wait_until(self, time: float) -> simpy.Timeout:
        """The event a process yields to resume at `time` (counted in `events`)."""
        self.events += 1
        return self.env.timeout(time - self.env.now)

    def record(self, task: CtaTask, sm: Sm, slot: int, start: float, end: float) -> None:
        """Note where and when a CTA ran (the timeline of the result)."""
        i = task.index
        self.cta_sm[i], self.cta_slot[i] = sm.index, slot
        self.cta_start[i], self.cta_end[i] = start, end

    def run(self) -> SimResult:
        """Run the launch to its end and return the result."""
        for run in self.runs:
            self.env.process(cta_slot(self.env, self, run))
            self.events += 1
        self.env.run()
        if self.steady is not None:
            self.steady.finish()
        return self._result()

    # -- the result ------------------------------------------------------------------------
    def _result(self) -> SimResult:
        hw, schedule, work, memory = self.hw, self.schedule, self.schedule.work, self.memory
        kernel_cycles = float(self.cta_end.max()) if self.tasks else 0.0
        reduction_cycles, reduction_bytes = self._split_k_passes()
        launch_cycles = hw.launch_overhead_us * hw.clock_mhz
        slots = self.occ.ctas_per_sm
        return SimResult(
            hardware=hw.label,
            pattern=schedule.pattern,
            policy=schedule.policy,
            config=schedule.config.name,
            mma=schedule.config.mma,
            m=schedule.m,
            n=schedule.n,
            k=schedule.k,
            achieved_sparsity=1.0 - work.kept_weights / (schedule.n * schedule.k),
            clock_mhz=hw.clock_mhz,
            cycles=launch_cycles + kernel_cycles + reduction_cycles,
            kernel_cycles=kernel_cycles,
            launch_cycles=launch_cycles,
            reduction_cycles=reduction_cycles,
            useful_flops=2.0 * schedule.m * work.kept_weights,
            dense_flops=2.0 * schedule.m * schedule.n * schedule.k,
            ctas=len(self.tasks),
            ctas_per_sm=slots,
            occupancy_limited_by=self.occ.limited_by,
            resources_source=self.resources.source,
            registers_per_thread=self.resources.registers_per_thread,
            smem_bytes_per_cta=self.resources.smem_bytes,
            waves=-(-len(self.tasks) // (hw.sm_count * slots)),
            sm_count=hw.sm_count,
            compute_busy_cycles=sum(sm.math.busy_cycles for sm in self.sms),
            l2_busy_cycles=memory.l2.busy_cycles,
            dram_busy_cycles=memory.dram.busy_cycles,
            # Output write-backs are queued, never waited for: DRAM may still be busy when
            # the last CTA retires, and that service is not the kernel's time.
            dram_busy_until_cycles=memory.dram.free_at + self.skipped_cycles,
            l2_bytes=memory.l2.bytes_moved,
            dram_bytes=memory.dram.bytes_moved + reduction_bytes,
            l2_hit_rate=memory.l2_cache.hit_rate,
            tail_start_cycles=self._tail_start(),
            events=self.events,
            cta_sm=self.cta_sm,
            cta_slot=self.cta_slot,
            cta_start_cycles=self.cta_start,
            cta_end_cycles=self.cta_end,
            cta_tile=np.asarray(schedule.tasks[:, 0], dtype=np.int32),
        )

    def _tail_start(self) -> float:
        """The first moment an SM that had work ran out of it for good."""
        used = self.cta_sm >= 0
        last_end = np.full(self.hw.sm_count, -np.inf)
        np.maximum.at(last_end, self.cta_sm[used], self.cta_end[used])
        last_end = last_end[np.isfinite(last_end)]
        return float(last_end.min()) if last_end.size else 0.0

    def _split_k_passes(self) -> tuple[float, float]:
        """Cycles and DRAM bytes of the split-K zero-fill and fp32 -> fp16 passes."""
        pieces = {(t.tile, t.block): t.out_elements for t in self.tasks if t.split}
        if not pieces:
            return 0.0, 0.0
        return self.memory.split_k_passes(sum(pieces.values()))
