"""CPU twins: every encoding computes X @ (fp16(W) * mask).T to fp32 rounding.

The bound: products of two fp16 are exact in fp32 and a sum of K of them in fp32 is off
by at most about K * 2^-24 * sum(|x_k * w_k|) (plus one rounding of the padding zeros,
which add nothing). We compare against float64 on the same fp16-rounded inputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import KernelConfig, encode
from tvwsim.kernels.reference import expand_sparse_block, matmul, matmul_yt

from tests.kernels.test_formats import config_for, fp16_masked, random_mask
from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES as PATTERNS

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_fp32_close(y: np.ndarray, x: np.ndarray, w16: np.ndarray) -> None:
    x16 = x.astype(np.float16).astype(np.float64)
    w = w16.astype(np.float64)
    exact = x16 @ w.T
    scale = np.abs(x16) @ np.abs(w).T
    k = x.shape[1]
    bound = 2 * (k + 1) * 2.0**-24 * scale + 1e-30
    assert y.dtype == np.float32 and y.shape == exact.shape
    assert (np.abs(y - exact) <= bound).all(), np.abs(y - exact).max()


@pytest.mark.parametrize("pattern", PATTERNS)
@SETTINGS
@given(
    n=st.integers(1, 70),
    k=st.integers(1, 150),
    m=st.integers(1, 20),
    density=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    seed=st.integers(0, 2**32 - 1),
    with_layout=st.booleans(),
)
def test_twin_equals_masked_matmul(pattern, n, k, m, density, seed, with_layout):
    rng = np.random.default_rng(seed)
    mask, layout = random_mask(rng, pattern, n, k, density, g=16, block=16, thin=True)
    weight = rng.standard_normal((n, k)) * 3
    cfg = config_for(pattern, bm=16)
    enc = encode(weight, mask, pattern, cfg, layout=layout if with_layout else None, block=16)
    x = rng.standard_normal((m, k))
    y = matmul(x, enc)
    assert_fp32_close(y, x, fp16_masked(weight, mask))
    # The kernel form: YT from K-major activations.
    np.testing.assert_array_equal(matmul_yt(np.ascontiguousarray(x.T), enc), y.T)


@pytest.mark.parametrize("pattern", ["dense", "vw", "tw", "tvw", "bw"])
def test_twin_with_larger_tiles_and_stages(pattern):
    # The shipped default configs (bm = 128, bk = 32 / 64) on a ragged shape.
    rng = np.random.default_rng(11)
    n, k = 300, 517
    mask, _ = random_mask(rng, pattern, n, k, 0.5, g=128, block=32)
    weight = rng.standard_normal((n, k))
    enc = encode(weight, mask, pattern)
    x = rng.standard_normal((33, k)).astype(np.float32)
    assert_fp32_close(matmul(x, enc), x, fp16_masked(weight, mask))


def test_twin_reads_the_buffers_not_the_weight():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((40, 90))
    mask, _ = random_mask(rng, "tvw", 40, 90, 0.6, g=16)
    enc = encode(weight, mask, "tvw", config_for("tvw", bm=16))
    x = rng.standard_normal((5, 90))
    before = matmul(x, enc)
    weight[:] = 0  # the encoding owns its buffers
    np.testing.assert_array_equal(matmul(x, enc), before)
    # Changing a stored value changes the product where, and only where, it is used.
    values = enc.values.copy()
    nz = np.flatnonzero(values)[0]
    values[nz] += np.float16(1)
    changed = matmul(x, dataclasses.replace(enc, values=values))
    assert not np.array_equal(changed, before)


def test_x_is_rounded_to_fp16_like_the_kernel():
    weight = np.ones((1, 2))
    enc = encode(weight, None, "dense")
    x = np.array([[1.0 + 2**-12, 1.0]])  # fp16 rounds the first to 1
    assert matmul(x, enc)[0, 0] == 2.0


def test_illegal_metadata_in_a_buffer_is_reported():
    rng = np.random.default_rng(4)
    mask, _ = random_mask(rng, "vw", 16, 64, 1.0)
    enc = encode(rng.standard_normal((16, 64)), mask, "vw", config_for("vw"))
    words = enc.metadata.copy()
    words[0, 0, 5] &= ~np.uint32(0xF)  # nibble 0x0: positions (0, 0)
    with pytest.raises(InputError) as err:
        matmul(np.ones((2, 64)), dataclasses.replace(enc, metadata=words))
    assert err.value.argument == "encoded"


def test_expand_sparse_block_follows_the_lane_mapping():
    # Lane 4g + t, bits [31:16] describe row g + 8 for K 16t..16t+15 of the chunk.
    values = np.arange(1, 16 * 32 + 1, dtype=np.float16).reshape(16, 32)
    words = np.full((1, 1, 32), 0x44444444, dtype=np.uint32)  # every group at (0, 1)
    lane = 4 * 2 + 3  # g = 2, t = 3
    words[0, 0, lane] = 0xE444_4444  # row 10, group 4*3 + 3 = 15 at positions (2, 3)
    out = expand_sparse_block(values, words)
    assert out[10, 60] == 0 and out[10, 61] == 0
    assert out[10, 62] == values[10, 30] and out[10, 63] == values[10, 31]
    assert out[2, 60] == values[2, 30]  # row g keeps (0, 1)
    assert (np.count_nonzero(out, axis=1) == 32).all()


def test_bad_activations():
    enc = encode(np.ones((4, 8)), None, "dense")
    for x in (np.ones((2, 7)), np.ones(8), np.array([[1e6] * 8]), np.ones((2, 8), dtype=int)):
        with pytest.raises(InputError) as err:
            matmul(x, enc)
        assert err.value.argument == "x"
    with pytest.raises(InputError) as err:
        matmul(np.ones((2, 8)), "not an encoding")
    assert err.value.argument == "encoded"


def test_ew_with_a_wide_token_block():
    # The numba CSR path on a shape where rows have very different nonzero counts.
    rng = np.random.default_rng(9)
    weight = rng.standard_normal((64, 200))
    mask = rng.random((64, 200)) < np.linspace(0, 1, 64)[:, None]
    enc = encode(weight, mask, "ew", KernelConfig(bm=32, bk=16))
    x = rng.standard_normal((300, 200))
    assert_fp32_close(matmul(x, enc), x, fp16_masked(weight, mask))
