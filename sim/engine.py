"""The engine: a SimPy model of one GEMM kernel launch, counted in SM clock cycles.

The scenario, as a CTA lives it
-------------------------------
A launch starts after a fixed launch overhead. Every SM has `ctas_per_sm` resident
slots (`tvwsim.sim.occupancy`). A dispatcher hands the schedule's tasks to slots in schedule
order, breadth-first over the SMs at the start (slot 0 of every SM, then slot 1, ...)
and afterwards to whichever slot frees up first. A CTA then

1. *prologue*: issues the loads of its first `depth` pipeline stages
   (`depth = stages - 1` with cp.async; 1 without it, where a load has to land in
   registers before the next one can be issued);
2. *main loop*, per K step s: waits until stage s has arrived and its own previous
   stage has been computed; issues the load of stage s + depth (the buffer just freed);
   and queues stage s on its SM's math pipe (tensor cores, or CUDA cores for ew),
   which it shares first-come-first-served with the other CTAs resident on that SM;
3. *epilogue*: after its last stage is computed, stores its output tile (fp16 through
   L2 to DRAM; an fp32 red.global.add into the split-K workspace at L2 for a split
   piece), pays `cta_fixed_cycles` of bookkeeping and frees its slot.

A stage load is the gathered activation rows (bk rows of the token block) plus the weight
tile's stage (values, metadata, indices). Its bytes go through the L2 bandwidth server;
those that miss the L2 residency model also through the DRAM server; it arrives after
the queueing of both plus the L2 or DRAM latency (`tvwsim.sim.memory`). Math time of a stage is
`max(FLOPs / (rate x efficiency), shared-memory bytes / shared-memory bandwidth)`: the
mma rate (dense or sparse) or, on a GPU without sparse tensor cores, the dense rate for
the 2:4 kernel's logical work; partial edge tiles, padding and absent bw blocks cost a
full stage. The shared-memory bytes are the stage's fill plus the warps' fragment reads.

Granularity is the pipeline stage: one SimPy timeout per stage and CTA, plus two for the
epilogue. Loads and math are reserved analytically on FIFO servers at the moment they are
issued (the moment of issue is exact; the servers see requests in time order), so a
stage costs one event, not one per resource. Nothing depends on wall-clock time or
unseeded randomness: equal inputs give equal cycles.

Split-K schedules add two bandwidth-bound passes, counted serially: zero-filling the
fp32 workspace rows of split tiles before the launch and converting them to fp16 after
it (their own launch overhead is not counted: a real implementation fuses or graphs
them).

`simulate` caches results keyed on (schedule digest, hardware, kernel resources), so
identical layers of a network are simulated once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
import simpy
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.memory import BandwidthServer, L2Cache
from tvwsim.sim.occupancy import KernelResources, Occupancy, occupancy, resources_for
from tvwsim.sim.result import SimResult

from tvwsim.errors import InputError
from tvwsim.schedule import ELEMENT_BYTES, Schedule

ACT_CHUNK_ROWS = 64
"""Activation rows per L2 residency chunk (one 64-bit row mask)."""
SPLIT_WORKSPACE_BYTES = 4
"""fp32 partial sums in the split-K workspace."""

_CACHE_SIZE = 256
_cache: OrderedDict[tuple, SimResult] = OrderedDict()


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
) -> SimResult:
    """Simulate one launch of `schedule` on `hw` and return its `SimResult`.

    `resources` (registers, shared memory per CTA) default to the compiled kernel's,
    read from the kernel manifest (`manifest`, default: the kernel directory's) when
    it lists this kernel for the hardware's arch, else to an estimate from the config.
    A kernel that does not fit on an SM raises InputError('tile').
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a tvwsim.schedule.Schedule, got {type(schedule)}")
    if not isinstance(hw, Hardware):
        raise InputError("hw", f"must be a tvwsim.sim.hardware.Hardware, got {type(hw)}")
    if resources is None:
        resources = resources_for(hw, schedule.pattern, schedule.config, manifest)
    occ = occupancy(hw, resources)
    key = (schedule.digest(), hw, resources)
    if cache and key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    result = _Launch(schedule, hw, resources, occ).run()
    if cache:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def stage_smem_bytes(schedule: Schedule) -> float:
    """Shared-memory bytes one tensor-core stage moves: the fill by the stage's loads plus
    every warp's fragment reads (a warp reads the A rows of its warp row and the B
    columns of its warp column, so A is read warps_n times and B warps_m times)."""
    c = schedule.config
    warps_m, warps_n = c.warp_grid  # the split the kernel is compiled with
    fill = c.weight_stage_bytes + c.activation_stage_bytes
    return fill + warps_n * c.weight_stage_bytes + warps_m * c.activation_stage_bytes


class _Launch:
    """One kernel launch in a SimPy environment (see the module docstring)."""

    def __init__(
        self, schedule: Schedule, hw: Hardware, resources: KernelResources, occ: Occupancy
    ):
        self.schedule, self.hw, self.resources, self.occ = schedule, hw, resources, occ
        self.work = schedule.work
        config = schedule.config
        self.bk = config.bk
        self.depth = config.stages - 1 if hw.has_cp_async else 1
        self.fixed_cycles = float(hw.cta_fixed_cycles)
        self.l2_latency = float(hw.l2_latency_cycles)
        self.dram_latency = float(hw.dram_latency_cycles)
        self.l2 = BandwidthServer("L2", hw.l2_bytes_per_cycle * hw.l2_efficiency)
        self.dram = BandwidthServer("DRAM", hw.dram_bytes_per_cycle * hw.dram_efficiency)
        self.cache = L2Cache(hw.l2_bytes)

        # Per token block: valid tokens and the bytes of one X.T row segment.
        blocks = schedule.act_blocks
        self.tokens = [min(config.bn, schedule.m - b * config.bn) for b in range(blocks)]
        self.row_bytes = [float(t * ELEMENT_BYTES) for t in self.tokens]
        self.n_chunks = -(-schedule.k // ACT_CHUNK_ROWS) + 1

        self.holds = self._stage_holds()
        self._stages: dict[int, list] = {}

        self.tasks = [tuple(int(v) for v in row) for row in schedule.tasks]
        whole = self.work.k_lengths[schedule.tasks[:, 0]] if schedule.n_tasks else []
        self.split = [
            bool(k0 != 0 or k1 != w)
            for (_, _, k0, k1), w in zip(self.tasks, np.asarray(whole).tolist(), strict=True)
        ]
        self.out_rows = self.work.out_rows.tolist()
        n = len(self.tasks)
        self.cta_sm = np.full(n, -1, dtype=np.int32)
        self.cta_slot = np.full(n, -1, dtype=np.int32)
        self.cta_start = np.zeros(n)
        self.cta_end = np.zeros(n)
        self.next_task = 0
        self.sm_free = [0.0] * hw.sm_count
        self.compute_busy = 0.0
        self.events = 0

    # -- physics helpers -------------------------------------------------------------------
    def _stage_holds(self) -> np.ndarray:
        """Math-pipe cycles of every stage: max(math time, shared-memory time)."""
        hw, work, config = self.hw, self.work, self.schedule.config
        flops = work.stage_flops
        if work.compute_unit == "cuda":
            rate = hw.cuda_core_flops_per_clk_per_sm * hw.mma_efficiency_dense
            # Each FMA reads one activation element (2 B) from shared memory; the stage's
            # rows are staged there first.
            smem = flops / 2 * ELEMENT_BYTES + config.activation_stage_bytes
        else:
            if config.mma == "sparse" and hw.has_sparse_tensor_cores:
                rate = hw.sparse_flops_per_clk_per_sm * hw.mma_efficiency_sparse
            else:
                # No sparse tensor core: the 2:4 kernel's logical work runs densely.
                rate = hw.dense_flops_per_clk_per_sm * hw.mma_efficiency_dense
            smem = np.full(flops.shape, stage_smem_bytes(self.schedule))
        return np.maximum(flops / rate, smem / hw.smem_bytes_per_clk_per_sm)

    def _stages_of(self, tile: int) -> list:
        """Per stage of `tile`: (activation chunks, rows, weight key, weight bytes, hold).

        Activation chunks are (chunk index, 64-bit row mask) pairs of the X.T rows the
        stage gathers; built once per tile with numpy and kept.
        """
        cached = self._stages.get(tile)
        if cached is not None:
            return cached
        work, bk = self.work, self.bk
        a0, a1 = int(work.act_ptr[tile]), int(work.act_ptr[tile + 1])
        p0, p1 = int(work.stage_ptr[tile]), int(work.stage_ptr[tile + 1])
        rows = work.act_rows[a0:a1].astype(np.int64)
        position = np.flatnonzero(rows >= 0)
        valid = rows[position]
        stage_of = position // bk
        n_stages = p1 - p0
        chunks: list[list] = [[] for _ in range(n_stages)]
        n_rows = np.bincount(stage_of, minlength=n_stages).tolist()
        if valid.size:
            combo = stage_of * self.n_chunks + (valid >> 6)
            starts = np.concatenate([[0], np.flatnonzero(np.diff(combo)) + 1])
            bits = np.left_shift(np.uint64(1), (valid & 63).astype(np.uint64))
            masks = np.bitwise_or.reduceat(bits, starts).tolist()
            for c, mask in zip(combo[starts].tolist(), masks, strict=True):
                chunks[c // self.n_chunks].append((c % self.n_chunks, int(mask)))
        weight_bytes = work.stage_weight_bytes[p0:p1].tolist()
        holds = self.holds[p0:p1].tolist()
        stages = [
            (tuple(chunks[s]), n_rows[s], -1 - (p0 + s), weight_bytes[s], holds[s])
            for s in range(n_stages)
        ]
        self._stages[tile] = stages
        return stages

    def _load(self, stage: tuple, block: int, now: float) -> float:
        """Issue one stage's loads at `now`; return the time its data has arrived."""
        chunks, n_rows, weight_key, weight_bytes, _ = stage
        cache = self.cache
        row_bytes = self.row_bytes[block]
        base = block * self.n_chunks
        missed = cache.access(weight_key, 1, weight_bytes)
        for chunk, mask in chunks:
            missed += cache.access(base + chunk, mask, row_bytes)
        arrived = self.l2.serve(now, n_rows * row_bytes + weight_bytes)
        if missed > 0:
            from_dram = self.dram.serve(now, missed)
            if from_dram > arrived:
                arrived = from_dram
            return arrived + self.dram_latency
        return arrived + self.l2_latency

    def _store(self, tile: int, block: int, split: bool, now: float) -> float:
        """Issue the epilogue's stores at `now`; return when L2 has accepted them."""
        elements = self.out_rows[tile] * self.tokens[block]
        if split:
            # red.global.add.f32: read-modify-write of fp32 partial sums at L2.
            return self.l2.serve(now, 2 * SPLIT_WORKSPACE_BYTES * elements)
        nbytes = ELEMENT_BYTES * elements
        self.dram.serve(now, nbytes)  # written back to DRAM eventually
        return self.l2.serve(now, nbytes)

    # -- the actors --------------------------------------------------------------------------
    def _slot(self, sm: int, slot: int):
        """One resident-CTA slot of an SM: runs tasks, in schedule order, until none is left."""
        env = self.env
        timeout = env.timeout
        bk, depth = self.bk, self.depth
        sm_free = self.sm_free
        n_tasks = len(self.tasks)
        while self.next_task < n_tasks:
            i = self.next_task
            self.next_task = i + 1
            tile, block, k_begin, k_end = self.tasks[i]
            stages = self._stages_of(tile)
            first, last = k_begin // bk, k_end // bk
            start = env.now

            # Prologue: the first `depth` stages' loads go out together.
            pending: deque[float] = deque()
            issued = first
            while issued < last and issued < first + depth:
                pending.append(self._load(stages[issued], block, start))
                issued += 1

            # Main loop: wait for stage s, refill the freed buffer, queue the math.
            math_done = start
            for s in range(first, last):
                ready = pending.popleft()
                if math_done > ready:
                    ready = math_done
                if ready > env.now:
                    self.events += 1
                    yield timeout(ready - env.now)
                now = env.now
                if issued < last:
                    pending.append(self._load(stages[issued], block, now))
                    issued += 1
                hold = stages[s][4]
                begin = sm_free[sm] if sm_free[sm] > now else now
                math_done = begin + hold
                sm_free[sm] = math_done
                self.compute_busy += hold

            # Epilogue: store the tile, then the fixed per-CTA cost.
            if math_done > env.now:
                self.events += 1
                yield timeout(math_done - env.now)
            stored = self._store(tile, block, self.split[i], env.now)
            self.events += 1
            yield timeout(stored + self.fixed_cycles - env.now)
            self.cta_sm[i], self.cta_slot[i] = sm, slot
            self.cta_start[i], self.cta_end[i] = start, env.now

    def run(self) -> SimResult:
        hw, schedule, work = self.hw, self.schedule, self.work
        self.env = simpy.Environment()
        slots = self.occ.ctas_per_sm
        # Breadth-first: slot 0 of every SM takes the first tasks, then slot 1, ...
        for slot in range(slots):
            for sm in range(hw.sm_count):
                self.env.process(self._slot(sm, slot))
        self.env.run()
        self.events += slots * hw.sm_count
        kernel_cycles = float(self.cta_end.max()) if len(self.tasks) else 0.0

        # Tail: the first moment an SM that had work ran out of it for good.
        used = self.cta_sm >= 0
        last_end = np.full(hw.sm_count, -np.inf)
        np.maximum.at(last_end, self.cta_sm[used], self.cta_end[used])
        last_end = last_end[np.isfinite(last_end)]
        tail_start = float(last_end.min()) if last_end.size else 0.0

        reduction_cycles, reduction_bytes = self._split_passes()
        launch_cycles = hw.launch_overhead_us * hw.clock_mhz
        slots_total = hw.sm_count * slots
        return SimResult(
            hardware=hw.name,
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
            waves=-(-len(self.tasks) // slots_total),
            sm_count=hw.sm_count,
            compute_busy_cycles=self.compute_busy,
            l2_busy_cycles=self.l2.busy_cycles,
            dram_busy_cycles=self.dram.busy_cycles,
            l2_bytes=self.l2.bytes_moved,
            dram_bytes=self.dram.bytes_moved + reduction_bytes,
            l2_hit_rate=self.cache.hit_rate,
            tail_start_cycles=tail_start,
            events=self.events,
            cta_sm=self.cta_sm,
            cta_slot=self.cta_slot,
            cta_start_cycles=self.cta_start,
            cta_end_cycles=self.cta_end,
            cta_tile=np.asarray(schedule.tasks[:, 0], dtype=np.int32),
        )

    def _split_passes(self) -> tuple[float, float]:
        """Cycles and DRAM bytes of the split-K zero-fill and fp32 -> fp16 passes."""
        pairs = {(t, b) for (t, b, _, _), s in zip(self.tasks, self.split, strict=True) if s}
        if not pairs:
            return 0.0, 0.0
        elements = sum(self.out_rows[t] * self.tokens[b] for t, b in sorted(pairs))
        # zero-fill: write fp32; convert: read fp32, write fp16.
        nbytes = elements * (SPLIT_WORKSPACE_BYTES + SPLIT_WORKSPACE_BYTES + ELEMENT_BYTES)
        rate = self.hw.dram_bytes_per_cycle * self.hw.dram_efficiency
        return nbytes / rate + 2 * self.dram_latency, float(nbytes)
