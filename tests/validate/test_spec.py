"""Sweep specs: the shipped ones load, points follow the rules for any spec, every bad
spec is one error naming the entry, and the bw block obeys the encoder's own rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.formats import bw_block_problem, encode
from tvwsim.kernels.launch import plan_launch
from tvwsim.kernels.prepare import prepare_weight, synthetic_weight
from tvwsim.validate.points import BASELINE_PATTERN, BASELINES, MIN_REPEATS
from tvwsim.validate.spec import load_spec, parse_spec, shipped_sweeps

from tests.validate.fakes import SMALL_SPEC, small_points
from tvwsim.config import default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import REGULAR_PATTERNS
from tvwsim.schedule import build_schedule


def test_shipped_sweeps_load_and_quick_is_part_of_full():
    assert {"quick", "full"} <= set(shipped_sweeps())
    quick, full = load_spec("quick"), load_spec("full")
    q = [p.key for p in quick.points()]
    f = [p.key for p in full.points()]
    assert len(q) == len(set(q)) and len(f) == len(set(f))
    # A campaign can resume `full` in the file `quick` wrote: nothing is measured twice.
    assert set(q) <= set(f)
    assert len(q) < len(f)
    assert quick.timing.repeats >= MIN_REPEATS and full.timing.repeats >= MIN_REPEATS
    # Both hold our five kernels and the four vendor baselines.
    for spec in (quick, full):
        impls = {p.implementation for p in spec.points()}
        patterns = {p.pattern for p in spec.points() if p.implementation == "tvwsim"}
        assert impls == {"tvwsim", *BASELINES}
        assert patterns == {"dense", "bw", "vw", "tw", "tvw"}


def test_points_are_deterministic_and_keys_name_every_coordinate():
    a, b = small_points(), small_points()
    assert [p.key for p in a] == [p.key for p in b]
    p = next(p for p in a if p.pattern == "tw" and p.policy == "split")
    assert p.key == "tvwsim/tw/64x256x128/s0.5/128x128x32s3w4/split/seed0"
    bw = next(p for p in a if p.implementation == "cusparse-bsr")
    assert bw.key.endswith("/b32") and "/vendor/vendor/" in bw.key


shapes = st.lists(st.tuples(*(st.integers(1, 5000),) * 3), min_size=1, max_size=3, unique=True).map(
    lambda shapes: [list(s) for s in shapes]
)
sparsity_lists = st.lists(
    st.sampled_from([0.25, 0.5, 0.6, 0.75, 0.875, 0.9375]), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=shapes,
    patterns=st.lists(st.sampled_from(["dense", "bw", "vw", "tw", "tvw"]), min_size=1),
    sparsities=sparsity_lists,
    policies=st.lists(
        st.sampled_from(["natural", "longest-first", "split", "grouped"]), min_size=1
    ),
    baselines=st.lists(st.sampled_from(list(BASELINES))),
)
def test_point_rules_hold_for_any_spec(shapes, patterns, sparsities, policies, baselines):
    if "tvw" in patterns and max(sparsities) < 0.5:
        sparsities = [*sparsities, 0.75]
    spec = parse_spec(
        {
            "shapes": shapes,
            "patterns": patterns,
            "sparsities": sparsities,
            "policies": policies,
            "baselines": baselines,
        }
    )
    points = spec.points()
    keys = [p.key for p in points]
    assert len(keys) == len(set(keys))
    for p in points:
        assert [p.m, p.n, p.k] in shapes
        if p.implementation == "tvwsim":
            assert p.pattern in patterns and p.config is not None
            assert p.config.mma == ("sparse" if p.pattern in ("vw", "tvw") else "dense")
            assert p.policy in policies or (p.pattern in REGULAR_PATTERNS and p.policy == "natural")
        else:
            assert p.config is None and p.policy == "vendor"
            assert p.pattern == BASELINE_PATTERN[p.implementation]
        if p.pattern == "dense":
            assert p.sparsity == 0.0
        elif p.pattern == "vw":
            assert p.sparsity == 0.5
        else:
            assert p.sparsity in sparsities
            assert p.pattern != "tvw" or p.sparsity >= 0.5
    # dense and vw run once per shape and order: longest-first and split would give the
    # natural schedule, grouped is an order of its own
    orders = {"natural" if p in ("longest-first", "split") else p for p in policies}
    for pattern in set(patterns) & set(REGULAR_PATTERNS):
        ours = [p for p in points if p.pattern == pattern and p.implementation == "tvwsim"]
        assert len(ours) == len(shapes) * len(orders)
        assert {p.policy for p in ours} == orders


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"patterns": ["dense", "sw"]}, "patterns[1]", "got 'sw'"),
        ({"patterns": ["ew"]}, "patterns", "cusparse-csr"),
        ({"baselines": ["mkl"]}, "baselines[0]", "got 'mkl'"),
        ({"policies": ["random"]}, "policies[0]", "got 'random'"),
        ({"configs": {"tw": ["128x128x40s3w4"]}}, "configs.tw", "multiple of 16"),
        ({"configs": {"vw": ["128x128x32s3w4"]}}, "configs.vw", "multiple of 64"),
        ({"configs": {"dense": ["256x256x32s3w4"]}}, "configs.dense", "not a built dense"),
        ({"configs": {"dense": ["big"]}}, "configs.dense", "expected BMxBNxBK"),
        ({"configs": {"ew": ["128x128x32s3w4"]}}, "configs.ew", "unknown key"),
        ({"configs": {"tw": []}}, "configs.tw", "at least one config"),
        ({"repeats": 5}, "repeats", "greater than or equal to 20"),
        ({"repeats": 30.0}, "repeats", "valid integer"),
        ({"shapes": [[64, 0, 64]]}, "shapes[0][1]", "greater than 0"),
        ({"shapes": [[64, 64]]}, "shapes[0]", "at least 3 items"),
        ({"shapes": []}, "shapes", "at least 1 item"),
        ({"sparsities": [1.0]}, "sparsities[0]", "less than 1"),
        ({"sparsities": [True]}, "sparsities[0]", "valid number"),
        (
            {"patterns": ["tvw"], "sparsities": [0.25]},
            "sparsities",
            r"tvw needs a sparsity in \[0.5, 1\)",
        ),
        ({"patterns": [], "baselines": []}, "patterns", "patterns or baselines"),
        ({"sparsity": [0.5]}, "sparsity", "unknown key; allowed: name, description"),
        # The bw block follows the encoder's rule (tvwsim.kernels.formats.bw_block_problem):
        # 16 divides bm but is shorter than a stage's K, so the encoder would refuse it.
        ({"block": 16}, "block", "multiple of the stage K bk=32"),
        ({"block": 12}, "block", "multiple of 16"),
        ({"block": 256}, "block", "must divide the CTA tile height bm=128"),
        ({"hw": "h900"}, "hw", "unknown hardware preset"),
    ],
)
def test_bad_specs_name_the_key(change, key, message):
    data = {**SMALL_SPEC, **change}
    with pytest.raises(InputError, match=message) as err:
        parse_spec(data, label="bad.toml")
    assert err.value.argument.startswith("bad.toml")
    assert key in err.value.argument


def test_group_errors_name_the_group_and_configs_too_big_for_the_hw(tmp_path):
    data = {"shapes": [[64, 64, 64]], "group": [{"patterns": ["dense"]}, {"patterns": ["xw"]}]}
    with pytest.raises(InputError, match="got 'xw'") as err:
        parse_spec(data, label="g.toml")
    assert err.value.argument == "g.toml: group[1].patterns[0]"
    # 128x128x32 with 4 stages needs 64 KiB of shared memory; a derived preset describes
    # a GPU whose CTAs may hold only 48 KiB, and the spec check refuses the config.
    preset = tmp_path / "small-smem.toml"
    preset.write_text('base = "a100"\nsmem_per_cta_bytes = 49152\n')
    small = {"shapes": [[64, 64, 64]], "patterns": ["dense"], "hw": str(preset)}
    small["configs"] = {"dense": ["128x128x32s4w4"]}
    with pytest.raises(InputError, match="needs 65536 B shared memory per CTA; small-smem"):
        parse_spec(small)
    small["configs"] = {"dense": ["128x128x32s3w4"]}  # 48 KiB: fits
    assert len(parse_spec(small).points()) == 1


def test_load_spec_errors(tmp_path):
    with pytest.raises(InputError, match="unknown sweep 'nope'"):
        load_spec("nope", argument="--sweep")
    with pytest.raises(InputError, match="does not exist"):
        load_spec(str(tmp_path / "absent.toml"))
    bad = tmp_path / "broken.toml"
    bad.write_text("shapes = [[1, 2, 3]\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_spec(str(bad))


def test_one_bw_block_rule_for_spec_encoder_and_launcher():
    """The spec, the encoder and the launcher refuse the same block with the same words:
    `bw_block_problem` is the one rule, so a spec that passes --dry-run encodes."""
    config = default_config("bw")
    problem = bw_block_problem(16, config)
    assert problem is not None and "bk=32" in problem
    assert bw_block_problem(32, config) is None and bw_block_problem(64, config) is None
    with pytest.raises(InputError, match="block") as spec_err:
        parse_spec({**SMALL_SPEC, "block": 16}, label="s.toml")
    assert problem in spec_err.value.problem
    weight = synthetic_weight(128, 128, seed=0)
    with pytest.raises(InputError) as encode_err:
        encode(weight, None, "bw", config, block=16)
    assert encode_err.value.problem == problem
    # An encoding whose block was changed behind the encoder's back: the launcher's
    # host check refuses it before any buffer reaches a GPU.
    prepared = prepare_weight(weight, "bw", 0.75, config, block=32)
    schedule = build_schedule(prepared.work, 64)
    plan_launch(prepared.encoded, 64, schedule)  # the untouched encoding passes
    tampered = dataclasses.replace(prepared.encoded, block=16)
    with pytest.raises(InputError, match="block") as launch_err:
        plan_launch(tampered, 64, schedule)
    assert problem in launch_err.value.problem
