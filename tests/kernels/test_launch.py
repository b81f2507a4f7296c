"""The launcher's host side (kernels/launch.py) on a numpy stand-in for the driver.

The stand-in (tests/fakes/pycuda_driver.py) re-implements, in numpy, what each .cu
kernel does with its arguments, mapped by the parameter names parsed from the .cu
source. So these tests check - with no GPU - argument order and types against the real
kernel signatures, XT padding, poisoning, the split-K workspace, the finalize regions
and the timing hook, against the CPU twin. Whether the CUDA code itself computes the
right thing is tests/kernels/test_gpu_kernels.py's job.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks, launch, launch_plan
from tvwsim.kernels.tile_work import tile_work

from tests.fakes.pycuda_driver import kernel_params
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError


def test_kernel_parameter_parsing_knows_the_argument_sizes():
    params = dict(kernel_params(kbuild.CUDA_DIR / "bw.cu", "bw_gemm"))
    assert params["values"] == params["tasks"] == "P" and params["n_block_rows"] == "i"
    assert "b" not in params  # the block is compiled in (-DTVWSIM_BW_BLOCK), one cubin each
    assert dict(kernel_params(kbuild.CUDA_DIR / "common.cuh", "finalize_rows")) == {
        "regions": "P", "row_map": "P", "n": "i", "m8": "i", "ws": "P", "yt": "P",
    }  # fmt: skip


def _case_inputs(pattern: str, config: KernelConfig, m: int, n: int, k: int, policy: str):
    case = checks.CheckCase(pattern, config, m, n, k, policy, seed=3)
    return checks.make_case_inputs(case)


@pytest.mark.parametrize("pattern", ["dense", "tw", "bw", "vw", "tvw"])
@pytest.mark.parametrize("policy", ["natural", "longest-first", "split"])
def test_launcher_host_side_matches_the_twin(fake_gpu, pattern, policy):
    from tvwsim.kernels.reference import matmul

    config = kbuild.VARIANTS[pattern][2]  # the 128 x 64 tiles: several token blocks
    encoded, x, schedule = _case_inputs(pattern, config, 139, 290, 333, policy)
    y = launch.gemm(encoded, x, schedule)
    assert y.dtype == np.float16 and y.shape == (139, 290)
    assert np.isfinite(y).all()  # every element written over the NaN poison
    assert checks.relative_error(y, matmul(x, encoded)) < 2e-3
    names = [name for name, _ in fake_gpu.launches]
    assert names[0] == kbuild.KERNEL_FUNCTIONS[pattern]
    assert (kbuild.FINALIZE_FUNCTION in names) == (
        schedule.has_split_tasks or pattern in ("tw", "tvw")
    )


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_launcher_zero_fills_rows_no_tile_stores(fake_gpu, pattern):
    from tvwsim.kernels.reference import matmul

    config = kbuild.VARIANTS[pattern][0]
    case = checks.CheckCase(pattern, config, 70, 300, 300, "split", seed=7, edge=True)
    encoded, x, schedule = checks.make_case_inputs(case)
    assert (encoded.tile_k_lengths() == 0).any()  # the edge layout has an empty tile
    stored = np.zeros(encoded.n, bool)
    stored[encoded.row_map[encoded.row_map >= 0]] = True
    assert not stored.all()
    y = launch.gemm(encoded, x, schedule)
    assert np.isfinite(y).all()
    assert (y[:, ~stored] == 0).all()
    assert checks.relative_error(y, matmul(x, encoded)) < 2e-3


@pytest.mark.parametrize("split", [False, True], ids=["whole-k", "split-k"])
@pytest.mark.parametrize("pattern", ["dense", "tw", "bw", "vw", "tvw"])
def test_every_kernel_parameter_receives_its_own_buffer_or_value(fake_gpu, pattern, split):
    """The argument list checked name by name against the kernel signature: every
    pointer parameter must point at the buffer of that name, every int must be its
    value. Two swapped arguments of one type fail here by name, even where the results
    would happen to survive the swap."""
    from tvwsim.schedule import build_schedule

    config = kbuild.VARIANTS[pattern][2]
    m = 139
    encoded, x, _ = _case_inputs(pattern, config, m, 290, 333, "natural")
    tasks = build_schedule(tile_work(encoded), m, "natural").tasks
    if split:
        tasks = checks.force_split(tasks, config.bk)
    plan = launch_plan.plan_launch(encoded, m, tasks)
    assert plan.needs_workspace == split
    y = launch.gemm(encoded, x, tasks)
    n, m8 = encoded.n, plan.m8

    def content(ptr: int, want: np.ndarray) -> np.ndarray:
        return fake_gpu.view(ptr, want.dtype, want.size).reshape(want.shape)

    xt = np.zeros((encoded.k, m8), np.float16)
    xt[:, :m] = x.astype(np.float16).T
    buffers = {"tasks": plan.tasks, "xt": xt}
    buffers["w" if pattern == "dense" else "values"] = encoded.values
    ints = {"m8": m8}
    if pattern in ("dense", "vw", "bw"):
        ints.update(n=n, K=encoded.k)
    if pattern == "dense":
        ints["ldw"] = encoded.k_pad
    if pattern == "vw":
        ints.update(n_pad=encoded.n_pad, k_pad=encoded.k_pad)
    if pattern in ("vw", "tvw"):
        buffers["meta"] = encoded.metadata
    if pattern in ("tw", "tvw"):
        buffers.update(row_map=encoded.row_map, k_ptr=encoded.k_ptr, k_index=encoded.k_index)
    if pattern == "bw":
        buffers.update(
            tile_col_ptr=encoded.tile_col_ptr,
            tile_col=encoded.tile_col,
            tile_block=encoded.tile_block,
        )
        ints.update(n_block_rows=encoded.n_pad // encoded.block)

    (gemm_args,) = [a for name, a in fake_gpu.arguments if name == f"{pattern}_gemm"]
    assert set(gemm_args) == set(buffers) | set(ints) | {"yt", "ws"}
    for name, want in buffers.items():
        assert np.array_equal(content(gemm_args[name], np.asarray(want)), want), name
    for name, want in ints.items():
        assert gemm_args[name] == want, name
    yt = fake_gpu.view(gemm_args["yt"], np.float16, n * m8).reshape(n, m8)
    assert np.array_equal(yt[:, :m].T, y)  # the buffer read back as Y is the kernel's yt
    if split:
        assert fake_gpu.mem[gemm_args["ws"]].size >= 4 * n * m8
    else:
        assert gemm_args["ws"] == 0

    finalize = [a for name, a in fake_gpu.arguments if name == kbuild.FINALIZE_FUNCTION]
    if not plan.regions.shape[0]:
        assert finalize == []
        return
    (fin,) = finalize
    assert np.array_equal(content(fin["regions"], plan.regions), plan.regions)
    assert (fin["n"], fin["m8"], fin["yt"], fin["ws"]) == (n, m8, gemm_args["yt"], gemm_args["ws"])
    if pattern in ("tw", "tvw"):
        assert fin["row_map"] == gemm_args["row_map"]
    else:
        assert fin["row_map"] == 0  # consecutive rows t * BM + r


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_a_weight_with_every_row_pruned_runs_only_the_zero_fill(fake_gpu, pattern):
    """No surviving row means no tile and no task: the GEMM grid would be empty (which
    CUDA rejects), and the finalize pass alone writes Y = 0."""
    from tvwsim.kernels.formats import encode

    w = np.ones((40, 64), np.float32)
    encoded = encode(w, np.zeros(w.shape, bool), pattern, kbuild.VARIANTS[pattern][0])
    assert encoded.n_row_tiles == 0
    y = launch.gemm(encoded, np.ones((10, 64), np.float32))
    assert y.shape == (10, 40) and (y == 0).all()
    assert [name for name, _ in fake_gpu.launches] == [kbuild.FINALIZE_FUNCTION]


def test_timing_runs_the_hook_before_every_launch_outside_the_timed_interval(fake_gpu):
    from tvwsim.schedule import build_schedule

    config = kbuild.VARIANTS["vw"][2]
    encoded, x, _ = _case_inputs("vw", config, 40, 100, 128, "natural")
    tasks = checks.force_split(build_schedule(tile_work(encoded), 40).tasks, config.bk)
    prepared = launch.prepare(encoded, 40, tasks)
    prepared.upload_x(x)
    fake_gpu.log.clear()
    times = prepared.time_ms(repeats=3, warmup=2, before_each=lambda: fake_gpu.log.append("flush"))
    # One launch is the whole operation: workspace zeroing, GEMM, finalize pass.
    whole = ["memset_d32", "vw_gemm", kbuild.FINALIZE_FUNCTION]
    assert fake_gpu.log == ["flush", *whole] * 2 + ["flush", "event", *whole, "event"] * 3
    assert times.tolist() == [4.0] * 3  # the events bracket exactly one launch
    fake_gpu.log.clear()
    prepared.launch()
    assert fake_gpu.log == whole
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError) as err:
            prepared.time_ms(repeats=bad)
        assert err.value.argument == "repeats"


def test_gemm_rejects_bad_x_and_encodings(tw_case):
    from tvwsim.kernels.formats import encode

    encoded, x, schedule = tw_case
    bad = [
        (x[:, :-1], "x", "K = 259"),
        (x.astype(np.int32), "x", "float"),
        (x[0], "x", "2-D"),
        (x * 1e6, "x", "fp16 range"),
    ]
    for arg, argument, match in bad:
        with pytest.raises(InputError, match=match) as err:
            launch.gemm(encoded, arg, schedule)
        assert err.value.argument == argument
    csr = encode(np.ones((4, 4), np.float32), None, "ew")
    with pytest.raises(InputError, match="ew has no tvwsim kernel") as err:
        launch.gemm(csr, x[:, :4])
    assert err.value.argument == "encoded"
    with pytest.raises(InputError, match="runs vw"):
        launch.gemm_vw(encoded, x, schedule)


@pytest.mark.parametrize("block", kbuild.BW_BLOCKS)
def test_bw_launch_loads_the_cubin_compiled_for_the_encodings_block(fake_gpu, block):
    from tvwsim.kernels.reference import matmul

    config = kbuild.VARIANTS["bw"][0]
    case = checks.CheckCase("bw", config, 70, 256, 300, "natural", seed=4, block=block)
    encoded, x, schedule = checks.make_case_inputs(case)
    assert encoded.block == block
    y = launch.gemm(encoded, x, schedule)
    assert fake_gpu.compiled == [kbuild.cubin_name("bw", config, "sm_90", block)]
    assert fake_gpu.compiled[0] == f"bw-{config.name}-b{block}-sm_90.cubin"
    np.testing.assert_allclose(y, matmul(x, encoded), rtol=1e-2, atol=1e-2)


def test_a_bw_block_with_no_compiled_kernel_is_refused_before_the_device(fake_gpu):
    from tvwsim.kernels.formats import encode

    config = KernelConfig(bm=64, bn=64, bk=16, warps=4)  # allows block 16 (bk = 16)
    w = np.ones((64, 64), np.float32)
    encoded = encode(w, np.ones(w.shape, bool), "bw", config, block=16)
    with pytest.raises(InputError) as err:
        launch.gemm(encoded, np.ones((8, 64), np.float32))
    assert err.value.argument == "encoded"
    assert "16 has no compiled bw kernel" in err.value.problem
    assert "32, 64, 128" in err.value.problem
    assert not fake_gpu.compiled and not fake_gpu.launches
    with pytest.raises(InputError) as err:
        kbuild.cubin_name("bw", config, "sm_90", 16)
    assert err.value.argument == "block" and "32, 64, 128" in err.value.problem
    with pytest.raises(InputError, match="block"):
        kbuild.cubin_name("bw", config, "sm_90")  # a bw cubin always names its block
    with pytest.raises(InputError, match="only bw"):
        kbuild.cubin_name("tw", config, "sm_90", 32)
