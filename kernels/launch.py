"""Run the CUDA kernels from Python with PyCUDA: encoded weight + X + schedule -> Y.

One launcher per pattern (`gemm_dense`, `gemm_tw`, `gemm_bw`, `gemm_vw`, `gemm_tvw`, or
`gemm` to dispatch on `encoded.pattern`) takes exactly what the CPU twin
(`tvwsim.kernels.reference.matmul`) takes plus the tile schedule
(`tvwsim.schedule.Schedule`, or its raw `tasks` array), and returns Y = X @ W.T as fp16
M x N. `prepare` keeps the weight, schedule and buffers on the device for repeated
launches and timing (`PreparedGemm`).

What a launch does (docs/kernels.md has the picture):

1. Validate everything on the host first (`launch_plan.plan_launch`) - X against the
   encoding, the schedule against the tiles - and the config's shared memory against
   the device limit (`cubins.load_kernel`), so that a mistake is an `InputError` naming
   the argument, never a crash inside the driver.
2. Copy the buffers. X is transposed to the K-major `XT` (K x m8) and its token count is
   padded to m8 = roundup(M, 8) with zeros, so every 16-byte cp.async of a row is whole;
   YT is allocated as N x m8 and sliced back to M tokens at the end.
3. Poison YT with NaN (on by default): every element must then be written by a kernel.
4. If some task covers only part of its tile's K (policy `split`), zero an fp32
   workspace; those tasks `red.global.add.f32` into it.
5. Launch the pattern's GEMM, one CTA per task (`blockIdx.x` = task index), then the
   small `finalize_rows` pass: it converts the rows of split tiles from the workspace to
   fp16 and writes zeros where no tile stores (tw/tvw rows pruned away).
6. Synchronise and check for errors after every CUDA call (`device.DeviceSession.call`).

The rest of the launcher, one concept per module: `device` (the session; the only
place pycuda is imported, lazily), `cubins` (finding or compiling a cubin),
`launch_plan` (host-side checks), `probes` (one-warp mma probes), `checks` (the
correctness checks of `tvwsim kernels check`). Importing none of them needs a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tvwsim.kernels.cubins import LoadedKernel, load_kernel
from tvwsim.kernels.device import device_info, gpu_status, session
from tvwsim.kernels.launch_plan import LaunchPlan, check_encoded, check_x, plan_launch
from tvwsim.kernels.tile_work import tile_work
from tvwsim.kernels.wgmma import weight_image

from tvwsim.errors import InputError

# Besides its own names, the launcher hands on what a caller needs around a launch - the
# device session and its status, and the host-side plan - so that one import runs a kernel.
__all__ = [
    "POISON_FP16",
    "LaunchPlan",
    "PreparedGemm",
    "device_info",
    "gemm",
    "gemm_bw",
    "gemm_dense",
    "gemm_tvw",
    "gemm_tw",
    "gemm_vw",
    "gpu_status",
    "plan_launch",
    "prepare",
    "session",
]

POISON_FP16 = 0x7E00
"""fp16 quiet NaN: YT is filled with it before a launch when `poison=True`."""


@dataclass
class PreparedGemm:
    """A GEMM with its weight, schedule and buffers on the device, for one token count.

    `run(x)` copies X in, launches and returns Y. `launch()` enqueues the whole operation
    once more on the resident buffers (workspace zeroing, GEMM and finalize pass: they are
    all part of the operation) without waiting for it; `time_ms` times repeated launches
    with CUDA events and can run a callable before each one (an L2 flush, say).
    """

    kernel: LoadedKernel
    encoded: Any
    m: int
    tasks: np.ndarray
    regions: np.ndarray
    needs_workspace: bool
    _args: list = field(default_factory=list)
    _buffers: dict = field(default_factory=dict)

    @property
    def m8(self) -> int:
        return -(-self.m // 8) * 8

    def launch(self) -> None:
        """Enqueue one complete launch on the resident X (asynchronous: synchronise or
        record an event to wait for it). Call `run` or `upload_x` first."""
        s = session()
        n, m8 = self.encoded.n, self.m8
        if self.needs_workspace:
            s.call(
                "zeroing the split-K workspace",
                s.cuda.memset_d32,
                int(self._buffers["ws"]),
                0,
                n * m8,
            )
        # A tw/tvw weight whose every row was pruned has no tile and so no task: CUDA
        # rejects an empty grid, and the finalize pass alone writes its (zero) output.
        if self.tasks.shape[0]:
            s.call(
                f"launching {self.kernel.pattern} {self.kernel.config.name}",
                self.kernel.gemm.prepared_call,
                (int(self.tasks.shape[0]), 1),
                (self.kernel.config.threads, 1, 1),
                *self._args,
                shared_size=self.kernel.smem_bytes,
            )
        if self.regions.shape[0]:
            row_map = int(self._buffers["row_map"]) if "row_map" in self._buffers else 0
            ws = int(self._buffers["ws"]) if self.needs_workspace else 0
            s.call(
                "launching finalize_rows",
                self.kernel.finalize.prepared_call,
                (int(self.regions.shape[0]), 1),
                (256, 1, 1),
                int(self._buffers["regions"]),
                row_map,
                int(n),
                int(m8),
                ws,
                int(self._buffers["yt"]),
            )

    def upload_x(self, x: np.ndarray) -> None:
        s = session()
        x16 = check_x(x, self.encoded.k)
        if x16.shape[0] != self.m:
            raise InputError(
                "x", f"has M = {x16.shape[0]} tokens; this GEMM was prepared for {self.m}"
            )
        xt = np.zeros((self.encoded.k, self.m8), dtype=np.float16)
        xt[:, : self.m] = x16.T
        s.call("copying XT", s.cuda.memcpy_htod, self._buffers["xt"], xt)

    def run(self, x: np.ndarray, *, poison: bool = True) -> np.ndarray:
        """Y = X @ W.T (fp16, M x N). With `poison`, YT is NaN-filled first."""
        s = session()
        self.upload_x(x)
        n, m8 = self.encoded.n, self.m8
        if poison:
            s.call("poisoning YT", s.cuda.memset_d16, int(self._buffers["yt"]), POISON_FP16, n * m8)
        self.launch()
        s.synchronize(f"running {self.kernel.pattern} {self.kernel.config.name}")
        yt = np.empty((n, m8), dtype=np.float16)
        s.call("copying YT back", s.cuda.memcpy_dtoh, yt, self._buffers["yt"])
        return np.ascontiguousarray(yt[:, : self.m].T)

    def time_ms(
        self,
        repeats: int = 20,
        warmup: int = 3,
        *,
        before_each: Callable[[], Any] | None = None,
    ) -> np.ndarray:
        """Milliseconds of each of `repeats` launches (after `warmup` untimed ones) on the
        resident X (call `run` or `upload_x` first).

        `before_each`, if given, runs before every launch, warm-up included, outside the
        timed interval: pass an L2 flush (a write to a buffer larger than the L2) to time
        cold-cache launches, as a layer in a network would see them. It must enqueue its
        work on the default stream so that it is ordered before the launch.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise InputError("repeats", f"must be a positive integer, got {repeats!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise InputError("warmup", f"must be a non-negative integer, got {warmup!r}")
        s = session()
        for _ in range(warmup):
            if before_each is not None:
                before_each()
            self.launch()
        s.synchronize("warm-up")
        times = np.empty(repeats, dtype=np.float64)
        for i in range(repeats):
            if before_each is not None:
                before_each()
            start, end = s.cuda.Event(), s.cuda.Event()
            start.record()
            self.launch()
            end.record()
            s.call("timing", end.synchronize)
            times[i] = start.time_till(end)
        return times


def prepare(
    encoded: Any,
    m: int,
    schedule: Any,
    *,
    build_dir: Path | str | None = None,
    pattern: str | None = None,
) -> PreparedGemm:
    """Validate (`plan_launch`), load the kernel, put the weight and schedule on the
    device."""
    plan = plan_launch(encoded, m, schedule, pattern=pattern)
    pattern, config, m = plan.pattern, plan.config, plan.m
    tasks, regions, needs_ws = plan.tasks, plan.regions, plan.needs_workspace
    # After the host checks (no device work yet); bw: the cubin compiled for the block.
    block = int(encoded.block) if pattern == "bw" else None
    kernel = load_kernel(pattern, config, build_dir, block)
    s = session()
    g = PreparedGemm(kernel, encoded, m, tasks, regions, needs_ws)
    m8, n, k = g.m8, encoded.n, encoded.k
    buf = g._buffers
    buf["tasks"] = s.to_device(tasks, "the schedule")
    buf["xt"] = s.alloc(k * m8 * 2, "XT")
    buf["yt"] = s.alloc(n * m8 * 2, "YT")
    if needs_ws:
        buf["ws"] = s.alloc(n * m8 * 4, "the split-K workspace")
    if regions.shape[0]:
        buf["regions"] = s.to_device(regions, "finalize regions")
    ws = int(buf["ws"]) if needs_ws else 0
    i32 = np.int32

    def dev(name: str, array: Any, dtype: Any) -> int:
        buf[name] = s.to_device(np.asarray(array, dtype=dtype), name)
        return int(buf[name])

    tasks_p, xt_p, yt_p = int(buf["tasks"]), int(buf["xt"]), int(buf["yt"])
    if config.mma_class == "wgmma":
        # The sm_90a kernels read the weight K-blocked and pre-swizzled, (2:4) with each
        # stage's metadata beside its values: one bulk copy per stage. Same argument list.
        values = dev("values", weight_image(encoded), np.uint8)
    else:
        values = dev("values", encoded.values, np.float16)
    if pattern == "dense":
        sig = "PPiiPiiPP"
        args = [tasks_p, values, n, encoded.k_pad]
        args += [xt_p, k, m8, yt_p, ws]
    elif pattern == "vw":
        sig = "PPPiiiPiiPP"
        args = [tasks_p, values]
        args += [dev("metadata", encoded.metadata, np.uint32), n, encoded.n_pad, encoded.k_pad]
        args += [xt_p, k, m8, yt_p, ws]
    elif pattern == "tw":
        sig = "PPPPPPiPP"
        args = [tasks_p, values]
        args += [dev("row_map", encoded.row_map, i32), dev("k_ptr", encoded.k_ptr, i32)]
        args += [dev("k_index", encoded.k_index, i32), xt_p, m8, yt_p, ws]
    elif pattern == "tvw":
        sig = "PPPPPPPiPP"
        args = [tasks_p, values]
        args += [dev("metadata", encoded.metadata, np.uint32)]
        args += [dev("row_map", encoded.row_map, i32), dev("k_ptr", encoded.k_ptr, i32)]
        args += [dev("k_index", encoded.k_index, i32), xt_p, m8, yt_p, ws]
    else:  # bw
        sig = "PPPPPiiPiiPP"
        args = [tasks_p, values]
        args += [dev("tile_col_ptr", encoded.tile_col_ptr, i32)]
        args += [dev("tile_col", encoded.tile_col, i32), dev("tile_block", encoded.tile_block, i32)]
        args += [encoded.n_pad // int(encoded.block), n]  # the block is the cubin's
        args += [xt_p, k, m8, yt_p, ws]
    kernel.gemm.prepare(sig)
    kernel.finalize.prepare("PPiiPP")
    g._args = [int(a) for a in args]
    return g


def gemm(
    encoded: Any,
    x: np.ndarray,
    schedule: Any = None,
    *,
    policy: str = "natural",
    build_dir: Path | str | None = None,
    poison: bool = True,
    pattern: str | None = None,
) -> np.ndarray:
    """Y (fp16, M x N) = X @ W.T on the GPU, W read from `encoded`'s buffers.

    `schedule` is a `tvwsim.schedule.Schedule` or its int32 `[n_tasks, 4]` tasks; None builds
    one with `policy` (natural, longest-first, split, grouped).
    """
    pattern = check_encoded(encoded, pattern)
    x16 = check_x(x, encoded.k)
    if schedule is None:
        from tvwsim.schedule import build_schedule

        schedule = build_schedule(tile_work(encoded), x16.shape[0], policy)
    prepared = prepare(encoded, x16.shape[0], schedule, build_dir=build_dir, pattern=pattern)
    return prepared.run(x16, poison=poison)


def gemm_dense(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Dense weight (`DenseWeight`) on mma.sync m16n8k16."""
    return gemm(encoded, x, schedule, pattern="dense", **kw)


def gemm_tw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Tile-wise weight (`TileWeight`, sparse=False): gathered kept-K rows."""
    return gemm(encoded, x, schedule, pattern="tw", **kw)


def gemm_bw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Block-sparse weight (`BsrWeight`): union block columns, absent blocks zero-filled."""
    return gemm(encoded, x, schedule, pattern="bw", **kw)


def gemm_vw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """2:4 weight (`VwWeight`) on the sparse tensor core (mma.sp m16n8k32)."""
    return gemm(encoded, x, schedule, pattern="vw", **kw)


def gemm_tvw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Tile-wise + 2:4 weight (`TileWeight`, sparse=True): gather + mma.sp."""
    return gemm(encoded, x, schedule, pattern="tvw", **kw)
