"""The numpy warp emulation of mma.sync m16n8k16 and mma.sp m16n8k32.

Every test states D = A @ B + C on matrices, builds registers with the pack helpers (or
by hand, for the metadata), runs the emulated instruction and unpacks D. The last tests
tie the encoder (`tvwsim.kernels.formats`) to the fragment layout: the metadata words it writes
to memory are, lane for lane, the `e` registers both selectors need.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import KernelConfig, encode
from tvwsim.kernels.mma_sp import (
    ORDERED_NIBBLES,
    mma_m16n8k16,
    mma_sp_m16n8k32,
    pack_a,
    pack_a_sparse,
    pack_b,
    pack_c,
    unpack_a,
    unpack_b,
    unpack_d,
)

from tvwsim.errors import InputError

seeds = st.integers(0, 2**32 - 1)
PAIRS = [(n & 3, n >> 2) for n in ORDERED_NIBBLES]  # the six ascending position pairs


def _fp16(rng, shape):
    return rng.standard_normal(shape).astype(np.float16)


def _assert_d(d_regs, want):
    got = unpack_d(d_regs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * np.abs(want).max())


def _logical_from_pairs(rng, pair_index):
    """16 x 32 logical A whose group (row, grp) keeps the positions PAIRS[pair_index]."""
    a = np.zeros((16, 32), dtype=np.float16)
    for row in range(16):
        for grp in range(8):
            for p in PAIRS[pair_index[row, grp]]:
                a[row, 4 * grp + p] = np.float16(rng.standard_normal())
    return a


def test_fragment_round_trips():
    rng = np.random.default_rng(0)
    a, b16, b32 = _fp16(rng, (16, 16)), _fp16(rng, (16, 8)), _fp16(rng, (32, 8))
    np.testing.assert_array_equal(unpack_a(pack_a(a)), a)
    np.testing.assert_array_equal(unpack_b(pack_b(b16)), b16)
    np.testing.assert_array_equal(unpack_b(pack_b(b32)), b32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    np.testing.assert_array_equal(unpack_d(pack_c(c)), c)


def test_documented_lane_contents():
    # Spot-check the PTX layout itself, not just pack/unpack symmetry.
    a = np.arange(256, dtype=np.float16).reshape(16, 16)
    regs = pack_a(a)
    lane = 4 * 5 + 3  # g = 5, t = 3
    halves = lambda r: (int(r) & 0xFFFF, int(r) >> 16)  # noqa: E731
    as16 = lambda x: int(np.float16(x).view(np.uint16))  # noqa: E731
    assert halves(regs[lane, 0]) == (as16(a[5, 6]), as16(a[5, 7]))
    assert halves(regs[lane, 1]) == (as16(a[13, 6]), as16(a[13, 7]))
    assert halves(regs[lane, 2]) == (as16(a[5, 14]), as16(a[5, 15]))
    assert halves(regs[lane, 3]) == (as16(a[13, 14]), as16(a[13, 15]))
    b = np.arange(256, dtype=np.float16).reshape(32, 8)
    bregs = pack_b(b)
    assert halves(bregs[lane, 3]) == (as16(b[24 + 6, 5]), as16(b[24 + 7, 5]))
    c = np.arange(128, dtype=np.float32).reshape(16, 8)
    assert list(pack_c(c)[lane]) == [c[5, 6], c[5, 7], c[13, 6], c[13, 7]]


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_dense_mma_equals_matmul(seed):
    rng = np.random.default_rng(seed)
    a, b = _fp16(rng, (16, 16)), _fp16(rng, (16, 8))
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = mma_m16n8k16(pack_a(a), pack_b(b), pack_c(c))
    assert d.dtype == np.float32 and d.shape == (32, 4)
    _assert_d(d, a.astype(np.float64) @ b.astype(np.float64) + c)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, selector=st.sampled_from([0, 1]), empties=st.booleans())
def test_sparse_mma_equals_matmul_of_the_logical_a(seed, selector, empties):
    rng = np.random.default_rng(seed)
    pair_index = rng.integers(0, 6, size=(16, 8))
    pair_index[:6, 0] = np.arange(6)  # every legal nibble at least once
    a = _logical_from_pairs(rng, pair_index)
    mask = a != 0
    if empties:  # groups with 0 or 1 kept: padding positions carry stored zeros
        drop = rng.random(a.shape) < 0.4
        a[drop], mask[drop] = 0, False
    b, c = _fp16(rng, (32, 8)), rng.standard_normal((16, 8)).astype(np.float32)
    a_regs, e_regs = pack_a_sparse(a, selector, mask=mask)
    # Lanes that do not supply metadata for this selector may hold anything.
    supplying = ((np.arange(32) & 3) >> 1) == selector
    e_regs = np.where(supplying, e_regs, rng.integers(0, 2**32, 32, dtype=np.uint32))
    d = mma_sp_m16n8k32(a_regs, pack_b(b), pack_c(c), e_regs, selector)
    _assert_d(d, a.astype(np.float64) @ b.astype(np.float64) + c)


def test_metadata_registers_built_by_hand():
    # Independent of pack_a_sparse: write the nibbles of every lane directly.
    rng = np.random.default_rng(7)
    for selector in (0, 1):
        nibbles = rng.choice(ORDERED_NIBBLES, size=(16, 8))  # [row, group]
        compressed = _fp16(rng, (16, 16))
        a = np.zeros((16, 32), dtype=np.float16)
        for row in range(16):
            for grp in range(8):
                first, second = nibbles[row, grp] & 3, nibbles[row, grp] >> 2
                a[row, 4 * grp + first] = compressed[row, 2 * grp]
                a[row, 4 * grp + second] = compressed[row, 2 * grp + 1]
        e = rng.integers(0, 2**32, 32, dtype=np.uint32)  # garbage everywhere ...
        for g in range(8):
            for j in range(2):  # ... except lanes 4g + 2s + j: rows g / g+8, K 16j..16j+15
                half = [
                    sum(int(nibbles[r, 4 * j + c]) << (4 * c) for c in range(4)) for r in (g, g + 8)
                ]
                e[4 * g + 2 * selector + j] = half[1] << 16 | half[0]
        b = _fp16(rng, (32, 8))
        d = mma_sp_m16n8k32(
            pack_a(compressed), pack_b(b), np.zeros((32, 4), np.float32), e, selector
        )
        _assert_d(d, a.astype(np.float64) @ b.astype(np.float64))


def test_illegal_metadata_and_selector_are_rejected():
    rng = np.random.default_rng(1)
    a_regs, e = pack_a_sparse(_logical_from_pairs(rng, np.zeros((16, 8), int)), 0)
    b_regs, c_regs = pack_b(_fp16(rng, (32, 8))), np.zeros((32, 4), np.float32)
    for bad_nibble in (0x0, 0x5, 0x1, 0x6):  # equal positions or descending
        bad = e.copy()
        bad[4 * 3 + 1] = (bad[4 * 3 + 1] & ~np.uint32(0xF0)) | np.uint32(bad_nibble << 4)
        with pytest.raises(InputError) as err:
            mma_sp_m16n8k32(a_regs, b_regs, c_regs, bad, 0)
        assert err.value.argument == "e_regs"
    # Plain mma.sp accepts a descending pair; equal positions never.
    descending = e.copy()
    descending[0] = (descending[0] & ~np.uint32(0xF)) | np.uint32(0x1)  # positions (1, 0)
    mma_sp_m16n8k32(a_regs, b_regs, c_regs, descending, 0, ordered=False)
    with pytest.raises(InputError) as err:
        mma_sp_m16n8k32(a_regs, b_regs, c_regs, e, 2)
    assert err.value.argument == "selector"
    with pytest.raises(InputError) as err:
        pack_a_sparse(np.ones((16, 32)), 0)
    assert err.value.argument == "a_logical"


# -- tie to the encoder -----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=seeds, density=st.sampled_from([0.2, 0.6, 1.0]))
def test_encoded_metadata_words_are_the_e_registers_of_both_selectors(seed, density):
    """A 16 x 64 vw block: the 32 words in memory are what lane i loads into `e`."""
    rng = np.random.default_rng(seed)
    counts = rng.binomial(2, density, size=(16, 16))
    mask = (rng.random((16, 16, 4)).argsort(axis=2) < counts[:, :, None]).reshape(16, 64)
    weight = rng.standard_normal((16, 64))
    enc = encode(weight, mask, "vw", KernelConfig(bm=16, bk=64, mma="sparse"))
    words = enc.metadata[0, 0]  # [32]: lane-ordered, one coalesced 128-byte load
    logical = enc.decode()
    t = np.arange(32) & 3
    for selector, ks in ((0, slice(0, 32)), (1, slice(32, 64))):
        a_regs, e_regs = pack_a_sparse(logical[:, ks], selector, mask=mask[:, ks])
        supplying = (t >> 1) == selector
        np.testing.assert_array_equal(words[supplying], e_regs[supplying])
        # The compressed values for this k32 half are the A fragment of the 16 x 16 block.
        np.testing.assert_array_equal(
            unpack_a(a_regs), enc.values[:, 16 * selector : 16 * selector + 16]
        )

    # The kernel's inner loop: one metadata register, two mma.sp, accumulate in D.
    x_t = _fp16(rng, (64, 8))  # 8 tokens, K-major
    d = np.zeros((32, 4), np.float32)
    for selector in (0, 1):
        a_regs = pack_a(enc.values[:, 16 * selector : 16 * selector + 16])
        b_regs = pack_b(x_t[32 * selector : 32 * selector + 32])
        d = mma_sp_m16n8k32(a_regs, b_regs, d, words, selector)
    _assert_d(d, logical.astype(np.float64) @ x_t.astype(np.float64))


def test_tvw_tile_metadata_feeds_mma_sp():
    # A tvw tile block obeys the same lane order: its words drive mma.sp over the
    # compacted kept-K positions.
    rng = np.random.default_rng(5)
    n, k = 16, 300
    mask = rng.random((n, k)) < 0.3
    enc = encode(rng.standard_normal((n, k)), mask, "tvw", KernelConfig(bm=16, bk=64, mma="sparse"))
    values, words, k_index = enc.tile_values(0), enc.tile_metadata(0), enc.tile_k_index(0)
    x = _fp16(rng, (k, 8))
    gathered = np.where(k_index[:, None] >= 0, x[np.maximum(k_index, 0)], 0).astype(np.float16)
    d = np.zeros((32, 4), np.float32)
    for kc in range(words.shape[1]):  # one 64-K chunk per metadata register
        for selector in (0, 1):
            lo = 64 * kc + 32 * selector
            a_regs = pack_a(values[:, lo // 2 : lo // 2 + 16])
            d = mma_sp_m16n8k32(a_regs, pack_b(gathered[lo : lo + 32]), d, words[0, kc], selector)
    assert list(enc.tile_rows(0)) == list(range(16))
    _assert_d(d, enc.decode().astype(np.float64) @ x.astype(np.float64))
