"""What a CTA works on: its task and the named stages of its K loop.

Covers
------
`CtaTask` (one row of the schedule, with what the memory system needs to know about its
token block) and `Stage` (one K step of a weight tile: the L2 chunks its loads touch, its
bytes, and how long its math holds the SM's pipe). `StageTable` builds a tile's stages
once, with numpy, and keeps them: every CTA of that tile walks the same list.

Activation residency is tracked per chunk of `ACT_CHUNK_ROWS` consecutive X.T rows of one
token block, with a 64-bit row mask, because a tw/tvw gather or an ew union reads
scattered rows (docs/model.md 5.4).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tvwsim.schedule import ELEMENT_BYTES, Schedule

if TYPE_CHECKING:
    from tvwsim.sim.sm import Sm

ACT_CHUNK_ROWS = 64
"""Activation rows per L2 residency chunk (one 64-bit row mask)."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One K step (bk logical K positions) of one weight tile."""

    act_chunks: tuple[tuple[int, int], ...]
    """(chunk index within the token block, 64-bit mask of the X.T rows gathered) for each
    activation chunk the stage touches."""
    act_rows: int
    """X.T rows the stage gathers (zero-filled padding positions are not loaded)."""
    weight_key: int
    """L2 key of this weight stage; negative, so it never equals an activation chunk's."""
    weight_bytes: float
    """Weight bytes the stage loads (values, metadata, indices)."""
    math_cycles: float
    """Cycles the stage holds the SM's math pipe (`MathPipe.stage_cycles`)."""


@dataclass(frozen=True, slots=True)
class CtaTask:
    """One CTA of the launch: a schedule row and its token block's geometry."""

    index: int
    """Position in the schedule (blockIdx.x)."""
    tile: int
    """Weight row tile."""
    block: int
    """Token (activation) block."""
    first_stage: int
    """First stage of the tile this CTA computes (k_begin / bk)."""
    end_stage: int
    """One past its last stage (k_end / bk)."""
    split: bool
    """A K piece of its tile (split-K): the epilogue adds fp32 partial sums."""
    act_row_bytes: float
    """Bytes of one X.T row segment of the token block (valid tokens x 2 B)."""
    act_chunk_base: int
    """L2 key of the token block's first activation chunk."""
    out_elements: int
    """Output elements the epilogue stores (kept rows x valid tokens)."""


def cta_tasks(schedule: Schedule) -> list[CtaTask]:
    """The schedule's rows as `CtaTask`s, in launch order."""
    config, work = schedule.config, schedule.work
    tokens = [min(config.bn, schedule.m - b * config.bn) for b in range(schedule.act_blocks)]
    chunks_per_block = chunks_per_token_block(schedule)
    out_rows = work.out_rows.tolist()
    rows = schedule.tasks.tolist()
    whole = work.k_lengths[schedule.tasks[:, 0]].tolist() if rows else []
    bk = config.bk
    return [
        CtaTask(
            index=i,
            tile=tile,
            block=block,
            first_stage=k_begin // bk,
            end_stage=k_end // bk,
            split=k_begin != 0 or k_end != k_whole,
            act_row_bytes=float(tokens[block] * ELEMENT_BYTES),
            act_chunk_base=block * chunks_per_block,
            out_elements=out_rows[tile] * tokens[block],
        )
        for i, ((tile, block, k_begin, k_end), k_whole) in enumerate(zip(rows, whole, strict=True))
    ]


def chunks_per_token_block(schedule: Schedule) -> int:
    """L2 keys reserved per token block (one spare, so blocks never share a key)."""
    return -(-schedule.k // ACT_CHUNK_ROWS) + 1


class StageTable:
    """The `Stage`s of every weight tile of a schedule, built on first use and kept."""

    def __init__(self, schedule: Schedule, math_cycles: np.ndarray):
        self.work = schedule.work
        self.bk = schedule.config.bk
        self.chunks_per_block = chunks_per_token_block(schedule)
        self.math_cycles = math_cycles
        """float64 [stages of the work]: the math pipe's hold of every stage."""
        self._tiles: dict[int, list[Stage]] = {}

    def of_task(self, task: CtaTask) -> list[Stage]:
        """The stages `task` walks, in K order."""
        return self.of_tile(task.tile)[task.first_stage : task.end_stage]

    def of_tile(self, tile: int) -> list[Stage]:
        """Every stage of weight tile `tile`, in K order."""
        stages = self._tiles.get(tile)
        if stages is None:
            stages = self._tiles[tile] = self._build(tile)
        return stages

    def _build(self, tile: int) -> list[Stage]:
        work, bk, n_chunks = self.work, self.bk, self.chunks_per_block
        a0, a1 = int(work.act_ptr[tile]), int(work.act_ptr[tile + 1])
        p0, p1 = int(work.stage_ptr[tile]), int(work.stage_ptr[tile + 1])
        rows = work.act_rows[a0:a1].astype(np.int64)
        position = np.flatnonzero(rows >= 0)
        valid = rows[position]
        stage_of = position // bk
        n_stages = p1 - p0
        chunks: list[list[tuple[int, int]]] = [[] for _ in range(n_stages)]
        n_rows = np.bincount(stage_of, minlength=n_stages).tolist()
        if valid.size:
            # One (stage, chunk) group per run of equal keys; OR the row bits of each run.
            combo = stage_of * n_chunks + (valid >> 6)
            starts = np.concatenate([[0], np.flatnonzero(np.diff(combo)) + 1])
            bits = np.left_shift(np.uint64(1), (valid & 63).astype(np.uint64))
            masks = np.bitwise_or.reduceat(bits, starts).tolist()
            for c, mask in zip(combo[starts].tolist(), masks, strict=True):
                chunks[c // n_chunks].append((c % n_chunks, int(mask)))
        weight_bytes = work.stage_weight_bytes[p0:p1].tolist()
        math_cycles = self.math_cycles[p0:p1].tolist()
        return [
            Stage(
                act_chunks=tuple(chunks[s]),
                act_rows=n_rows[s],
                weight_key=-1 - (p0 + s),
                weight_bytes=weight_bytes[s],
                math_cycles=math_cycles[s],
            )
            for s in range(n_stages)
        ]


LOOP, DRAIN, STORE, IDLE = range(4)
"""What a slot's CTA is doing: in its K loop, waiting for its last math, storing its tile,
or nothing (no task left)."""


class SlotRun:
    """What one resident-CTA slot is doing, kept outside its SimPy process.

    The process reads its position from here after every wait, so the fast-forward
    (`tvwsim.sim.steady`) can move every slot ahead at once: to a later stage of the same
    task, or to the same stage of an equivalent later task.
    """

    __slots__ = (
        "sm",
        "slot",
        "phase",
        "task",
        "stages",
        "pos",
        "next_load",
        "in_flight",
        "math_done",
        "start",
        "wake",
    )

    def __init__(self, sm: Sm, slot: int):
        self.sm, self.slot = sm, slot
        self.phase = IDLE
        self.task: CtaTask | None = None
        self.stages: list[Stage] = []
        self.pos = 0
        """The next stage to compute."""
        self.next_load = 0
        """The next stage to load."""
        self.in_flight: deque[float] = deque()
        """Arrival times of the loads issued for stages pos .. next_load - 1."""
        self.math_done = 0.0
        """When the CTA's last queued stage leaves the math pipe."""
        self.start = 0.0
        """When the CTA started, in the launch's time (`Gpu.now`)."""
        self.wake = 0.0
        """When the slot's process resumes (engine time)."""
