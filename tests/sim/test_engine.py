"""The engine's physics: rooflines, waves, sparse tensor cores, imbalance, determinism.

Every test states a property a GPU performance model must have and checks it on the
shipped presets (or on a preset shrunk with overrides, to keep the test fast); none
compares against a stored number.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tvwsim.kernels.formats import encode
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.kernels.tile_work import tile_work
from tvwsim.sim.engine import clear_cache, simulate, stage_smem_bytes
from tvwsim.sim.memory import BandwidthServer, LruL2, WriteBackLruL2
from tvwsim.sim.occupancy import (
    KernelResources,
    estimate_resources,
    load_resources,
    occupancy,
    resources_for,
)
from tvwsim.sim.presets import load_preset
from tvwsim.sim.result import name_bottleneck

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.schedule import build_schedule

BIG_TILE = KernelConfig.from_name("256x128x64s3w8")


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Run where no build/kernels/manifest.json exists, so every test sees the same
    (estimated) registers and shared memory whether or not kernels were built here."""
    monkeypatch.chdir(tmp_path)


SMALL_M_TILE = KernelConfig.from_name("64x16x64s4w4")


def tensor_roofline_cycles(result, hw) -> float:
    """Dense FLOPs at every SM's dense tensor rate x the preset's mma efficiency."""
    rate = hw.dense_flops_per_clk_per_sm * hw.mma_efficiency_dense * hw.sm_count
    return result.dense_flops / rate


# -- rooflines ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["a100", "h100"])
def test_large_dense_gemm_lands_near_the_tensor_core_roofline(preset):
    hw = load_preset(preset)
    r = simulate(schedule_for_shape(8192, 8192, 8192, "dense", 0.0, config=BIG_TILE), hw)
    ratio = r.kernel_cycles / tensor_roofline_cycles(r, hw)
    assert 1.0 <= ratio <= 1.6
    if preset == "a100":
        # Against the datasheet's 312 TFLOP/s too: cuBLAS reaches 250-290 at this size.
        peak = r.dense_flops / (hw.dense_flops_per_clk_per_sm * hw.sm_count)
        assert 1.0 <= r.kernel_cycles / peak <= 1.6
        assert r.bottleneck == "compute"


@pytest.mark.parametrize("preset", ["a100", "h100", "v100"])
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("config", [None, SMALL_M_TILE])
def test_skinny_gemm_is_bounded_below_by_dram_bytes_over_bandwidth(preset, m, config):
    hw = load_preset(preset)
    n = k = 4096
    r = simulate(schedule_for_shape(m, n, k, "dense", 0.0, config=config), hw)
    compulsory = 2 * (n * k + m * k + m * n)  # W, X, Y in fp16, each moved at least once
    assert r.dram_bytes >= compulsory
    assert r.kernel_cycles >= compulsory / hw.dram_bytes_per_cycle
    if config is SMALL_M_TILE:
        # A tile made for skinny GEMMs streams W at close to the achievable bandwidth.
        assert r.kernel_cycles <= 1.5 * compulsory / (hw.dram_bytes_per_cycle * hw.dram_efficiency)
        assert r.bottleneck == "memory bandwidth"


def test_more_stages_hide_more_latency_when_loads_dominate():
    hw = load_preset("h100")
    times = []
    for stages in (2, 3, 4):
        config = KernelConfig(bm=64, bn=16, bk=64, warps=4, stages=stages)
        times.append(simulate(schedule_for_shape(16, 4096, 4096, "dense", 0.0, config=config), hw))
    assert times[0].bottleneck == "latency"
    assert times[0].kernel_cycles > times[1].kernel_cycles > times[2].kernel_cycles * 0.999


def test_without_cp_async_loads_overlap_less():
    config = KernelConfig(bm=64, bn=16, bk=64, warps=4, stages=4)
    schedule = schedule_for_shape(16, 4096, 4096, "dense", 0.0, config=config)
    with_async = simulate(schedule, load_preset("h100"))
    without = simulate(schedule, load_preset("h100", {"has_cp_async": "false"}))
    assert without.kernel_cycles > 1.2 * with_async.kernel_cycles


# -- waves ----------------------------------------------------------------------------------
def test_time_grows_linearly_with_m_once_the_gpu_is_full():
    hw = load_preset("a100", {"sm_count": "8"})
    cycles = [
        simulate(schedule_for_shape(256 * j, 1024, 1024, "dense", 0.0), hw).kernel_cycles
        for j in (1, 2, 3, 4)
    ]
    steps = np.diff(cycles)
    assert np.allclose(steps, steps.mean(), rtol=0.05)
    assert cycles[3] / cycles[0] == pytest.approx(4.0, rel=0.1)


def test_one_cta_past_a_full_wave_adds_a_wave():
    hw = load_preset("a100", {"sm_count": "8", "max_ctas_per_sm": "1"})
    full = simulate(schedule_for_shape(128, 8 * 128, 2048, "dense", 0.0), hw)
    one_more = simulate(schedule_for_shape(128, 9 * 128, 2048, "dense", 0.0), hw)
    assert (full.ctas, full.waves, one_more.ctas, one_more.waves) == (8, 1, 9, 2)
    assert one_more.kernel_cycles >= 1.8 * full.kernel_cycles
    assert one_more.bottleneck == "imbalance tail" and one_more.tail_share > 0.4


def test_twice_the_sms_nearly_halves_a_compute_bound_gemm():
    schedule = schedule_for_shape(2048, 2048, 1024, "dense", 0.0)
    base = simulate(schedule, load_preset("a100", {"sm_count": "16"}))
    double = simulate(schedule, load_preset("a100", {"sm_count": "32"}))
    assert base.bottleneck == "compute"
    assert 0.45 <= double.kernel_cycles / base.kernel_cycles <= 0.6


# -- sparse tensor cores ------------------------------------------------------------------
def test_vw_halves_the_tensor_core_time_on_a_sparse_tensor_core():
    hw = load_preset("a100")
    dense = simulate(schedule_for_shape(4096, 4096, 4096, "dense", 0.0), hw)
    vw = simulate(schedule_for_shape(4096, 4096, 4096, "vw", 0.5), hw)
    # 2:4 doubles the rate; the presets' efficiencies differ (0.85 dense, 0.75 sparse).
    expected = hw.mma_efficiency_dense / (hw.sparse_tflop_ratio * hw.mma_efficiency_sparse)
    assert vw.compute_busy_cycles / dense.compute_busy_cycles == pytest.approx(expected, rel=0.01)
    assert 0.45 <= expected <= 0.65
    assert vw.kernel_cycles < 0.8 * dense.kernel_cycles


def test_vw_gains_nothing_from_the_tensor_core_without_sparse_tensor_cores():
    hw = load_preset("v100")
    assert not hw.has_sparse_tensor_cores
    dense = simulate(schedule_for_shape(2048, 2048, 2048, "dense", 0.0), hw)
    vw = simulate(schedule_for_shape(2048, 2048, 2048, "vw", 0.5), hw)
    assert vw.compute_busy_cycles == pytest.approx(dense.compute_busy_cycles, rel=0.01)
    # Only the halved weight bytes can help, and weights are a minor share of traffic.
    assert vw.kernel_cycles >= 0.85 * dense.kernel_cycles


def test_a_faster_sparse_tensor_core_helps_until_shared_memory_caps_it():
    schedule = schedule_for_shape(2048, 2048, 2048, "vw", 0.5)
    two = simulate(schedule, load_preset("a100"))
    four_hw = load_preset("a100", {"sparse_tflop_ratio": "4"})
    four = simulate(schedule, four_hw)
    assert four.compute_busy_cycles < two.compute_busy_cycles
    # At 4x the ldmatrix traffic of a stage, not the mma rate, sets its time.
    smem_floor = stage_smem_bytes(schedule) / four_hw.smem_bytes_per_clk_per_sm
    assert four.compute_busy_cycles == pytest.approx(smem_floor * schedule.task_stages().sum())


def test_bw_multiplies_absent_blocks_but_does_not_load_them():
    hw = load_preset("a100")
    dense = simulate(schedule_for_shape(1024, 1024, 1024, "dense", 0.0), hw)
    sched = schedule_for_shape(1024, 1024, 1024, "bw", 0.75)
    bw = simulate(sched, hw)
    # Same stage math as dense, over the union columns only.
    stage_ratio = sched.task_stages().sum() / (8 * 8 * 1024 // 32)
    assert bw.compute_busy_cycles / dense.compute_busy_cycles == pytest.approx(stage_ratio)
    assert bw.l2_bytes < dense.l2_bytes * stage_ratio


def test_ew_runs_on_cuda_cores_and_is_slower_than_dense():
    hw = load_preset("a100")
    dense = simulate(schedule_for_shape(2048, 1024, 1024, "dense", 0.0), hw)
    ew = simulate(schedule_for_shape(2048, 1024, 1024, "ew", 0.75), hw)
    assert ew.kernel_cycles > 2 * dense.kernel_cycles
    assert ew.useful_flops == pytest.approx(0.25 * dense.useful_flops, rel=1e-3)


# -- imbalance and policies ----------------------------------------------------------------
def tw_with_kept(kept: list[int], m: int, policy: str):
    config = KernelConfig()
    mask = np.zeros((128 * len(kept), max(kept)), dtype=bool)
    for t, c in enumerate(kept):
        mask[t * 128 : (t + 1) * 128, :c] = True
    weight = np.ones(mask.shape, dtype=np.float32)
    return build_schedule(tile_work(encode(weight, mask, "tw", config)), m, policy)


def test_skewed_tiles_are_slower_and_policies_recover_part_of_it():
    hw = load_preset("a100", {"sm_count": "16"})
    skewed, uniform = [64] * 14 + [576] * 2, [128] * 16  # same total kept-K
    assert sum(skewed) == sum(uniform)
    base = simulate(tw_with_kept(uniform, 512, "natural"), hw)
    natural = simulate(tw_with_kept(skewed, 512, "natural"), hw)
    longest = simulate(tw_with_kept(skewed, 512, "longest-first"), hw)
    split = simulate(tw_with_kept(skewed, 512, "split"), hw)
    assert natural.cycles > 1.15 * base.cycles
    assert natural.bottleneck == "imbalance tail"
    assert base.cycles < longest.cycles < natural.cycles
    assert base.cycles < split.cycles < natural.cycles
    # Split pays for its parallelism: fp32 reduction passes and workspace traffic.
    assert split.reduction_cycles > 0 and natural.reduction_cycles == 0
    assert split.dram_bytes > natural.dram_bytes


def test_many_waves_absorb_skew_by_dynamic_dispatch():
    hw = load_preset("a100", {"sm_count": "8"})
    skewed = simulate(tw_with_kept([64] * 14 + [576] * 2, 512, "natural"), hw)
    uniform = simulate(tw_with_kept([128] * 16, 512, "natural"), hw)
    assert skewed.cycles == pytest.approx(uniform.cycles, rel=0.05)


# -- determinism, caching, bookkeeping ------------------------------------------------------
def test_same_inputs_give_the_same_cycles_and_the_same_timeline():
    hw = load_preset("a100")
    a = simulate(schedule_for_shape(1024, 3072, 768, "tvw", 0.75, seed=4), hw, cache=False)
    b = simulate(schedule_for_shape(1024, 3072, 768, "tvw", 0.75, seed=4), hw, cache=False)
    assert a.cycles == b.cycles and a.events == b.events
    assert np.array_equal(a.cta_sm, b.cta_sm)
    assert np.array_equal(a.cta_end_cycles, b.cta_end_cycles)


def test_cache_returns_the_stored_result_only_for_identical_inputs():
    clear_cache()
    hw = load_preset("a100")
    schedule = schedule_for_shape(512, 768, 768, "dense", 0.0)
    first = simulate(schedule, hw)
    assert simulate(schedule_for_shape(512, 768, 768, "dense", 0.0), hw) is first
    assert simulate(schedule, hw.with_overrides({"sm_count": 54})) is not first
    other = KernelResources(registers_per_thread=128, smem_bytes=49152, threads=128)
    assert simulate(schedule, hw, other) is not first


def test_every_cta_runs_once_on_a_valid_slot_and_the_books_balance():
    hw = load_preset("a100", {"sm_count": "10"})
    schedule = schedule_for_shape(1000, 700, 500, "tw", 0.6)
    r = simulate(schedule, hw)
    assert r.ctas == schedule.n_tasks
    assert ((r.cta_sm >= 0) & (r.cta_sm < hw.sm_count)).all()
    assert ((r.cta_slot >= 0) & (r.cta_slot < r.ctas_per_sm)).all()
    assert (r.cta_end_cycles > r.cta_start_cycles).all()
    assert r.kernel_cycles == pytest.approx(r.cta_end_cycles.max())
    assert r.cycles == pytest.approx(r.kernel_cycles + r.launch_cycles + r.reduction_cycles)
    # No slot ever holds two CTAs at once.
    for sm in range(hw.sm_count):
        for slot in range(r.ctas_per_sm):
            pick = (r.cta_sm == sm) & (r.cta_slot == slot)
            order = np.argsort(r.cta_start_cycles[pick])
            starts, ends = r.cta_start_cycles[pick][order], r.cta_end_cycles[pick][order]
            assert (starts[1:] >= ends[:-1] - 1e-9).all()
    assert 0.0 <= r.compute_utilisation <= 1.0 + 1e-9
    assert 0.0 <= r.l2_utilisation <= 1.0 + 1e-9
    assert r.dram_utilisation <= 1.0 + 1e-9
    # Tasks are dispatched in schedule order.
    assert (np.diff(r.cta_start_cycles) >= -1e-9).all()
    json.dumps(r.to_dict(include_ctas=True))


def test_name_bottleneck_rule():
    assert name_bottleneck(0.9, 0.5, 0.2, 0.5)[0] == "compute"
    assert name_bottleneck(0.3, 0.8, 0.2, 0.1)[0] == "memory bandwidth"
    assert "DRAM" in name_bottleneck(0.3, 0.5, 0.9, 0.1)[1]
    assert name_bottleneck(0.5, 0.5, 0.2, 0.4)[0] == "imbalance tail"
    assert name_bottleneck(0.5, 0.5, 0.2, 0.1)[0] == "latency"


# -- memory helpers -------------------------------------------------------------------------
def test_bandwidth_server_is_fifo_and_work_conserving():
    server = BandwidthServer("x", 10.0)
    assert server.serve(0.0, 100.0) == 10.0
    assert server.serve(5.0, 50.0) == 15.0  # queued behind the first request
    assert server.serve(100.0, 10.0) == 101.0  # idle gap: starts at once
    assert server.busy_cycles == pytest.approx(16.0)
    assert server.bytes_moved == 160.0


def test_l2_hits_only_rows_that_were_loaded_and_evicts_lru():
    cache = LruL2(capacity_bytes=300)
    assert cache.access(1, 0b0011, 50.0) == 100.0
    assert cache.access(1, 0b0110, 50.0) == 50.0  # row 1 resident, row 2 not
    assert cache.access(1, 0b0111, 50.0) == 0.0
    assert cache.access(2, 0b1, 100.0) == 100.0  # 250 resident
    assert cache.access(3, 0b1, 100.0) == 100.0  # 350 > 300: chunk 1 (LRU) evicted
    assert cache.access(2, 0b1, 100.0) == 0.0
    assert cache.access(1, 0b0001, 50.0) == 50.0
    assert cache.resident_bytes <= 300


def test_a_big_l2_reads_every_operand_byte_from_dram_exactly_once():
    hw = load_preset("a100", {"l2_bytes": str(1 << 34)})
    m, n, k = 1024, 768, 512
    r = simulate(schedule_for_shape(m, n, k, "dense", 0.0), hw)
    assert r.dram_bytes == pytest.approx(2 * (m * k + n * k) + 2 * m * n)


def test_write_back_l2_sends_an_output_to_dram_only_when_it_is_evicted():
    cache = WriteBackLruL2(capacity_bytes=300)
    assert cache.store(10, 120.0) == 0.0  # dirty, resident, nothing to DRAM yet
    assert cache.access(1, 0b1, 100.0) == 100.0  # 220 resident
    assert cache.take_writeback() == 0.0
    assert cache.access(2, 0b1, 100.0) == 100.0  # 320 > 300: the output (LRU) goes out
    assert cache.take_writeback() == 120.0 and cache.take_writeback() == 0.0
    assert cache.resident_bytes == 200.0
    # An evicted input is clean: no write-back.
    cache.access(3, 0b1, 150.0)
    assert cache.take_writeback() == 0.0
    # The write-through rule (policy "lru") never inserts a store: all of it goes at once.
    assert LruL2(capacity_bytes=300).store(10, 120.0) == 120.0


def test_write_back_keeps_an_output_that_fits_in_l2_off_the_kernels_dram_traffic():
    """With a big L2 every operand is read once; the output is written to DRAM at store
    time by 'lru' and not at all during the kernel by 'lru-writeback' (Nsight Compute saw
    0-2.5 MB of DRAM writes for a 25 MB output on an H200)."""
    m, n, k = 1024, 768, 512
    schedule = schedule_for_shape(m, n, k, "dense", 0.0)
    inputs = 2 * (m * k + n * k)
    for policy, expect in (("lru", inputs + 2 * m * n), ("lru-writeback", inputs)):
        hw = load_preset("a100", {"l2_bytes": str(1 << 34), "l2_policy": policy})
        assert simulate(schedule, hw, cache=False).dram_bytes == pytest.approx(expect)
    # A small L2 must evict dirty outputs: their bytes come back into the count.
    tiny = load_preset("a100", {"l2_bytes": str(1 << 20), "l2_policy": "lru-writeback"})
    r = simulate(schedule, tiny, cache=False)
    assert r.dram_bytes > inputs + 2 * m * n - (1 << 20) - 1


# -- occupancy ------------------------------------------------------------------------------
def test_occupancy_names_its_limiter():
    hw = load_preset("a100")
    occ = occupancy(hw, estimate_resources(KernelConfig()))
    assert (occ.ctas_per_sm, occ.limited_by) == (2, "registers")
    big_smem = occupancy(hw, estimate_resources(KernelConfig(bk=64, stages=4)))
    assert big_smem.limited_by == "shared memory" and big_smem.ctas_per_sm == 1
    small = occupancy(hw, KernelResources(registers_per_thread=32, smem_bytes=1024, threads=32))
    assert small.limited_by == "CTA slots" and small.ctas_per_sm == hw.max_ctas_per_sm


def test_a_tile_that_does_not_fit_says_which_limit_and_by_how_much():
    rtx = load_preset("rtx3090")
    config = KernelConfig(bm=128, bn=128, bk=64, stages=4)  # 131072 B of pipeline buffers
    with pytest.raises(InputError) as err:
        occupancy(rtx, estimate_resources(config))
    assert err.value.argument == "tile"
    assert "131072 B shared memory" in err.value.problem and "over by 29696" in err.value.problem
    with pytest.raises(InputError) as err:
        occupancy(rtx, estimate_resources(KernelConfig(bm=256, bn=128, warps=4)))
    assert "registers per thread" in err.value.problem and "over by" in err.value.problem


def test_manifest_resources_win_over_the_estimate(tmp_path):
    config = KernelConfig.from_name("128x128x64s3w4", mma="sparse")
    manifest = tmp_path / "manifest.json"
    entry = {
        "pattern": "tvw",
        "config": config.name,
        "arch": "sm_80",
        "cubin": "tvw.cubin",
        "function": "tvw_kernel",
        "registers": 168,
        "shared_static_bytes": 0,
        "shared_dynamic_bytes": 76800,
        "stack_frame_bytes": 0,
        "spill_store_bytes": 0,
        "spill_load_bytes": 0,
    }
    manifest.write_text(json.dumps({"schema": 1, "kernels": [entry]}))
    a100, rtx = load_preset("a100"), load_preset("rtx3090")
    found = load_resources(manifest, "tvw", config, "sm_80")
    assert found == KernelResources(168, 76800, 128, "manifest")
    assert resources_for(a100, "tvw", config, manifest) == found
    assert load_resources(manifest, "tvw", config, "sm_86") == found  # sm_80 cubin runs on sm_86
    assert resources_for(rtx, "tvw", config, manifest).source == "manifest"
    assert load_resources(manifest, "tw", config, "sm_80") is None
    assert resources_for(load_preset("h100"), "tvw", config, manifest).source == "estimate"
    manifest.write_text("not json")
    with pytest.raises(InputError) as err:
        load_resources(manifest, "tvw", config, "sm_80")
    assert err.value.argument == "--manifest"
