"""Pruning patterns: structure, exactness, ranking, layout, determinism, bad input.

The invariants are checked against independent recomputations (plain loops over rows,
blocks, tiles and groups), on random weights with row/column skew and on adversarial
ones: many ties, all-equal, all-zero, a single row or column, sizes that are not
multiples of the block, the tile or the group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.patterns import (
    Pruned,
    TileLayout,
    block_rms_norms,
    normalised_row_norms,
    prune,
    prune_with_layout,
    segment_norms,
)
from tvwsim.kernels.prepare import synthetic_weight

from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES as PATTERNS

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies --------------------------------------------------------------------------------


@st.composite
def weights(draw, max_side: int = 20) -> np.ndarray:
    """Random skewed weights, or adversarial ones full of ties."""
    n_rows = draw(st.integers(1, max_side))
    n_cols = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["skewed", "ties", "equal", "zeros", "few"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "skewed":
        w = rng.standard_normal((n_rows, n_cols)) * rng.lognormal(0, 1, (n_rows, 1))
        w *= rng.lognormal(0, 1, (1, n_cols))
    elif kind == "ties":
        w = rng.integers(-2, 3, (n_rows, n_cols)).astype(float)
    elif kind == "equal":
        w = np.full((n_rows, n_cols), -0.5)
    elif kind == "zeros":
        w = np.zeros((n_rows, n_cols))
    else:  # mostly zeros, a few ones: ties at zero and at one
        w = (rng.random((n_rows, n_cols)) < 0.15).astype(float)
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    return w.astype(dtype)


sparsities = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 0.95]), st.floats(0.0, 0.99, allow_nan=False)
)
high_sparsities = st.one_of(st.sampled_from([0.5, 0.75, 0.875]), st.floats(0.5, 0.99))


def _score(w: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64))


def _target_kept(total: int, sparsity: float) -> int:
    return total - round(sparsity * total)


# -- the scores, against plain loops -----------------------------------------------------------


@SETTINGS
@given(w=weights(), block=st.integers(1, 7))
def test_block_rms_norms_match_a_loop(w, block):
    s = _score(w)
    got = block_rms_norms(s, block)
    n_rows, n_cols = s.shape
    assert got.shape == (math.ceil(n_rows / block), math.ceil(n_cols / block))
    for bi in range(got.shape[0]):
        for bj in range(got.shape[1]):
            part = s[bi * block : (bi + 1) * block, bj * block : (bj + 1) * block]
            assert got[bi, bj] == pytest.approx(math.sqrt((part**2).sum() / part.size))


@SETTINGS
@given(w=weights(), tile=st.integers(1, 6), data=st.data())
def test_row_and_segment_norms_match_a_loop(w, tile, data):
    s = _score(w)
    rows_norm = normalised_row_norms(s)
    for i in range(s.shape[0]):
        assert rows_norm[i] == pytest.approx(math.sqrt((s[i] ** 2).sum() / s.shape[1]))
    kept = sorted(data.draw(st.sets(st.integers(0, s.shape[0] - 1), min_size=1)))
    rows = np.array(kept)
    seg = segment_norms(s, rows, tile)
    assert seg.shape == (math.ceil(len(rows) / tile), s.shape[1])
    for t in range(seg.shape[0]):
        part = s[rows[t * tile : (t + 1) * tile]]
        # Normalised by the rows the tile really holds, so a short last tile compares fairly.
        expected = np.sqrt((part**2).sum(axis=0) / part.shape[0])
        np.testing.assert_allclose(seg[t], expected)


# -- invariant checkers --------------------------------------------------------------------------


def _assert_never_a_dropped_above_a_kept(scores: np.ndarray, kept: np.ndarray) -> None:
    scores, kept = scores.ravel(), kept.ravel()
    if kept.any() and (~kept).any():
        assert scores[kept].min() >= scores[~kept].max()


def _assert_ties_go_to_lower_index(scores: np.ndarray, kept: np.ndarray) -> None:
    """At the cut, a kept entry never has a higher index than a dropped one of equal score."""
    scores, kept = scores.ravel(), kept.ravel()
    if kept.any() and (~kept).any():
        cut = scores[kept].min()
        at_cut_kept = np.flatnonzero(kept & (scores == cut))
        at_cut_dropped = np.flatnonzero(~kept & (scores == cut))
        if at_cut_dropped.size:
            assert at_cut_kept.max() < at_cut_dropped.min()


def _check_n_of_m_rows(mask_rows: np.ndarray, score_rows: np.ndarray, n: int, m: int) -> None:
    """Each row: exactly n kept in every full aligned group of m, min(n, L) in a partial one,
    and inside a group no dropped entry outscores a kept one (ties: lower position)."""
    n_cols = mask_rows.shape[1]
    for start in range(0, n_cols, m):
        group_mask = mask_rows[:, start : start + m]
        group_score = score_rows[:, start : start + m]
        length = group_mask.shape[1]
        assert (group_mask.sum(axis=1) == min(n, length)).all()
        for r in range(group_mask.shape[0]):
            _assert_never_a_dropped_above_a_kept(group_score[r], group_mask[r])
            _assert_ties_go_to_lower_index(group_score[r], group_mask[r])


def _check_tile_layout(result: Pruned, w: np.ndarray, tile: int) -> TileLayout:
    """Layout well-formed; rows outside it all dropped; no kept weight outside a tile's K."""
    layout = result.layout
    assert isinstance(layout, TileLayout)
    assert layout.tile_width == tile
    rows = layout.rows
    assert rows.dtype == np.int32
    assert (np.diff(rows) > 0).all() and (rows.size == 0 or 0 <= rows[0] <= rows[-1] < len(w))
    assert layout.n_tiles == math.ceil(len(rows) / tile)
    np.testing.assert_array_equal(layout.kept_k_counts(), [len(k) for k in layout.kept_k])
    dropped_rows = np.setdiff1d(np.arange(len(w)), rows)
    assert not result.mask[dropped_rows].any()
    for t, cols in enumerate(layout.kept_k):
        assert cols.dtype == np.int32
        assert (np.diff(cols) > 0).all() and (
            cols.size == 0 or 0 <= cols[0] <= cols[-1] < w.shape[1]
        )
        tile_rows = rows[t * tile : (t + 1) * tile]
        np.testing.assert_array_equal(layout.tile_rows(t), tile_rows)
        outside = np.setdiff1d(np.arange(w.shape[1]), cols)
        assert not result.mask[np.ix_(tile_rows, outside)].any()
    return layout


def _check_tile_ranking(layout: TileLayout, s: np.ndarray, tile: int) -> None:
    """Rows by normalised row norm, then column segments across all tiles."""
    row_kept = np.zeros(len(s), dtype=bool)
    row_kept[layout.rows] = True
    row_norms = normalised_row_norms(s)
    _assert_never_a_dropped_above_a_kept(row_norms, row_kept)
    _assert_ties_go_to_lower_index(row_norms, row_kept)
    if layout.n_tiles:
        seg = segment_norms(s, layout.rows, tile)
        seg_kept = np.zeros(seg.shape, dtype=bool)
        for t, cols in enumerate(layout.kept_k):
            seg_kept[t, cols] = True
        _assert_never_a_dropped_above_a_kept(seg, seg_kept)
        _assert_ties_go_to_lower_index(seg, seg_kept)


# -- dense and ew ------------------------------------------------------------------------------


@SETTINGS
@given(w=weights())
def test_dense_keeps_everything(w):
    result = prune_with_layout(w, "dense", 0.0)
    assert result.mask.all() and result.mask.shape == w.shape and result.mask.dtype == bool
    assert result.achieved_sparsity == 0.0 and result.layout is None


@SETTINGS
@given(w=weights(), sparsity=sparsities)
def test_ew_keeps_exactly_the_globally_largest(w, sparsity):
    result = prune_with_layout(w, "ew", sparsity)
    assert result.layout is None and result.target_sparsity == sparsity
    assert result.mask.sum() == _target_kept(w.size, sparsity)
    assert result.achieved_sparsity == pytest.approx(1 - result.mask.sum() / w.size)
    _assert_never_a_dropped_above_a_kept(_score(w), result.mask)
    _assert_ties_go_to_lower_index(_score(w), result.mask)


def test_ew_on_all_equal_keeps_the_first_in_row_major_order():
    mask = prune(np.ones((3, 4)), "ew", 0.5)
    np.testing.assert_array_equal(mask.ravel(), [True] * 6 + [False] * 6)


# -- bw ------------------------------------------------------------------------------------------


@SETTINGS
@given(w=weights(), sparsity=sparsities, block=st.integers(1, 7))
def test_bw_keeps_whole_blocks_by_rms_norm(w, sparsity, block):
    result = prune_with_layout(w, "bw", sparsity, block=block)
    mask, (n_rows, n_cols) = result.mask, w.shape
    block_kept = np.zeros((math.ceil(n_rows / block), math.ceil(n_cols / block)), dtype=bool)
    for bi in range(block_kept.shape[0]):
        for bj in range(block_kept.shape[1]):
            part = mask[bi * block : (bi + 1) * block, bj * block : (bj + 1) * block]
            assert part.all() or not part.any(), "a block was split"
            block_kept[bi, bj] = part.all()
    # Within half a block of the target (edge blocks are smaller, never larger).
    assert abs(int(mask.sum()) - _target_kept(w.size, sparsity)) <= block * block / 2
    norms = block_rms_norms(_score(w), block)
    _assert_never_a_dropped_above_a_kept(norms, block_kept)
    _assert_ties_go_to_lower_index(norms, block_kept)


def test_bw_partial_edge_blocks_are_scored_fairly():
    # 3 x 3 with b = 2: the corner block holds one element. Its RMS equals that element,
    # so a strong corner beats a weak full block instead of losing for its padding.
    w = np.full((3, 3), 0.1)
    w[2, 2] = 1.0
    mask = prune(w, "bw", 8 / 9, block=2)  # keep one element's worth: the corner
    assert mask.sum() == 1 and mask[2, 2]


# -- vw ------------------------------------------------------------------------------------------


@SETTINGS
@given(
    w=weights(), nm=st.integers(1, 8).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m)))
)
def test_vw_keeps_n_of_every_m(w, nm):
    n, m = nm
    result = prune_with_layout(w, "vw", 1 - n / m, n=n, m=m)
    _check_n_of_m_rows(result.mask, _score(w), n, m)
    n_cols = w.shape[1]
    per_row = n * (n_cols // m) + min(n, n_cols % m)
    assert result.mask.sum() == w.shape[0] * per_row
    if n_cols % m == 0:
        assert result.achieved_sparsity == pytest.approx(1 - n / m)


def test_vw_ragged_last_group_keeps_what_it_can():
    w = np.array([[4.0, 3.0, 2.0, 1.0, 0.5, 0.7]])  # groups [4, 3, 2, 1] and [0.5, 0.7]
    np.testing.assert_array_equal(prune(w, "vw", 0.5)[0], [1, 1, 0, 0, 1, 1])
    w1 = np.array([[1.0, 2.0, 3.0, 4.0, 9.0]])  # partial group of one keeps its one
    np.testing.assert_array_equal(prune(w1, "vw", 0.5)[0], [0, 0, 1, 1, 1])


# -- tw ------------------------------------------------------------------------------------------


@SETTINGS
@given(
    w=weights(),
    sparsity=sparsities,
    tile=st.integers(1, 6),
    split=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_tw_structure_ranking_and_exactness(w, sparsity, tile, split):
    row_fraction = None if split is None else split * sparsity
    result = prune_with_layout(w, "tw", sparsity, tile=tile, row_fraction=row_fraction)
    layout = _check_tile_layout(result, w, tile)
    n_rows, n_cols = w.shape
    # Every row of a tile keeps exactly the tile's columns: one shared K set per tile.
    for t, cols in enumerate(layout.kept_k):
        expected = np.zeros(n_cols, dtype=bool)
        expected[cols] = True
        for r in layout.tile_rows(t):
            np.testing.assert_array_equal(result.mask[r], expected)
    s_rows = 1 - math.sqrt(1 - sparsity) if row_fraction is None else row_fraction
    target = _target_kept(w.size, sparsity)
    expected_rows = n_rows - round(s_rows * n_rows)
    assert len(layout.rows) == (1 if expected_rows == 0 and target > 0 else expected_rows)
    # Within one tile column of the target, or one row when rounding left too few rows.
    assert abs(int(result.mask.sum()) - target) <= max(tile / 2, n_cols / 2 + 0.5)
    assert result.achieved_sparsity == pytest.approx(1 - result.mask.sum() / w.size)
    _check_tile_ranking(layout, _score(w), tile)


def test_tw_tiles_choose_their_own_columns():
    # Rows 0-1 live in columns 0-1, rows 2-3 in columns 2-3: with no row pruning and
    # G = 2, each tile keeps its own two columns - what one global column set cannot do.
    w = np.array(
        [[9, 8, 1, 0], [8, 9, 0, 1], [1, 0, 9, 8], [0, 1, 8, 9]],
        dtype=np.float32,
    )
    result = prune_with_layout(w, "tw", 0.5, tile=2, row_fraction=0.0)
    np.testing.assert_array_equal(result.layout.rows, [0, 1, 2, 3])
    assert [k.tolist() for k in result.layout.kept_k] == [[0, 1], [2, 3]]
    assert result.achieved_sparsity == 0.5


def test_tw_tiles_follow_surviving_rows_and_the_last_tile_is_short():
    w = np.tile(np.array([[1.0], [5.0], [2.0], [6.0], [7.0], [0.1], [8.0]]), (1, 8))
    # Prune 2 of 7 rows (the two weakest: 5 and 0), no column pruning left over.
    result = prune_with_layout(w, "tw", 2 / 7, tile=2, row_fraction=2 / 7)
    layout = result.layout
    np.testing.assert_array_equal(layout.rows, [1, 2, 3, 4, 6])
    assert layout.n_tiles == 3
    np.testing.assert_array_equal(layout.tile_rows(2), [6])
    np.testing.assert_array_equal(layout.kept_k_counts(), [8, 8, 8])


# -- tvw -----------------------------------------------------------------------------------------


@SETTINGS
@given(
    w=weights(),
    sparsity=high_sparsities,
    tile=st.integers(1, 6),
)
def test_tvw_is_tw_then_2_4_along_each_tiles_kept_k(w, sparsity, tile):
    result = prune_with_layout(w, "tvw", sparsity, tile=tile)
    layout = _check_tile_layout(result, w, tile)
    s = _score(w)
    for t, cols in enumerate(layout.kept_k):
        if cols.size:
            tile_rows = layout.tile_rows(t)
            # 2:4 over the compacted list: group g is cols[4g : 4g + 4], not K 4g .. 4g+3.
            _check_n_of_m_rows(
                result.mask[np.ix_(tile_rows, cols)], s[np.ix_(tile_rows, cols)], 2, 4
            )
    assert abs(int(result.mask.sum()) - _target_kept(w.size, sparsity)) <= max(
        tile / 2, w.shape[1] / 2 + 0.5
    )
    _check_tile_ranking(layout, s, tile)
    # The tile-wise half is tw at 1 - 2(1 - s): the same rows, and a prefix of the same
    # column-segment ranking (one of the two kept sets contains the other).
    tw = prune_with_layout(w, "tw", max(0.0, 1 - 2 * (1 - sparsity)), tile=tile).layout
    np.testing.assert_array_equal(layout.rows, tw.rows)
    mine = {(t, int(k)) for t, cols in enumerate(layout.kept_k) for k in cols}
    theirs = {(t, int(k)) for t, cols in enumerate(tw.kept_k) for k in cols}
    assert mine <= theirs or theirs <= mine


def test_tvw_at_half_is_2_4_on_every_full_row():
    w = synthetic_weight(32, 64, seed=3)
    result = prune_with_layout(w, "tvw", 0.5, tile=16)
    assert len(result.layout.rows) == 32
    assert all(len(k) == 64 for k in result.layout.kept_k)
    np.testing.assert_array_equal(result.mask, prune(w, "vw", 0.5))


# -- any pattern ---------------------------------------------------------------------------------


def _valid_sparsity(pattern: str, sparsity: float) -> float:
    return {"dense": 0.0, "vw": 0.5}.get(
        pattern, max(sparsity, 0.5) if pattern == "tvw" else sparsity
    )


@SETTINGS
@given(w=weights(), sparsity=sparsities, pattern=st.sampled_from(PATTERNS))
def test_deterministic_and_independent_of_memory_layout(w, sparsity, pattern):
    s = _valid_sparsity(pattern, sparsity)
    first = prune_with_layout(w, pattern, s, tile=3, block=3)
    again = prune_with_layout(np.asfortranarray(w.copy()), pattern, s, tile=3, block=3)
    np.testing.assert_array_equal(first.mask, again.mask)
    np.testing.assert_array_equal(first.mask, prune(w, pattern, s, tile=3, block=3))
    assert first.achieved_sparsity == again.achieved_sparsity
    if first.layout is not None:
        np.testing.assert_array_equal(first.layout.rows, again.layout.rows)
        for a, b in zip(first.layout.kept_k, again.layout.kept_k, strict=True):
            np.testing.assert_array_equal(a, b)


@SETTINGS
@given(w=weights(max_side=10), sparsity=sparsities, pattern=st.sampled_from(PATTERNS))
def test_importance_replaces_magnitude(w, sparsity, pattern):
    # Ranking by a score unrelated to |W| must follow the score, not the weight.
    s = _valid_sparsity(pattern, sparsity)
    scores = np.arange(w.size, dtype=np.float64).reshape(w.shape)[::-1, ::-1].copy()
    by_score = prune(w, pattern, s, tile=2, block=2, importance=scores)
    np.testing.assert_array_equal(by_score, prune(scores, pattern, s, tile=2, block=2))


def test_all_zero_weights_prune_cleanly_with_every_pattern():
    w = np.zeros((10, 12), dtype=np.float32)
    for pattern in PATTERNS:
        result = prune_with_layout(w, pattern, _valid_sparsity(pattern, 0.75), tile=4, block=4)
        assert result.mask.shape == w.shape
        assert abs(result.achieved_sparsity - result.target_sparsity) <= 0.1


# -- bad input -----------------------------------------------------------------------------------

GOOD = np.ones((4, 8), dtype=np.float32)


@pytest.mark.parametrize(
    "args, kwargs, argument",
    [
        ((np.ones(8), "ew", 0.5), {}, "weight"),
        ((np.ones((2, 2, 2)), "ew", 0.5), {}, "weight"),
        ((np.ones((4, 8), dtype=np.int64), "ew", 0.5), {}, "weight"),
        ((np.ones((4, 8), dtype=complex), "ew", 0.5), {}, "weight"),
        ((np.ones((4, 8), dtype=bool), "ew", 0.5), {}, "weight"),
        ((np.ones((0, 8)), "ew", 0.5), {}, "weight"),
        ((np.array([[1.0, np.nan]]), "ew", 0.5), {}, "weight"),
        ((np.array([[1.0, np.inf]]), "ew", 0.5), {}, "weight"),
        ((GOOD, "fancy", 0.5), {}, "pattern"),
        ((GOOD, "TW", 0.5), {}, "pattern"),
        ((GOOD, None, 0.5), {}, "pattern"),
        ((GOOD, "ew", -0.1), {}, "sparsity"),
        ((GOOD, "ew", 1.0), {}, "sparsity"),
        ((GOOD, "ew", float("nan")), {}, "sparsity"),
        ((GOOD, "ew", "0.5"), {}, "sparsity"),
        ((GOOD, "ew", True), {}, "sparsity"),
        ((GOOD, "dense", 0.5), {}, "sparsity"),
        ((GOOD, "vw", 0.75), {}, "sparsity"),
        ((GOOD, "vw", 0.5), {"n": 1, "m": 4}, "sparsity"),
        ((GOOD, "tvw", 0.4), {}, "sparsity"),
        ((GOOD, "tw", 0.5), {"tile": 0}, "tile"),
        ((GOOD, "tw", 0.5), {"tile": 2.5}, "tile"),
        ((GOOD, "tw", 0.5), {"tile": True}, "tile"),
        ((GOOD, "bw", 0.5), {"block": -1}, "block"),
        ((GOOD, "vw", 0.5), {"n": 0}, "n"),
        ((GOOD, "vw", 0.5), {"m": 0}, "m"),
        ((GOOD, "vw", 0.5), {"n": 5, "m": 4}, "n"),
        ((GOOD, "ew", 0.5), {"importance": np.ones((4, 7))}, "importance"),
        ((GOOD, "ew", 0.5), {"importance": -np.ones((4, 8))}, "importance"),
        ((GOOD, "ew", 0.5), {"importance": np.full((4, 8), np.nan)}, "importance"),
        ((GOOD, "ew", 0.5), {"importance": np.ones((4, 8), dtype=bool)}, "importance"),
        ((GOOD, "ew", 0.5), {"importance": np.ones((4, 8), dtype=complex)}, "importance"),
        ((GOOD, "ew", 0.5), {"row_fraction": 0.1}, "row_fraction"),
        ((GOOD, "tw", 0.5), {"row_fraction": 0.6}, "row_fraction"),
        ((GOOD, "tw", 0.5), {"row_fraction": -0.1}, "row_fraction"),
        ((GOOD, "tvw", 0.75), {"row_fraction": 0.6}, "row_fraction"),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, argument):
    with pytest.raises(InputError) as err:
        prune_with_layout(*args, **kwargs)
    assert err.value.argument == argument
