"""Tile schedules: tasks cover the work exactly once, policies only reorder or cut it,
and the per-tile work the engine reads matches the encoded buffers byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import encode
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.prepare import schedule_for_shape, synthetic_weight
from tvwsim.kernels.tile_work import regular_tile_work, tile_work

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.schedule import GROUP_TILES, POLICIES, Schedule, build_schedule, split_length

TINY = KernelConfig(bm=16, bn=16, bk=16, warps=1, stages=2)


def tw_mask(kept_per_tile: list[int], k: int, g: int) -> np.ndarray:
    """A tw mask whose tile t (rows t*g .. t*g+g-1) keeps columns 0 .. kept_per_tile[t]-1."""
    mask = np.zeros((g * len(kept_per_tile), k), dtype=bool)
    for t, kept in enumerate(kept_per_tile):
        mask[t * g : (t + 1) * g, :kept] = True
    return mask


def tw_schedule(kept_per_tile, m, policy, *, k=None, config=TINY) -> Schedule:
    k = k or max(kept_per_tile)
    mask = tw_mask(kept_per_tile, k, config.bm)
    weight = np.ones(mask.shape, dtype=np.float32)
    return build_schedule(tile_work(encode(weight, mask, "tw", config)), m, policy)


def pieces_by_output_tile(schedule: Schedule) -> dict[tuple[int, int], list[tuple[int, int]]]:
    pieces: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for tile, block, k0, k1 in schedule.tasks.tolist():
        pieces.setdefault((tile, block), []).append((k0, k1))
    return pieces


def assert_covers_work_once(schedule: Schedule) -> None:
    """Every (tile, block) output tile appears, and its pieces tile [0, K_t) exactly."""
    work, bk = schedule.work, schedule.config.bk
    assert schedule.tasks.dtype == np.int32 and schedule.tasks.shape[1] == 4
    pieces = pieces_by_output_tile(schedule)
    assert set(pieces) == {(t, b) for t in range(work.n_tiles) for b in range(schedule.act_blocks)}
    for (tile, _), ranges in pieces.items():
        ranges.sort()
        length = int(work.k_lengths[tile])
        assert ranges[0][0] == 0 and ranges[-1][1] == length
        for (_, a1), (b0, _) in zip(ranges, ranges[1:], strict=False):
            assert a1 == b0  # no gap, no overlap
        for k0, k1 in ranges:
            assert k0 % bk == 0 and k1 % bk == 0 and k0 <= k1
            assert k0 < k1 or length == 0


@settings(max_examples=40, deadline=None)
@given(
    kept=st.lists(st.integers(0, 96), min_size=1, max_size=6),
    m=st.integers(1, 50),
    policy=st.sampled_from(POLICIES),
)
def test_every_policy_covers_each_output_tile_exactly_once(kept, m, policy):
    if max(kept) == 0:
        kept = [*kept[:-1], 1]  # a tw mask needs one kept weight to have any tile
    schedule = tw_schedule(kept, m, policy)
    assert_covers_work_once(schedule)
    stages = schedule.task_stages()
    natural = build_schedule(schedule.work, m, "natural")
    # Policies reorder or cut work; they never add or drop stages.
    assert stages.sum() == natural.task_stages().sum()
    if policy == "longest-first":
        lengths = schedule.work.k_lengths[schedule.tasks[:, 0]]
        assert (np.diff(lengths.astype(np.int64)) <= 0).all()
    if policy == "split":
        longest = int(schedule.task_stages().max()) * schedule.config.bk
        assert longest <= max(split_length(schedule.work), 0)
    else:
        assert not schedule.has_split_tasks


def test_natural_order_is_weight_tile_major():
    schedule = tw_schedule([32, 64, 16], m=40, policy="natural")  # 3 token blocks of 16
    assert schedule.tasks[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert schedule.tasks[:, 1].tolist() == [0, 1, 2] * 3
    assert schedule.tasks[:, 3].tolist() == [32] * 3 + [64] * 3 + [16] * 3


def test_grouped_order_walks_blocks_inside_groups_of_tiles():
    """Tiles in groups of GROUP_TILES; within a group the activation block is outer, so
    consecutive CTAs share an activation block and a group shares its weight tiles."""
    n_tiles = GROUP_TILES + 3  # one whole group and a ragged one
    schedule = tw_schedule([16] * n_tiles, m=40, policy="grouped")  # 3 token blocks
    first = GROUP_TILES * 3
    assert schedule.tasks[:first, 0].tolist() == list(range(GROUP_TILES)) * 3
    assert schedule.tasks[:first, 1].tolist() == sum(([b] * GROUP_TILES for b in range(3)), [])
    tail = schedule.tasks[first:]
    assert tail[:, 0].tolist() == [GROUP_TILES, GROUP_TILES + 1, GROUP_TILES + 2] * 3
    assert sorted(map(tuple, schedule.tasks.tolist())) == sorted(
        map(tuple, build_schedule(schedule.work, 40, "natural").tasks.tolist())
    )


def test_longest_first_is_stable_and_split_cuts_only_heavy_tiles():
    lf = tw_schedule([32, 64, 32, 64], m=16, policy="longest-first")
    assert lf.tasks[:, 0].tolist() == [1, 3, 0, 2]  # ties keep natural order
    split = tw_schedule([16, 16, 16, 80], m=16, policy="split")
    assert split_length(split.work) == 16
    assert split.tasks.tolist() == [
        [0, 0, 0, 16],
        [1, 0, 0, 16],
        [2, 0, 0, 16],
        [3, 0, 0, 16],
        [3, 0, 16, 32],
        [3, 0, 32, 48],
        [3, 0, 48, 64],
        [3, 0, 64, 80],
    ]
    assert split.has_split_tasks


def test_split_of_uniform_tiles_is_natural():
    a = tw_schedule([48, 48, 48], m=33, policy="split")
    b = tw_schedule([48, 48, 48], m=33, policy="natural")
    assert np.array_equal(a.tasks, b.tasks) and a.digest() == b.digest()


def test_digest_is_stable_and_sensitive():
    a = tw_schedule([16, 48, 32], m=40, policy="natural")
    b = tw_schedule([16, 48, 32], m=40, policy="natural")
    assert a.digest() == b.digest() and len(a.digest()) == 64
    assert a.digest() != tw_schedule([16, 48, 32], m=40, policy="longest-first").digest()
    assert a.digest() != tw_schedule([16, 48, 32], m=41, policy="natural").digest()
    assert a.digest() != tw_schedule([16, 48, 48], m=40, policy="natural").digest()


# -- tile work against the encoded buffers ------------------------------------------------
def encoded(pattern: str, n: int, k: int, sparsity: float, config=None, seed: int = 3):
    config = config or default_config(pattern)
    w = synthetic_weight(n, k, seed=seed)
    pruned = prune_with_layout(w, pattern, sparsity, tile=config.bm)
    return encode(w, pruned.mask, pattern, config, layout=pruned.layout), pruned


@pytest.mark.parametrize(
    "pattern, sparsity, per_stage_buffers",
    [
        ("dense", 0.0, ("values",)),
        ("vw", 0.5, ("values", "metadata")),
        ("tw", 0.7, ("values", "k_index")),
        ("tvw", 0.75, ("values", "metadata", "k_index")),
        ("bw", 0.6, ("values", "tile_block")),
        ("ew", 0.8, ("values", "col_idx")),
    ],
)
def test_one_pass_over_all_tiles_loads_each_weight_buffer_byte_once(
    pattern, sparsity, per_stage_buffers
):
    enc, pruned = encoded(pattern, 300, 200, sparsity)
    work = tile_work(enc, kept_weights=int(pruned.mask.sum()))
    expected = sum(getattr(enc, name).nbytes for name in per_stage_buffers)
    assert work.weight_bytes == pytest.approx(expected)
    assert work.kept_weights == int(pruned.mask.sum())
    assert work.n_tiles == enc.n_row_tiles
    if pattern != "ew":  # ew's tile_k_lengths counts nonzeros (no tensor-core kernel)
        assert np.array_equal(work.k_lengths, enc.tile_k_lengths())
    assert (work.k_lengths % enc.config.bk == 0).all()
    assert work.stage_ptr[-1] == work.stage_weight_bytes.size == work.stage_flops.size


def test_gathered_rows_are_the_kept_k_of_each_tile():
    enc, pruned = encoded("tw", 512, 384, 0.75)
    work = tile_work(enc)
    assert np.array_equal(work.act_rows, enc.k_index)
    for t, kept in enumerate(pruned.layout.kept_k):
        rows = work.act_rows[work.act_ptr[t] : work.act_ptr[t + 1]]
        assert np.array_equal(rows[rows >= 0], kept)
        assert work.out_rows[t] == len(pruned.layout.tile_rows(t))


def test_ew_gathers_exactly_the_columns_its_tiles_keep():
    enc, pruned = encoded("ew", 256, 320, 0.7)
    work, bm = tile_work(enc), enc.config.bm
    for t in range(work.n_tiles):
        rows = work.act_rows[work.act_ptr[t] : work.act_ptr[t + 1]]
        kept_cols = np.flatnonzero(pruned.mask[t * bm : (t + 1) * bm].any(axis=0))
        assert np.array_equal(rows[rows >= 0], kept_cols)


def test_bw_gathers_whole_union_block_columns():
    enc, pruned = encoded("bw", 256, 320, 0.7)
    work, bm, b = tile_work(enc), enc.config.bm, enc.block
    for t in range(work.n_tiles):
        rows = work.act_rows[work.act_ptr[t] : work.act_ptr[t + 1]]
        kept_cols = np.flatnonzero(pruned.mask[t * bm : (t + 1) * bm].any(axis=0))
        union_blocks = np.unique(kept_cols // b)
        expected = (union_blocks[:, None] * b + np.arange(b)).ravel()
        assert np.array_equal(rows[rows >= 0], expected[expected < enc.k])


def test_ew_math_counts_every_nonzero_once():
    enc, pruned = encoded("ew", 200, 150, 0.9)
    work = tile_work(enc)
    assert work.compute_unit == "cuda"
    assert work.stage_flops.sum() == pytest.approx(2.0 * enc.config.bn * pruned.mask.sum())


@pytest.mark.parametrize("pattern, sparsity", [("dense", 0.0), ("vw", 0.5)])
def test_value_independent_shortcut_equals_the_encoded_weight(pattern, sparsity):
    # K = 203 ends in a partial 2:4 group of 3, which keeps 2.
    enc, pruned = encoded(pattern, 272, 203, sparsity)
    via_encoder = build_schedule(tile_work(enc, int(pruned.mask.sum())), 100)
    shortcut = build_schedule(regular_tile_work(pattern, 272, 203, enc.config), 100)
    assert via_encoder.digest() == shortcut.digest()


def test_same_seed_same_schedule_other_seed_other_schedule():
    a = schedule_for_shape(256, 512, 384, "tw", 0.75, seed=1)
    b = schedule_for_shape(256, 512, 384, "tw", 0.75, seed=1)
    c = schedule_for_shape(256, 512, 384, "tw", 0.75, seed=2)
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_given_weights_are_pruned_instead_of_random_ones():
    w = synthetic_weight(256, 384, seed=5)
    a = schedule_for_shape(128, 256, 384, "tvw", 0.75, weights=w)
    b = schedule_for_shape(128, 256, 384, "tvw", 0.75, seed=5)
    assert a.digest() == b.digest()  # same matrix, same schedule


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: schedule_for_shape(0, 64, 64, "dense", 0.0), "--shape"),
        (lambda: schedule_for_shape(64, 64, 64, "dense", 0.0, policy="random"), "--policy"),
        (lambda: schedule_for_shape(64, 64, 64, "nope", 0.0), "--pattern"),
        (lambda: schedule_for_shape(64, 64, 64, "dense", 0.5), "sparsity"),
        (lambda: schedule_for_shape(64, 64, 64, "tw", 1.5), "sparsity"),
        (lambda: schedule_for_shape(64, 64, 64, "vw", 0.5, config=KernelConfig()), "--tile"),
        (lambda: schedule_for_shape(64, 64, 64, "tw", 0.5, seed=-1), "--seed"),
        (
            lambda: schedule_for_shape(64, 64, 64, "tw", 0.5, weights=np.ones((64, 32))),
            "--weights",
        ),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.argument == argument
