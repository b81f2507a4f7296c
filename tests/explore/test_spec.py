"""Exploration specs: the design's points, and one clear error naming each bad entry."""

from __future__ import annotations

import pytest
from tvwsim.explore.spec import load_spec, parse_spec, shipped_specs
from tvwsim.sim.presets import load_preset

from tests.explore.conftest import TINY, write_spec
from tvwsim.errors import InputError


def _error(tmp_path, text: str) -> str:
    with pytest.raises(InputError) as err:
        load_spec(write_spec(tmp_path, text))
    return str(err.value)


def test_grid_is_the_cross_product_of_lists_and_factors(tiny_spec):
    spec = load_spec(tiny_spec)
    a100 = load_preset("a100")
    assert spec.varied == ("sm_count", "l2_bandwidth_gbps")
    values = [dict(p.values) for p in spec.points]
    assert len(values) == 6
    assert {v["sm_count"] for v in values} == {2, 4}
    l2 = sorted({v["l2_bandwidth_gbps"] for v in values})
    assert l2 == [a100.l2_bandwidth_gbps * f for f in (0.25, 1.0, 4.0)]
    # Each point is the preset with exactly its values changed.
    point = spec.points[0]
    assert point.hardware.sm_count == values[0]["sm_count"]
    assert point.hardware.dram_bandwidth_gbps == a100.dram_bandwidth_gbps
    assert len({p.id for p in spec.points}) == 6
    assert [r.pattern for r in spec.runs(spec.workloads[0])] == ["dense", "tw", "vw"]
    assert [r.sparsity for r in spec.runs(spec.workloads[0])] == [0.0, 0.75, 0.5]


def test_range_is_inclusive_and_typed(tmp_path):
    text = TINY.replace("sm_count = [2, 4]", "sm_count = { start = 2, stop = 8, step = 3 }")
    spec = load_spec(write_spec(tmp_path, text))
    assert sorted({dict(p.values)["sm_count"] for p in spec.points}) == [2, 5, 8]
    assert all(isinstance(dict(p.values)["sm_count"], int) for p in spec.points)


@pytest.mark.parametrize("method", ["sobol", "latin-hypercube"])
def test_sampled_design_is_seeded_inside_its_intervals_and_crossed_with_the_grid(tmp_path, method):
    text = TINY + (
        f'\n[sample]\nmethod = "{method}"\npoints = 5\nseed = 3\n[sample.fields]\n'
        "clock_mhz = { low = 1000, high = 2000 }\n"
        "dram_bandwidth_gbps = { low = 0.5, high = 2, relative = true, log = true }\n"
        "max_ctas_per_sm = { low = 4, high = 16 }\n"
    )
    first = load_spec(write_spec(tmp_path, text))
    again = load_spec(write_spec(tmp_path, text, "again.toml"))
    assert [p.values for p in first.points] == [p.values for p in again.points]
    assert len(first.points) == 6 * 5
    base = load_preset("a100").dram_bandwidth_gbps
    for point in first.points:
        v = dict(point.values)
        assert 1000 <= v["clock_mhz"] <= 2000
        assert 0.5 * base <= v["dram_bandwidth_gbps"] <= 2 * base
        assert isinstance(v["max_ctas_per_sm"], int) and 4 <= v["max_ctas_per_sm"] <= 16
    assert first.varied[-3:] == ("clock_mhz", "dram_bandwidth_gbps", "max_ctas_per_sm")
    other = load_spec(write_spec(tmp_path, text.replace("seed = 3", "seed = 4"), "o.toml"))
    assert [p.values for p in other.points] != [p.values for p in first.points]
    assert other.digest != first.digest


def test_digest_ignores_the_description_but_not_the_design(tmp_path):
    base = load_spec(write_spec(tmp_path, TINY))
    described = load_spec(write_spec(tmp_path, 'description = "x"\n' + TINY, "d.toml"))
    changed = load_spec(write_spec(tmp_path, TINY.replace("[2, 4]", "[2, 3]"), "c.toml"))
    assert described.digest == base.digest
    assert changed.digest != base.digest


@pytest.mark.parametrize(
    ("old", "new", "entry", "words"),
    [
        ("sm_count = [2, 4]", "smcount = [2, 4]", "tiny.toml: hardware.smcount", "sm_count"),
        ("sm_count = [2, 4]", "sm_count = [2, -4]", "tiny.toml: hardware.sm_count[1]", "> 0"),
        ("sm_count = [2, 4]", 'sm_count = ["many"]', "tiny.toml: hardware.sm_count[0]", "integer"),
        (
            "sm_count = [2, 4]",
            "sm_count = { start = 4, stop = 2, step = 1 }",
            "tiny.toml: hardware.sm_count",
            "stop >= start",
        ),
        (
            "sm_count = [2, 4]",
            "l2_policy = { factors = [2] }",
            "tiny.toml: hardware.l2_policy",
            "numeric",
        ),
        (
            "sm_count = [2, 4]",
            "sparse_tflop_ratio = [0.5]",
            "tiny.toml: hardware.sparse_tflop_ratio[0]",
            "[1, 16]",
        ),
        ('patterns = ["tw", "vw"]', 'patterns = ["tw", "zw"]', "tiny.toml: patterns[1]", "tvw"),
        ('base = "a100"', 'base = "a999"', "tiny.toml: base", "a100"),
        ("sparsities = [0.75]", "sparsities = [1.5]", "tiny.toml: sparsities[0]", "1"),
        ('base = "a100"', 'base = "a100"\nbogus = 1', "tiny.toml: bogus", "unknown key"),
        (
            "shape = [128, 256, 256]",
            'shape = [128, 256, 256]\nmodel = "bert-base"',
            "tiny.toml: workload[1]",
            "either shape",
        ),
        (
            "shape = [128, 256, 256]",
            'model = "no-such-net"',
            "tiny.toml: workload[1].model",
            "bert-base",
        ),
    ],
)
def test_a_bad_entry_is_one_error_naming_it(tmp_path, old, new, entry, words):
    assert old in TINY
    message = _error(tmp_path, TINY.replace(old, new))
    assert message.startswith(entry + ":"), message
    assert words in message


def test_a_sampled_field_names_its_interval(tmp_path):
    text = TINY + (
        '\n[sample]\nmethod = "sobol"\npoints = 4\n[sample.fields]\n'
        "dram_bandwidth_gbps = { low = 2, high = 1 }\n"
    )
    message = _error(tmp_path, text)
    assert message.startswith("tiny.toml: sample.fields.dram_bandwidth_gbps:")
    assert "low < high" in message


def test_a_combination_the_hardware_refuses_names_the_point(tmp_path):
    # Each value fits the a100 alone (166912 B per CTA, 167936 per SM); together they do not.
    text = TINY.replace(
        "sm_count = [2, 4]", "smem_per_cta_bytes = [167936]\nsmem_per_sm_bytes = [167000]"
    )
    message = _error(tmp_path, text)
    assert message.startswith("tiny.toml: hardware: point 0 (smem_per_cta_bytes=167936, ")
    assert "exceeds smem_per_sm_bytes 167000" in message


def test_a_kernel_that_does_not_fit_a_point_names_the_config_and_the_point(tmp_path):
    text = TINY.replace(
        "sm_count = [2, 4]",
        "sm_count = [2, 4]\nsmem_per_cta_bytes = [20000]\nsmem_per_sm_bytes = [167936]",
    )
    message = _error(tmp_path, text)
    assert message.startswith("tiny.toml: patterns:")
    assert "does not fit on point 0" in message and "shared memory" in message


def test_configs_of_gemm_workloads_are_checked_and_run(tmp_path):
    text = TINY.replace(
        "sparsities = [0.75]",
        'sparsities = [0.75]\n[configs]\ntw = ["64x128x32s3w4", "128x128x32"]',
    )
    spec = load_spec(write_spec(tmp_path, text))
    assert [r.config for r in spec.runs(spec.workloads[0]) if r.pattern == "tw"] == [
        "64x128x32s3w4",
        "128x128x32s3w4",
    ]
    bad = text.replace('"128x128x32"]', '"128x128x33"]')
    assert _error(tmp_path, bad).startswith("tiny.toml: configs:")


def test_shipped_specs_all_check():
    assert shipped_specs() == ["future-gpu", "memory-wall", "sparse-tc", "sparse-tc-1k"]
    sizes = {name: load_spec(name) for name in shipped_specs()}
    assert len(sizes["sparse-tc"].points) == 27
    big = sizes["sparse-tc-1k"]  # the scale: >= 1,000 points x BERT-base x 6
    assert len(big.points) >= 1000 and len(big.patterns) == 6 and big.rows_per_point == 6
    assert [w.model for w in big.workloads] == ["bert-base"]
    assert sizes["sparse-tc"].workloads[0].model == "bert-base"
    assert len(sizes["sparse-tc"].patterns) == 6
    assert len(sizes["memory-wall"].points) == 25
    assert len(sizes["future-gpu"].points) == 500
    with pytest.raises(InputError, match="unknown spec 'nope'; shipped: future-gpu"):
        load_spec("nope")


def test_parse_spec_without_a_file():
    spec = parse_spec(
        {"base": "a100", "workload": [{"shape": [128, 128, 128]}], "patterns": ["dense"]}
    )
    assert spec.name == "spec" and len(spec.points) == 1 and spec.varied == ()
