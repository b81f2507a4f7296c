"""The memory system of the model: bandwidth servers, an L2 policy and the load paths.

Covers
------
`MemorySystem` (the GPU-wide part: L2 and DRAM bandwidth servers, the L2 residency
policy, the trip latencies), the L2 policies (`L2Policy`, today's `LruL2`, chosen by the
`Hardware.l2_policy` field through `L2_POLICIES`) and the load paths a CTA uses to bring a
stage into shared memory (`CpAsyncLoads`, `RegisterStagedLoads`, chosen by
`load_path_for`). A new mechanism is a new class beside these: a TMA load path is a
`LoadPath`, another replacement rule an `L2Policy` added to `L2_POLICIES`.

Bandwidth server
----------------
DRAM and L2 each move at most `bytes_per_cycle` for the whole GPU. A request of B bytes
made at time t waits for the requests before it, then occupies the server for
B / bytes_per_cycle cycles (first come, first served). Requests from all SMs share the
one server, so when more bytes are asked for than it can move, every load sees a longer
queue - that is bandwidth contention. The fixed latency of the trip (a pointer-chase
figure) is added on top; it overlaps with other requests' service, so many loads in
flight hide it and few do not.

The server is *analytic*: `serve` returns the completion time at once instead of
queueing a SimPy event. That is exact for a FIFO queue whose requests arrive in time
order, which is how the CTAs call it, and costs no event per request.

L2 residency (policy "lru")
---------------------------
Whether a load hits in L2 decides whether it also costs DRAM bandwidth. `LruL2` keeps an
LRU list (capacity `l2_bytes`) of *chunks*:

- activation chunk (token block b, 64 consecutive rows of X.T): 64 rows of up to bn
  tokens. Residency is tracked per row with a 64-bit mask, because a tw/tvw gather or an
  ew union reads scattered rows: a row is a hit only if that very row was loaded before
  and its chunk has not been evicted since.
- weight chunk (tile t, stage s): one stage of one weight tile, all or nothing.

A CTA's stage touches its chunks; bytes not resident are misses, fetched from DRAM and
then resident. CTAs that run at the same time and share an activation block or a weight
tile therefore hit in L2 - the reuse a GEMM's tiling relies on. Stores (the output)
are not inserted: they stream out and are not read again by the kernel, and their bytes
go to DRAM when they are stored (write-through).

L2 residency (policy "lru-writeback")
-------------------------------------
The same LRU, with the output tiles *written back*: a store inserts its tile into L2 as a
dirty line (taking capacity from the inputs), and its bytes go to DRAM only when that
line is evicted; dirty lines still resident when the kernel ends are not the kernel's
DRAM traffic. This is what Nsight Compute saw on an H200 (traces/measured/h200-20261201/):
BERT FFN1 (4096 x 3072 x 768) wrote a 25 MB output with 0-2.5 MB of DRAM writes during
the kernel, so the write-through rule counted 2.7-3.7x the DRAM bytes there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, ClassVar

from tvwsim.errors import InputError
from tvwsim.schedule import ELEMENT_BYTES

if TYPE_CHECKING:
    from tvwsim.sim.hardware import Hardware
    from tvwsim.sim.stages import CtaTask, Stage

    from tvwsim.config import KernelConfig

SPLIT_WORKSPACE_BYTES = 4
"""fp32 partial sums in the split-K workspace."""


class BandwidthServer:
    """A first-come-first-served pipe of `bytes_per_cycle` (whole GPU)."""

    __slots__ = ("name", "bytes_per_cycle", "free_at", "busy_cycles", "bytes_moved")

    def __init__(self, name: str, bytes_per_cycle: float):
        if bytes_per_cycle <= 0:
            raise ValueError(f"{name}: bytes_per_cycle must be > 0")
        self.name = name
        self.bytes_per_cycle = float(bytes_per_cycle)
        self.free_at = 0.0
        """Time the last accepted request finishes its service."""
        self.busy_cycles = 0.0
        """Total service time: utilisation = busy_cycles / elapsed."""
        self.bytes_moved = 0.0

    def serve(self, now: float, nbytes: float) -> float:
        """Accept `nbytes` at time `now` (non-decreasing across calls); return when done."""
        start = self.free_at if self.free_at > now else now
        service = nbytes / self.bytes_per_cycle
        self.free_at = start + service
        self.busy_cycles += service
        self.bytes_moved += nbytes
        return self.free_at


class L2Policy:
    """What the L2 keeps, and so which bytes of a load miss (base of the L2 policies).

    A policy sees every load's chunks through `access` and every output tile through
    `store`. Subclasses set `name` (the `Hardware.l2_policy` value that picks them) and
    implement `access`; add them to `L2_POLICIES`. By default a store is write-through:
    not inserted, all of its bytes to DRAM at once.
    """

    __slots__ = ("capacity_bytes", "requested_bytes", "miss_bytes", "pending_writeback")
    name: ClassVar[str] = ""

    def __init__(self, capacity_bytes: float):
        self.capacity_bytes = float(capacity_bytes)
        self.requested_bytes = 0.0
        """Bytes loads asked for (hit or miss)."""
        self.miss_bytes = 0.0
        """Bytes that were not resident: they come from DRAM."""
        self.pending_writeback = 0.0
        """Dirty bytes evicted since the memory system last sent them to DRAM."""

    def access(self, key: int, mask: int, row_bytes: float) -> float:
        """Touch rows `mask` of chunk `key` (each `row_bytes`); return the missed bytes."""
        raise NotImplementedError

    def store(self, key: int, nbytes: float) -> float:
        """An output tile of `nbytes` stored under `key`; return the bytes that go to DRAM
        now (write-through: all of them). Evicted dirty bytes go to `pending_writeback`."""
        return nbytes

    def take_writeback(self) -> float:
        """The dirty bytes evicted since the last call (the memory system sends them)."""
        nbytes, self.pending_writeback = self.pending_writeback, 0.0
        return nbytes

    @property
    def hit_rate(self) -> float:
        """Fraction of requested bytes that were resident."""
        if self.requested_bytes <= 0:
            return 0.0
        return 1.0 - self.miss_bytes / self.requested_bytes


class LruL2(L2Policy):
    """LRU residency of chunks with per-row masks (see the module docstring)."""

    __slots__ = ("lines", "resident_bytes")
    name = "lru"

    def __init__(self, capacity_bytes: float):
        super().__init__(capacity_bytes)
        self.lines: OrderedDict[int, list] = OrderedDict()
        """chunk key -> [row mask, resident bytes, dirty bytes], least recently used first
        (dirty: a written-back output tile not yet in DRAM; 0 for loaded data)."""
        self.resident_bytes = 0.0

    def access(self, key: int, mask: int, row_bytes: float) -> float:
        """Touch rows `mask` of chunk `key` (each `row_bytes`); return the missed bytes."""
        lines = self.lines
        entry = lines.get(key)
        self.requested_bytes += mask.bit_count() * row_bytes
        if entry is None:
            missing = mask
        else:
            lines.move_to_end(key)
            missing = mask & ~entry[0]
            if not missing:
                return 0.0
        missed = missing.bit_count() * row_bytes
        if entry is None:
            lines[key] = [mask, missed, 0.0]
        else:
            entry[0] |= mask
            entry[1] += missed
        self.resident_bytes += missed
        self.miss_bytes += missed
        if self.resident_bytes > self.capacity_bytes:  # hot path: no call while L2 has room
            self._evict()
        return missed

    def _evict(self) -> None:
        """Evict least recently used chunks down to capacity; never the one just touched.
        A dirty line (a written-back output) leaves its dirty bytes to DRAM."""
        lines = self.lines
        while self.resident_bytes > self.capacity_bytes and len(lines) > 1:
            _, old = lines.popitem(last=False)
            self.resident_bytes -= old[1]
            self.pending_writeback += old[2]


class WriteBackLruL2(LruL2):
    """LRU residency with write-back outputs (see the module docstring)."""

    __slots__ = ()
    name = "lru-writeback"

    def store(self, key: int, nbytes: float) -> float:
        """Insert the output tile as a dirty line; nothing goes to DRAM until it is evicted."""
        entry = self.lines.get(key)
        if entry is None:
            self.lines[key] = [0, nbytes, nbytes]
            self.resident_bytes += nbytes
        else:  # the same tile stored again: still one dirty copy
            self.lines.move_to_end(key)
        self._evict()
        return 0.0


L2_POLICIES: dict[str, type[L2Policy]] = {LruL2.name: LruL2, WriteBackLruL2.name: WriteBackLruL2}
"""L2 policies by the name `Hardware.l2_policy` uses."""


def l2_policy(name: str) -> type[L2Policy]:
    """The L2 policy class called `name`, or InputError('l2_policy')."""
    policy = L2_POLICIES.get(name)
    if policy is None:
        known = ", ".join(sorted(L2_POLICIES))
        raise InputError("l2_policy", f"unknown L2 policy {name!r}; known: {known}")
    return policy


OUTPUT_KEY_BASE = 1 << 62
"""L2 keys of output tiles: OUTPUT_KEY_BASE + CTA index, apart from the activation chunks
(small non-negative keys) and the weight stages (negative keys)."""


class MemorySystem:
    """What all SMs share: the L2 and DRAM bandwidth servers, the L2 policy, the latencies."""

    def __init__(self, hw: Hardware, policy: type[L2Policy] | None = None):
        self.l2 = BandwidthServer("L2", hw.l2_bytes_per_cycle * hw.l2_efficiency)
        self.dram = BandwidthServer("DRAM", hw.dram_bytes_per_cycle * hw.dram_efficiency)
        self.l2_cache = (policy or l2_policy(hw.l2_policy))(hw.l2_bytes)
        self.l2_latency = float(hw.l2_latency_cycles)
        self.dram_latency = float(hw.dram_latency_cycles)

    def write_tile(self, task: CtaTask, now: float) -> float:
        """The epilogue's stores issued at `now`; return when L2 has accepted them."""
        if task.split:
            # red.global.add.f32: read-modify-write of fp32 partial sums at L2.
            return self.l2.serve(now, 2 * SPLIT_WORKSPACE_BYTES * task.out_elements)
        nbytes = ELEMENT_BYTES * task.out_elements
        cache = self.l2_cache
        to_dram = cache.store(OUTPUT_KEY_BASE + task.index, nbytes) + cache.take_writeback()
        if to_dram:
            self.dram.serve(now, to_dram)  # queued, never waited for
        return self.l2.serve(now, nbytes)

    def split_k_passes(self, elements: int) -> tuple[float, float]:
        """Cycles and DRAM bytes of zero-filling `elements` fp32 workspace sums before the
        launch and converting them to fp16 after it (two streaming passes, serial)."""
        # zero-fill: write fp32; convert: read fp32, write fp16.
        nbytes = elements * (SPLIT_WORKSPACE_BYTES + SPLIT_WORKSPACE_BYTES + ELEMENT_BYTES)
        return nbytes / self.dram.bytes_per_cycle + 2 * self.dram_latency, float(nbytes)


class LoadPath:
    """How a CTA brings a stage into shared memory, and how many loads it keeps in flight.

    Subclasses say how many (`stages_in_flight`); `load` is the trip through the memory
    system, which a path that moves data differently (a TMA multicast, say) overrides.
    """

    __slots__ = ("l2", "dram", "l2_cache", "l2_latency", "dram_latency", "depth")

    def __init__(self, memory: MemorySystem, config: KernelConfig):
        # The memory system's parts, held directly: `load` runs once per stage.
        self.l2, self.dram, self.l2_cache = memory.l2, memory.dram, memory.l2_cache
        self.l2_latency, self.dram_latency = memory.l2_latency, memory.dram_latency
        self.depth = self.stages_in_flight(config)
        """Stage loads a CTA has outstanding: its prologue issues this many."""

    @staticmethod
    def stages_in_flight(config: KernelConfig) -> int:
        raise NotImplementedError

    def load(self, stage: Stage, task: CtaTask, now: float) -> float:
        """Issue `stage`'s loads for `task` at `now`; return when the data has arrived.

        All bytes pass the L2 server, the misses also the DRAM server; the data is there
        when both are done plus the trip latency (a DRAM one if anything missed).
        """
        cache = self.l2_cache
        missed = self.touch(stage, task)
        if cache.pending_writeback:  # dirty outputs these misses evicted go out first
            self.dram.serve(now, cache.take_writeback())
        arrived = self.l2.serve(now, stage.act_rows * task.act_row_bytes + stage.weight_bytes)
        if missed > 0:
            from_dram = self.dram.serve(now, missed)
            if from_dram > arrived:
                arrived = from_dram
            return arrived + self.dram_latency
        return arrived + self.l2_latency

    def touch(self, stage: Stage, task: CtaTask) -> float:
        """Show the L2 policy the chunks `stage`'s loads read for `task`; return the
        missed bytes. (The fast-forward's L2 replay, `tvwsim.sim.steady`, walks the same
        chunks; a path that overrides this runs on the exact engine.)"""
        cache = self.l2_cache
        row_bytes = task.act_row_bytes
        base = task.act_chunk_base
        missed = cache.access(stage.weight_key, 1, stage.weight_bytes)
        for chunk, mask in stage.act_chunks:
            missed += cache.access(base + chunk, mask, row_bytes)
        return missed


class CpAsyncLoads(LoadPath):
    """cp.async (sm_80+): global -> shared copies that need no registers, so all buffers
    but the one being computed are in flight (`stages - 1`)."""

    __slots__ = ()

    @staticmethod
    def stages_in_flight(config: KernelConfig) -> int:
        return config.stages - 1


class RegisterStagedLoads(LoadPath):
    """No cp.async (Volta): a load lands in registers and is stored to shared memory
    before the next is issued, so one stage is in flight whatever `stages` says."""

    __slots__ = ()

    @staticmethod
    def stages_in_flight(config: KernelConfig) -> int:
        return 1


def load_path_for(hw: Hardware) -> type[LoadPath]:
    """The load path the kernels use on `hw`."""
    return CpAsyncLoads if hw.has_cp_async else RegisterStagedLoads
