"""The one weight generator and the one prune -> encode -> work pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import encode
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.prepare import (
    PreparedWeight,
    mask_work,
    prepare_weight,
    schedule_for_shape,
    synthetic_weight,
    synthetic_work,
)
from tvwsim.kernels.tile_work import tile_work

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES, pattern_spec
from tvwsim.schedule import build_schedule


def _sparsity(pattern: str) -> float:
    return pattern_spec(pattern).sparsity_for(0.75)


def _digest(work, m: int = 96) -> str:
    return build_schedule(work, m).digest()


# -- the synthetic weight ----------------------------------------------------------------------
def test_synthetic_weight_is_seeded_and_skewed():
    a = synthetic_weight(64, 48, seed=7)
    assert a.dtype == np.float32 and a.shape == (64, 48) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, synthetic_weight(64, 48, seed=7))
    assert not np.array_equal(a, synthetic_weight(64, 48, seed=8))
    row_norms = np.linalg.norm(a, axis=1)
    assert row_norms.max() > 2 * row_norms.min()  # rows differ in importance
    col_norms = np.linalg.norm(a, axis=0)
    assert col_norms.max() > 2 * col_norms.min()  # and so do columns


def test_synthetic_weight_is_the_documented_expression_bit_for_bit():
    """In-place scaling gives the bits of 0.02 * z * r * c, evaluated left to right."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((33, 70), dtype=np.float32)
    r = rng.lognormal(0.0, 0.5, size=(33, 1)).astype(np.float32)
    c = rng.lognormal(0.0, 0.5, size=(1, 70)).astype(np.float32)
    expected = np.float32(0.02) * z * r * c
    assert synthetic_weight(33, 70, seed=3).tobytes() == expected.tobytes()


def test_synthetic_weights_make_uneven_tiles():
    """The point of the skew: tw's kept-K differs more between tiles than for an
    i.i.d. Gaussian of the same shape (docs/real-weights.md)."""

    def spread(w):
        counts = prune_with_layout(w, "tw", 0.75, tile=64).layout.kept_k_counts()
        return counts.std() / counts.mean()

    iid = np.random.default_rng(0).standard_normal((1024, 512), dtype=np.float32)
    assert spread(synthetic_weight(1024, 512, seed=0)) > 2 * spread(iid)


@pytest.mark.parametrize(
    "args, kwargs, argument",
    [((0, 4), {}, "shape"), ((4, -1), {}, "shape"), ((4, 4), {"seed": -1}, "seed")],
)
def test_bad_synthetic_shape_or_seed(args, kwargs, argument):
    with pytest.raises(InputError) as err:
        synthetic_weight(*args, **kwargs)
    assert err.value.argument == argument


# -- prepare_weight ------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_prepare_weight_is_prune_then_encode_then_work(pattern):
    w = synthetic_weight(200, 136, seed=4)
    s = _sparsity(pattern)
    config = default_config(pattern)
    prepared = prepare_weight(w, pattern, s, config)
    assert isinstance(prepared, PreparedWeight)
    assert prepared.pattern == pattern and prepared.config == config
    pruned = prune_with_layout(w, pattern, s, tile=config.bm)
    np.testing.assert_array_equal(prepared.mask, pruned.mask)
    encoded = encode(w, pruned.mask, pattern, config, layout=pruned.layout)
    np.testing.assert_array_equal(prepared.encoded.decode(), encoded.decode())
    assert prepared.work.kept_weights == int(np.count_nonzero(pruned.mask))
    assert _digest(prepared.work) == _digest(tile_work(encoded, int(pruned.mask.sum())))
    # Only the work: the same work; the buffers are skipped where the shape decides.
    lean = prepare_weight(w, pattern, s, config, buffers=False)
    assert _digest(lean.work) == _digest(prepared.work)
    assert (lean.encoded is None) == pattern_spec(pattern).regular


def test_prepare_weight_uses_the_config_tile_width_and_block():
    w = synthetic_weight(256, 256, seed=1)
    narrow = KernelConfig(bm=64, bn=128, bk=32)
    prepared = prepare_weight(w, "tw", 0.75, narrow)
    assert prepared.pruned.layout.tile_width == 64 == prepared.encoded.config.bm
    assert prepare_weight(w, "bw", 0.75, block=64).encoded.block == 64


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda w: prepare_weight(w, "nope", 0.5), "--pattern"),
        (lambda w: prepare_weight(w, "vw", 0.75), "sparsity"),
        (lambda w: prepare_weight(w, "vw", 0.5, KernelConfig()), "--tile"),
        (lambda w: prepare_weight(w[0], "tw", 0.5), "weight"),
    ],
)
def test_prepare_weight_bad_input_names_the_argument(call, argument):
    with pytest.raises(InputError) as err:
        call(synthetic_weight(32, 64, seed=0))
    assert err.value.argument == argument


# -- mask_work: the same work from the mask alone ------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(pattern=st.sampled_from(PATTERN_NAMES), seed=st.integers(0, 1000))
def test_mask_work_is_the_weights_work(pattern, seed):
    """Values never change the work: a mask (and layout) alone gives the weight's work,
    except that dense counts every weight whatever the mask."""
    w = synthetic_weight(150, 100, seed=seed)
    prepared = prepare_weight(w, pattern, _sparsity(pattern))
    work = mask_work(prepared.mask, pattern, layout=prepared.pruned.layout)
    assert _digest(work) == _digest(prepared.work)


def test_mask_work_of_dense_ignores_the_mask():
    mask = prune_with_layout(synthetic_weight(64, 64), "ew", 0.5).mask
    dense = mask_work(mask, "dense")
    assert dense.kept_weights == 64 * 64
    assert _digest(dense) == _digest(mask_work(np.ones((64, 64), bool), "dense"))


# -- synthetic work and schedules: seeds explicit, identical layers shared -----------------------
def test_synthetic_work_is_cached_per_layer_and_is_the_synthetic_weights_work():
    config = default_config("tvw")
    a = synthetic_work(256, 384, "tvw", 0.75, config, 3, 32)
    assert synthetic_work(256, 384, "tvw", 0.75, config, 3, 32) is a  # identical layer
    direct = prepare_weight(synthetic_weight(256, 384, seed=3), "tvw", 0.75, config).work
    assert _digest(a) == _digest(direct)
    assert _digest(synthetic_work(256, 384, "tvw", 0.75, config, 4, 32)) != _digest(a)


def test_schedules_of_identical_layers_share_the_work_and_the_digest():
    a = schedule_for_shape(128, 256, 384, "tw", 0.75, seed=2)
    b = schedule_for_shape(128, 256, 384, "tw", 0.75, seed=2)
    assert a.work is b.work and a.digest() == b.digest()
    given_weight = schedule_for_shape(
        128, 256, 384, "tw", 0.75, weights=synthetic_weight(256, 384, seed=2)
    )
    assert given_weight.digest() == a.digest()


def test_regular_patterns_need_no_weight_but_check_the_sparsity():
    work = synthetic_work(96, 70, "vw", 0.5, default_config("vw"), 0, 32)
    assert work.kept_weights == 96 * int(pattern_spec("vw").kept_along_k(70))
    with pytest.raises(InputError) as err:
        synthetic_work(96, 70, "vw", 0.6, default_config("vw"), 0, 32)
    assert err.value.argument == "sparsity"
