"""The GPU executor: our kernels through `tvwsim.kernels.launch`, the vendor libraries
through torch (`tvwsim.validate.baselines`), both timed with CUDA events.

It is the `Executor` the runner (`tvwsim.validate.runner.run_sweep`) drives on a GPU:
it describes the device, reads its clocks, and measures one point - inputs built on the
CPU (`tvwsim.validate.inputs`), checked against the CPU twin and timed as
`tvwsim.validate.timing` describes. Importing it needs no GPU; constructing it does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from tvwsim.validate.inputs import baseline_inputs, kernel_inputs, point_weight
from tvwsim.validate.points import Measurement, PointSkipped, SweepPoint, TimingPlan
from tvwsim.validate.timing import check_baseline_output, check_kernel_output, time_launches


class _PycudaEvent:
    def __init__(self, cuda):
        self.event = cuda.Event()

    def record(self) -> None:
        self.event.record()

    def synchronize(self) -> None:
        self.event.synchronize()

    def elapsed_ms(self, end: _PycudaEvent) -> float:
        return float(self.event.time_till(end.event))


class _TorchEvent:
    def __init__(self, torch):
        self.event = torch.cuda.Event(enable_timing=True)

    def record(self) -> None:
        self.event.record()

    def synchronize(self) -> None:
        self.event.synchronize()

    def elapsed_ms(self, end: _TorchEvent) -> float:
        return float(self.event.elapsed_time(end.event))


SLEEP_CYCLES_PER_US = 2000
"""`torch.cuda._sleep` counts SM cycles; 2000 per microsecond is at least one microsecond
on any GPU clocked at or below 2 GHz (the H200 boosts to 1980 MHz), so the cushion that
`tvwsim.validate.timing` asks for is never shorter than asked."""


class GpuExecutor:
    """Our kernels through `tvwsim.kernels.launch`, vendor libraries through torch, CUDA events.

    Both run in the device's primary context on the legacy default stream (tvwsim.kernels.launch
    retains the primary context; torch uses it too), so torch's flush buffer, sleep kernel
    and events order correctly around PyCUDA launches. Without torch, flushing and events
    fall back to PyCUDA and there is no sleep cushion (the row's `timing` says so).
    """

    def __init__(self, *, build_dir: str | os.PathLike | None = None, device_index: int = 0):
        from tvwsim.kernels import launch
        from tvwsim.validate import baselines
        from tvwsim.validate.device_info import read_clocks, read_device_info

        self._launch = launch
        self._session = launch.session()  # InputError without pycuda or a device
        self._read_clocks = read_clocks
        self.device_index = device_index
        self.build_dir = build_dir
        info = read_device_info(device_index)
        self.info = info
        cuda = self._session.cuda
        self.arch = self._session.info.arch
        l2 = info.l2_bytes or int(
            self._session.cuda.Device(device_index).get_attribute(
                cuda.device_attribute.L2_CACHE_SIZE
            )
        )
        self.flush_bytes = 2 * max(int(l2), 1 << 20)
        self.torch = baselines.import_torch()
        self.baselines = baselines.TorchBaselines(self.torch) if self.torch else None
        if self.torch is not None:
            torch = self.torch
            self._flush_buffer = torch.empty(
                self.flush_bytes // 4, dtype=torch.int32, device="cuda"
            )
            self._flush = self._flush_buffer.zero_
            self._cushion = lambda us: torch.cuda._sleep(int(us * SLEEP_CYCLES_PER_US))
            self._event = lambda: _TorchEvent(torch)
            self._sync = torch.cuda.synchronize
            self.timing_method = {
                "method": "l2-flush",
                "flush_bytes": self.flush_bytes,
                "flush": "torch zero_ of a 2 x L2 buffer",
                "cushion": (
                    f"torch.cuda._sleep, {SLEEP_CYCLES_PER_US} cycles per us, "
                    "2 x the host's warm-up enqueue time, at least 100 us"
                ),
                "events": "torch.cuda.Event, default stream",
            }
        else:
            self._flush_alloc = cuda.mem_alloc(self.flush_bytes)
            words = self.flush_bytes // 4
            self._flush = lambda: cuda.memset_d32(self._flush_alloc, 0, words)
            self._cushion = None
            self._event = lambda: _PycudaEvent(cuda)
            self._sync = cuda.Context.synchronize
            self.timing_method = {
                "method": "l2-flush",
                "flush_bytes": self.flush_bytes,
                "flush": "cuMemsetD32 of a 2 x L2 buffer",
                "cushion": None,
                "events": "pycuda Event, default stream",
            }
        self._weights: dict[tuple[int, int, int], np.ndarray] = {}

    # -- Executor protocol ---------------------------------------------------------------
    def device_info(self) -> dict:
        data = self.info.to_dict()
        data["arch"] = self.arch
        return data

    def read_clocks(self) -> dict:
        return self._read_clocks(self.device_index).to_dict()

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        if point.implementation == "tvwsim":
            return self._measure_ours(point, timing)
        if self.baselines is None:
            raise PointSkipped("torch is not importable here, so no vendor baselines")
        return self._measure_baseline(point, timing)

    def prepared_launch(self, point: SweepPoint) -> Callable[[], Any]:
        """The point's whole operation ready to enqueue again and again (inputs resident)."""
        if point.implementation == "tvwsim":
            return self._prepare_ours(point)[1].launch
        if self.baselines is None:
            raise PointSkipped("torch is not importable here, so no vendor baselines")
        return self._prepare_baseline(point)[1].launch

    def profile_once(self, point: SweepPoint) -> None:
        """Launch the point once warm, then once more inside a profiler range.

        Under `ncu --profile-from-start off` only the kernels between the profiler's start
        and stop are measured, so each point contributes exactly its own launch (GEMM,
        and finalize where the schedule splits K). The L2 is flushed before it, as for
        the timed runs.
        """
        launch = self.prepared_launch(point)
        launch()
        self._flush()
        self._sync()
        cuda = self._session.cuda
        cuda.start_profiler()
        try:
            launch()
            self._sync()
        finally:
            cuda.stop_profiler()

    # -- helpers ---------------------------------------------------------------------------
    def _weight(self, point: SweepPoint) -> np.ndarray:
        key = (point.n, point.k, point.seed)
        if key not in self._weights:
            self._weights.clear()  # one shape at a time: points are shape-major
            self._weights[key] = point_weight(point)
        return self._weights[key]

    def _time(self, launch: Callable[[], Any], timing: TimingPlan) -> tuple[list[float], dict]:
        runs = time_launches(
            launch,
            new_event=self._event,
            flush=self._flush,
            cushion=self._cushion,
            synchronize=self._sync,
            warmup=timing.warmup,
            repeats=timing.repeats,
        )
        return runs.times_us, {
            **self.timing_method,
            "warmup": timing.warmup,
            "repeats": timing.repeats,
            "host_enqueue_us": round(runs.host_enqueue_us, 1),
            "cushion_us": None if runs.cushion_us is None else round(runs.cushion_us, 1),
            "host_bound_runs": runs.host_bound_runs,
        }

    def _prepare_ours(self, point: SweepPoint) -> tuple[Any, Any]:
        """(inputs, PreparedGemm): the point's encoding and schedule, resident on the GPU."""
        inputs = kernel_inputs(point, self._weight(point))
        prepared = self._launch.prepare(
            inputs.encoded, point.m, inputs.schedule, build_dir=self.build_dir
        )
        return inputs, prepared

    def _prepare_baseline(self, point: SweepPoint) -> tuple[tuple, Any]:
        """((x16, w16, achieved sparsity), the library call ready to launch)."""
        x16, w16, achieved = baseline_inputs(point, self._weight(point))
        prepared = self.baselines.prepare(point.implementation, x16, w16, block=point.block)
        return (x16, w16, achieved), prepared

    def _measure_ours(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        inputs, prepared = self._prepare_ours(point)
        schedule = inputs.schedule
        y = prepared.run(inputs.x, poison=True)
        err, checked = check_kernel_output(y, inputs)
        session = self._session
        # PreparedGemm.launch enqueues the whole operation (workspace zeroing, GEMM,
        # finalize) on the resident buffers; time_launches adds the flush and cushion.
        times, how = self._time(prepared.launch, timing)
        kernel = prepared.kernel
        resources = _function_resources(session.cuda, kernel.gemm)
        resources.update(
            smem_bytes=resources.get("shared_static_bytes", 0) + int(kernel.smem_bytes),
            shared_dynamic_bytes=int(kernel.smem_bytes),
            threads=point.config.threads,
            cubin=kernel.cubin.name,
        )
        return Measurement(
            kernel=f"{point.pattern}_gemm",
            times_us=tuple(times),
            max_rel_error=err,
            achieved_sparsity=float(inputs.pruned.achieved_sparsity),
            schedule_digest=schedule.digest(),
            ctas=int(schedule.n_tasks),
            resources=resources,
            timing=how,
            extra={
                "checked_tokens": checked,
                "split_tasks": bool(schedule.has_split_tasks),
                "finalize_regions": int(prepared.regions.shape[0]),
            },
        )

    def _measure_baseline(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        (x16, w16, achieved), prepared = self._prepare_baseline(point)
        err, checked = check_baseline_output(prepared.run(), x16, w16)
        times, how = self._time(prepared.launch, timing)
        return Measurement(
            kernel=prepared.routine,
            times_us=tuple(times),
            max_rel_error=err,
            achieved_sparsity=achieved,
            timing=how,
            extra={"checked_tokens": checked, **prepared.info},
        )


def _function_resources(cuda, function) -> dict:
    """Registers, static shared and local memory of a loaded kernel (the cubin's truth)."""
    attr = cuda.function_attribute
    out = {}
    for key, name in (
        ("registers", "NUM_REGS"),
        ("shared_static_bytes", "SHARED_SIZE_BYTES"),
        ("local_bytes", "LOCAL_SIZE_BYTES"),
    ):
        try:
            out[key] = int(function.get_attribute(getattr(attr, name)))
        except Exception:  # noqa: BLE001 - a missing attribute is not worth a failed point
            pass
    return out
