"""What a vendor library runs (`--config auto`): the mechanisms and the heuristic's choice.

Physics tests: each library mechanism (grouped order, split-K, small tiles, warpgroup
MMA) must move the model the way it moves a GPU; the heuristic must pick the fastest
kernel it simulated. Shapes and presets are shrunk to keep every test to a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels.tile_work import regular_tile_work
from tvwsim.sim import library
from tvwsim.sim.engine import clear_cache, simulate
from tvwsim.sim.occupancy import estimate_resources
from tvwsim.sim.presets import load_preset
from tvwsim.sim.sm import TensorCoreMma, WarpgroupMma, math_pipe_for

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.schedule import build_schedule


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clear_cache()


def small(name: str, **changes):
    """A shipped preset shrunk to a few SMs (fast) with the rest of its figures."""
    return load_preset(name).with_overrides({"sm_count": 8, **changes})


def dense_schedule(m, n, k, config, policy="natural", split_k=1):
    return build_schedule(regular_tile_work("dense", n, k, config), m, policy, split_k=split_k)


# -- grouped order ------------------------------------------------------------------------
def test_grouped_order_reads_a_token_heavy_operand_from_dram_about_once():
    # X (8192 tokens x 512 K = 8 MB) is four times the shrunk L2: weight-tile-major
    # order reads it again for every few weight tiles; grouped order about once.
    hw = small("a100", l2_bytes=2 << 20)
    m, n, k = 8192, 1024, 512
    config = KernelConfig()
    compulsory = (m * k + n * k + m * n) * 2
    natural = simulate(dense_schedule(m, n, k, config, "natural"), hw)
    grouped = simulate(dense_schedule(m, n, k, config, "grouped"), hw)
    assert natural.dram_bytes > 2.0 * compulsory
    assert grouped.dram_bytes < 1.05 * compulsory
    assert grouped.time_us <= natural.time_us


# -- split-K ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5),  # weight tiles of 16 rows
    st.integers(1, 40),  # stages of 16
    st.integers(1, 300),  # tokens
    st.integers(1, 12),
    st.sampled_from(["natural", "grouped", "longest-first"]),
)
def test_split_k_pieces_cover_every_task_exactly_once(tiles, stages, m, split, policy):
    config = KernelConfig(bm=16, bn=16, bk=16, warps=1)
    work = regular_tile_work("dense", 16 * tiles, 16 * stages, config)
    whole = build_schedule(work, m, policy)
    cut = build_schedule(work, m, policy, split_k=split)
    assert cut.n_tasks == whole.n_tasks * min(split, stages)
    pieces: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for tile, block, lo, hi in cut.tasks.tolist():
        assert hi > lo and (hi - lo) % config.bk == 0
        pieces.setdefault((tile, block), []).append((lo, hi))
    for tile, block, lo, hi in whole.tasks.tolist():
        ranges = pieces[(tile, block)]
        assert ranges[0][0] == lo and ranges[-1][1] == hi
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= config.bk  # even pieces
    assert cut.has_split_tasks == (min(split, stages) > 1)


def test_split_k_is_refused_with_the_split_policy_and_when_not_positive():
    work = regular_tile_work("dense", 64, 256, KernelConfig())
    with pytest.raises(InputError) as err:
        build_schedule(work, 64, "split", split_k=2)
    assert err.value.argument == "split_k"
    with pytest.raises(InputError) as err:
        build_schedule(work, 64, "natural", split_k=0)
    assert err.value.argument == "split_k"


def test_split_k_fills_the_gpu_when_output_tiles_are_few():
    # 16 tokens x 256 features = 2 output tiles on 8 SMs, K = 32768: unsplit, 6 SMs idle.
    hw = small("a100")
    m, n, k = 16, 256, 32768
    config = KernelConfig(bm=128, bn=16, bk=32, warps=4, stages=4)
    whole = simulate(dense_schedule(m, n, k, config, "grouped"), hw, estimate_resources(config))
    split = simulate(
        dense_schedule(m, n, k, config, "grouped", split_k=4), hw, estimate_resources(config)
    )
    assert split.time_us < 0.6 * whole.time_us
    assert split.reduction_cycles > 0  # the partial sums are paid for


# -- small tiles --------------------------------------------------------------------------
def test_a_narrow_token_tile_wastes_less_on_a_few_tokens():
    hw = small("a100")
    m, n, k = 16, 2048, 2048
    wide, narrow = KernelConfig(), KernelConfig(bm=128, bn=16, bk=32, warps=4, stages=5)
    t_wide = simulate(dense_schedule(m, n, k, wide), hw, estimate_resources(wide))
    t_narrow = simulate(dense_schedule(m, n, k, narrow), hw, estimate_resources(narrow))
    # 1/8 of the tensor work; the shared-memory floor of a narrow stage keeps it above that
    assert t_narrow.compute_busy_cycles < 0.5 * t_wide.compute_busy_cycles
    assert t_narrow.time_us < t_wide.time_us


# -- warpgroup MMA ------------------------------------------------------------------------
def test_warpgroup_mma_is_the_pipe_of_wgmma_configs_and_beats_mma_sync_on_hopper():
    hw = small("h100")
    sync = KernelConfig(bm=128, bn=256, bk=64, warps=8, stages=3)
    wg = KernelConfig(bm=128, bn=256, bk=64, warps=8, stages=3, mma_class="wgmma")
    s_sync, s_wg = dense_schedule(2048, 2048, 2048, sync), dense_schedule(2048, 2048, 2048, wg)
    assert math_pipe_for(s_sync) is TensorCoreMma and math_pipe_for(s_wg) is WarpgroupMma
    c_sync = TensorCoreMma.stage_cycles(s_sync, hw)
    c_wg = WarpgroupMma.stage_cycles(s_wg, hw)
    # Each pipe runs at its own efficiency of the same peak.
    flops = s_wg.work.stage_flops
    expected = flops / (hw.dense_flops_per_clk_per_sm * hw.wgmma_efficiency_dense)
    assert np.all(c_wg >= expected - 1e-9) and np.all(c_wg < c_sync)
    assert simulate(s_wg, hw).time_us < simulate(s_sync, hw).time_us


def test_warpgroup_mma_reads_fewer_shared_memory_bytes_than_fragment_loads():
    # A GPU whose shared memory is the bottleneck shows the difference in stage cycles.
    hw = small("h100", smem_bytes_per_clk_per_sm=16.0)
    sync = KernelConfig(bm=128, bn=128, bk=64, warps=4, stages=3)
    wg = KernelConfig(bm=128, bn=128, bk=64, warps=4, stages=3, mma_class="wgmma")
    c_sync = TensorCoreMma.stage_cycles(dense_schedule(256, 256, 256, sync), hw)
    c_wg = WarpgroupMma.stage_cycles(dense_schedule(256, 256, 256, wg), hw)
    stage = sync.weight_stage_bytes + sync.activation_stage_bytes
    assert c_wg[0] == pytest.approx((stage + stage) / 16.0)  # fill + one read of each
    assert c_sync[0] > c_wg[0]


def test_a_wgmma_config_on_a_gpu_without_warpgroup_mma_is_one_clear_error():
    wg = KernelConfig(bm=128, bn=128, bk=64, warps=4, mma_class="wgmma")
    with pytest.raises(InputError) as err:
        simulate(dense_schedule(128, 128, 128, wg), small("a100"))
    assert err.value.argument == "config" and "has_warpgroup_mma" in err.value.problem


# -- operand layout -----------------------------------------------------------------------
def layout_time(hw, m, n, k, transposes):
    return library.choose(hw, m, n, k, layout=library.Layout.from_blas(transposes)).result.time_us


def test_a_k_contiguous_weight_streams_slower_on_a_skinny_gemm():
    # 16 tokens against a 32 MB weight: the launch streams the weight from DRAM, so a
    # weight stored K-contiguous (TN) at half the stream rate takes nearly twice as long
    # as the same weight stored N-contiguous (NN); the tokens are too few to matter.
    # (A third of the DRAM keeps the shrunk GPU DRAM-bound, as the whole one is.)
    hw = small("v100", dram_bandwidth_gbps=300.0, k_contiguous_stream_efficiency=0.5)
    m, n, k = 16, 2048, 8192
    nn, tn = layout_time(hw, m, n, k, "NN"), layout_time(hw, m, n, k, "TN")
    assert 1.6 < tn / nn <= 2.0
    # Nothing K-contiguous (NT): the GPU's plain DRAM rate, as with no layout penalty.
    plain = small("v100", dram_bandwidth_gbps=300.0, k_contiguous_stream_efficiency=1.0)
    assert layout_time(hw, m, n, k, "NT") == pytest.approx(layout_time(plain, m, n, k, "NT"))


def test_the_layout_barely_moves_a_compute_bound_gemm():
    hw = small("v100", k_contiguous_stream_efficiency=0.5)
    nn, tt = layout_time(hw, 2048, 1024, 2048, "NN"), layout_time(hw, 2048, 1024, 2048, "TT")
    assert tt / nn < 1.1


def test_without_a_layout_penalty_every_layout_runs_alike():
    hw = small("v100", k_contiguous_stream_efficiency=1.0)
    times = {t: layout_time(hw, 16, 1024, 4096, t) for t in ("NN", "NT", "TN", "TT")}
    assert len(set(times.values())) == 1, times


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.1, 1.0),
    st.sampled_from(["NN", "NT", "TN", "TT"]),
    st.sampled_from([(16, 512, 4096), (4096, 64, 1024), (512, 512, 512)]),
)
def test_the_launch_dram_rate_lies_between_the_two_stream_rates(factor, transposes, shape):
    hw = load_preset("v100").with_overrides({"k_contiguous_stream_efficiency": factor})
    m, n, k = shape
    layout = library.Layout.from_blas(transposes)
    schedule = dense_schedule(m, n, k, KernelConfig())
    eff = library.layout_hardware(hw, layout, schedule).dram_efficiency
    assert hw.dram_efficiency * factor - 1e-12 <= eff <= hw.dram_efficiency + 1e-12
    if transposes == "NT":  # nothing K-contiguous
        assert eff == hw.dram_efficiency
    # Byte-weighted: the launch reaches the rate at which all its streams finish together.
    w, x, y = n * k * 2, m * k * 2, m * n * 2
    slow = (w if layout.w_k_contiguous else 0) + (x if layout.x_k_contiguous else 0)
    expected = (w + x + y) / ((w + x + y - slow) + slow / factor)
    assert eff == pytest.approx(hw.dram_efficiency * expected)


def test_layouts_are_named_by_blas_transposes():
    for t in ("NN", "NT", "TN", "TT"):
        assert library.Layout.from_blas(t.lower()).blas == t
    assert library.OURS.blas == "TT"  # W K-contiguous, activations read as XT
    assert library.Layout.from_blas("TN") == library.Layout(True, True)  # torch Linear
    for bad in ("N", "NX", "TNT", ""):
        with pytest.raises(InputError) as err:
            library.Layout.from_blas(bad)
        assert err.value.argument == "--layout" and "NN, NT, TN, TT" in err.value.problem


# -- cuSPARSE CSR --------------------------------------------------------------------------
def test_a_csr_spmm_pays_per_nonzero_then_per_token():
    # Row-split CSR: each stored nonzero costs a fixed visit and then one FMA per token,
    # so at a fixed nnz the time grows by the same step for every token added, and at a
    # fixed token count it grows in proportion to nnz.
    hw = load_preset("h200").with_overrides({"launch_overhead_us": 0.0})
    t = {m: library.cusparse_csr_us(hw, m, 4096, 4096, 4e6) for m in (64, 128, 192, 256)}
    steps = np.diff([t[m] for m in sorted(t)])
    assert steps == pytest.approx([steps[0]] * 3, rel=1e-9) and steps[0] > 0
    lat = hw.dram_latency_cycles / hw.clock_mhz
    ratio = (library.cusparse_csr_us(hw, 64, 4096, 4096, 8e6) - lat) / (t[64] - lat)
    assert ratio == pytest.approx(2.0, rel=1e-9)
    # A few tokens: the visit per nonzero, not the FMAs, sets the time.
    cheap = hw.with_overrides({"csr_nonzero_cycles": hw.csr_nonzero_cycles / 10})
    assert library.cusparse_csr_us(cheap, 1, 4096, 4096, 4e6) < 0.5 * library.cusparse_csr_us(
        hw, 1, 4096, 4096, 4e6
    )


def test_a_csr_spmm_on_a_slow_dram_streams_its_arrays_once():
    hw = load_preset("h200").with_overrides({"dram_bandwidth_gbps": 1.0, "launch_overhead_us": 0.0})
    m, n, k, nnz = 16, 1024, 1024, 1e5
    moved = nnz * 6 + (n + 1) * 4 + (m * k + m * n) * 2
    cycles = moved / (hw.dram_bytes_per_cycle * hw.dram_efficiency) + hw.dram_latency_cycles
    assert library.cusparse_csr_us(hw, m, n, k, nnz) == pytest.approx(cycles / hw.clock_mhz)


def test_a_csr_spmm_of_no_size_is_refused():
    with pytest.raises(InputError) as err:
        library.cusparse_csr_us(load_preset("h200"), 0, 64, 64, 10)
    assert err.value.argument == "shape"


# -- the heuristic ------------------------------------------------------------------------
def test_the_choice_is_the_fastest_simulated_candidate():
    hw = small("h100")
    choice = library.choose(hw, 512, 1024, 1024, "dense")
    simulated = [c.simulated_us for c in choice.candidates if c.simulated_us is not None]
    assert len(simulated) == library.SHORTLIST
    assert choice.result.time_us == pytest.approx(min(simulated))
    assert choice.config.mma_class == "wgmma"  # Hopper libraries use warpgroup MMA
    estimates = [c.estimate_us for c in choice.candidates]
    assert estimates == sorted(estimates)


def test_the_choice_adapts_tile_and_split_to_the_shape():
    hw = small("a100")
    few_tokens = library.choose(hw, 16, 512, 65536, "dense")
    assert few_tokens.config.bn <= 32  # a 128-token tile would be 7/8 padding
    assert few_tokens.split_k > 1  # 4 output tiles on 8 SMs: K is split
    assert few_tokens.config.mma_class == "mma.sync"  # Ampere has no warpgroup MMA
    sparse = library.choose(hw, 1024, 1024, 1024, "vw")
    assert sparse.library == "cuSPARSELt" and sparse.config.mma == "sparse"
    dense = library.choose(hw, 1024, 1024, 1024, "dense")
    assert sparse.result.time_us < dense.result.time_us


def test_every_menu_config_fits_and_names_round_trip():
    for name in ("a100", "h100", "v100"):
        hw = load_preset(name)
        for pattern in library.LIBRARIES:
            configs = library.menu(hw, pattern)
            assert configs, (name, pattern)
            for c in configs:
                assert KernelConfig.from_name(c.name, mma=c.mma) == c


def test_patterns_without_a_library_are_refused_by_name():
    with pytest.raises(InputError) as err:
        library.choose(small("a100"), 64, 64, 64, "tw")
    assert err.value.argument == "--config" and "cuBLAS" in err.value.problem


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([16, 32, 64, 128, 192, 256]),
    st.sampled_from([16, 32, 64, 128, 256]),
    st.sampled_from([16, 32, 64, 128]),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(2, 8),
    st.sampled_from(["mma.sync", "wgmma"]),
)
def test_config_names_round_trip_with_the_mma_class(bm, bn, bk, warps, stages, mma_class):
    try:
        config = KernelConfig(bm=bm, bn=bn, bk=bk, warps=warps, stages=stages, mma_class=mma_class)
    except InputError as err:
        assert err.argument in ("bm", "bn", "bk", "warps", "mma_class")
        return
    assert KernelConfig.from_name(config.name) == config
    assert config.name.endswith("-wgmma") == (mma_class == "wgmma")
