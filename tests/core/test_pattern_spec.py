"""The pattern registry is the one owner of the vocabulary: what it says about a pattern
(sparsities, mma kind, tiles, n:m, regular work, compute unit) is what the pruner, the
encoder, the tile work and the command line actually do."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import ENCODINGS, encode
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.prepare import prepare_weight, synthetic_weight

from tvwsim.cli import main
from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import (
    BASELINE_PATTERN,
    KERNEL_PATTERNS,
    PATTERN_NAMES,
    PATTERNS,
    PRUNED_PATTERNS,
    REGULAR_PATTERNS,
    SPARSE_MMA_PATTERNS,
    SPARSITY_TOLERANCE,
    TILED_PATTERNS,
    VALUE_DEPENDENT_PATTERNS,
    VW_SPARSITY,
    check_sparsity,
    pattern_spec,
)
from tvwsim.schedule import build_schedule

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Sparsities where a rule changes: every fixed or minimum sparsity, just inside and just
# outside its tolerance, and the ends of [0, 1).
EDGES = sorted(
    {0.0, 1.0 - 1e-12, 0.999999}
    | {
        max(0.0, v + d)
        for spec in PATTERNS.values()
        for v in (spec.fixed_sparsity, spec.min_sparsity)
        if v is not None
        for d in (0.0, 0.5 * SPARSITY_TOLERANCE, -0.5 * SPARSITY_TOLERANCE, 2e-6, -2e-6)
    }
)
sparsities = st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from(EDGES))


def _prunes(pattern: str, sparsity: float, **kw) -> bool:
    """Whether the pruner takes `sparsity` for `pattern`; any other refusal is a bug."""
    w = synthetic_weight(8, 16, seed=1)
    try:
        prune_with_layout(w, pattern, sparsity, tile=4, block=4, **kw)
    except InputError as err:
        assert err.argument == "sparsity", err
        return False
    return True


@SETTINGS
@given(pattern=st.sampled_from(PATTERN_NAMES), sparsity=sparsities)
def test_accepts_is_what_the_pruner_and_check_sparsity_accept(pattern, sparsity):
    spec = pattern_spec(pattern)
    assert _prunes(pattern, sparsity) == spec.accepts(sparsity)
    if spec.accepts(sparsity):
        assert check_sparsity(pattern, sparsity) == sparsity
    else:
        with pytest.raises(InputError) as err:
            check_sparsity(pattern, sparsity)
        assert err.value.argument == "sparsity" and spec.allowed() in err.value.problem


@SETTINGS
@given(
    pattern=st.sampled_from([p for p in PATTERN_NAMES if PATTERNS[p].nm]),
    nm=st.integers(1, 6).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m))),
    sparsity=st.one_of(sparsities, st.sampled_from([0.0, 1 / 6, 0.25, 1 / 3, 0.5, 0.75])),
)
def test_with_nm_is_what_the_pruner_accepts_at_another_n_m(pattern, nm, sparsity):
    spec = pattern_spec(pattern).with_nm(*nm)
    assert spec.nm == nm
    assert _prunes(pattern, sparsity, n=nm[0], m=nm[1]) == spec.accepts(sparsity)


def test_derived_pattern_lists_follow_the_specs():
    assert PATTERN_NAMES == tuple(PATTERNS) and len(set(PATTERN_NAMES)) == len(PATTERN_NAMES)
    assert all(name == spec.name for name, spec in PATTERNS.items())
    assert PATTERN_NAMES[0] == BASELINE_PATTERN and not PATTERNS[BASELINE_PATTERN].prunes
    assert PRUNED_PATTERNS == tuple(p for p in PATTERN_NAMES if p != BASELINE_PATTERN)
    assert set(REGULAR_PATTERNS) | set(VALUE_DEPENDENT_PATTERNS) == set(PATTERN_NAMES)
    assert not set(REGULAR_PATTERNS) & set(VALUE_DEPENDENT_PATTERNS)
    assert SPARSE_MMA_PATTERNS == tuple(p for p in PATTERN_NAMES if PATTERNS[p].nm)
    assert VW_SPARSITY == 0.5 == PATTERNS["vw"].fixed_sparsity == PATTERNS["tvw"].min_sparsity


def test_sparsities_for_runs_fixed_patterns_once_and_free_ones_where_accepted():
    targets = [0.25, 0.75, 0.25, 0.875]
    assert pattern_spec("dense").sparsities_for(targets) == (0.0,)
    assert pattern_spec("vw").sparsities_for(targets) == (0.5,)
    assert pattern_spec("tvw").sparsities_for(targets) == (0.75, 0.875)
    assert pattern_spec("ew").sparsities_for(targets) == (0.25, 0.75, 0.875)
    assert pattern_spec("tvw").sparsity_for(0.25) is None
    assert pattern_spec("vw").sparsity_for(0.25) == 0.5


def test_unknown_pattern_names_the_argument_and_lists_the_registry():
    with pytest.raises(InputError) as err:
        pattern_spec("TW", argument="--pattern")
    assert err.value.argument == "--pattern"
    assert err.value.problem.endswith(", ".join(PATTERN_NAMES))


# -- the other modules do what the registry says -------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_encoder_kernel_config_and_tile_work_follow_the_spec(pattern):
    spec = pattern_spec(pattern)
    config = default_config(pattern)
    assert config.mma == spec.mma
    prepared = prepare_weight(synthetic_weight(48, 96, seed=2), pattern, spec.sparsity_for(0.75))
    assert isinstance(prepared.encoded, ENCODINGS[pattern])
    assert (prepared.pruned.layout is not None) == spec.tiled == (pattern in TILED_PATTERNS)
    assert prepared.work.compute_unit == spec.compute_unit
    other = "dense" if spec.sparse_mma else "sparse"
    with pytest.raises(InputError) as err:
        encode(np.ones((4, 64)), None, pattern, KernelConfig(bk=64, mma=other))
    assert err.value.argument == "config"


def test_every_encoding_and_every_kernel_pattern_is_registered():
    from tvwsim.kernels import build as kbuild

    assert set(ENCODINGS) == set(PATTERN_NAMES)
    assert set(kbuild.VARIANTS) == set(KERNEL_PATTERNS)
    for pattern, variants in kbuild.VARIANTS.items():
        assert {c.mma for c in variants} == {pattern_spec(pattern).mma}


@settings(max_examples=25, deadline=None)
@given(seeds=st.tuples(st.integers(0, 2**16), st.integers(0, 2**16)), k=st.integers(1, 70))
def test_regular_patterns_work_depends_on_the_shape_only(seeds, k):
    """A regular pattern's work is the same for any two weights of a shape; the n:m
    kept count per row is `kept_along_k`, as the pruner keeps it."""
    for pattern in REGULAR_PATTERNS:
        spec = pattern_spec(pattern)
        a, b = (
            prepare_weight(synthetic_weight(40, k, seed=s), pattern, spec.fixed_sparsity)
            for s in seeds
        )
        assert build_schedule(a.work, 64).digest() == build_schedule(b.work, 64).digest()
        assert np.count_nonzero(a.mask) == 40 * int(spec.kept_along_k(k))


@pytest.mark.parametrize("pattern", VALUE_DEPENDENT_PATTERNS)
def test_value_dependent_patterns_work_follows_the_values(pattern):
    config = default_config(pattern)
    digests = {
        build_schedule(
            prepare_weight(synthetic_weight(256, 512, seed=s), pattern, 0.75, config).work, 64
        ).digest()
        for s in range(3)
    }
    assert len(digests) > 1


def test_registry_refuses_inconsistent_specs():
    from tvwsim.pattern_spec import PatternSpec

    with pytest.raises(ValueError):
        PatternSpec("x", "sparse", False, None)  # mma.sp without n:m
    with pytest.raises(ValueError):
        PatternSpec("x", "dense", False, None, regular=True)  # regular needs a fixed sparsity


# -- the command line offers exactly the registry ------------------------------------------------
ALLOWED_WORDS = {"all", "a", "comma", "list", "of", "them", "or"}


def _allowed(argv: list[str], capsys) -> list[str]:
    """The pattern names a command's error message lists as allowed (after its last
    colon), in order."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nope" in err or "'ew'" in err, err  # refused for the pattern, not another reason
    words = [w for w in re.split(r"[,\s]+", err.rsplit(": ", 1)[1]) if w]
    assert set(words) <= set(PATTERN_NAMES) | ALLOWED_WORDS, words
    return [w for w in words if w in PATTERN_NAMES]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["prune", "--pattern", "nope", "--sparsity", "0.5"], PATTERN_NAMES),
        (
            ["simulate", "--hw", "a100", "--shape", "64,64,64", "--pattern", "nope"],
            PATTERN_NAMES,
        ),
        (["model", "bert-base", "--hw", "a100", "--pattern", "nope"], PATTERN_NAMES),
        (["quality", "--pattern", "nope"], PRUNED_PATTERNS),
    ],
)
def test_cli_pattern_choices_are_the_registry(argv, expected, capsys):
    assert _allowed(argv, capsys) == list(expected)


def test_cli_kernel_patterns_are_the_registry(capsys):
    argv = ["kernels", "build", "--arch", "sm_90", "--pattern", "ew"]  # refused before nvcc
    assert sorted(_allowed(argv, capsys)) == sorted(KERNEL_PATTERNS)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75])
def test_prune_all_runs_exactly_the_patterns_that_accept_the_sparsity(sparsity, capsys):
    assert main(["prune", "--pattern", "all", "--sparsity", str(sparsity), "--shape", "32,64"]) == 0
    out = capsys.readouterr().out
    first_words = {line.split()[0] for line in out.splitlines() if line.split()}
    ran = [p for p in PATTERN_NAMES if p in first_words]
    skipped = re.findall(r"^skipped (\w+):", out, flags=re.M)
    assert ran == [p for p in PATTERN_NAMES if pattern_spec(p).accepts(sparsity)]
    assert skipped == [p for p in PATTERN_NAMES if not pattern_spec(p).accepts(sparsity)]
