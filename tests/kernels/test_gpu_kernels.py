"""The CUDA kernels on silicon: layouts pinned, every variant equal to its CPU twin.

Skipped (with the reason) when PyCUDA or a CUDA device is missing; run them on a GPU
machine with `pip install -e ".[gpu]"` and `pytest -m gpu`. `tvwsim kernels check` runs
the same checks (kernels/checks.py) and prints them as a table.

1. One-warp probes: exactly one mma.sp (both selectors) and one dense mma on registers
   handed to each lane from global memory, compared register by register with the numpy
   emulation (kernels/mma_sp.py) on random values and metadata covering every legal
   ordered nibble, with garbage in the metadata lanes the selector does not read. This
   pins the fragment and metadata layout the encoder, the twin and the kernels share.
2. Every shipped variant of every pattern on fresh random inputs: a regular shape, a
   ragged one (M, N, K multiples of nothing), one with M < 8, under the natural,
   longest-first and split policies; tw/tvw also on a hand-made layout with an empty tile
   and pruned rows. YT is NaN-poisoned before each launch and every element is compared
   with tvwsim.kernels.reference (max |error| / max |reference| <= 1e-2).
3. On an sm_90 GPU: the one-warpgroup wgmma / wgmma.sp probes against the emulation
   (kernels/wgmma.py), then every sm_90a variant against its CPU twin as in 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks, cubins, device, launch, probes

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def gpu():
    ok, why = device.gpu_status()
    if not ok:
        pytest.skip(f"no GPU to run on: {why}")
    return device.device_info()


@pytest.fixture(scope="session")
def kernel_dir(gpu, tmp_path_factory):
    """Every variant built once for this device's arch (the launcher loads from here)."""
    out = tmp_path_factory.mktemp("kernels")
    kbuild.build([gpu.arch], out, progress=None)
    return out


@pytest.mark.parametrize("index", range(3), ids=["sp-selector0", "sp-selector1", "dense"])
def test_one_warp_probe_matches_the_emulation(kernel_dir, index):
    name, fn = checks.probe_cases(seed=index)[index]
    result = checks.run_probe(name, fn)
    assert result.passed, f"{name}: max relative error {result.max_rel_error:.3g}"


def test_the_probe_ignores_metadata_the_selector_does_not_read(kernel_dir):
    from tvwsim.kernels import mma_sp

    rng = np.random.default_rng(11)
    a = np.zeros((16, 32), np.float16)
    a[:, 0::4] = rng.standard_normal((16, 8))
    a[:, 3::4] = rng.standard_normal((16, 8))
    b = rng.standard_normal((32, 8)).astype(np.float16)
    c = np.zeros((16, 8), np.float32)
    for selector in (0, 1):
        a_regs, e = mma_sp.pack_a_sparse(a, selector)
        clean = probes.mma_sp_probe(a_regs, mma_sp.pack_b(b), mma_sp.pack_c(c), e, selector)
        noisy_e = e.copy()
        unread = (np.arange(32) & 3) // 2 != selector
        noisy_e[unread] = 0xFFFFFFFF  # illegal nibbles: must not matter
        noisy = probes.mma_sp_probe(a_regs, mma_sp.pack_b(b), mma_sp.pack_c(c), noisy_e, selector)
        assert np.array_equal(clean, noisy)
        want = a.astype(np.float64) @ b.astype(np.float64)
        assert checks.relative_error(mma_sp.unpack_d(clean), want) < 1e-5


CASES = checks.check_cases()


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.pattern}-{c.config.name}-{c.shape}-{c.policy}" for c in CASES]
)
def test_kernel_equals_its_cpu_twin(kernel_dir, case):
    result = checks.run_check(case, build_dir=kernel_dir)
    assert result.passed, (
        f"{result.name} {result.shape} {result.policy}: max relative error "
        f"{result.max_rel_error:.3g} {result.note}"
    )


def test_every_policy_is_checked_for_every_pattern():
    seen = {(c.pattern, c.policy) for c in CASES}
    for pattern in kbuild.VARIANTS:
        for policy in ("natural", "longest-first", "split"):
            assert (pattern, policy) in seen


def test_a_config_beyond_the_device_limit_is_refused(gpu):
    too_big = KernelConfig(bm=256, bn=256, bk=64, stages=8, mma="sparse")
    assert too_big.smem_bytes > gpu.smem_per_block_optin_bytes
    with pytest.raises(InputError) as err:
        cubins.load_kernel("vw", too_big)
    assert err.value.argument == "config"
    assert str(gpu.smem_per_block_optin_bytes) in str(err.value)


def test_repeated_launches_are_deterministic_and_timed(kernel_dir):
    case = checks.CheckCase("tvw", kbuild.VARIANTS["tvw"][0], 512, 768, 768, "natural")
    encoded, x, schedule = checks.make_case_inputs(case)
    prepared = launch.prepare(encoded, x.shape[0], schedule, build_dir=kernel_dir)
    first = prepared.run(x)
    second = prepared.run(x)
    assert np.array_equal(first, second)  # no race in the pipeline or the epilogue
    times = prepared.time_ms(repeats=3, warmup=1)
    assert times.shape == (3,) and (times > 0).all()
    # The public hook the sweeps use: an L2 flush (a 64 MiB memset) before each launch.
    s = device.session()
    flush_words = 16 * 2**20
    flush = s.alloc(4 * flush_words, "the L2 flush buffer")
    flushes = []

    def flush_l2() -> None:
        flushes.append(1)
        s.cuda.memset_d32(int(flush), 0, flush_words)

    cold = prepared.time_ms(repeats=3, warmup=1, before_each=flush_l2)
    assert cold.shape == (3,) and (cold > 0).all() and len(flushes) == 4
    assert np.array_equal(prepared.run(x), first)  # timing left the operation intact


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_a_weight_with_every_row_pruned_gives_zeros(kernel_dir, pattern):
    """No tile, no task: only the finalize pass runs, and it must overwrite the poison."""
    from tvwsim.kernels.formats import encode

    w = np.ones((300, 128), np.float32)
    encoded = encode(w, np.zeros(w.shape, bool), pattern, kbuild.VARIANTS[pattern][0])
    y = launch.gemm(encoded, np.ones((37, 128), np.float32), build_dir=kernel_dir)
    assert y.shape == (37, 300) and (y == 0).all()


# -- Hopper (sm_90): the warpgroup-MMA probes and kernels (docs/kernels.md section 12) -------
@pytest.fixture(scope="session")
def hopper(gpu):
    if gpu.arch not in ("sm_90", kbuild.WGMMA_ARCH):
        pytest.skip(f"wgmma needs an sm_90 GPU, this is {gpu.arch}")
    return gpu


@pytest.mark.parametrize("index", range(3), ids=["sp-selector0", "sp-selector1", "dense"])
def test_one_warpgroup_probe_matches_the_emulation(hopper, index):
    # CPU side: test_wgmma.py::test_a_probe_case_expects_what_plain_matrix_math_gives
    name, fn = checks.wgmma_probe_cases(seed=index)[index]
    result = checks.run_probe(name, fn)
    assert result.passed, f"{name}: max relative error {result.max_rel_error:.3g}"


WGMMA_CASES = [c for c in checks.check_cases(wgmma=True) if c.config.mma_class == "wgmma"]


@pytest.mark.parametrize(
    "case",
    WGMMA_CASES,
    ids=[f"{c.pattern}-{c.config.name}-{c.shape}-{c.policy}" for c in WGMMA_CASES],
)
def test_wgmma_kernel_equals_its_cpu_twin(hopper, kernel_dir, case):
    # CPU side: test_wgmma.py::test_the_emulated_wgmma_kernels_match_their_cpu_twins
    result = checks.run_check(case, build_dir=kernel_dir)
    assert result.passed, (
        f"{result.name} {result.shape} {result.policy}: max relative error "
        f"{result.max_rel_error:.3g} {result.note}"
    )
