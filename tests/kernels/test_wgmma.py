"""The sm_90a warpgroup-MMA kernels on the CPU: the numpy emulation of descriptors,
swizzle and accumulator ownership (kernels/wgmma.py), the whole dense kernel emulated
against its CPU twin on every check shape, and (with nvcc) the compiled cubin's
resources and SASS: HGMMA with a transposed B, the bulk copy, cp.async, mbarriers, no
local memory, no spills and no serialised wgmma pipeline.

On silicon the same kernel runs under `tvwsim kernels check` once the launcher passes the
blocked weight (docs/kernels.md, "Hopper kernels: status").
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks
from tvwsim.kernels.formats import compress_2to4, encode, metadata_to_lanes
from tvwsim.kernels.mma_sp import pack_c
from tvwsim.kernels.reference import matmul
from tvwsim.kernels.wgmma import (
    MatrixDescriptor,
    WgmmaLayout,
    accumulator_owner,
    check_wgmma_config,
    emulate,
    read_operand,
    swizzle_address,
    weight_image,
    wgmma_dense,
    wgmma_sparse,
    write_activation_stage,
)

from tests.kernels.test_cuda_build import HAVE_NVCC
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

DENSE = kbuild.WGMMA_VARIANTS["dense"][0]
SPARSE = kbuild.WGMMA_VARIANTS["tvw"][0]


def _wgmma_config(bm: int, bn: int, mma: str = "dense") -> KernelConfig:
    return KernelConfig(bm=bm, bn=bn, bk=64, stages=4, warps=bm // 16, mma=mma, mma_class="wgmma")


seeds = st.integers(0, 2**32 - 1)


# -- descriptors and swizzle ------------------------------------------------------------
def test_descriptor_fields_sit_where_the_ptx_isa_puts_them():
    desc = MatrixDescriptor(start_bytes=0x2420, lbo_bytes=8192, sbo_bytes=1024, base_offset=5)
    value = desc.encode()
    assert value & 0x3FFF == 0x2420 >> 4
    assert value >> 16 & 0x3FFF == 8192 >> 4
    assert value >> 32 & 0x3FFF == 1024 >> 4
    assert value >> 49 & 7 == 5
    assert value >> 62 == 1  # 128-byte swizzle
    assert MatrixDescriptor.decode(value) == desc


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"start_bytes": 8}, "start_bytes"),
        ({"lbo_bytes": 1 << 18}, "lbo_bytes"),
        ({"swizzle": "16B"}, "swizzle"),
        ({"base_offset": 8}, "base_offset"),
    ],
)
def test_a_descriptor_that_cannot_be_encoded_is_refused(kwargs, argument):
    fields = {"start_bytes": 0, "lbo_bytes": 16, "sbo_bytes": 1024, **kwargs}
    with pytest.raises(InputError) as err:
        MatrixDescriptor(**fields)
    assert err.value.argument == argument


def test_the_128_byte_swizzle_moves_chunk_c_of_row_r_to_chunk_c_xor_r():
    rows, chunks = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    physical = swizzle_address(rows * 128 + chunks * 16 + 6, "128B")
    assert np.array_equal(physical % 16, np.full_like(physical, 6))
    assert np.array_equal(physical // 128, rows)
    assert np.array_equal(physical % 128 // 16, chunks ^ (rows % 8))
    # 64-byte mode: 2 bits of chunk, XORed with row bits (address bits 8:7).
    assert swizzle_address(3 * 128 + 16, "64B") == 3 * 128 + 16 * (1 ^ 3)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, k_step=st.integers(0, 3), rows=st.sampled_from([64, 128]))
def test_a_k_major_tile_written_by_the_kernels_rule_reads_back_through_its_descriptor(
    seed, k_step, rows
):
    rng = np.random.default_rng(seed)
    tile = rng.standard_normal((rows, 64)).astype(np.float16)
    smem = np.zeros(rows * 128 + 1024, dtype=np.uint8)
    # weight_image's writer: the kernel's bulk copy lands these bytes unchanged.
    encoded = encode(tile.astype(np.float32), None, "dense", _wgmma_config(rows, 256))
    smem[: rows * 128] = weight_image(encoded)
    for group in range(rows // 64):
        desc = MatrixDescriptor(group * 64 * 128 + 32 * k_step, 16, 1024)
        got = read_operand(smem, desc, 64, 16, "K")
        want = tile[64 * group : 64 * group + 64, 16 * k_step : 16 * k_step + 16]
        assert np.array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, k_step=st.integers(0, 3), bn=st.sampled_from([64, 128, 256]))
def test_an_n_major_activation_stage_reads_back_through_its_descriptor(seed, k_step, bn):
    rng = np.random.default_rng(seed)
    xt = rng.standard_normal((64, bn)).astype(np.float16)
    stage = np.zeros(64 * bn * 2, dtype=np.uint8)
    write_activation_stage(stage, xt, np.arange(64), 0, bn)
    desc = MatrixDescriptor(k_step * 2048, 64 * 128, 1024)
    got = read_operand(stage, desc, bn, 16, "MN")  # N x K
    assert np.array_equal(got, xt[16 * k_step : 16 * k_step + 16].T)


def test_swapping_the_n_major_strides_reads_a_different_matrix():
    # The emulation can tell a wrong descriptor from a right one (LBO and SBO have
    # distinct roles for N-major operands).
    rng = np.random.default_rng(3)
    xt = rng.standard_normal((64, 256)).astype(np.float16)
    stage = np.zeros(64 * 256 * 2, dtype=np.uint8)
    write_activation_stage(stage, xt, np.arange(64), 0, 256)
    swapped = read_operand(stage, MatrixDescriptor(0, 1024, 64 * 128), 256, 16, "MN")
    assert not np.array_equal(swapped, xt[:16].T)


def test_activation_rows_past_k_and_tokens_past_m8_are_zero():
    xt = np.ones((4, 40), dtype=np.float16)  # m8 = 40: tokens 40.. of a 64 block are zero
    stage = np.full(64 * 64 * 2, 0xFF, dtype=np.uint8)
    rows = np.array([0, -1, 3] + [-1] * 61)
    write_activation_stage(stage, xt, rows, 0, 64)
    got = read_operand(stage, MatrixDescriptor(0, 8192, 1024), 64, 16, "MN").T  # K x N
    assert np.all(got[0, :40] == 1) and np.all(got[2, :40] == 1)
    assert np.all(got[1] == 0) and np.all(got[:, 40:] == 0) and np.all(got[3:] == 0)


def test_an_operand_past_the_end_of_shared_memory_is_refused():
    with pytest.raises(InputError) as err:
        read_operand(np.zeros(1024, np.uint8), MatrixDescriptor(0, 16, 1024), 64, 16, "K")
    assert err.value.argument == "descriptor"


# -- accumulators -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 64, 256])
def test_every_accumulator_element_has_exactly_one_owner(n):
    rows, cols = accumulator_owner(n)
    flat = rows * n + cols
    assert np.array_equal(np.sort(flat.ravel()), np.arange(64 * n))
    # Warp w owns rows 16w .. 16w + 15.
    assert np.array_equal(rows.reshape(4, 32, -1).min(axis=(1, 2)), [0, 16, 32, 48])
    assert np.array_equal(rows.reshape(4, 32, -1).max(axis=(1, 2)), [15, 31, 47, 63])


def test_one_warps_accumulators_are_the_mma_sync_c_fragments_side_by_side():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((64, 32)).astype(np.float32)
    rows, cols = accumulator_owner(32)
    regs = d[rows, cols]  # (128, 16)
    for warp in range(4):
        for block in range(4):  # n8 column block
            want = pack_c(d[16 * warp : 16 * warp + 16, 8 * block : 8 * block + 8])
            got = regs[32 * warp : 32 * warp + 32, 4 * block : 4 * block + 4]
            assert np.array_equal(got, want)


def test_an_accumulator_width_wgmma_has_not_is_refused():
    with pytest.raises(InputError) as err:
        accumulator_owner(12)
    assert err.value.argument == "n"


# -- one wgmma ------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_one_wgmma_is_a_at_b_plus_d_in_the_owners_registers(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((64, 64)).astype(np.float16)
    xt = rng.standard_normal((64, 128)).astype(np.float16)
    config = _wgmma_config(64, 128)
    layout = WgmmaLayout(config)
    smem = np.zeros(layout.stage_bytes, dtype=np.uint8)
    smem[: layout.a_bytes] = weight_image(encode(a.astype(np.float32), None, "dense", config))
    write_activation_stage(smem[layout.a_bytes :], xt, np.arange(64), 0, 128)
    c = rng.standard_normal((64, 128)).astype(np.float32)
    rows, cols = accumulator_owner(128)
    d = c[rows, cols]
    for ks in range(4):
        da, db = layout.descriptors(0, 0, ks)
        d = wgmma_dense(smem, da, db, 128, d)
    want = a.astype(np.float64) @ xt.astype(np.float64) + c
    assert np.allclose(d, want[rows, cols], rtol=1e-5, atol=1e-4)
    fresh = wgmma_dense(smem, *layout.descriptors(0, 0, 0), 128, None, scale_d=False)
    first = a[:, :16].astype(np.float64) @ xt[:16].astype(np.float64)
    assert np.allclose(fresh, first[rows, cols], rtol=1e-5, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_one_wgmma_sp_expands_each_warps_rows_by_its_metadata_registers(seed):
    # A 2:4 weight compressed and lane-ordered by the encoder's own helpers, stored as
    # weight_image stores it (64-byte swizzle, then the words): one wgmma.sp per k32.
    rng = np.random.default_rng(seed)
    config = _wgmma_config(128, 64, "sparse")
    layout = WgmmaLayout(config)
    mask = np.zeros((128, 64), dtype=bool)
    groups = np.argsort(rng.random((128, 16, 4)), axis=2)[:, :, :2]
    np.put_along_axis(mask.reshape(128, 16, 4), groups, True, axis=2)
    w = np.where(mask, rng.standard_normal((128, 64)), 0).astype(np.float16)
    values, meta16 = compress_2to4(w, mask)
    words = metadata_to_lanes(meta16)  # [8, 1, 32]
    smem = np.zeros(layout.stage_bytes, dtype=np.uint8)
    encoded = encode(w.astype(np.float32), mask, "vw", config)
    smem[: layout.weight_bytes] = weight_image(encoded)
    assert np.array_equal(smem[layout.a_bytes : layout.weight_bytes].view(np.uint32), words.ravel())
    xt = rng.standard_normal((64, 64)).astype(np.float16)
    write_activation_stage(smem[layout.weight_bytes :], xt, np.arange(64), 0, 64)
    e = smem[layout.a_bytes : layout.weight_bytes].view(np.uint32)
    rows, cols = accumulator_owner(64)
    want = w.astype(np.float64) @ xt.astype(np.float64)
    for wg in range(2):  # warpgroup wg: rows 64 wg .., metadata words 128 wg ..
        d = None
        for ks in range(2):
            da, db = layout.descriptors(0, wg, ks)
            e_wg = e[128 * wg : 128 * wg + 128]
            d = wgmma_sparse(smem, da, db, 64, e_wg, ks, d, scale_d=ks > 0)
        assert np.allclose(d, want[64 * wg + rows, cols], rtol=1e-5, atol=1e-4)
    assert np.array_equal(
        values[:64, :16], read_operand(smem, layout.descriptors(0, 0, 0)[0], 64, 16, "K")
    )


def test_wgmma_sp_reads_only_the_selectors_thread_pairs():
    # Garbage in the lanes a selector does not read changes nothing; an illegal pair in
    # one it reads is refused.
    rng = np.random.default_rng(5)
    config = _wgmma_config(128, 64, "sparse")
    layout = WgmmaLayout(config)
    smem = rng.integers(0, 255, layout.stage_bytes, dtype=np.uint8)
    smem[: layout.a_bytes] = 0x3C  # finite fp16 values
    smem[layout.weight_bytes :] = 0x3C
    e = np.full(128, 0x44444444, dtype=np.uint32)
    da, db = layout.descriptors(0, 0, 0)
    clean = wgmma_sparse(smem, da, db, 64, e, 0, None, scale_d=False)
    noisy = e.copy()
    noisy[2::4] = noisy[3::4] = 0  # lanes 4g + 2, 4g + 3: selector 1's, not 0's
    assert np.array_equal(wgmma_sparse(smem, da, db, 64, noisy, 0, None, scale_d=False), clean)
    with pytest.raises(InputError) as err:
        wgmma_sparse(smem, da, db, 64, noisy, 1, None, scale_d=False)
    assert err.value.argument == "e_regs"


# -- the kernels, emulated -------------------------------------------------------------------
EMULATED_CASES = [
    (checks.CHECK_SHAPES[0], "natural"),
    (checks.CHECK_SHAPES[1], "longest-first"),
    (checks.CHECK_SHAPES[1], "forced-split"),
    (checks.CHECK_SHAPES[2], "split"),
]


@pytest.mark.parametrize("pattern", ["dense", "tw", "vw", "tvw"])
@pytest.mark.parametrize("shape, policy", EMULATED_CASES)
def test_the_emulated_wgmma_kernels_match_their_cpu_twins(pattern, shape, policy):
    m, n, k = shape
    config = kbuild.WGMMA_VARIANTS[pattern][0]
    case = checks.CheckCase(pattern, config, m, n, k, policy, seed=11)
    encoded, x, schedule = checks.make_case_inputs(case)
    tasks = np.asarray(getattr(schedule, "tasks", schedule))
    y = emulate(encoded, x, tasks)
    assert checks.relative_error(y, matmul(x, encoded)) <= checks.REL_TOLERANCE / 10


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_the_emulated_gather_kernels_handle_empty_tiles_and_pruned_rows(pattern):
    config = kbuild.WGMMA_VARIANTS[pattern][0]
    case = checks.CheckCase(pattern, config, 70, 300, 300, "split", seed=7, edge=True)
    encoded, x, schedule = checks.make_case_inputs(case)
    y = emulate(encoded, x, np.asarray(schedule.tasks))
    assert checks.relative_error(y, matmul(x, encoded)) <= checks.REL_TOLERANCE / 10


def test_a_weight_written_without_the_swizzle_gives_wrong_numbers():
    # The emulation reads through the hardware's address swizzle; an unswizzled image
    # (a kernel that forgot the XOR) must fail the comparison.
    case = checks.CheckCase("dense", DENSE, *checks.CHECK_SHAPES[0], "natural", seed=2)
    encoded, x, schedule = checks.make_case_inputs(case)
    plain = encoded.values.reshape(-1, 128, encoded.k_pad // 64, 64).transpose(0, 2, 1, 3)
    y = emulate(encoded, x, schedule.tasks, weight_image_bytes=plain.reshape(-1))
    assert checks.relative_error(y, matmul(x, encoded)) > 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bm": 128, "warps": 4},  # two warpgroups' rows on one warpgroup
        {"bn": 96},  # not whole 64-token atoms
        {"bk": 32},  # a weight row of 64 bytes
        {"stages": 2},
        {"bm": 64, "warps": 4, "mma": "sparse"},  # activations off a 1 KiB atom
    ],
)
def test_a_config_the_wgmma_kernels_cannot_build_is_refused(kwargs):
    fields = {"bm": 128, "bn": 256, "bk": 64, "stages": 4, "warps": 8, "mma_class": "wgmma"}
    config = KernelConfig(**{**fields, **kwargs})
    with pytest.raises(InputError) as err:
        check_wgmma_config(config)
    assert err.value.argument == "config"
    with pytest.raises(InputError):
        kbuild.check_pattern_config("dense", config)


def test_wgmma_variants_are_built_for_sm_90a_only():
    assert kbuild.builds_for(DENSE, "sm_90a")
    assert not kbuild.builds_for(DENSE, "sm_90")
    assert kbuild.builds_for(kbuild.VARIANTS["dense"][0], "sm_80")
    assert not kbuild.builds_for(kbuild.VARIANTS["dense"][0], "sm_90a")
    assert kbuild.kernel_source("dense", DENSE).name == "dense_wgmma.cu"
    # The default selection (and so the default build and the checks) is unchanged.
    assert all(c.mma_class == "mma.sync" for _, c in kbuild.selected_variants())
    assert ("dense", DENSE) in kbuild.selected_variants(["dense"], wgmma=True)
    with pytest.raises(InputError) as err:
        kbuild.compile_kernel("dense", DENSE, "sm_90", Path("."))
    assert err.value.argument == "arch"
    assert set(kbuild.WGMMA_VARIANTS) == {"dense", "tw", "vw", "tvw"}
    for pattern in kbuild.WGMMA_VARIANTS:
        assert kbuild.kernel_source(pattern, DENSE).is_file()


# -- the compiled kernel (nvcc, no GPU) ------------------------------------------------------
MMA_SASS = {"dense": "HGMMA.64x256x16.F32", "tw": "HGMMA.64x256x16.F32"}
MMA_SASS.update({"vw": "HGMMA.SP.64x256x32.F32", "tvw": "HGMMA.SP.64x256x32.F32"})
WGMMA_BUILDS = [(p, c) for p, cs in kbuild.WGMMA_VARIANTS.items() for c in cs]
BUILD_IDS = [f"{p}-{c.name}" for p, c in WGMMA_BUILDS]


@pytest.fixture(scope="module")
def wgmma_cubins(tmp_path_factory):
    """Every WGMMA_VARIANTS kernel compiled for sm_90a: (cubin, ptxas log) per
    (pattern, config name)."""
    if not HAVE_NVCC:
        pytest.skip("nvcc not found: install the CUDA toolkit (12.5+) or put it on PATH")
    out = tmp_path_factory.mktemp("wgmma")
    built = {}
    for pattern, config in WGMMA_BUILDS:
        name = kbuild.cubin_name(pattern, config, kbuild.WGMMA_ARCH)
        cmd = kbuild.nvcc_command(
            kbuild.find_nvcc(),
            kbuild.kernel_source(pattern, config),
            kbuild.WGMMA_ARCH,
            out / name,
            kbuild.config_defines(config),
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        built[pattern, config.name] = (out / name, proc.stderr + proc.stdout)
    return built


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
@pytest.mark.parametrize("pattern, config", WGMMA_BUILDS, ids=BUILD_IDS)
def test_the_wgmma_kernels_compile_without_spills_or_a_serialised_pipeline(
    wgmma_cubins, pattern, config
):
    cubin, log = wgmma_cubins[pattern, config.name]
    report = kbuild.parse_ptxas(log)[kbuild.KERNEL_FUNCTIONS[pattern]]
    assert report.spill_store_bytes == report.spill_load_bytes == 0
    assert report.stack_frame_bytes == 0
    # The launch's registers a thread times the CTA's threads fit the SM's 64 K (with a
    # producer, setmaxnreg moves registers from it to the consumers at run time).
    assert report.registers * config.threads <= 65536
    # ptxas says C7515 when registers a wgmma accumulates into are written by other
    # instructions inside the pipeline: the wgmma would then run one at a time.
    assert "serialized" not in log, log


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
@pytest.mark.parametrize("pattern, config", WGMMA_BUILDS, ids=BUILD_IDS)
def test_the_wgmma_sass_is_warpgroup_mma_fed_by_bulk_and_async_copies(
    wgmma_cubins, pattern, config
):
    cubin, _ = wgmma_cubins[pattern, config.name]
    code = kbuild.sass_functions(cubin)[kbuild.KERNEL_FUNCTIONS[pattern]]
    ops = [op for _, op, _ in code]
    hgmma = [(op, args) for _, op, args in code if op.startswith("HGMMA")]
    # One wgmma per K step of a 64-K stage (k16 dense, k32 sparse), B read N-major.
    per_stage = 64 // (32 if pattern in ("vw", "tvw") else 16)
    assert len(hgmma) == per_stage
    assert all(op == MMA_SASS[pattern] and ".tnspB" in args for op, args in hgmma)
    if pattern in ("vw", "tvw"):  # both metadata selectors, in K order
        selectors = [re.search(r", (0x[01])\b", args).group(1) for _, args in hgmma]
        assert selectors == ["0x0", "0x1"]
    assert not any(op.startswith("HMMA") or op.startswith("LDSM") for op in ops)
    assert any(op.startswith("UBLKCP") for op in ops)  # the weight's bulk copy
    assert any(op.startswith("LDGSTS") for op in ops)  # the activations' cp.async
    assert any(op.startswith("SYNCS.PHASECHK") for op in ops)  # waiting on the mbarrier
    assert any(op.startswith("WARPGROUP.DEPBAR") for op in ops)  # wgmma.wait_group
    assert not any(re.match(r"(LDL|STL)\b", op) for op in ops)  # no local memory
    # A producer warpgroup gives registers away and the consumers take them (setmaxnreg).
    setmaxnreg = sorted(op for op in ops if op.startswith("USETMAXREG"))
    if config.producer_warps:
        assert setmaxnreg == ["USETMAXREG.DEALLOC.CTAPOOL", "USETMAXREG.TRY_ALLOC.CTAPOOL"]
    else:
        assert setmaxnreg == []


# -- the wgmma probe and where the kernels plug in ---------------------------------------------
@pytest.mark.parametrize("sparse, selector", [(False, 0), (True, 0), (True, 1)])
def test_a_probe_case_expects_what_plain_matrix_math_gives(sparse, selector):
    from tvwsim.kernels.wgmma import probe_case

    for seed in range(3):
        case, plain = probe_case(sparse, seed, selector)
        assert case.c.shape == plain.shape == (128, 128)
        assert np.allclose(case.expected(), plain, rtol=1e-5, atol=1e-4)
        if sparse:
            # The lanes the selector skips hold garbage: words no encoder writes.
            skipped = case.e[(np.arange(128) & 3) // 2 != selector]
            assert not np.all(skipped == case.e[(np.arange(128) & 3) // 2 == selector])


def test_the_wgmma_probe_refuses_anything_but_a_probe_case():
    from tvwsim.kernels.probes import wgmma_probe

    with pytest.raises(InputError) as err:
        wgmma_probe(np.zeros(4))
    assert err.value.argument == "case"


def test_the_checks_add_the_wgmma_variants_only_on_an_sm_90_gpu():
    default = checks.check_cases()
    hopper = checks.check_cases(wgmma=True)
    assert not any(c.config.mma_class == "wgmma" for c in default)
    added = [c for c in hopper if c.config.mma_class == "wgmma"]
    assert {c.pattern for c in added} == set(kbuild.WGMMA_VARIANTS)
    assert {c.policy for c in added} >= {"natural", "forced-split", "split"}
    quick = checks.check_cases(quick=True, wgmma=True)
    assert {c.pattern for c in quick if c.config.mma_class == "wgmma"} == set(kbuild.WGMMA_VARIANTS)
    assert [name for name, _ in checks.wgmma_probe_cases()] == [
        "wgmma.sp probe selector 0",
        "wgmma.sp probe selector 1",
        "wgmma probe (dense)",
    ]


def test_an_sm_90_gpu_takes_the_sm_90a_cubins_and_no_other_gpu_does():
    from tvwsim.kernels import cubins

    assert kbuild.wgmma_arch("sm_90") == kbuild.wgmma_arch("sm_90a") == "sm_90a"
    for arch in ("sm_80", "sm_86", "sm_100"):
        with pytest.raises(InputError) as err:
            kbuild.wgmma_arch(arch)
        assert err.value.argument == "device"
    names = [p.name for p in cubins._sources("tvw", SPARSE)]
    assert names == ["common.cuh", "wgmma.cuh", "tvw_wgmma.cu"]
    assert [p.name for p in cubins._sources("tvw", kbuild.VARIANTS["tvw"][0])] == [
        "common.cuh",
        "tvw.cu",
    ]


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_the_wgmma_probe_is_one_warpgroup_mma_each(tmp_path):
    report = kbuild.compile_wgmma_probe(tmp_path)
    assert set(report) == {"wgmma_probe", "wgmma_sp_probe"}
    assert all(r.spill_store_bytes == r.stack_frame_bytes == 0 for r in report.values())
    code = kbuild.sass_functions(tmp_path / kbuild.wgmma_probe_cubin_name())

    # ptxas joins the two selector branches with a no-op HGMMA writing RZ; the real ones
    # accumulate into registers.
    def real(function):
        return [op for _, op, args in code[function] if op.startswith("HGMMA") and args[:2] != "RZ"]

    assert real("wgmma_probe") == ["HGMMA.64x256x16.F32"]
    # One instruction per selector branch (the selector is an immediate).
    assert real("wgmma_sp_probe") == ["HGMMA.SP.64x256x32.F32"] * 2


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_a_build_for_sm_90a_lists_the_wgmma_kernels_and_ships_the_probe(tmp_path):
    variants = [(p, cs[0]) for p, cs in kbuild.WGMMA_VARIANTS.items()]
    manifest = kbuild.build(["sm_90a"], tmp_path, variants=variants, jobs=2, progress=None)
    entries = {k.pattern: k for k in manifest.kernels}
    assert set(entries) == set(kbuild.WGMMA_VARIANTS)
    for pattern, entry in entries.items():
        assert entry.arch == "sm_90a" and entry.config.endswith("-wgmma")
        assert entry.spill_store_bytes == entry.spill_load_bytes == 0
        assert entry.shared_dynamic_bytes == kbuild.WGMMA_VARIANTS[pattern][0].smem_bytes
        assert (tmp_path / entry.cubin).is_file()
    assert (tmp_path / kbuild.wgmma_probe_cubin_name()).is_file()
    # The sm_80-style build of the same call list skips them (no wgmma before sm_90a).
    assert (
        kbuild.build(
            ["sm_80"], tmp_path / "a", variants=variants, probe=False, progress=None
        ).kernels
        == ()
    )


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_kernels_build_for_sm_90a_builds_the_wgmma_variants_only(tmp_path, capsys):
    from tvwsim.cli import main
    from tvwsim.manifest import read_manifest

    args = ["kernels", "build", "--arch", "sm_90a", "--pattern", "dense"]
    assert main([*args, "--build-dir", str(tmp_path)]) == 0
    assert "built 2 kernels for sm_90a" in capsys.readouterr().out
    built = read_manifest(tmp_path / "manifest.json").kernels
    assert sorted(k.config for k in built) == sorted(c.name for c in kbuild.WGMMA_VARIANTS["dense"])
    assert {(k.pattern, k.arch) for k in built} == {("dense", "sm_90a")}


@pytest.mark.parametrize("pattern", ["dense", "tw", "vw", "tvw"])
def test_the_launcher_hands_the_sm_90a_kernels_the_blocked_weight(fake_gpu, pattern):
    # The stand-in driver checks the argument list against <pattern>_wgmma.cu's
    # parameters and reads the weight image back into the sm_80 buffers: the result is
    # right only if the launcher passed weight_image in the weight's place.
    from tvwsim.kernels import launch

    config = kbuild.WGMMA_VARIANTS[pattern][0]
    case = checks.CheckCase(pattern, config, 139, 290, 333, "forced-split", seed=4)
    encoded, x, schedule = checks.make_case_inputs(case)
    y = launch.gemm(encoded, x, schedule)
    assert np.isfinite(y).all()
    assert checks.relative_error(y, matmul(x, encoded)) < 2e-3
    name, args = fake_gpu.arguments[0]
    assert name == kbuild.KERNEL_FUNCTIONS[pattern]
    weight = "w_blocked" if pattern == "dense" else "values"
    assert np.array_equal(fake_gpu.view(args[weight], np.uint8), weight_image(encoded))
    assert any(c.endswith("-wgmma-sm_90a.cubin") for c in fake_gpu.compiled)


# -- the pipeline's indices -------------------------------------------------------------------
def test_the_main_loop_never_overwrites_a_buffer_a_wgmma_may_still_read():
    from tvwsim.kernels.wgmma import check_pipeline, pipeline_events

    for stages in range(3, 8):
        for k_steps in range(0, 25):
            events = pipeline_events(k_steps, stages)
            check_pipeline(events)  # raises at the first hazard
            computed = [e[1] for e in events if e[0] == "compute"]
            assert computed == list(range(k_steps))
            assert [e[1] for e in events if e[0] == "issue"] == list(range(k_steps))


def test_the_pipeline_check_catches_a_copy_one_stage_too_early_and_a_wrong_parity():
    from tvwsim.kernels.wgmma import check_pipeline, pipeline_events

    events = pipeline_events(12, 4)
    # Copying STAGES - 1 ahead (as the sm_80 pipeline does) while one wgmma batch stays
    # in flight would overwrite the buffer that batch reads.
    with pytest.raises(InputError, match="overwrites"):
        check_pipeline(pipeline_events(12, 4, ahead=3))
    flipped = [("wait", e[1], e[2], 1 - e[3]) if e[0] == "wait" else e for e in events]
    with pytest.raises(InputError, match="parity"):
        check_pipeline(flipped)


# -- the producer warpgroup --------------------------------------------------------------------
def test_a_producer_warpgroup_adds_threads_not_math_and_leaves_other_configs_alone():
    config = kbuild.WGMMA_VARIANTS["tvw"][1]
    assert config.name == "128x256x64s4w8p4-wgmma"
    assert KernelConfig.from_name(config.name, mma="sparse") == config
    assert (config.warps, config.producer_warps, config.threads) == (8, 4, 384)
    assert config.smem_bytes == SPARSE.smem_bytes  # the same stages, loaded by others
    assert KernelConfig.from_name("128x128x32s3w4") == KernelConfig()
    assert KernelConfig().threads == 128 and KernelConfig().name == "128x128x32s3w4"
    for bad in ({"producer_warps": 4}, {"producer_warps": 2, "mma_class": "wgmma"}):
        fields = {"bm": 128, "bn": 256, "bk": 64, "stages": 4, "warps": 8, **bad}
        with pytest.raises(InputError) as err:
            KernelConfig(**fields)
        assert err.value.argument == "producer_warps"
    assert "-DPRODUCER_WARPS=4" in kbuild.config_defines(config)
    assert not any("PRODUCER" in d for d in kbuild.config_defines(SPARSE))


def test_the_producer_and_consumers_never_deadlock_or_overwrite_a_stage_in_use():
    from tvwsim.kernels.wgmma import check_producer_protocol

    for stages in range(3, 8):
        for k_steps in range(0, 25):
            check_producer_protocol(k_steps, stages)


def test_the_protocol_check_catches_a_deadlock_and_a_producer_that_does_not_wait():
    from tvwsim.kernels.wgmma import _run_protocol, check_producer_protocol

    # Arriving on full only STAGES steps later: the producer waits for a buffer the
    # consumers cannot release before that arrival.
    with pytest.raises(InputError, match="deadlock"):
        check_producer_protocol(10, 3, lag=3)
    producer = [("copy", s) for s in range(5)] + [("arrive_full", s) for s in range(5)]
    consumer = [op for it in range(5) for op in (("wait_full", it % 3, it // 3), ("read", it))]
    with pytest.raises(InputError, match="overwrites"):
        _run_protocol(producer, consumer, 3, "producer")


@pytest.mark.parametrize("pattern", ["dense", "tvw"])
def test_the_producer_variants_emulate_and_launch_like_the_others(fake_gpu, pattern):
    from tvwsim.kernels import launch

    config = kbuild.WGMMA_VARIANTS[pattern][1]
    case = checks.CheckCase(pattern, config, 139, 290, 333, "forced-split", seed=6)
    encoded, x, schedule = checks.make_case_inputs(case)
    want = matmul(x, encoded)
    assert checks.relative_error(emulate(encoded, x, schedule), want) <= 1e-3
    y = launch.gemm(encoded, x, schedule)
    assert checks.relative_error(y, want) < 2e-3
    name, grid = fake_gpu.launches[0]
    assert name == kbuild.KERNEL_FUNCTIONS[pattern]
