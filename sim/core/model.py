"""One SM, cycle by cycle, running the steady-state main loop of its resident CTAs.

Scenario
--------
The engine's math pipe (docs/model.md 5.3) charges a stage `FLOPs / (rate x efficiency)`,
the efficiency a fitted fudge factor. Here the stage's cost comes from the kernel's own
instructions instead (docs/model.md 5.7): every warp of every resident CTA runs the K
loop's SASS (`tvwsim.sim.core.streams`) on an SM of

- `sub_partitions` warp schedulers; warp w (counted over all resident CTAs) belongs to
  scheduler w mod sub_partitions; each scheduler issues up to `issue_width` instructions a
  clock, at most one per warp, from its warps in loose round-robin order (the warp after
  the last one that issued goes first);
- per scheduler, pipes with an initiation interval: the tensor core (HMMA, HMMA.SP; the
  interval is the mma shape's FLOPs over a quarter of the SM's mma.sync rate), the
  load/store unit (ldmatrix, LDS/STS, cp.async, LDG/STG), the integer ALU, the FMA pipe
  (floating point and IMAD), the uniform datapath, the branch unit;
- one shared-memory port for the SM (`smem_bytes_per_clk` a clock): an ldmatrix or LDS is
  served in bytes order behind earlier ones, then its registers arrive `smem_latency`
  later; an access whose addresses collide in a bank takes one 128-byte pass per
  replay (`tvwsim.sim.core.banks`, from the kernel's swizzled layout); a scheduler stops
  issuing shared-memory instructions while the port's backlog exceeds `MIO_QUEUE_CYCLES`
  (the MIO queue is full); a cp.async's bytes reach the port `global_latency` after
  issue (from L2) and are written when it is otherwise idle;
- a register scoreboard: an instruction issues only when every register it reads (and
  every register it overwrites) has been written by its producer;
- BAR.SYNC: a warp waits there until every warp of its CTA has arrived;
- cp.async groups: LDGDEPBAR closes the warp's group of cp.async copies, and DEPBAR (the
  kernel's `cp.async.wait_group STAGES - 2`) holds the warp while more of its groups than
  that are still unwritten in shared memory.

What is left out, on purpose: operand-collector and register-bank conflicts,
instruction-cache misses, the dual issue of older GPUs, and memory: a cp.async's bytes
and a global load (LDG) arrive `global_latency` after issue (an L2 hit), since how long
DRAM and the L2 take under load is the engine's memory system's business (docs/model.md
5.4).

Why a plain cycle loop and not SimPy: every clock of every scheduler is a decision, so a
SimPy event per cycle would cost microseconds each for no gain; a loop over integer cycles
with the warps' state in lists runs one CTA loop of a few thousand cycles in well under a
second, which is what a per-variant cache needs. Cycles in which no warp can issue are
skipped to the first one in which a stall may clear (their stall states repeat).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

from tvwsim.kernels.sass_stream import CLASSES
from tvwsim.sim.core.banks import kind_of, replay_factors
from tvwsim.sim.core.streams import Stream
from tvwsim.sim.hardware import Hardware

from tvwsim.errors import InputError

INF = float("inf")

MIO_QUEUE_CYCLES = 64.0
"""Backlog of the SM's shared-memory port (cycles of queued bytes) beyond which a
scheduler stops issuing shared-memory instructions: an estimate of the MIO queue depth
(no microbenchmark paper pins it); large enough not to throttle a swizzled GEMM loop whose
port is not saturated."""

MMA_FLOPS = {"hmma": 2 * 16 * 8 * 16, "hmma_sp": 2 * 16 * 8 * 32}
"""Logical FLOPs of one instruction: m16n8k16 (dense), m16n8k32 with a 2:4 A (sparse)."""

HMMA_884_STEP_FLOPS = 2 * 16 * 16 * 16 // 16
"""FLOPs of one Volta HMMA.884 SASS step: a 16 x 16 x 16 fp32-accumulate mma is 16 of
them, four sets of four steps with fp32 accumulation (Jia et al. 2018, "Dissecting the
NVIDIA Volta GPU Architecture via Microbenchmarking", their tensor-core chapter)."""


def mma_flops(opcode: str, cls: str) -> int:
    """Logical FLOPs of one tensor-core instruction (0 for any other)."""
    if cls not in MMA_FLOPS:
        return 0
    return HMMA_884_STEP_FLOPS if ".884" in opcode else MMA_FLOPS[cls]


PIPES: tuple[str, ...] = ("tensor", "lsu", "alu", "fma", "uniform", "branch")
"""Per-scheduler pipes with an initiation interval (docs/model.md 5.7)."""

SMEM_CLASSES = frozenset({"ldsm", "lds", "sts", "ldgsts"})

# State labels, built once: the cycle loop writes one per warp per cycle.
PIPE_STALL = {pipe: "pipe:" + pipe for pipe in PIPES}
ISSUED = {cls: "issued:" + cls for cls in CLASSES}
DEPENDENCY = {cls: "dependency:" + cls for cls in CLASSES}

SYMBOL = {
    "hmma": "M", "hmma_sp": "M", "ldsm": "L", "ldgsts": "G", "lds": "S", "sts": "S",
    "ldg": "g", "stg": "g", "alu": "a", "fp": "f", "uniform": "u", "branch": "b",
    "bar": "B", "depbar": "d", "other": "o",
}  # fmt: skip
"""One letter per class for the issue-slot picture."""

STALL_SYMBOL = {
    "dependency": "-", "barrier": "|", "pipe": "#", "mio": "%", "cp.async": "~",
    "not_selected": ".",
}  # fmt: skip
"""One letter per stall reason for the issue-slot picture; ' ' is a finished warp."""


@dataclass(frozen=True)
class CoreParams:
    """What the core model needs of a GPU, in cycles; `from_hardware` derives it."""

    sub_partitions: int = 4
    issue_width: int = 1
    hmma_interval: float = 8.0
    """Cycles between two dense HMMA on one scheduler's tensor core."""
    hmma_sp_interval: float = 8.0
    """Cycles between two HMMA.SP (m16n8k32) on one scheduler's tensor core."""
    hmma_latency: float = 33.0
    hmma_sp_latency: float = 33.0
    lsu_interval: float = 4.0
    smem_bytes_per_clk: float = 128.0
    smem_latency: float = 30.0
    alu_interval: float = 2.0
    alu_latency: float = 4.0
    barrier_cycles: float = 20.0
    global_latency: float = 230.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InputError(f.name, f"must be a positive number, got {value!r}")
        for name in ("sub_partitions", "issue_width"):
            if not float(getattr(self, name)).is_integer():
                raise InputError(name, f"must be an integer, got {getattr(self, name)!r}")

    @classmethod
    def from_hardware(cls, hw: Hardware) -> CoreParams:
        """The core of `hw`: the tensor interval is the mma shape's FLOPs over a
        scheduler's share of the mma.sync rate (`dense_flops_per_clk_per_sm x
        core_mma_sync_peak_fraction / core_sub_partitions`; the sparse one likewise from
        the logical 2:4 rate), the rest are the preset's core fields."""
        parts = hw.core_sub_partitions
        dense = hw.dense_flops_per_clk_per_sm * hw.core_mma_sync_peak_fraction / parts
        sparse = hw.sparse_flops_per_clk_per_sm * hw.core_mma_sp_peak_fraction / parts
        return cls(
            sub_partitions=parts,
            issue_width=hw.core_issue_width,
            hmma_interval=MMA_FLOPS["hmma"] / dense,
            hmma_sp_interval=MMA_FLOPS["hmma_sp"] / sparse,
            hmma_latency=hw.core_hmma_latency_cycles,
            hmma_sp_latency=hw.core_hmma_sp_latency_cycles,
            lsu_interval=hw.core_lsu_interval_cycles,
            smem_bytes_per_clk=hw.smem_bytes_per_clk_per_sm,
            smem_latency=hw.core_smem_latency_cycles,
            alu_interval=hw.core_alu_interval_cycles,
            alu_latency=hw.core_alu_latency_cycles,
            barrier_cycles=hw.core_barrier_cycles,
            global_latency=hw.l2_latency_cycles,
        )

    def replace(self, **changes) -> CoreParams:
        return dataclasses.replace(self, **changes)


def pipe_of(opcode: str, cls: str) -> str | None:
    """The per-scheduler pipe an instruction occupies (None: an issue slot only)."""
    if cls in ("hmma", "hmma_sp"):
        return "tensor"
    if cls in ("ldsm", "lds", "sts", "ldgsts", "ldg", "stg"):
        return "lsu"
    if cls == "alu":
        # IMAD runs on the FMA pipe (Abdelkhalik et al. 2022: mad beside add does not
        # slow the integer pipe); the compiler uses IMAD.MOV to balance the two.
        return "fma" if opcode.startswith(("IMAD", "IMUL")) else "alu"
    if cls == "fp":
        return "fma"
    if cls == "uniform":
        return "uniform"
    if cls == "branch":
        return "branch"
    return None


@dataclass
class CoreResult:
    """What one run of the core model found, over its steady-state window."""

    stream: Stream
    params: CoreParams
    ctas: int
    warps: int
    """Warps on the SM (all resident CTAs)."""
    cycles_per_stage: float
    """Cycles between two consecutive stages of one CTA in steady state."""
    window: tuple[int, int]
    """[first, last) cycle of the steady-state window the figures below are measured on."""
    utilisation: dict[str, float]
    """Busy fraction of each pipe (per-scheduler pipes averaged over the schedulers), the
    shared-memory port ('smem') and the issue slots ('issue')."""
    stalls: dict[str, float]
    """Warp-cycles of the window by what each warp did: 'issued' or a stall reason
    ('dependency:<producer class>', 'barrier', 'pipe:<pipe>', 'mio', 'not_selected'),
    as fractions of all warp-cycles."""
    picture: list[str] = field(default_factory=list)
    """Per warp, one character per cycle of the window's first cycles (SYMBOL / STALL_SYMBOL)."""
    picture_start: int = 0

    @property
    def mma_flops_per_clk(self) -> float:
        """Logical tensor FLOPs the SM completes per cycle in steady state."""
        per_stage = sum(mma_flops(i.opcode, i.cls) for i in self.stream.instructions)
        return per_stage * self.stream.config.warps * self.ctas / self.cycles_per_stage

    @property
    def bound(self) -> str:
        """The critical resource: the busiest pipe, port or the issue slots if one is
        busy at least 80% of the window, else 'latency' (dependency chains and barriers
        leave every unit idle part of the time)."""
        name, value = max(self.utilisation.items(), key=lambda kv: kv[1])
        return name if value >= 0.8 else "latency"


def _role(opcode: str) -> str:
    """What the cycle loop must do beyond issue: 'wait' (cp.async wait group), 'commit'
    (close a cp.async group), 'slow' (a result from the constant cache or a shuffle, as
    late as a shared-memory load) or ''."""
    if opcode.startswith("DEPBAR"):
        return "wait"
    if opcode.startswith("LDGDEPBAR"):
        return "commit"
    return "slow" if opcode.startswith(("LDC", "S2R", "SHFL")) else ""


def _intern(stream: Stream, swizzle: bool = True):
    """The stream as tuples: (class, pipe, dst ids, src ids, smem port bytes, opcode,
    role); the port bytes are the bytes a warp moves times the bank replays of its kind of
    access in the kernel's layout (`banks.replay_factors`)."""
    replays = replay_factors(stream.config, swizzle)
    ids: dict[str, int] = {}
    out = []
    for ins in stream.instructions:
        dst = tuple(ids.setdefault(r, len(ids)) for r in ins.dst)
        src = tuple(ids.setdefault(r, len(ids)) for r in ins.src)
        kind = kind_of(ins.opcode, ins.cls)
        port = ins.smem_bytes * (replays[kind] if kind else 1.0)
        pipe = pipe_of(ins.opcode, ins.cls)
        out.append((ins.cls, pipe, dst, src, port, ins.opcode, _role(ins.opcode)))
    return out, len(ids)


def simulate_core(
    stream: Stream,
    params: CoreParams,
    *,
    ctas: int = 1,
    warmup: int = 2,
    iterations: int = 4,
    picture_cycles: int = 0,
    swizzle: bool = True,
) -> CoreResult:
    """Run `warmup + iterations` loop iterations (one K stage each) of `ctas` co-resident
    CTAs of `stream`'s kernel; measure the last `iterations`.

    `picture_cycles` > 0 records that many cycles of issue slots from the window's start.
    `swizzle` False asks what the loop would cost with the tiles stored row-major (no XOR
    swizzle): the same instructions with their bank conflicts.
    """
    checks = {"ctas": (ctas, 1), "warmup": (warmup, 1), "iterations": (iterations, 1)}
    checks["picture_cycles"] = (picture_cycles, 0)
    for name, (value, low) in checks.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(name, f"must be an integer >= {low}, got {value!r}")
    code, nregs = _intern(stream, swizzle)
    n = len(code)
    if n == 0:
        raise InputError("stream", f"{stream.name} has no instructions")
    p = params
    parts = int(p.sub_partitions)
    width = int(p.issue_width)
    per_cta = stream.config.warps
    nwarps = per_cta * ctas
    total = warmup + iterations
    # The tensor pipe's interval scales with the instruction's FLOPs (a Volta HMMA.884
    # step is an eighth of an m16n8k16).
    tensor_step = [
        (p.hmma_sp_interval if cls == "hmma_sp" else p.hmma_interval)
        * mma_flops(opcode, cls)
        / MMA_FLOPS[cls]
        if cls in MMA_FLOPS
        else 0.0
        for cls, _pipe, _dst, _src, _port, opcode, _role in code
    ]
    interval = {
        "tensor": 0.0,  # per instruction: tensor_step
        "lsu": p.lsu_interval,
        "alu": p.alu_interval,
        "fma": p.alu_interval,
        "uniform": 1.0,
        "branch": p.alu_interval,
    }
    latency = {
        "hmma": p.hmma_latency,
        "hmma_sp": p.hmma_sp_latency,
        "ldg": p.global_latency,
    }

    # Warp state.
    pc = [0] * nwarps
    done_iter = [0] * nwarps
    ready = [[0.0] * nregs for _ in range(nwarps)]
    producer = [[""] * nregs for _ in range(nwarps)]  # 'dependency:<class>' of the writer
    at_bar = [False] * nwarps
    bar_release = [0.0] * nwarps
    arrived = [0] * ctas
    iter_end = [[0] * total for _ in range(nwarps)]
    sp_warps = [[w for w in range(nwarps) if w % parts == s] for s in range(parts)]
    rr = [0] * parts
    pipe_free = [dict.fromkeys(PIPES, 0.0) for _ in range(parts)]
    smem_free = 0.0
    # cp.async writes: (arrival, port cycles, warp, group); per warp its groups' unwritten
    # copies and last write's end, the group being filled and the oldest unfinished one.
    fills: deque[tuple[float, float, int, int]] = deque()
    group_left: list[dict[int, int]] = [{} for _ in range(nwarps)]
    group_end: list[dict[int, float]] = [{} for _ in range(nwarps)]
    open_group = [0] * nwarps
    oldest_group = [0] * nwarps
    wait_groups = max(0, stream.config.stages - 2)  # common.cuh: cp_async_wait<STAGES - 2>

    # Accounting, per cycle, for the window (known only at the end): record everything.
    # Per cycle: (warp, class, pipe, port bytes, pipe cycles) of each issue.
    issued_log: list[list[tuple[int, str, str | None, float, float]]] = []
    state_log: list[list[str]] = []  # per cycle: per warp a reason or 'issued:<cls>'

    t = 0
    finished = 0
    limit = 200000 * total
    while finished < nwarps:
        if t > limit:
            raise RuntimeError(f"core model made no progress on {stream.name}")
        # cp.async data lands from L2 and is written into shared memory when the port
        # has nothing else to do: the fill takes port bandwidth, not a read's place.
        wrote = False
        while fills and fills[0][0] <= t and smem_free <= t:
            wrote = True
            _arrival, cycles, fw, fg = fills.popleft()
            smem_free = float(t) + cycles
            group_left[fw][fg] -= 1
            group_end[fw][fg] = max(group_end[fw].get(fg, 0.0), smem_free)
        states = [""] * nwarps
        issued_now: list[tuple[int, str, str | None, float, float]] = []
        # The earliest time a stalled warp's reason may clear (a lower bound): when no
        # warp issues, nothing changes before then, so the clock jumps there.
        wake = INF
        for s in range(parts):
            warps = sp_warps[s]
            if not warps:
                continue
            k = len(warps)
            slots = width
            start = rr[s]
            for j in range(k):
                w = warps[(start + j) % k]
                if done_iter[w] >= total:
                    states[w] = "done"
                    continue
                if at_bar[w]:
                    if bar_release[w] and bar_release[w] <= t:
                        at_bar[w] = False
                        bar_release[w] = 0.0
                    else:
                        states[w] = "barrier"
                        if bar_release[w] and bar_release[w] < wake:
                            wake = bar_release[w]
                        continue
                cls, pipe, dst, src, nbytes, _opcode, role = code[pc[w]]
                rw = ready[w]
                blocked = None
                until = INF
                for r in src:
                    if rw[r] > t:
                        blocked, until = producer[w][r], rw[r]
                        break
                if blocked is None:
                    for r in dst:
                        if rw[r] > t:
                            blocked, until = producer[w][r], rw[r]
                            break
                if blocked is None and pipe is not None and pipe_free[s][pipe] >= t + 1:
                    blocked, until = PIPE_STALL[pipe], pipe_free[s][pipe] - 1
                if blocked is None and cls in SMEM_CLASSES and smem_free - t > MIO_QUEUE_CYCLES:
                    blocked, until = "mio", smem_free - MIO_QUEUE_CYCLES
                if blocked is None and role == "wait":
                    g = oldest_group[w]
                    while (
                        g < open_group[w]
                        and not group_left[w].get(g, 0)
                        and (group_end[w].get(g, 0.0) <= t)
                    ):
                        g += 1
                    oldest_group[w] = g
                    if open_group[w] - g > wait_groups:
                        blocked = "cp.async"  # wakes with a fill's write (below)
                        if not group_left[w].get(g, 0):
                            until = group_end[w].get(g, 0.0)
                if blocked is None and slots == 0:
                    blocked = "not_selected"
                if blocked is not None:
                    states[w] = blocked
                    if until < wake:
                        wake = until
                    continue
                # Issue.
                slots -= 1
                rr[s] = (start + j + 1) % k  # the next clock starts after the last issuer
                states[w] = ISSUED[cls]
                step = 0.0
                if pipe is not None:
                    step = tensor_step[pc[w]] if pipe == "tensor" else interval[pipe]
                    pipe_free[s][pipe] = max(pipe_free[s][pipe], t) + step
                if cls == "ldgsts":
                    g = open_group[w]
                    fills.append((t + p.global_latency, nbytes / p.smem_bytes_per_clk, w, g))
                    group_left[w][g] = group_left[w].get(g, 0) + 1
                    done = t + p.alu_latency
                elif cls in SMEM_CLASSES:
                    begin = max(smem_free, float(t))
                    smem_free = begin + nbytes / p.smem_bytes_per_clk
                    done = smem_free + p.smem_latency
                elif cls in latency:
                    done = t + latency[cls]
                elif role == "slow":
                    done = t + p.smem_latency
                else:
                    done = t + p.alu_latency
                waiting_on = DEPENDENCY[cls]
                for r in dst:
                    rw[r] = done
                    producer[w][r] = waiting_on
                issued_now.append((w, cls, pipe, nbytes, step))
                if role == "commit":
                    open_group[w] += 1
                if cls == "bar":
                    cta = w // per_cta
                    arrived[cta] += 1
                    at_bar[w] = True
                    if arrived[cta] == per_cta:
                        arrived[cta] = 0
                        for v in range(cta * per_cta, (cta + 1) * per_cta):
                            bar_release[v] = t + p.barrier_cycles
                pc[w] += 1
                if pc[w] == n:
                    pc[w] = 0
                    iter_end[w][done_iter[w]] = t
                    done_iter[w] += 1
                    if done_iter[w] == total:
                        finished += 1
        issued_log.append(issued_now)
        state_log.append(states)
        t += 1
        if issued_now or wrote or finished == nwarps:
            continue
        if fills:
            wake = min(wake, max(fills[0][0], smem_free))
        if wake != INF and wake > t:
            # Nothing issued and nothing can change before `wake`: the cycles in
            # between repeat this one's states.
            skip = min(math.ceil(wake), limit + 1) - t
            issued_log.extend([] for _ in range(skip))
            state_log.extend([states] * skip)
            t += skip

    # Steady state: from the end of the warm-up to the end of the last iteration.
    cta_end = [
        [max(iter_end[w][i] for w in range(c * per_cta, (c + 1) * per_cta)) for i in range(total)]
        for c in range(ctas)
    ]
    per_stage = [(e[-1] - e[warmup - 1]) / iterations for e in cta_end]
    cycles_per_stage = sum(per_stage) / len(per_stage)
    t0 = min(e[warmup - 1] for e in cta_end) + 1
    t1 = max(e[-1] for e in cta_end) + 1
    span = max(1, t1 - t0)

    busy = dict.fromkeys(PIPES, 0.0)
    smem_bytes = 0.0
    issued = 0
    for cycle in range(t0, t1):
        for _w, cls, pipe, nbytes, step in issued_log[cycle]:
            issued += 1
            if pipe is not None:
                busy[pipe] += step
            if cls in SMEM_CLASSES:
                smem_bytes += nbytes
    util = {pipe: busy[pipe] / (span * parts) for pipe in PIPES}
    util["smem"] = smem_bytes / p.smem_bytes_per_clk / span
    util["issue"] = issued / (span * parts * width)

    counts: dict[str, int] = {}
    for cycle in range(t0, t1):
        for state in state_log[cycle]:
            if state == "done":
                continue
            key = "issued" if state.startswith("issued:") else state
            counts[key] = counts.get(key, 0) + 1
    all_cycles = sum(counts.values()) or 1
    stalls = {k: v / all_cycles for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    picture = []
    if picture_cycles:
        end = min(len(state_log), t0 + picture_cycles)
        for w in range(nwarps):
            row = []
            for cycle in range(t0, end):
                state = state_log[cycle][w]
                if state.startswith("issued:"):
                    row.append(SYMBOL[state.split(":")[1]])
                elif state == "done":
                    row.append(" ")
                else:
                    row.append(STALL_SYMBOL[state.split(":")[0]])
            picture.append("".join(row))
    return CoreResult(
        stream=stream,
        params=params,
        ctas=ctas,
        warps=nwarps,
        cycles_per_stage=cycles_per_stage,
        window=(t0, t1),
        utilisation=util,
        stalls=stalls,
        picture=picture,
        picture_start=t0,
    )
