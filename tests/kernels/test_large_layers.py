"""Huge layers: pruning, encoding and tile work in bounded memory, with the same bytes.

The pruner and the encoders work through a weight in slabs (`CHUNK_ELEMENTS`), rank by
radix select and numba comparisons, and move values as raw bits, so that a layer of half
a billion weights fits in memory. None of that may change a single output. These tests
pin that down against the whole-matrix formulas the slabbed code replaced (written out
here as references), with slab sizes forced down to a few elements so that every slab
boundary - inside a row, a block, a tile - is crossed; and they bound the memory.
"""

from __future__ import annotations

import tracemalloc
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import tvwsim.kernels.formats as formats
import tvwsim.kernels.patterns as patterns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import encode
from tvwsim.kernels.patterns import (
    block_rms_norms,
    normalised_row_norms,
    prune,
    prune_with_layout,
    segment_norms,
)
from tvwsim.kernels.prepare import synthetic_weight
from tvwsim.kernels.tile_work import tile_work
from tvwsim.sim.trace_work import LayerProfile, profile_rng, scaled_mask, scaled_row_nnz

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES as PATTERNS
from tvwsim.pattern_spec import PRUNED_PATTERNS, pattern_spec
from tvwsim.schedule import build_schedule

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLABS = st.sampled_from([1, 2, 3, 7, 16, 100, 1 << 18])


@contextmanager
def slabs(elements: int):
    """Both modules' slab size set to `elements` inside the block, restored after."""
    saved = patterns.CHUNK_ELEMENTS, formats.CHUNK_ELEMENTS
    patterns.CHUNK_ELEMENTS = formats.CHUNK_ELEMENTS = elements
    try:
        yield
    finally:
        patterns.CHUNK_ELEMENTS, formats.CHUNK_ELEMENTS = saved


@st.composite
def weights(draw, max_rows: int = 40, max_cols: int = 90) -> np.ndarray:
    """Skewed weights, or ones full of ties, zeros of both signs and subnormals."""
    n_rows, n_cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    kind = draw(st.sampled_from(["skewed", "ties", "signed zeros", "tiny", "equal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "skewed":
        w = rng.standard_normal((n_rows, n_cols)) * rng.lognormal(0, 1, (n_rows, 1))
    elif kind == "ties":
        w = rng.integers(-2, 3, (n_rows, n_cols)).astype(float)
    elif kind == "signed zeros":
        w = np.where(rng.random((n_rows, n_cols)) < 0.5, -0.0, 0.0)
        w[rng.random((n_rows, n_cols)) < 0.1] = 1.0
    elif kind == "tiny":  # subnormal in every dtype
        w = rng.integers(-3, 4, (n_rows, n_cols)) * 1e-310
    else:
        w = np.full((n_rows, n_cols), -0.25)
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    with np.errstate(under="ignore"):
        return w.astype(dtype)


# -- the whole-matrix formulas the slabbed code must reproduce bit for bit ---------------------
def reference_row_norms(score: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", score, score)) / np.sqrt(score.shape[1])


def reference_block_norms(score: np.ndarray, block: int) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64)
    n_rows, n_cols = score.shape
    nbr, nbc = -(-n_rows // block), -(-n_cols // block)
    sq = score * score
    if nbr * block != n_rows or nbc * block != n_cols:
        padded = np.zeros((nbr * block, nbc * block))
        padded[:n_rows, :n_cols] = sq
        sq = padded
    sums = sq.reshape(nbr, block, nbc, block).sum(axis=(1, 3))
    rows = np.minimum(block, n_rows - block * np.arange(nbr))
    cols = np.minimum(block, n_cols - block * np.arange(nbc))
    return np.sqrt(sums / (rows[:, None] * cols[None, :]))


def reference_segment_norms(score: np.ndarray, rows: np.ndarray, tile: int) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64)
    n_kept, n_cols = len(rows), score.shape[1]
    n_tiles = -(-n_kept // tile)
    sq = np.zeros((n_tiles * tile, n_cols))
    sq[:n_kept] = score[rows] ** 2
    sums = sq.reshape(n_tiles, tile, n_cols).sum(axis=1)
    sizes = np.minimum(tile, n_kept - tile * np.arange(n_tiles))
    return np.sqrt(sums / sizes[:, None])


def reference_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest, lower index first among equals: a stable sort on the negation."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[: max(0, k)]] = True
    return mask


def reference_n_of_m(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """The padded vectorised rank the numba loop replaced."""
    n_rows, n_cols = score.shape
    groups = -(-n_cols // m)
    padded = np.full((n_rows, groups * m), -1.0)
    padded[:, :n_cols] = score
    grouped = padded.reshape(n_rows, groups, m)
    keep = np.empty(grouped.shape, dtype=bool)
    for i in range(m):
        beaten_by = np.zeros(grouped.shape[:2], dtype=np.int32)
        for j in range(m):
            if j < i:
                beaten_by += grouped[:, :, j] >= grouped[:, :, i]
            elif j > i:
                beaten_by += grouped[:, :, j] > grouped[:, :, i]
        keep[:, :, i] = beaten_by < n
    return keep.reshape(n_rows, groups * m)[:, :n_cols]


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


# -- scores ----------------------------------------------------------------------------------
@SETTINGS
@given(w=weights(), slab=SLABS, block=st.integers(1, 9), tile=st.integers(1, 9), data=st.data())
def test_slabbed_norms_equal_the_whole_matrix_sums(w, slab, block, tile, data):
    score = np.abs(w.astype(np.float64))
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, w.shape[0] - 1), min_size=1))))
    with slabs(slab):
        assert bits(normalised_row_norms(score)) == bits(reference_row_norms(score))
        assert bits(block_rms_norms(score, block)) == bits(reference_block_norms(score, block))
        got = segment_norms(score, rows, tile)
    assert bits(got) == bits(reference_segment_norms(score, rows, tile))


def test_norms_of_a_wide_matrix_cut_into_column_pieces():
    """One tile or block row larger than a slab is cut along K; the sums stay the same."""
    rng = np.random.default_rng(5)
    score = np.abs(rng.standard_normal((70, 3001)))
    rows = np.arange(0, 70, 2)
    for slab in (1, 64, 5000):
        with slabs(slab):
            blocks, segments = block_rms_norms(score, 32), segment_norms(score, rows, 16)
        assert bits(blocks) == bits(reference_block_norms(score, 32))
        assert bits(segments) == bits(reference_segment_norms(score, rows, 16))


@SETTINGS
@given(w=weights(max_rows=30, max_cols=30), data=st.data())
def test_radix_select_keeps_what_a_stable_sort_keeps(w, data):
    """Passing W ranks |W| by its bits; -0.0 ties with +0.0, lower index first."""
    k = data.draw(st.integers(0, w.size))
    expected = reference_top_k(np.abs(w.astype(np.float64)), k)
    assert np.array_equal(patterns._top_k_mask(w, k), expected)
    assert np.array_equal(patterns._top_k_mask(np.abs(w.astype(np.float64)), k), expected)


@SETTINGS
@given(w=weights(), nm=st.sampled_from([(2, 4), (1, 4), (1, 2), (3, 8), (2, 3)]))
def test_n_of_m_loop_equals_the_padded_vectorised_rank(w, nm):
    n, m = nm
    got = prune(w, "vw", 1 - n / m, n=n, m=m)
    assert np.array_equal(got, reference_n_of_m(np.abs(w.astype(np.float64)), n, m))


@SETTINGS
@given(w=weights(), slab=SLABS, pattern=st.sampled_from(PRUNED_PATTERNS), data=st.data())
def test_scores_read_from_w_equal_a_float64_copy_of_abs_w(w, slab, pattern, data):
    """The default importance is |W| read in place; the old default was this float64
    copy, passed explicitly here. Masks, layouts and achieved sparsity must agree."""
    s = pattern_spec(pattern).sparsity_for(data.draw(st.sampled_from([0.5, 0.75, 0.9])))
    tiled = pattern_spec(pattern).tiled
    kw = {"tile": data.draw(st.sampled_from([4, 16, 128]))} if tiled else {}
    if pattern == "bw":
        kw = {"block": data.draw(st.sampled_from([2, 5, 32]))}
    with slabs(slab):
        a = prune_with_layout(w, pattern, s, **kw)
    b = prune_with_layout(w, pattern, s, importance=np.abs(w.astype(np.float64)), **kw)
    assert bits(a.mask) == bits(b.mask) and a.achieved_sparsity == b.achieved_sparsity
    if a.layout is not None:
        assert bits(a.layout.rows) == bits(b.layout.rows)
        assert [bits(c) for c in a.layout.kept_k] == [bits(c) for c in b.layout.kept_k]


# -- encoders --------------------------------------------------------------------------------
def _config(pattern: str, bm: int) -> KernelConfig:
    base = default_config(pattern)
    if pattern_spec(pattern).tiled:
        return KernelConfig(bm=bm, bn=16, bk=base.bk, warps=1, stages=2, mma=base.mma)
    return base


def _buffers(encoded) -> dict[str, tuple]:
    return {k: (v.dtype.str, v.shape, bits(v)) for k, v in encoded.buffers().items()}


@SETTINGS
@given(
    w=weights(max_rows=50, max_cols=150),
    pattern=st.sampled_from(PATTERNS),
    slab=SLABS,
    bm=st.sampled_from([16, 32]),
    with_layout=st.booleans(),
    order=st.sampled_from(["C", "F"]),
)
def test_encoding_is_independent_of_slabs_and_of_the_copy_path(
    w, pattern, slab, bm, with_layout, order
):
    """Tiny slabs, a Fortran-order weight (numba reads it strided) and the numpy
    fallback (for weights without a same-width integer view) give the same bytes."""
    config = _config(pattern, bm)
    s = {"dense": 0.0, "vw": 0.5}.get(pattern, 0.75)
    pruned = prune_with_layout(w, pattern, s, tile=config.bm)
    layout = pruned.layout if with_layout else None
    expected = _buffers(encode(w, pruned.mask, pattern, config, layout=layout))
    w_ordered = np.asarray(w, order=order)
    with slabs(slab):
        assert _buffers(encode(w_ordered, pruned.mask, pattern, config, layout=layout)) == expected
        with mock.patch.object(formats, "_raw_items", lambda _w: None):
            fallback = encode(w_ordered, pruned.mask, pattern, config, layout=layout)
    assert _buffers(fallback) == expected


def test_longdouble_weights_take_the_numpy_path():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 70))
    for pattern in ("ew", "tw", "tvw"):
        config = _config(pattern, 16)
        p = prune_with_layout(w, pattern, 0.75, tile=16)
        a = encode(w, p.mask, pattern, config, layout=p.layout)
        b = encode(w.astype(np.longdouble), p.mask, pattern, config, layout=p.layout)
        assert _buffers(a) == _buffers(b)


@slabs(64)
def test_unrepresentable_value_is_reported_before_structure_errors():
    """Slabs must not change which error wins: fp16 range first, naming the first bad
    kept weight, even when a structural fault sits in an earlier slab."""
    w = np.ones((48, 64), dtype=np.float32)
    w[40, 5] = 1e6  # kept, beyond fp16, in a late slab
    vw_mask = np.tile(np.array([1, 1, 0, 0], dtype=bool), (48, 16))
    vw_mask[0, :3] = True  # 3 of 4 in the first slab
    assert vw_mask[40, 5]
    with pytest.raises(InputError, match=r"kept value .* at \(40, 5\)"):
        encode(w, vw_mask, "vw")
    bw_mask = np.zeros((48, 64), dtype=bool)
    bw_mask[32:48, 0:32] = True  # keeps (40, 5)
    bw_mask[0, 40] = True  # a partial block in the first slab
    with pytest.raises(InputError, match=r"kept value .* at \(40, 5\)"):
        encode(w, bw_mask, "bw", block=32)
    layout = prune_with_layout(np.ones((48, 64)), "tw", 0.5, tile=16).layout
    with pytest.raises(InputError, match=r"kept value .* at \(40, 5\)"):
        encode(w, np.ones((48, 64), dtype=bool), "tw", _config("tw", 32), layout=layout)


@slabs(64)  # 16-row slabs for K = 64
def test_2to4_violation_names_the_matrix_row_across_slabs():
    mask = np.tile(np.array([1, 0, 1, 0], dtype=bool), (50, 16))
    mask[37, 8:11] = True
    with pytest.raises(InputError, match="row 37 keeps 3 of the aligned group of 4 at K 8..11"):
        encode(np.ones((50, 64), dtype=np.float32), mask, "vw")


# -- tile work and the trace path ---------------------------------------------------------------
def reference_csr_k_lengths_and_rows(enc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole-matrix (tile, column) bincount the per-tile version replaced."""
    bm, bk, n, k = enc.config.bm, enc.config.bk, enc.n, enc.k
    row_ptr = enc.row_ptr.astype(np.int64)
    tiles = -(-n // bm)
    tile_of = np.repeat(np.arange(n), np.diff(row_ptr)) // bm
    per_pair = np.bincount(tile_of * k + enc.col_idx, minlength=tiles * k)
    uniq = np.flatnonzero(per_pair)
    per_tile = np.bincount(uniq // k, minlength=tiles)
    k_lengths = -(-per_tile // bk) * bk
    starts = np.concatenate(([0], np.cumsum(k_lengths)))
    first = np.concatenate(([0], np.cumsum(per_tile)))
    rows = np.full(int(starts[-1]), -1)
    nnz = np.zeros(int(starts[-1]))
    position = starts[uniq // k] + np.arange(uniq.size) - first[uniq // k]
    rows[position], nnz[position] = uniq % k, per_pair[uniq]
    return k_lengths, rows, nnz


@SETTINGS
@given(w=weights(max_rows=300, max_cols=60), s=st.sampled_from([0.0, 0.5, 0.9, 0.99]))
def test_ew_tile_work_equals_the_whole_matrix_bincount(w, s):
    enc = encode(w, prune(w, "ew", s), "ew")
    work = tile_work(enc)
    k_lengths, rows, nnz = reference_csr_k_lengths_and_rows(enc)
    assert np.array_equal(work.k_lengths, k_lengths)
    assert np.array_equal(work.act_rows, rows)
    per_stage = nnz.reshape(-1, enc.config.bk).sum(axis=1) if nnz.size else np.zeros(0)
    assert bits(work.stage_flops) == bits(per_stage * 2.0 * enc.config.bn)
    build_schedule(work, 8).digest()  # schedules like any other work


def test_ew_trace_mask_drawn_in_slabs_equals_one_draw():
    profile = LayerProfile(
        source="test trace",
        layer="fc",
        pattern="ew",
        sparsity=0.5,
        n=8,
        k=16,
        row_nnz=np.array([8, 2, 16, 0, 5, 9, 8, 16]),
    )
    n, k, s = 700, 3001, 0.7  # 2.1M entries: three slabs
    rng = profile_rng(profile, n, k, seed=4)
    nnz = scaled_row_nnz(profile, n, k, s, rng)
    expected = np.zeros((n, k), dtype=bool)
    order = np.argsort(rng.random((n, k)), axis=1)
    np.put_along_axis(expected, order, np.arange(k)[None, :] < nnz[:, None], axis=1)
    got, layout = scaled_mask(profile, n, k, s, default_config("ew"), seed=4)
    assert layout is None and np.array_equal(got, expected)


# -- memory ---------------------------------------------------------------------------------
def _peak_bytes(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("pattern", PATTERNS)
@slabs(1 << 14)
def test_prune_and_encode_need_no_full_size_copy(pattern):
    """A float64 copy of |W| would be twice W (float32); an fp16 copy half of it. With
    small slabs, pruning holds little more than its mask, encoding little more than
    its buffers and one tile's block: both stay under a quarter of W beyond what they
    return."""
    w = synthetic_weight(4096, 1024, seed=1)  # tall: a tile is 1/32 of it
    s = {"dense": 0.0, "vw": 0.5}.get(pattern, 0.75)
    config = default_config(pattern)
    prune_with_layout(w, pattern, s, tile=config.bm)  # compile numba outside the trace
    peak, pruned = _peak_bytes(lambda: prune_with_layout(w, pattern, s, tile=config.bm))
    assert peak - pruned.mask.nbytes < w.nbytes / 4
    encode(w[:64], pruned.mask[:64], pattern, config)  # compile numba outside the trace
    peak, enc = _peak_bytes(lambda: encode(w, pruned.mask, pattern, config, layout=pruned.layout))
    assert peak - enc.byte_counts().total_bytes < w.nbytes / 4
