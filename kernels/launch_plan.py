"""What the host decides before a launch, and the checks that keep a mistake off the device.

`plan_launch(encoded, m, schedule)` needs no GPU: it validates X's token count, the
encoding's buffers and the schedule against each other and returns a `LaunchPlan` - the
grid (one CTA per task), the regions of the small `finalize_rows` pass and whether an
fp32 split-K workspace is needed. Every mistake is an `InputError` naming `encoded`,
`x` or `schedule`, never a crash inside the driver:

- the encoding is one the kernels read (dense, bw, vw, tw, tvw) and its buffers have
  the sizes the kernel will index; a bw block is one a kernel is compiled for;
- the schedule was built for this pattern, shape and config (bm, bk and mma agree);
- every task names an existing tile and token block, its K range lies inside the tile
  in whole stages, and together the tasks cover every (tile, block) exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvwsim.kernels.build import check_block
from tvwsim.kernels.formats import ENCODINGS, activations_fp16, bw_block_problem

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import KERNEL_PATTERNS, pattern_spec

_ENCODED_TYPES = {p: ENCODINGS[p].__name__ for p in KERNEL_PATTERNS}
"""The encoding class a tvwsim kernel reads, by name, for each pattern with a kernel."""


def check_encoded(encoded: Any, pattern: str | None = None) -> str:
    """The encoding's pattern, if a tvwsim kernel reads it (and it is `pattern`, if given)."""
    got = getattr(encoded, "pattern", None)
    if got not in _ENCODED_TYPES or type(encoded).__name__ != _ENCODED_TYPES[got]:
        raise InputError(
            "encoded",
            f"must be a dense, bw, vw, tw or tvw encoding from tvwsim.kernels.formats.encode, got "
            f"{type(encoded).__name__} (pattern {got!r}; ew has no tvwsim kernel)",
        )
    if pattern is not None and got != pattern:
        raise InputError("encoded", f"this launcher runs {pattern}, the encoding is {got}")
    return got


def check_x(x: Any, k: int) -> np.ndarray:
    """X as fp16 M x K, refused unless it is a finite float array with the weight's K."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InputError("x", f"must be a 2-D M x K array with M >= 1, got shape {x.shape}")
    if x.shape[1] != k:
        raise InputError("x", f"has K = {x.shape[1]} features per token; the weight has K = {k}")
    return activations_fp16(x)


def tile_lengths(encoded: Any) -> np.ndarray:
    """int64 [tiles]: the logical K each row tile's CTA walks (what a task may cover)."""
    return np.asarray(encoded.tile_k_lengths(), dtype=np.int64)


def _kernel_config(encoded: Any, schedule: Any) -> KernelConfig:
    enc = encoded.config
    sched = getattr(schedule, "config", None)
    if sched is None:
        return enc
    if not isinstance(sched, KernelConfig):
        raise InputError("schedule", "its config is not a KernelConfig")
    if (sched.bm, sched.bk, sched.mma) != (enc.bm, enc.bk, enc.mma):
        raise InputError(
            "schedule",
            f"was made for config {sched.name} ({sched.mma}), the encoding for {enc.name} "
            f"({enc.mma}); bm, bk and the mma kind must agree",
        )
    return sched


def _check_tasks(schedule: Any, encoded: Any, m: int, config: KernelConfig) -> np.ndarray:
    if hasattr(schedule, "tasks"):
        for attr, want in (
            ("pattern", encoded.pattern),
            ("m", m),
            ("n", encoded.n),
            ("k", encoded.k),
        ):
            got = getattr(schedule, attr, want)
            if got != want:
                raise InputError(
                    "schedule", f"was built for {attr} = {got!r}, but the launch has {want!r}"
                )
        tasks = schedule.tasks
    else:
        tasks = schedule
    tasks = np.asarray(tasks)
    # No tasks is legal only when no tile has work (a tw/tvw weight with every row
    # pruned); the coverage check below says which (tile, block) is missing otherwise.
    if tasks.ndim != 2 or tasks.shape[1] != 4:
        raise InputError(
            "schedule", f"tasks must be an int array [n_tasks, 4], got shape {tasks.shape}"
        )
    if not np.issubdtype(tasks.dtype, np.integer):
        raise InputError("schedule", f"tasks must be integers, got dtype {tasks.dtype}")
    if tasks.shape[0] > 2**31 - 1:
        raise InputError("schedule", "more tasks than a grid can hold (2^31 - 1)")
    t = tasks.astype(np.int64)
    lengths = tile_lengths(encoded)
    tiles, blocks, bk = lengths.size, -(-m // config.bn), config.bk

    def bad(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise InputError("schedule", f"task {i} {tuple(int(v) for v in t[i])}: {problem}")

    bad((t[:, 0] < 0) | (t[:, 0] >= tiles), f"weight tile does not exist (tiles 0..{tiles - 1})")
    bad(
        (t[:, 1] < 0) | (t[:, 1] >= blocks),
        f"token block does not exist (blocks of {config.bn}: 0..{blocks - 1} for M = {m})",
    )
    bad((t[:, 2] % bk != 0) | (t[:, 3] % bk != 0), f"k range must be in whole stages of {bk}")
    bad(
        (t[:, 2] < 0) | (t[:, 2] > t[:, 3]) | (t[:, 3] > lengths[t[:, 0]]),
        "k range is outside the tile (0 <= k_begin <= k_end <= tile K length)",
    )
    # Coverage: per (tile, block), the K ranges must tile [0, length) exactly once.
    order = np.lexsort((t[:, 2], t[:, 1], t[:, 0]))
    s = t[order]
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = (s[1:, 0] != s[:-1, 0]) | (s[1:, 1] != s[:-1, 1])
    last = np.ones(len(s), dtype=bool)
    last[:-1] = new_group[1:]
    gap = np.zeros(len(s), dtype=bool)
    gap[1:] = ~new_group[1:] & (s[1:, 2] != s[:-1, 3])
    starts_late = new_group & (s[:, 2] != 0)
    ends_early = last & (s[:, 3] != lengths[s[:, 0]])
    empty_piece = (s[:, 2] == s[:, 3]) & ~(new_group & last)
    broken = gap | starts_late | ends_early | empty_piece
    if broken.any():
        i = int(np.flatnonzero(broken)[0])
        raise InputError(
            "schedule",
            f"tile {int(s[i, 0])}, token block {int(s[i, 1])}: its tasks' K ranges must "
            "cover 0 .. tile K length exactly once, in whole stages",
        )
    covered = np.zeros((tiles, blocks), dtype=bool)
    covered[t[:, 0], t[:, 1]] = True
    missing = ~covered & (lengths[:, None] > 0)
    if missing.any():
        tile, blk = (int(v) for v in np.argwhere(missing)[0])
        raise InputError(
            "schedule",
            f"no task computes tile {tile}, token block {blk} (K length {int(lengths[tile])})",
        )
    return np.ascontiguousarray(t, dtype=np.int32)


def _finalize_regions(
    tasks: np.ndarray, encoded: Any, m: int, config: KernelConfig
) -> tuple[np.ndarray, bool]:
    """int32 [R, 4] regions for `finalize_rows`, and whether a workspace is needed."""
    lengths = tile_lengths(encoded)
    blocks = -(-m // config.bn)
    t = tasks.astype(np.int64)
    # The kernel's rule (same expression in every .cu): a task is split unless it covers
    # its tile's whole K.
    split = ~((t[:, 2] == 0) & (t[:, 3] == lengths[t[:, 0]]))
    split_pairs = np.unique(t[split][:, :2], axis=0) if split.any() else np.zeros((0, 2), int)
    covered = np.zeros((lengths.size, blocks), dtype=bool)
    covered[t[:, 0], t[:, 1]] = True
    empty_pairs = np.argwhere(~covered)
    regions = [
        np.column_stack([np.zeros(len(split_pairs)), split_pairs, np.zeros(len(split_pairs))]),
        np.column_stack([np.ones(len(empty_pairs)), empty_pairs, np.zeros(len(empty_pairs))]),
    ]
    if pattern_spec(encoded.pattern).tiled:
        stored = np.zeros(encoded.n, dtype=bool)
        rm = np.asarray(encoded.row_map)
        stored[rm[rm >= 0]] = True
        free = np.flatnonzero(~stored)
        regions.append(np.column_stack([np.full(free.size, 2), free, np.zeros((free.size, 2))]))
    out = np.concatenate(regions).astype(np.int32).reshape(-1, 4)
    return np.ascontiguousarray(out), bool(split.any())


def _check_buffers(encoded: Any, config: KernelConfig) -> None:
    """Cheap consistency checks that keep a malformed encoding out of the kernel."""
    p = encoded.pattern
    spec = pattern_spec(p)
    if spec.tiled:
        g = config.bm
        k_ptr = np.asarray(encoded.k_ptr)
        total = int(k_ptr[-1])
        if np.asarray(encoded.row_map).size != g * (k_ptr.size - 1):
            raise InputError("encoded", f"row_map must hold {g} rows per tile")
        if (np.diff(k_ptr) % config.bk).any():
            raise InputError("encoded", f"tile K lengths must be multiples of bk={config.bk}")
        idx = np.asarray(encoded.k_index)
        if idx.size != total or (idx.size and (idx.max() >= encoded.k or idx.min() < -1)):
            raise InputError("encoded", f"k_index must hold {total} entries in -1 .. k-1")
        want = g * total // (2 if spec.sparse_mma else 1)
        if np.asarray(encoded.values).size != want:
            raise InputError("encoded", f"values must hold {want} fp16 (G x k_ptr[-1])")
        if spec.sparse_mma and np.asarray(encoded.metadata).size != g * total // 32:
            raise InputError("encoded", "metadata must hold G * k_ptr[-1] / 32 words")
    elif p == "bw":
        problem = bw_block_problem(int(encoded.block), config)
        if problem is not None:
            raise InputError("encoded", f"block: {problem}")
        check_block("bw", int(encoded.block), argument="encoded")
        if np.asarray(encoded.values).size >= 2**31:
            raise InputError("encoded", "bw values beyond 2^31 elements are not supported")
    elif p == "vw":
        if encoded.k_pad % config.bk:
            raise InputError("encoded", f"k_pad must be a multiple of bk={config.bk}")
        # The kernel copies whole 128-byte metadata blocks per (16 rows, 64 K): a short
        # buffer would be read past its end.
        want = encoded.n_pad // 16 * (encoded.k_pad // 64) * 32
        if encoded.n_pad % 16 or np.asarray(encoded.metadata).size != want:
            raise InputError(
                "encoded", f"vw metadata must hold n_pad/16 x k_pad/64 x 32 = {want} words"
            )
    elif p == "dense":
        if encoded.k_pad % config.bk:
            raise InputError("encoded", f"k_pad must be a multiple of bk={config.bk}")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the host decides before a launch (no device needed to compute it)."""

    pattern: str
    config: KernelConfig
    """The kernel variant: the schedule's config (its bm, bk and mma kind agree with the
    encoding's)."""
    m: int
    tasks: np.ndarray
    """int32 [n_tasks, 4], validated: grid x = n_tasks, CTA i runs tasks[i]."""
    regions: np.ndarray
    """int32 [R, 4] regions of the finalize pass (kind, a, b, 0); see common.cuh."""
    needs_workspace: bool
    """Some task covers part of its tile's K: zero an fp32 N x m8 workspace first."""

    @property
    def m8(self) -> int:
        """Tokens padded to a multiple of 8: whole 16-byte copies of XT and YT rows."""
        return -(-self.m // 8) * 8


def plan_launch(encoded: Any, m: int, schedule: Any, *, pattern: str | None = None) -> LaunchPlan:
    """Validate an encoding, a token count and a schedule against each other.

    Raises InputError naming `encoded`, `x` or `schedule` for: an encoding with no kernel
    or malformed buffers, M < 1, a schedule built for another pattern, shape or config, a
    task whose tile or token block does not exist, a K range outside its tile or not in
    whole stages, or tasks that do not cover every (tile, block) exactly once.
    """
    pattern = check_encoded(encoded, pattern)
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise InputError("x", f"needs at least one token, got M = {m!r}")
    m = int(m)
    config = _kernel_config(encoded, schedule)
    _check_buffers(encoded, config)
    tasks = _check_tasks(schedule, encoded, m, config)
    regions, needs_ws = _finalize_regions(tasks, encoded, m, config)
    return LaunchPlan(pattern, config, m, tasks, regions, needs_ws)
