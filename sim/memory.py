"""The memory system of the model: bandwidth servers and an L2 residency model.

Two small pieces of physics, kept apart from the engine so each can be read (and
tested) on its own.

Bandwidth server
----------------
DRAM and L2 each move at most `bytes_per_cycle` for the whole GPU. A request of B bytes
made at time t waits for the requests before it, then occupies the server for
B / bytes_per_cycle cycles (first come, first served). Requests from all SMs share the
one server, so when more bytes are asked for than it can move, every load sees a longer
queue - that is bandwidth contention. The fixed latency of the trip (a pointer-chase
figure) is added on top by the caller; it overlaps with other requests' service, so many
loads in flight hide it and few do not.

The server is *analytic*: `serve` returns the completion time at once instead of
queueing a SimPy event. That is exact for a FIFO queue whose requests arrive in time
order, which is how the engine calls it, and costs no event per request.

L2 residency
------------
Whether a load hits in L2 decides whether it also costs DRAM bandwidth. The model keeps
an LRU list (capacity `l2_bytes`) of *chunks*:

- activation chunk (token block b, 64 consecutive rows of X.T): 64 rows of up to bn
  tokens. Residency is tracked per row with a 64-bit mask, because a tw/tvw gather or an
  ew union reads scattered rows: a row is a hit only if that very row was loaded before
  and its chunk has not been evicted since.
- weight chunk (tile t, stage s): one stage of one weight tile, all or nothing.

A CTA's stage touches its chunks; bytes not resident are misses, fetched from DRAM and
then resident. CTAs that run at the same time and share an activation block or a weight
tile therefore hit in L2 - the reuse a GEMM's tiling relies on. Stores (the output)
are not inserted: they stream out and are not read again by the kernel.
"""

from __future__ import annotations

from collections import OrderedDict


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


class L2Cache:
    """LRU residency of chunks with per-row masks (see the module docstring)."""

    __slots__ = ("capacity_bytes", "lines", "resident_bytes", "requested_bytes", "miss_bytes")

    def __init__(self, capacity_bytes: float):
        self.capacity_bytes = float(capacity_bytes)
        self.lines: OrderedDict[int, list] = OrderedDict()
        """chunk key -> [row mask, resident bytes], least recently used first."""
        self.resident_bytes = 0.0
        self.requested_bytes = 0.0
        self.miss_bytes = 0.0

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
            lines[key] = [mask, missed]
        else:
            entry[0] |= mask
            entry[1] += missed
        self.resident_bytes += missed
        self.miss_bytes += missed
        # Evict least recently used chunks; never the one just touched.
        while self.resident_bytes > self.capacity_bytes and len(lines) > 1:
            _, old = lines.popitem(last=False)
            self.resident_bytes -= old[1]
        return missed

    @property
    def hit_rate(self) -> float:
        """Fraction of requested bytes that were resident."""
        if self.requested_bytes <= 0:
            return 0.0
        return 1.0 - self.miss_bytes / self.requested_bytes
