"""Fakes and fixtures of the validation tests: a GPU executor that needs no GPU,
measurement rows produced by the model itself, and a small GPU to simulate them on."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim.engine import simulate
from tvwsim.sim.hardware import Hardware
from tvwsim.validate.points import Measurement, PointSkipped, SweepPoint, TimingPlan
from tvwsim.validate.rows import REL_TOLERANCE, SCHEMA_VERSION
from tvwsim.validate.spec import parse_spec

from tvwsim.manifest import KernelResources


# =====================================================================================
# A fake executor: the runner cannot tell it from a GPU
# =====================================================================================
class FakeExecutor:
    """Times are a deterministic function of the point; records what it was asked."""

    def __init__(self, *, fail=(), skip=(), wrong=(), interrupt_after=None):
        self.measured: list[str] = []
        self.clock_reads = 0
        self.fail, self.skip = set(fail), set(skip)
        self.wrong = wrong if isinstance(wrong, dict) else dict.fromkeys(wrong, 0.5)
        self.interrupt_after = interrupt_after

    def device_info(self) -> dict:
        return {"name": "Fake GPU 80GB", "sm_count": 4, "driver_version": "0.0"}

    def read_clocks(self) -> dict:
        self.clock_reads += 1
        return {"sm_mhz": 1000.0 + self.clock_reads, "mem_mhz": 2600.0}

    def measure(self, point: SweepPoint, timing: TimingPlan) -> Measurement:
        if self.interrupt_after is not None and len(self.measured) == self.interrupt_after:
            raise KeyboardInterrupt
        if point.key in self.skip:
            raise PointSkipped("library absent")
        if point.key in self.fail:
            raise RuntimeError("illegal address")
        self.measured.append(point.key)
        base = (point.m * point.n * point.k) ** (1 / 3) / 10
        times = tuple(base * (1 + 0.01 * i) for i in range(timing.repeats))
        return Measurement(
            kernel=f"{point.pattern}_gemm",
            times_us=times,
            max_rel_error=self.wrong.get(point.key, 1e-4),
            achieved_sparsity=point.sparsity,
            schedule_digest="d" * 64 if point.implementation == "tvwsim" else None,
            resources={"registers": 128, "smem_bytes": 49152, "threads": 128},
            timing={"method": "fake"},
        )


SMALL_SPEC = {
    "name": "small",
    "repeats": 20,
    "warmup": 1,
    "shapes": [[64, 256, 128], [16, 128, 256]],
    "patterns": ["dense", "vw", "tw", "tvw", "bw"],
    "sparsities": [0.5, 0.75],
    "policies": ["natural", "split"],
    "baselines": ["cublas", "cusparselt", "cusparse-csr", "cusparse-bsr"],
}


def small_points() -> list[SweepPoint]:
    """The points of SMALL_SPEC: every kernel and baseline on two small shapes."""
    return parse_spec(SMALL_SPEC, label="small.toml").points()


# =====================================================================================
# Measurement rows
# =====================================================================================
def make_row(i: int, **changes) -> dict:
    row = {
        "schema": SCHEMA_VERSION,
        "point": f"p{i}",
        "implementation": "tvwsim",
        "device": {"name": "Test GPU", "sm_count": 4},
        "date": "2026-01-01T00:00:00Z",
        "kernel": "dense",
        "config": "128x128x32s3w4",
        "pattern": "dense",
        "policy": "natural",
        "M": 128,
        "N": 128,
        "K": 64 + i,
        "target_sparsity": 0.0,
        "achieved_sparsity": 0.0,
        "times_us": [10.0, 11.0, 10.5],
        "median_us": 10.5,
        "max_rel_error": 1e-3,
    }
    row.update(changes)
    return row


def write_rows(path: Path, rows) -> Path:
    """`rows` as a measurement file, one JSON line each."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# =====================================================================================
# Synthetic measurements (the model's own predictions)
# =====================================================================================
def scaled_hardware(hw: Hardware, sm_count: int, name: str | None = None) -> Hardware:
    """`hw` cut down to `sm_count` SMs with L2 capacity and L2/DRAM bandwidth scaled alike.

    Per SM, everything stays as it was: the same compute, the same share of bandwidth and
    cache, so a GEMM that is L2-, DRAM- or compute-bound on the full GPU is bound the same
    way on the small one when its grid is scaled down too. Simulating it is much cheaper,
    which is what the calibration tests need.
    """
    f = sm_count / hw.sm_count
    return dataclasses.replace(
        hw,
        name=name or f"{hw.name}-{sm_count}sm",
        sm_count=int(sm_count),
        l2_bytes=int(hw.l2_bytes * f),
        l2_bandwidth_gbps=hw.l2_bandwidth_gbps * f,
        dram_bandwidth_gbps=hw.dram_bandwidth_gbps * f,
    )


def synthetic_rows(
    shapes_patterns: Sequence[tuple],
    hw: Hardware,
    *,
    noise: float = 0.0,
    seed: int = 0,
    device_name: str | None = None,
    repeats: int = 20,
    resources: Mapping[str, int] | None = None,
) -> list[dict]:
    """Measurement rows whose times are `hw`'s simulated times x (1 + noise).

    Each entry is ((M, N, K), pattern, sparsity, config, policy[, resources]), resources
    being {registers, smem_bytes} per CTA (default `resources`, else 128 registers and
    the config's shared memory). The per-run times are
    the simulated time scaled by (1 + e), e ~ N(0, noise) seeded, so the median carries
    the noise a real measurement would. Rows pass `tvwsim.validate.rows.check_row`. With known
    parameters in `hw`, `calibrate` must find them again: that is the calibration test.
    """
    rng = np.random.default_rng(seed)
    name = device_name or (hw.description or hw.name)
    rows = []
    for entry in shapes_patterns:
        (m, n, k), pattern, sparsity, config, policy = entry[:5]
        res = entry[5] if len(entry) > 5 else resources
        res = res or {"registers": 128, "smem_bytes": config.smem_bytes}
        point = SweepPoint("tvwsim", pattern, m, n, k, sparsity, config, policy)
        schedule = schedule_for_shape(m, n, k, pattern, sparsity, config=config, policy=policy)
        kr = KernelResources(int(res["registers"]), int(res["smem_bytes"]), config.threads)
        result = simulate(schedule, hw, kr, cache=False, exact=True)  # as replays do
        times = result.time_us * (1.0 + noise * rng.standard_normal(repeats))
        times = np.maximum(times, 1e-3)
        rows.append(
            {
                "schema": SCHEMA_VERSION,
                "point": point.key,
                "implementation": "tvwsim",
                "device": {"name": name, "sm_count": hw.sm_count, "synthetic": True},
                "date": "2000-01-01T00:00:00Z",
                "kernel": f"{pattern}_gemm",
                "config": config.name,
                "mma": config.mma,
                "pattern": pattern,
                "policy": policy,
                "seed": 0,
                "block": 32,
                "M": m,
                "N": n,
                "K": k,
                "target_sparsity": float(sparsity),
                "achieved_sparsity": float(result.achieved_sparsity),
                "schedule_digest": schedule.digest(),
                "ctas": int(schedule.n_tasks),
                "resources": {
                    "registers": int(res["registers"]),
                    "smem_bytes": int(res["smem_bytes"]),
                    "threads": config.threads,
                },
                "timing": {"method": "synthetic", "noise": noise},
                "times_us": [float(t) for t in times],
                "median_us": float(np.median(times)),
                "max_rel_error": 0.0,
                "tolerance": REL_TOLERANCE,
                "correct": True,
                "extra": {},
            }
        )
    return rows
