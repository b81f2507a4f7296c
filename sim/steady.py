"""The fast-forward: once a launch repeats itself, skip the repeats (docs/model.md 5.8).

Covers
------
`SteadyState`, the part of a launch (`tvwsim.sim.engine.Gpu`) that makes the engine's
cost stop growing with K and with the number of waves. The exact engine
(`simulate(..., exact=True)`, `--exact`) runs without it and is the reference.

Scenario
--------
A big GEMM spends most of its time in a steady state: every resident CTA loads and
computes stage after stage, the math pipes and the L2 and DRAM servers settle into the
same queueing pattern, and one stretch of time looks like the one before it, shifted.
The engine's state is small and explicit (each slot's `SlotRun`, each pipe's and server's
next free time, the L2 policy's contents), so "looks the same" can be checked exactly:

1. *Watch.* One slot is the reference (the first; when it runs out of tasks, the slot
   with the most stages left). Every chunk period of its K loop (two stages at bk=32),
   just before it waits for its next stage, `observe` notes its own state (its loads in
   flight, its math, its SM's pipe, the L2 and DRAM servers, relative to now). Only once
   that repeats does it take a whole snapshot: every slot's phase, task, stage, loads in
   flight, math and wake-up, every pipe's and server's free time, the L2's resident
   bytes, and the running totals (busy cycles, bytes, L2 requests and misses).
2. *Recognise a period.* Three kinds of repeat (docs/model.md 5.8 has the rules):
   - a *stage period*: every slot on the same task, its own number of stages on, every
     relative time equal and equal totals added, two periods in a row. Exact;
   - a *wave period*: the reference at one fixed stage of five successive tasks, the
     four waves between alike in time and totals (per q tasks of progress) to a percent,
     not drifting, and each missing two L2s of data. Approximate: skipped at the mean;
   - in the *last wave* of several, two longer windows in which every slot moved on
     about as far. Approximate: each slot moves on at its own mean rate.
3. *Skip.* Move every slot n periods on (stages, or tasks), add n periods' totals, and
   add n periods to the launch's clock (`Gpu.skipped_cycles`; the SimPy clock itself
   never jumps, since nothing in the state depends on its absolute value). n stops short
   of anything that does not repeat: a slot's last stages, a tile whose stages differ
   (padding, the last token block, another tile length), the end of the schedule.
4. *Keep the L2 honest.* The L2 policy's contents after a skip are what the skipped
   stretch left there: the engine walks that stretch back from its end, up to an L2's
   worth of distinct bytes, and touches those chunks in order without counting them.
5. *Fill in the skipped CTAs.* A wave skip skips whole CTAs; at the end of the launch
   each gets its SM, slot, start and end from a CTA of the wave seen last, shifted by
   the periods between them.

Everything else (the first stages of every CTA, the cold first wave, the tail, tiles
that differ from their neighbours, tw/tvw gathers) runs event by event as in the exact
engine. `tests/sim/test_steady.py` and `benchmarks/bench_engine.py` check the fast
engine against the exact one on random shapes, patterns, policies and presets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.sim.memory import OUTPUT_KEY_BASE, LoadPath, LruL2
from tvwsim.sim.stages import ACT_CHUNK_ROWS, IDLE, LOOP

from tvwsim.schedule import ELEMENT_BYTES

if TYPE_CHECKING:
    from tvwsim.sim.engine import Gpu
    from tvwsim.sim.stages import CtaTask, SlotRun

MIN_SNAPSHOT_STAGES = 2
"""The reference slot takes a snapshot every `snapshot_stages` of its stages: at least
this many, and as many as share one L2 activation chunk (64 rows: two bk=32 stages, four
bk=16 ones), since a stage period is found only when it divides the spacing and stages
that split a chunk differ in which half they read."""
MIN_PERIODS = 2
"""Skip only when at least this many periods fit: a shorter skip saves less than it costs."""
MARGIN_STAGES = 2
"""Stages every CTA keeps before its end, run event by event after a stage skip."""
LAST_WAVE_SNAPSHOTS = 4
"""In the last wave, the window seen repeating is this many snapshots long ..."""
LAST_WAVE_TOLERANCE = 0.005
"""... and two windows count as alike when their GPU-wide totals agree to this fraction."""
WAVE_SNAPSHOT = 2
"""Wave skips compare the reference at this many spacings into each of its tasks: past
the first stages, when the other slots' new tasks have been dispatched, and before the
earliest stage skip (which needs three whole snapshots after the reference's own state
repeats, at three spacings at the soonest)."""
WAVES_SEEN = 4
"""A wave skip needs this many successive waves seen ..."""
WAVE_SCATTER = 0.01
"""... no two of them differing by more than this fraction in time (twice this in any
GPU-wide total) ..."""
WAVE_DRIFT = 0.0025
"""... and the mean of the first half of them and of the second half agreeing to this in
time (four times this in any total)."""
KEEP_WAVES = 1
"""Waves a wave skip leaves before the end of the schedule, run event by event."""
WAVE_L2_TURNOVER = 2.0
"""A wave skip needs each wave to miss at least this many L2 capacities of data, so that
nothing a wave reads can still be in L2 a wave later."""


@dataclass(frozen=True, slots=True)
class Moved:
    """How far one period moves a load or store of the period seen: `tasks` on in the
    schedule (a wave period), or `stages[task]` on in its task (a stage period)."""

    tasks: int
    stages: dict[int, int] | None


@dataclass(slots=True)
class Snapshot:
    """The state of a launch at one moment, relative to that moment."""

    now: float
    """The launch's time (`Gpu.now()`)."""
    ref_task: int
    ref_pos: int
    ints: np.ndarray
    """int64 [slots, 4]: phase, task index (-1 idle), stage, loads in flight."""
    times: np.ndarray
    """float64: every slot's wake-up, math and loads in flight, every pipe's and server's
    free time, minus now (clipped at 0: a past time acts as now)."""
    totals: np.ndarray
    """float64: busy cycles of every pipe, of L2 and DRAM; bytes of L2 and DRAM; L2
    requested and missed bytes (the running sums a skip adds to)."""
    resident_bytes: float
    dispatched: int
    logged: int
    """Loads and stores logged before this moment (a sequence number into the log)."""


class SteadyState:
    """Watches a launch for a repeating state and skips the repeats (module docstring)."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu
        self.ref = gpu.runs[0]
        """The slot whose K loop paces the snapshots."""
        self.depth = gpu.loads.depth
        self.snapshot_stages = max(MIN_SNAPSHOT_STAGES, ACT_CHUNK_ROWS // gpu.schedule.config.bk)
        self.stage_history: deque[Snapshot] = deque(maxlen=3)
        """The last snapshots of the reference's current task, `snapshot_stages` apart."""
        self.last_wave_history: deque[Snapshot] = deque(maxlen=3)
        """The last snapshots of the reference's task in the last wave, LAST_WAVE_SNAPSHOTS
        snapshots apart."""
        self.own_history: deque[tuple[int, np.ndarray]] = deque(maxlen=3)
        """(task, the reference's own state) at its last snapshot times."""
        self.wave_history: deque[Snapshot] = deque(maxlen=WAVES_SEEN)
        """Snapshots at one fixed stage of the reference's last tasks."""
        self.waves_possible = len(gpu.tasks) >= (WAVES_SEEN + 1 + MIN_PERIODS + KEEP_WAVES) * len(
            gpu.runs
        )
        """The schedule has waves enough for a wave skip to pay."""
        self.log: deque[tuple[bool, int, int]] = deque()
        """(is a store, task index, stage) of every load and store since the oldest
        snapshot a period can start at."""
        self.log_start = 0
        """Sequence number of the log's first entry (`Snapshot.logged` counts from 0)."""
        self.skips: list[tuple[str, int, int, float]] = []
        """(kind, periods, stages or tasks per period, period cycles) of every skip."""
        self._task_jumps: list[tuple[int, int, float, int, np.ndarray]] = []
        """(periods, tasks per period, period cycles, dispatched, active tasks) of every
        task skip, for `finish` to fill in the skipped CTAs."""
        self._stage_signature: dict[int, np.ndarray] = {}
        self._stage_ids: dict[tuple, int] = {}
        self._task_signature: np.ndarray | None = None

    @classmethod
    def for_launch(cls, gpu: Gpu) -> SteadyState | None:
        """A fast-forward for `gpu`, or None where the launch has a dispatcher, an L2
        policy or a load path's L2 touch other than the shipped ones: their state is not
        in the snapshots, or the L2 replay would not match them."""
        from tvwsim.sim.engine import Dispatcher

        if type(gpu.dispatcher) is not Dispatcher or not isinstance(gpu.memory.l2_cache, LruL2):
            return None
        if type(gpu.loads).touch is not LoadPath.touch:
            return None  # the L2 replay mirrors LoadPath.touch
        if not gpu.runs or not gpu.tasks:
            return None
        return cls(gpu)

    # -- what the CTAs report ------------------------------------------------------------
    def loaded(self, task: CtaTask, pos: int) -> None:
        """A CTA issued the load of stage `pos` of `task`."""
        self.log.append((False, task.index, pos))

    def stored(self, task: CtaTask) -> None:
        """A CTA stored its output tile."""
        self.log.append((True, task.index, 0))

    def _trim_log(self) -> None:
        """Drop log entries older than every snapshot a period could start at."""
        # A wave skip replays the last wave seen: from the latest wave snapshot on.
        marks = [self.wave_history[-1].logged] if self.wave_history else []
        for history in (self.stage_history, self.last_wave_history):
            if history:
                marks.append(history[0].logged)
        oldest = min(marks, default=self.log_start + len(self.log))
        for _ in range(oldest - self.log_start):
            self.log.popleft()
        self.log_start = max(self.log_start, oldest)

    def _period_log(self, b: Snapshot, c: Snapshot) -> list[tuple[bool, int, int]]:
        """The loads and stores between snapshots b and c, in order."""
        lo = b.logged - self.log_start
        return list(islice(self.log, lo, lo + c.logged - b.logged))

    def retire(self, run: SlotRun) -> None:
        """Slot `run` has no task left. If it was the reference, the slot with the most
        stages left takes over (the last, partial wave can still be skipped)."""
        if run is not self.ref:
            return
        busy = [r for r in self.gpu.runs if r.phase == LOOP]
        if busy:
            self.ref = max(busy, key=lambda r: len(r.stages) - r.pos)
            self.stage_history.clear()
            self.own_history.clear()
            self.wave_history.clear()

    # -- watching ------------------------------------------------------------------------
    def observe(self, now: float) -> None:
        """The reference slot is about to wait for a stage at engine time `now`: take a
        snapshot when due, and skip ahead if the launch is seen repeating.

        A whole snapshot costs a pass over every slot, so it is taken only where it can
        lead to a skip: once the reference's own state (its loads and math, its SM's
        pipe, the servers) is seen repeating (a stage skip needs that, and a tw gather
        never gets there); at one fixed stage of each task (WAVE_SNAPSHOT), when the
        schedule has waves enough for a wave skip; and in the last wave, every
        LAST_WAVE_SNAPSHOTS spacings.
        """
        ref = self.ref
        if ref.pos % self.snapshot_stages:
            return
        history, own = self.stage_history, self.own_history
        if own and own[-1][0] != ref.task.index:
            own.clear()
            history.clear()
        own.append((ref.task.index, self._own_state(now)))
        snap = None
        if len(own) == 3 and self._own_repeats():
            snap = self._snapshot(now)
            history.append(snap)
            if len(history) == 3 and self._try_stage_skip(*history):
                return
        else:
            history.clear()
        gpu = self.gpu
        if gpu.dispatcher.next_index >= len(gpu.tasks):
            # The last wave of several (a single wave is cheap: it gets exact skips only):
            # a longer window, seen twice, can be skipped approximately.
            coarse = self.last_wave_history
            if coarse and coarse[-1].ref_task != ref.task.index:
                coarse.clear()
            several = len(gpu.tasks) > len(gpu.runs)
            if several and ref.pos % (LAST_WAVE_SNAPSHOTS * self.snapshot_stages) == 0:
                snap = snap or self._snapshot(now)
                coarse.append(snap)
                if len(coarse) == 3 and self._try_last_wave_skip(*coarse):
                    return
        elif ref.pos == WAVE_SNAPSHOT * self.snapshot_stages and self.waves_possible:
            snap = snap or self._snapshot(now)
            earlier = self.wave_history
            if len(earlier) == WAVES_SEEN and self._try_wave_skip([*earlier, snap]):
                return
            earlier.append(snap)
        self._trim_log()

    def _own_state(self, now: float) -> np.ndarray:
        """The reference's part of a snapshot: its loads in flight and its math, its SM's
        pipe, the L2 and DRAM servers (relative to now)."""
        ref, memory = self.ref, self.gpu.memory
        times = [ref.math_done, ref.sm.math.free_at, memory.l2.free_at, memory.dram.free_at]
        return np.maximum(np.array([*times, *ref.in_flight]) - now, 0.0)

    def _own_repeats(self) -> bool:
        """The reference's own state repeated over the last two spacings."""
        (_, a), (_, b), (_, c) = self.own_history
        if not (a.shape == b.shape == c.shape):
            return False
        tol = 1e-6 + 1e-9 * self.gpu.now()
        same = np.allclose(a, b, rtol=0.0, atol=tol) and np.allclose(b, c, rtol=0.0, atol=tol)
        return bool(same)

    def _snapshot(self, now: float) -> Snapshot:
        gpu, depth = self.gpu, self.depth
        runs = gpu.runs
        ints = np.array(
            [
                (r.phase, -1 if r.task is None else r.task.index, r.pos, len(r.in_flight))
                for r in runs
            ],
            dtype=np.int64,
        )
        times = []
        for run in runs:
            times += (run.wake, run.math_done, *run.in_flight)
            times += [now] * (depth - len(run.in_flight))
        times.extend(sm.math.free_at for sm in gpu.sms)
        memory = gpu.memory
        times.append(memory.l2.free_at)
        times.append(memory.dram.free_at)
        relative = np.maximum(np.asarray(times) - now, 0.0)
        cache = memory.l2_cache
        totals = np.array(
            [sm.math.busy_cycles for sm in gpu.sms]
            + [
                memory.l2.busy_cycles,
                memory.dram.busy_cycles,
                memory.l2.bytes_moved,
                memory.dram.bytes_moved,
                cache.requested_bytes,
                cache.miss_bytes,
            ]
        )
        ref = self.ref
        return Snapshot(
            now=gpu.now(),
            ref_task=ref.task.index,
            ref_pos=ref.pos,
            ints=ints,
            times=relative,
            totals=totals,
            resident_bytes=cache.resident_bytes,
            dispatched=gpu.dispatcher.next_index,
            logged=self.log_start + len(self.log),
        )

    @staticmethod
    def _same_times(a: Snapshot, b: Snapshot) -> bool:
        return np.allclose(a.times, b.times, rtol=0.0, atol=1e-6 + 1e-9 * b.now)

    def _alike_totals(self, a: Snapshot, b: Snapshot, c: Snapshot) -> bool:
        """The two periods a -> b and b -> c added the same GPU-wide totals, to within
        LAST_WAVE_TOLERANCE (each pipe's busy time may differ; their sum may not)."""
        first, second = self._period(a, b)[1:], self._period(b, c)[1:]
        return np.allclose(first, second, rtol=LAST_WAVE_TOLERANCE, atol=1e-6)

    @staticmethod
    def _same_totals(a: Snapshot, b: Snapshot, c: Snapshot) -> bool:
        """The two periods a -> b and b -> c added the same totals."""
        first, second = b.totals - a.totals, c.totals - b.totals
        return np.allclose(first, second, rtol=1e-9, atol=1e-6)

    # -- a stage period --------------------------------------------------------------------
    @staticmethod
    def _stage_steps(a: Snapshot, b: Snapshot) -> np.ndarray | None:
        """Stages every slot moved on from a to b, if every slot is idle or in its K loop on
        the same task (at least one stage on) at equal relative times; else None. Slots
        may move at different rates (a CTA alone on its SM runs faster)."""
        ai, bi = a.ints, b.ints
        phase = bi[:, 0]
        if not np.array_equal(ai[:, 0], phase) or not np.all((phase == LOOP) | (phase == IDLE)):
            return None
        if not np.array_equal(ai[:, 1], bi[:, 1]) or not np.array_equal(ai[:, 3], bi[:, 3]):
            return None
        steps = bi[:, 2] - ai[:, 2]
        if np.any(steps[phase == LOOP] <= 0) or b.dispatched != a.dispatched:
            return None
        return steps if SteadyState._same_times(a, b) else None

    def _try_stage_skip(self, a: Snapshot, b: Snapshot, c: Snapshot) -> bool:
        """a, b, c: the reference's task, equally spaced. Skip when b -> c repeats a -> b
        exactly."""
        steps = self._stage_steps(b, c)
        if steps is None:
            return False
        before = self._stage_steps(a, b)
        if before is None or not np.array_equal(before, steps):
            return False
        if not self._same_totals(a, b, c):
            return False
        periods = self._stage_room(a, steps)
        growth = c.resident_bytes - b.resident_bytes
        if growth > 1e-9 * c.resident_bytes:
            # The L2 is still filling: the launch repeats only until it is full.
            room = self.gpu.memory.l2_cache.capacity_bytes - c.resident_bytes
            periods = min(periods, int(room // growth))
        elif abs(growth) > 1e-9 * max(1.0, c.resident_bytes):
            return False
        if periods < MIN_PERIODS:
            return False
        self._skip_stages(b, c, periods, steps)
        return True

    def _try_last_wave_skip(self, a: Snapshot, b: Snapshot, c: Snapshot) -> bool:
        """a, b, c: the reference's task in the last wave, equally spaced. CTAs alone on
        an SM and CTAs sharing one run at rates that rarely repeat exactly, so here two
        windows count as alike when every slot moved on about as far in each (one stage
        either way) and the GPU-wide totals agree to LAST_WAVE_TOLERANCE; then each slot
        is moved on at its own mean rate, in whole chunk periods, for as many windows as
        every slot has room for among stages that are alike (not tw/tvw gathers)."""
        ai, bi, ci = a.ints, b.ints, c.ints
        phase = ci[:, 0]
        if not (np.array_equal(ai[:, :2], ci[:, :2]) and np.array_equal(bi[:, :2], ci[:, :2])):
            return False  # a slot changed task or phase
        loop = phase == LOOP
        first, second = (bi - ai)[loop, 2], (ci - bi)[loop, 2]
        if not loop.any() or np.any(first <= 0) or np.any(np.abs(first - second) > 1):
            return False
        if not self._alike_totals(a, b, c):
            return False
        rate = np.zeros(len(phase))
        rate[loop] = (first + second) / 2  # stages per window
        grain = self.snapshot_stages
        # Stages that are alike chunk period by chunk period, as far as every slot goes.
        alike = self._stage_room(a, np.full(len(phase), grain)) * grain
        windows = None
        for run, per_window in zip(self.gpu.runs, rate.tolist(), strict=True):
            if run.phase == LOOP:
                end = min(len(run.stages) - MARGIN_STAGES - grain, run.next_load + alike)
                fits = int((end - run.next_load) // per_window)
                windows = fits if windows is None else min(windows, fits)
        if windows is None or windows < MIN_PERIODS:
            return False
        # One skip of `windows` windows: each slot's whole move (whole chunk periods of
        # its mean rate), and a's two windows to c taken as 2 / windows of its time.
        steps = (np.floor(rate * windows / grain) * grain).astype(np.int64)
        self._skip_stages(a, c, 1, steps, seen=2 / windows, kind="last wave")
        return True

    def _stage_room(self, first: Snapshot, steps: np.ndarray) -> int:
        """Stage periods every slot can skip: its stages from the first snapshot on repeat
        with its own step until MARGIN_STAGES before its end."""
        room = None
        rows = zip(self.gpu.runs, first.ints.tolist(), steps.tolist(), strict=True)
        for run, (phase, _, pos0, _), d in rows:
            if phase != LOOP:
                continue
            task = run.task
            signature = self._stages_of(task.tile)[task.first_stage : task.end_stage]
            end = len(run.stages) - MARGIN_STAGES
            same = signature[pos0 + d : end] == signature[pos0 : end - d]
            bad = np.flatnonzero(~same)
            periodic_to = pos0 + d + int(bad[0]) if bad.size else end
            fits = (min(end, periodic_to) - run.next_load) // d
            room = fits if room is None else min(room, fits)
            if room < MIN_PERIODS:
                return 0
        return room or 0

    def _skip_stages(
        self,
        b: Snapshot,
        c: Snapshot,
        periods: int,
        steps: np.ndarray,
        seen: float = 1,
        kind: str = "stage",
    ) -> None:
        """Move every slot in its K loop `periods` x its step on; a period lasts the mean
        of the `seen` periods from b to c."""
        step_of = {}
        for run, d in zip(self.gpu.runs, steps.tolist(), strict=True):
            if run.phase == LOOP:
                run.pos += periods * d
                run.next_load += periods * d
                step_of[run.task.index] = d
        cycles = (c.now - b.now) / seen
        before = c.totals - (c.totals - b.totals) / seen
        self._jump(before, c.totals, cycles, periods, b, c, Moved(tasks=0, stages=step_of))
        self.skips.append((kind, periods, int(steps.max()), cycles))
        self.stage_history.clear()
        self.own_history.clear()
        self.last_wave_history.clear()

    # -- a wave period -----------------------------------------------------------------------
    def _try_wave_skip(self, seen: list[Snapshot]) -> bool:
        """seen: the reference at the same stage of WAVES_SEEN + 1 successive tasks. When
        the waves between them, each per q tasks of progress, differ in time or GPU-wide
        totals by no more than WAVE_SCATTER, and the first half and the second agree to
        WAVE_DRIFT (so a slow drift, such as the first waves settling, is not taken for a
        steady state), skip whole waves at their mean."""
        b, c = seen[-2], seen[-1]
        if any(np.any(x.ints[:, 0] == IDLE) for x in seen):
            return False
        pairs = list(zip(seen, seen[1:], strict=False))
        dispatched = [y.dispatched - x.dispatched for x, y in pairs]
        if min(dispatched) <= 0:
            return False
        # The reference's tasks do not start in step with the dispatcher's rounds (it
        # may see 190 tasks dispatched in one of its tasks and 242 in the next), so each
        # period is measured per q tasks' worth of progress, q the mean dispatched.
        q = round(sum(dispatched) / len(dispatched))
        task = self.gpu.tasks[c.ref_task]
        stages = task.end_stage - task.first_stage
        waves = np.array([self._period(x, y) * self._per_wave(x, y, q, stages) for x, y in pairs])
        # Waves that scatter around a mean are skipped at the mean; waves that drift (each
        # a little faster than the last, as the first waves settle) are not: the first
        # half of the waves seen and the second must agree. Time is held tighter than the
        # totals, whose scatter is structural (which tiles share a wave moves a wave's
        # misses by a percent) and which matter less.
        scatter = np.full(waves.shape[1], 2 * WAVE_SCATTER)
        drift = np.full(waves.shape[1], 4 * WAVE_DRIFT)
        scatter[0], drift[0] = WAVE_SCATTER, WAVE_DRIFT
        high = np.abs(waves).max(axis=0)
        if np.any(np.ptp(waves, axis=0) > scatter * high + 1e-6):
            return False
        half = len(waves) // 2
        first, second = waves[:half].mean(axis=0), waves[half:].mean(axis=0)
        if np.any(np.abs(second - first) > drift * high + 1e-6):
            return False
        periods = self._wave_room(seen[0], c, q)
        if periods < MIN_PERIODS:
            return False
        # Each missed byte enters the L2 and pushes an older one out (LRU), so a wave that
        # misses WAVE_L2_TURNOVER L2s of data leaves nothing of the waves before it. A wave
        # that misses less may find its data again waves later, and whether it hits then
        # depends on where in the schedule it is (a tile's first wave misses, its next
        # ones hit), not on the waves just seen.
        missed = waves[:, -1].min()
        if missed < WAVE_L2_TURNOVER * self.gpu.memory.l2_cache.capacity_bytes:
            return False
        self._skip_waves(seen[0], b, c, periods, q)
        return True

    @staticmethod
    def _per_wave(a: Snapshot, b: Snapshot, q: int, stages: int) -> float:
        """The share of a -> b that moved the running CTAs exactly q tasks of `stages`
        stages on (the CTAs moved on by the tasks dispatched, plus their change of stage)."""
        progress = (b.dispatched - a.dispatched) * stages + int(
            b.ints[:, 2].sum() - a.ints[:, 2].sum()
        )
        return q * stages / progress

    def _period(self, a: Snapshot, b: Snapshot) -> np.ndarray:
        """The time and the GPU-wide totals (every pipe's busy time summed) from a to b."""
        n_sms = len(self.gpu.sms)
        delta = b.totals - a.totals
        return np.concatenate([[b.now - a.now, delta[:n_sms].sum()], delta[n_sms:]])

    def _wave_room(self, b: Snapshot, c: Snapshot, q: int) -> int:
        """Waves that can be skipped: every task from the oldest one running in the wave
        b -> c to the last the skip covers runs alike, and KEEP_WAVES waves are left."""
        signature = self._tasks_signature()
        lo = int(b.ints[:, 1].min())
        most = (len(signature) - c.dispatched) // q - KEEP_WAVES
        if most < MIN_PERIODS:
            return 0
        span = signature[lo : c.dispatched + most * q]
        if not span.size:
            return 0
        differs = np.flatnonzero(span != span[0])
        if differs.size:
            most = min(most, (lo + int(differs[0]) - c.dispatched) // q)
        return most

    def _skip_waves(self, a: Snapshot, b: Snapshot, c: Snapshot, periods: int, q: int) -> None:
        gpu = self.gpu
        # A period moves every CTA q tasks on; the waves seen (a -> c) may have moved the
        # CTAs a little further or less far into their tasks (the reference's phase among
        # the slots drifts), so one period's time and totals are those of a -> c scaled
        # to exactly q tasks' worth of stages.
        stages = gpu.tasks[c.ref_task].end_stage - gpu.tasks[c.ref_task].first_stage
        scale = self._per_wave(a, c, q, stages)
        cycles = (c.now - a.now) * scale
        shift = periods * q
        active = np.array([run.task.index for run in gpu.runs], dtype=np.int64)
        for run in gpu.runs:
            i = run.task.index
            # The CTA being replaced started here; its end is its replacement's, shifted.
            gpu.cta_sm[i], gpu.cta_slot[i], gpu.cta_start[i] = run.sm.index, run.slot, run.start
            task = gpu.tasks[i + shift]
            run.task, run.stages = task, gpu.stages.of_task(task)
            run.start += periods * cycles
        self._task_jumps.append((periods, q, cycles, c.dispatched, active))
        gpu.dispatcher.next_index += shift
        mean = (c.totals - a.totals) * scale
        self._jump(
            c.totals - mean,
            c.totals,
            cycles,
            periods,
            b,
            c,
            Moved(tasks=q, stages=None),
        )
        self.skips.append(("wave", periods, q, cycles))
        self.stage_history.clear()
        self.own_history.clear()
        self.wave_history.clear()

    # -- skipping ----------------------------------------------------------------------------
    def _jump(self, before, after, cycles, periods, b, c, moved: Moved) -> None:
        """Add `periods` periods of `cycles` each and of the totals `after - before`, and
        rebuild the L2 from the period b -> c."""
        gpu, memory = self.gpu, self.gpu.memory
        delta = (after - before) * periods
        for sm, busy in zip(gpu.sms, delta[: len(gpu.sms)].tolist(), strict=True):
            sm.math.busy_cycles += busy
        l2_busy, dram_busy, l2_bytes, dram_bytes, requested, missed = delta[len(gpu.sms) :]
        memory.l2.busy_cycles += l2_busy
        memory.dram.busy_cycles += dram_busy
        memory.l2.bytes_moved += l2_bytes
        memory.dram.bytes_moved += dram_bytes
        self._replay_l2(b, c, periods, moved)
        cache = memory.l2_cache
        cache.requested_bytes += requested
        cache.miss_bytes += missed
        gpu.skipped_cycles += periods * cycles

    def _last_uses(self, b: Snapshot, c: Snapshot, periods: int, moved: Moved) -> dict:
        """Walk the stretch (`periods` copies of the period b -> c, copy k moved by
        `moved`) back from its end until an L2's worth of distinct bytes is seen. Returns
        chunk key -> [row mask (None: a stored tile), bytes per row (the tile's bytes)],
        latest use first."""
        gpu = self.gpu
        tasks, tile_stages = gpu.tasks, gpu.stages.of_tile
        enough = gpu.memory.l2_cache.capacity_bytes
        period = self._period_log(b, c)
        last_use: dict[int, list] = {}  # insertion order: latest use first
        lookup = last_use.get
        seen_bytes = 0.0
        geometry: dict[int, tuple] = {}  # task index -> what the walk needs of it
        for k in range(periods, 0, -1):
            task_shift = k * moved.tasks
            for store, index, pos in reversed(period):
                if moved.stages is not None:
                    pos += k * moved.stages[index]
                index += task_shift
                g = geometry.get(index)
                if g is None:
                    task = tasks[index]
                    g = geometry[index] = (
                        tile_stages(task.tile),
                        task.first_stage,
                        task.act_chunk_base,
                        task.act_row_bytes,
                        ELEMENT_BYTES * task.out_elements,
                    )
                stages, first, base, row_bytes, out_bytes = g
                if store:
                    key = OUTPUT_KEY_BASE + index
                    if key not in last_use:
                        last_use[key] = [None, out_bytes]
                        seen_bytes += out_bytes
                    continue
                stage = stages[first + pos]
                # The chunks LoadPath.touch shows the policy: the weight stage, whole, and
                # the activation rows of the token block.
                key = stage.weight_key
                if key not in last_use:
                    last_use[key] = [1, stage.weight_bytes]
                    seen_bytes += stage.weight_bytes
                for chunk, mask in stage.act_chunks:
                    entry = lookup(base + chunk)
                    if entry is None:
                        last_use[base + chunk] = [mask, row_bytes]
                        seen_bytes += mask.bit_count() * row_bytes
                    elif mask & ~entry[0]:
                        seen_bytes += (mask & ~entry[0]).bit_count() * row_bytes
                        entry[0] |= mask
            if seen_bytes >= enough:
                break
        return last_use

    def _replay_l2(self, b: Snapshot, c: Snapshot, periods: int, moved: Moved) -> None:
        """Touch the L2 with the loads and stores of the skipped stretch that it still
        holds at the end (`_last_uses` up to an L2's worth of distinct bytes), so its
        contents are what the stretch left; no totals change. The stretch is `periods`
        copies of the period b -> c, copy k moved k times by `moved`."""
        cache = self.gpu.memory.l2_cache
        last_use = self._last_uses(b, c, periods, moved)
        requested, missed = cache.requested_bytes, cache.miss_bytes
        pending = cache.pending_writeback
        for key, (mask, size) in reversed(last_use.items()):
            if mask is None:
                cache.store(key, size)
            else:
                cache.access(key, mask, size)
        # The replayed stretch's requests, misses and write-backs are in the skip's totals.
        cache.requested_bytes, cache.miss_bytes = requested, missed
        cache.pending_writeback = pending

    # -- equivalence of stages and tasks -----------------------------------------------------
    def _stages_of(self, tile: int) -> np.ndarray:
        """int64 [stages of `tile`]: equal ids for stages that load and compute alike."""
        signature = self._stage_signature.get(tile)
        if signature is None:
            ids = self._stage_ids
            keys = []
            for stage in self.gpu.stages.of_tile(tile):
                first = stage.act_chunks[0][0] if stage.act_chunks else 0
                shape = tuple((chunk - first, mask) for chunk, mask in stage.act_chunks)
                keys.append((stage.math_cycles, stage.weight_bytes, stage.act_rows, shape))
            signature = np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
            self._stage_signature[tile] = signature
        return signature

    def _tasks_signature(self) -> np.ndarray:
        """int64 [tasks]: equal ids for tasks that run alike (same stages, same geometry)."""
        if self._task_signature is None:
            tiles: dict[int, int] = {}
            ids: dict[tuple, int] = {}
            out = np.empty(len(self.gpu.tasks), dtype=np.int64)
            for i, task in enumerate(self.gpu.tasks):
                tile_id = tiles.get(task.tile)
                if tile_id is None:
                    tile_id = tiles[task.tile] = ids.setdefault(
                        ("tile", self._stages_of(task.tile).tobytes()), len(ids)
                    )
                key = (
                    tile_id,
                    task.first_stage,
                    task.end_stage,
                    task.split,
                    task.act_row_bytes,
                    task.out_elements,
                )
                out[i] = ids.setdefault(key, len(ids))
            self._task_signature = out
        return self._task_signature

    # -- the end -----------------------------------------------------------------------------
    def finish(self) -> None:
        """Fill in the CTAs the task skips jumped over, latest skip first (an earlier
        skip's CTAs may end in a later one's)."""
        gpu = self.gpu
        sm, slot, start, end = gpu.cta_sm, gpu.cta_slot, gpu.cta_start, gpu.cta_end
        for periods, q, cycles, dispatched, active in reversed(self._task_jumps):
            shift = periods * q
            end[active] = end[active + shift] - periods * cycles
            skipped = np.arange(dispatched, dispatched + shift)
            skipped = skipped[~np.isin(skipped, active + shift)]
            back = (skipped - dispatched) // q + 1  # periods to a CTA that ran
            source = skipped - back * q
            sm[skipped], slot[skipped] = sm[source], slot[source]
            start[skipped] = start[source] + back * cycles
            end[skipped] = end[source] + back * cycles
