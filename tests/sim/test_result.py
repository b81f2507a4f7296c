"""SimResult (sim/result.py): shares on one time base, honest labels, plain JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim.engine import simulate
from tvwsim.sim.presets import load_preset


def _result(m=512, n=768, k=512, pattern="tw", sparsity=0.75, hw=None):
    schedule = schedule_for_shape(m, n, k, pattern, sparsity)
    return simulate(schedule, hw or load_preset("a100"), cache=False)


def test_dram_write_backs_queued_past_the_kernels_end_are_not_kernel_time():
    base = _result()
    kernel = base.kernel_cycles
    # The DRAM server was busy 1.2 x the kernel's cycles in all, the last 0.3 x after
    # the end (write-backs still queued when the last CTA retired).
    late = dataclasses.replace(
        base, dram_busy_cycles=1.2 * kernel, dram_busy_until_cycles=1.3 * kernel
    )
    assert late.dram_busy_in_kernel_cycles == pytest.approx(0.9 * kernel)
    assert late.dram_utilisation == pytest.approx(0.9)
    assert late.to_dict()["dram_utilisation"] == pytest.approx(0.9)
    # Nothing after the end: every busy cycle counts.
    on_time = dataclasses.replace(
        base, dram_busy_cycles=0.5 * kernel, dram_busy_until_cycles=0.8 * kernel
    )
    assert on_time.dram_utilisation == pytest.approx(0.5)


def test_the_bottleneck_follows_the_in_kernel_dram_share():
    base = _result()
    kernel = base.kernel_cycles
    late = dataclasses.replace(
        base,
        compute_busy_cycles=0.1 * kernel * base.sms_used,
        l2_busy_cycles=0.1 * kernel,
        dram_busy_cycles=1.04 * kernel,
        dram_busy_until_cycles=1.30 * kernel,
    )
    # 104% counted against the kernel read "memory bandwidth"; 74% in the kernel does not.
    assert late.dram_utilisation == pytest.approx(0.74)
    assert late.bottleneck != "memory bandwidth"
    assert "104%" not in late.bottleneck_detail


CASES = [
    ((4096, 1536, 384), "tw", 0.75),  # printed "DRAM busy 104%" before
    ((4096, 1536, 384), "tvw", 0.75),
    ((4096, 3072, 768), "dense", 0.0),
    ((512, 4096, 4096), "vw", 0.5),
    ((2048, 1024, 1024), "bw", 0.5),
    ((1024, 1536, 384), "ew", 0.875),
    ((64, 8192, 1024), "tw", 0.9),
]


def test_no_utilisation_exceeds_one():
    for shape, pattern, sparsity in CASES:
        for hw in (
            load_preset("a100"),
            load_preset("h100"),
            load_preset("a100", {"sm_count": 216}),
        ):
            r = _result(*shape, pattern, sparsity, hw=hw)
            shares = (r.compute_utilisation, r.l2_utilisation, r.dram_utilisation, r.tail_share)
            assert all(0.0 <= s <= 1.0 + 1e-9 for s in shares), (shape, pattern, hw.label, shares)


def test_ew_is_labelled_as_running_on_cuda_cores():
    ew = _result(pattern="ew", sparsity=0.75)
    tw = _result(pattern="tw", sparsity=0.75)
    vw = _result(pattern="vw", sparsity=0.5)
    assert ew.compute_unit == "cuda" and "CUDA cores" in ew.math_label
    assert "mma" not in ew.math_label
    assert tw.math_label == "dense mma.sync on tensor cores"
    assert vw.math_label == "sparse mma.sp on tensor cores"
    data = ew.to_dict()
    assert data["compute_unit"] == "cuda" and data["mma"] is None
    assert tw.to_dict()["mma"] == "dense" and tw.to_dict()["compute_unit"] == "tensor"


def test_the_result_names_the_effective_hardware_and_is_plain_json():
    r = _result(hw=load_preset("a100", {"sm_count": "216", "clock_mhz": "1500"}))
    assert r.hardware == "a100 (sm_count=216, clock_mhz=1500)"
    data = json.loads(json.dumps(r.to_dict()))
    assert data["hardware"] == r.hardware and data["sm_count"] == 216


def test_a_compute_bound_detail_names_the_unit_that_was_busy():
    for pattern, sparsity, unit in (("ew", 0.75, "CUDA cores"), ("tw", 0.75, "tensor cores")):
        r = _result(pattern=pattern, sparsity=sparsity)
        busy = dataclasses.replace(
            r, compute_busy_cycles=0.9 * r.kernel_cycles * r.sms_used, l2_busy_cycles=0.0
        )
        assert busy.bottleneck == "compute"
        assert busy.bottleneck_detail.startswith(f"{unit} busy 90% of the time")
