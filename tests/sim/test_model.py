"""Whole-model simulation (sim/model.py), trace scaling (sim/trace_work.py) and the trace
families (validate/model_sim.py).

The properties: scaling a trace layer keeps its statistics (same shape -> same kept-K
multiset; bigger shape -> same skew) and hits the target sparsity within one granule;
a model's total is the sum of its GEMMs; random structure is exactly what
`tvwsim simulate` builds; a trace that does not fit a model is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim import model as sm
from tvwsim.sim import model_traces as model_sim
from tvwsim.sim.engine import simulate
from tvwsim.sim.presets import load_preset
from tvwsim.sim.trace_work import (
    LayerProfile,
    fit_counts,
    keep_count,
    scaled_mask,
    scaled_tile_counts,
    stratified_draw,
    trace_tile_work,
)
from tvwsim.traces.catalog import load_workload
from tvwsim.traces.trace_files import load_trace

from tvwsim.config import default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import TILED_PATTERNS, pattern_spec
from tvwsim.schedule import build_schedule


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Run where no build/kernels/manifest.json exists, so every test sees the same
    (estimated) registers and shared memory whether or not kernels were built here."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def a100():
    return load_preset("a100")


@pytest.fixture(scope="module")
def minilm():
    return load_trace("minilm")


def profile_of(trace, layer: str, pattern: str, sparsity: float, tile: int | None = 128):
    lt = trace.layer(layer)
    entry = lt.entry(pattern, sparsity, tile if pattern_spec(pattern).tiled else None)
    return model_sim.profile_from_entry("test trace", lt.name, lt.n, lt.k, entry)


def cv(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v.std() / v.mean())


# =====================================================================================
# sim/trace_work.py: the two numerical steps
# =====================================================================================
@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 20), min_size=1, max_size=40),
    count=st.integers(1, 200),
    seed=st.integers(0, 2**16),
)
def test_stratified_draw_follows_the_empirical_distribution(values, count, seed):
    drawn = stratified_draw(np.array(values), count, np.random.default_rng(seed))
    assert drawn.shape == (count,)
    for v in set(values) | set(drawn.tolist()):
        # every value was in the input, as often as its share says, within one draw
        expected = count * values.count(v) / len(values)
        assert v in values and abs(int((drawn == v).sum()) - expected) <= 1
    if count == len(values):
        assert sorted(drawn.tolist()) == sorted(values)  # same size: the very same values
    again = stratified_draw(np.array(values), count, np.random.default_rng(seed))
    assert np.array_equal(drawn, again)


@settings(max_examples=80, deadline=None)
@given(
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    capacity=st.integers(1, 500),
    granule=st.sampled_from([1, 4]),
    row_weight=st.integers(1, 128),
    share=st.floats(0.0, 1.2),
)
def test_fit_counts_hits_the_target_within_one_granule(
    fractions, capacity, granule, row_weight, share
):
    f = np.array(fractions)
    weights = np.full(f.size, float(row_weight))
    weights[-1] = max(1.0, row_weight / 2)  # a smaller last tile, as in tw
    full = float((weights * capacity).sum())
    target = share * full
    counts = fit_counts(f, capacity, weights, target, granule)
    assert counts.dtype == np.int64 and counts.shape == f.shape
    assert ((counts >= 0) & (counts <= capacity)).all()
    assert ((counts % granule == 0) | (counts == capacity)).all()
    total = float((weights * counts).sum())
    if target >= full:
        assert (counts == capacity).all()
    else:
        assert abs(total - target) <= weights.max() * granule
    # a zero fraction stays zero while the others can hold the target (fractions below
    # 1e-9 count as zero)
    if (weights * capacity)[f >= 1e-9].sum() >= target + weights.max() * granule:
        assert (counts[f < 1e-9] == 0).all()


def test_profile_checks_its_counts():
    good = dict(source="t", layer="l", pattern="tw", sparsity=0.75, n=256, k=64, tile=128)
    LayerProfile(**good, rows_kept=200, kept_k=np.array([10, 20]))
    with pytest.raises(InputError, match="kept_k counts for 200 rows"):
        LayerProfile(**good, rows_kept=200, kept_k=np.array([10]))
    with pytest.raises(InputError, match=r"\[0, 64\]"):
        LayerProfile(**good, rows_kept=200, kept_k=np.array([10, 65]))
    with pytest.raises(InputError, match="pattern must be one of"):
        LayerProfile(**{**good, "pattern": "vw"}, rows_kept=200, kept_k=np.array([1, 2]))
    with pytest.raises(InputError, match="block grid of shape"):
        LayerProfile(**{**good, "pattern": "bw"}, kept_blocks=np.ones((3, 2), bool))
    with pytest.raises(InputError, match="row_nnz must be 256 counts"):
        LayerProfile(**{**good, "pattern": "ew"}, row_nnz=np.ones(255, np.int64))


# =====================================================================================
# sim/trace_work.py: scaling real trace layers
# =====================================================================================
@pytest.mark.parametrize("pattern", TILED_PATTERNS)
def test_same_shape_gives_back_the_trace_kept_k(minilm, pattern):
    """Scaled to its own shape, a trace layer's tiles keep what the real pruning kept."""
    for layer in ("layer0.ffn1", "layer3.ffn2", "layer5.attn.v"):
        p = profile_of(minilm, layer, pattern, 0.75)
        rows, counts = scaled_tile_counts(p, p.n, p.k, 0.75, 128, np.random.default_rng(1))
        assert rows == p.rows_kept
        granule = 1 if pattern_spec(pattern).nm is None else pattern_spec(pattern).nm[1]
        got, want = np.sort(counts), np.sort(p.kept_k)
        if p.rows_kept % 128 == 0:
            # equal tiles: each count within one granule of the trace's (the trace is
            # within one tile column of the target, the fit lands on it)
            assert np.abs(got - want).max() <= granule + 1
        else:
            # a smaller last tile may draw a large fraction: then all counts scale by one
            # common factor to keep the total, and stay proportional to the trace's
            ratio = got / want
            assert ratio.max() - ratio.min() <= 2 * (granule + 1) / want.min()


@pytest.mark.parametrize("pattern", TILED_PATTERNS)
def test_bigger_shape_keeps_the_skew(minilm, pattern):
    """MiniLM's FFN2 (384 x 1536) scaled to BERT-base's (768 x 3072): the spread of kept-K
    over the tiles (coefficient of variation) carries over."""
    p = profile_of(minilm, "layer2.ffn2", pattern, 0.875)
    _, counts = scaled_tile_counts(p, 768, 3072, 0.875, 128, np.random.default_rng(0))
    assert counts.size == -(-round(p.rows_kept / p.n * 768) // 128)
    assert abs(cv(counts) - cv(p.kept_k)) < 0.05


@pytest.mark.parametrize(
    "pattern,tolerance",
    # kept weights may miss the target by one granule of one tile: tw one K column of G
    # rows, tvw one 2:4 group (2 kept per row) of G rows, bw one block, ew exact.
    [("tw", 128), ("tvw", 2 * 128), ("bw", 32 * 32), ("ew", 0)],
)
@pytest.mark.parametrize("shape", [(384, 1536), (768, 3072), (1000, 700)])
def test_full_size_work_has_the_target_sparsity(minilm, pattern, tolerance, shape):
    n, k = shape
    p = profile_of(minilm, "layer1.ffn2", pattern, 0.75)
    work = trace_tile_work(p, n, k, 0.75)
    assert abs(work.kept_weights - keep_count(n * k, 0.75)) <= tolerance
    config = default_config(pattern)
    assert work.pattern == pattern and (work.n, work.k) == (n, k)
    assert (work.k_lengths % config.bk == 0).all()


def test_full_size_mask_matches_its_layout_and_is_seeded(minilm):
    p = profile_of(minilm, "layer4.ffn1", "tvw", 0.875)
    config = default_config("tvw")
    mask, layout = scaled_mask(p, 3072, 768, 0.875, config, seed=3)
    again, _ = scaled_mask(p, 3072, 768, 0.875, config, seed=3)
    other, _ = scaled_mask(p, 3072, 768, 0.875, config, seed=4)
    assert np.array_equal(mask, again) and not np.array_equal(mask, other)
    covered = np.zeros_like(mask)
    for t, cols in enumerate(layout.kept_k):
        rows = layout.rows[t * 128 : (t + 1) * 128]
        assert cols.size % 4 == 0  # tvw counts are whole 2:4 groups
        block = mask[np.ix_(rows, cols)]
        # 2:4 along the compacted list: every row keeps 2 of each aligned group of 4
        assert (block.reshape(len(rows), -1, 4).sum(axis=2) == 2).all()
        covered[np.ix_(rows, cols)] = True
    assert not (mask & ~covered).any()  # nothing outside the layout
    # equal seeds, equal schedules: identical instances share one simulation
    w1, w2 = (trace_tile_work(p, 3072, 768, 0.875, seed=3) for _ in range(2))
    assert build_schedule(w1, 128).digest() == build_schedule(w2, 128).digest()


def test_bw_columns_follow_the_trace_popularity():
    """Block rows pick block columns by the trace's column popularity: a trace that only
    ever keeps half of the columns gives full-size block rows that share half of theirs."""
    grid = np.zeros((8, 8), dtype=bool)
    grid[:, :4] = True
    p = LayerProfile(
        source="t", layer="l", pattern="bw", sparsity=0.5, n=256, k=256, kept_blocks=grid
    )
    mask, _ = scaled_mask(p, 512, 512, 0.5, default_config("bw"), seed=0)
    blocks = mask[::32, ::32]
    assert blocks.sum() == 16 * 8  # half of every block row
    assert blocks.any(axis=0).sum() == 8  # and always the same half


# =====================================================================================
# sim/model.py
# =====================================================================================
TOY = textwrap.dedent(
    """
    description = "toy network: two weight GEMMs and an attention-like product"
    source = "tests"
    [constants]
    layers = 3
    tokens = "batch * seq"
    [[gemm]]
    name = "up"
    m = "tokens"
    n = 512
    k = 256
    count = "layers"
    [[gemm]]
    name = "down"
    m = "tokens"
    n = 256
    k = 512
    count = "layers"
    [[gemm]]
    name = "scores"
    m = "seq"
    n = "seq"
    k = 32
    count = "layers * batch * 2"
    prunable = false
    """
)


@pytest.fixture()
def toy(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return load_workload(str(path), batch=2, seq=64)


def test_model_runs():
    runs = sm.model_runs(["tvw", "vw", "tw", "dense"], [0.875, 0.25, 0.75])
    labels = [r.label for r in runs]
    assert labels[0] == "dense" and labels.count("dense") == 1
    assert labels == ["dense", "tvw 0.75", "tvw 0.875", "vw 0.5", "tw 0.25", "tw 0.75", "tw 0.875"]
    for bad, match in (
        (["tw", "nope"], "allowed"),
        ([], "allowed"),
    ):
        with pytest.raises(InputError, match=match):
            sm.model_runs(bad, [0.5])
    with pytest.raises(InputError, match=r"\(0, 1\)"):
        sm.model_runs(["tw"], [1.0])
    with pytest.raises(InputError, match="tvw needs"):
        sm.model_runs(["tvw"], [0.25])


def test_batched_launches(toy):
    scores = toy.gemm("scores")
    assert sm.batched_launches(toy, scores) == (3, 4)  # one launch per layer, batch x 2 heads
    odd = dataclasses.replace(scores, count=7)
    assert sm.batched_launches(toy, odd) == (7, 1)


def test_model_totals_and_random_structure_is_what_simulate_builds(toy, a100):
    runs = sm.model_runs(["dense", "tw", "vw"], [0.75])
    steps = []
    result = sm.simulate_model(toy, a100, runs, seed=5, on_step=steps.append)
    assert len(steps) == len(runs) * len(toy.gemms)
    assert result.speedup(result.dense) == 1.0
    for run in runs:
        rows = result.of(run)
        assert [r.gemm for r in rows] == ["up", "down", "scores"]
        assert result.total_us(run) == pytest.approx(sum(r.time_us for r in rows))
        for r in rows:
            if not r.prunable:
                continue
            # every instance of a random-weight GEMM is the `tvwsim simulate` GEMM
            one = simulate(
                schedule_for_shape(r.m, r.n, r.k, run.pattern, run.sparsity, seed=5), a100
            )
            assert r.time_us == pytest.approx(r.count * one.time_us)
            assert r.launches == r.count == 3
    # the attention product is dense and the same in every run
    scores = {result.of(run)[2].time_us for run in runs}
    assert len(scores) == 1 and result.not_prunable_us() == scores.pop()
    tw = result.of(runs[1])
    assert {r.structure for r in tw} == {"seeded random weights", sm.STRUCTURE_DENSE}
    assert result.achieved_sparsity(runs[1]) == pytest.approx(0.75, abs=2e-3)


def test_configs_choose_each_patterns_kernel_and_the_hit_rate_is_by_bytes(toy, a100):
    from tvwsim.config import AUTO, KernelConfig

    narrow = {p: KernelConfig.from_name("64x128x32s3w4", mma="dense") for p in ("dense", "tw")}
    runs = sm.model_runs(["tw"], [0.75])
    result = sm.simulate_model(toy, a100, runs, seed=5, configs=narrow)
    default = sm.simulate_model(toy, a100, runs, seed=5)
    for run in runs:
        for r in result.of(run):
            m = r.m * (r.count // r.launches)  # a not-prunable launch stacks its instances
            pattern = run.pattern if r.prunable else "dense"
            one = simulate(
                schedule_for_shape(m, r.n, r.k, pattern, run.sparsity if r.prunable else 0.0,
                                   config=narrow[pattern], seed=5),
                a100,
            )  # fmt: skip
            assert r.time_us == pytest.approx(r.launches * one.time_us)
            assert r.l2_bytes == pytest.approx(r.launches * one.l2_bytes)
            assert r.l2_hit_rate == pytest.approx(one.l2_hit_rate)  # equal launches
            assert 0.0 < r.l2_hit_rate < 1.0
    assert result.total_us(runs[1]) != default.total_us(runs[1])  # the config mattered
    # 'auto' for dense is `library` for dense alone: the same dense total.
    library = sm.simulate_model(toy, a100, runs[:1], library=True)
    auto = sm.simulate_model(toy, a100, runs[:1], configs={"dense": AUTO})
    assert auto.total_us(auto.dense) == library.total_us(library.dense)
    with pytest.raises(InputError, match=r"^configs: tw: 'auto' is for dense, vw only"):
        sm.simulate_model(toy, a100, runs, configs={"tw": AUTO})


def test_model_asks_a_profile_per_instance(toy, a100, minilm):
    """Instances of one GEMM may follow different trace layers; the profile function is
    asked for ew/bw/tw/tvw only, once per instance, and its sources are reported."""
    calls = []

    def profiles(gemm, instance, pattern, sparsity, config):
        calls.append((gemm.name, instance, pattern))
        if gemm.name != "up":
            return None
        layer = f"layer{instance % 2}.ffn1"  # instances 0 and 2 share layer0
        return profile_of(minilm, layer, pattern, sparsity, config.bm)

    runs = sm.model_runs(["dense", "vw", "tw", "bw"], [0.75])
    result = sm.simulate_model(toy, a100, runs, profiles=profiles, trace_label="test trace")
    assert {p for _, _, p in calls} == {"tw", "bw"}
    assert sorted(i for g, i, p in calls if g == "up" and p == "tw") == [0, 1, 2]
    up = next(r for r in result.of(sm.ModelRun("tw", 0.75)) if r.gemm == "up")
    assert up.structure == "kept-K from real weights" and up.distinct == 2
    assert up.sources == ("test trace layer0.ffn1", "test trace layer1.ffn1")
    lines = sm.structure_lines(result)
    assert "kept-K from real weights (test trace, scaled)" in lines[0]
    assert any("seeded random weights" in line and "down" in line for line in lines)


def test_json_and_csv_agree_with_the_result(toy, a100):
    runs = sm.model_runs(["tw"], [0.5, 0.75])
    result = sm.simulate_model(toy, a100, runs)
    data = json.loads(json.dumps(sm.to_json(result)))
    assert [r["pattern"] for r in data["runs"]] == ["dense", "tw", "tw"]
    assert len(data["layers"]) == len(runs) * len(toy.gemms)
    for run, rec in zip(runs, data["runs"], strict=True):
        assert rec["time_us"] == pytest.approx(result.total_us(run))
        assert rec["speedup"] == pytest.approx(result.speedup(run))
    rows = list(csv.DictReader(io.StringIO(sm.to_csv(result))))
    assert len(rows) == len(runs) * (len(toy.gemms) + 1)
    totals = [r for r in rows if r["gemm"] == "TOTAL"]
    for run, row in zip(runs, totals, strict=True):
        parts = [
            r
            for r in rows
            if r["gemm"] != "TOTAL"
            and r["pattern"] == run.pattern
            and float(r["sparsity"]) == run.sparsity
        ]
        assert float(row["time_us"]) == pytest.approx(
            sum(float(r["time_us"]) for r in parts), abs=1e-5
        )
    header = sm.format_layers(result).splitlines()[0]
    assert header.split()[:5] == ["gemm", "MxNxK", "count", "weights", "dense_us"]
    assert header.endswith("tw 0.5  tw 0.75")


def test_simulate_pruned_layers_reads_the_masks(a100):
    from tvwsim.kernels.patterns import prune_with_layout

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in ((512, 256), (256, 512))]
    pruned = [prune_with_layout(w, "tw", 0.75, tile=128) for w in weights]
    layers = [(p.mask, p.layout) for p in pruned]
    dense = sm.simulate_pruned_layers(layers, "dense", 1024, a100)
    tw = sm.simulate_pruned_layers(layers, "tw", 1024, a100)
    for w, d in zip(weights, dense, strict=True):
        same = simulate(schedule_for_shape(1024, *w.shape, "dense", 0.0), a100)
        assert d.time_us == pytest.approx(same.time_us)
    for w, t in zip(weights, tw, strict=True):
        # the same masks as `tvwsim simulate --weights` prunes: the same simulation
        same = simulate(schedule_for_shape(1024, *w.shape, "tw", 0.75, weights=w), a100)
        assert t.time_us == pytest.approx(same.time_us)
        assert t.achieved_sparsity == pytest.approx(0.75, abs=1e-3)


# =====================================================================================
# validate/model_sim.py: trace families
# =====================================================================================
@pytest.mark.parametrize("model,per_layer", [("bert-base", 2), ("bert-large", 4)])
def test_bert_takes_minilm_layers_by_role(minilm, model, per_layer):
    workload = load_workload(model, batch=1, seq=128)
    mapping = model_sim.trace_mapping(workload, minilm)
    assert set(mapping.layers) == set(model_sim.BERT_ROLES)
    for role, names in mapping.layers.items():
        assert len(names) == workload.gemm(role).count
        assert names == tuple(f"layer{i // per_layer}.{role}" for i in range(len(names)))


def test_vgg_and_resnet_map_layer_by_layer():
    vgg = model_sim.trace_mapping(load_workload("vgg16"), load_trace("vgg16"))
    assert vgg.layers["conv1_1"] == ("block1_conv1",) and vgg.layers["conv5_3"] == ("block5_conv3",)
    assert "fc6" not in vgg.layers
    resnet_trace = load_trace("resnet50")
    resnet = model_sim.trace_mapping(load_workload("resnet50"), resnet_trace)
    assert resnet.layers["conv1"] == ("conv00",)
    assert resnet.layers["layer1.0.downsample"] == ("conv03",)  # reads the block input
    assert resnet.layers["layer1.0.conv3"] == ("conv04",)
    assert resnet.layers["layer1.1-2.conv1"] == ("conv05", "conv08")
    assert resnet.layers["layer4.1-2.conv3"] == ("conv49", "conv52")
    assert len({n for names in resnet.layers.values() for n in names}) == 53
    workload = load_workload("resnet50")
    for gemm, names in resnet.layers.items():  # half width: N halves (but the stem's)
        g = workload.gemm(gemm)
        for name in names:
            layer = resnet_trace.layer(name)
            assert g.n == (layer.n if gemm == "conv1" else 2 * layer.n)


def test_profile_and_notes_for_untraced_sparsity(minilm):
    workload = load_workload("bert-base")
    mapping = model_sim.trace_mapping(workload, minilm)
    config = default_config("tw")
    gemm = workload.gemm("ffn1")
    assert mapping.profile(gemm, 5, "tw", 0.75, config).layer == "layer2.ffn1"
    assert mapping.profile(gemm, 5, "tw", 0.6, config) is None
    assert mapping.profile(gemm, 5, "vw", 0.5, default_config("vw")) is None
    notes = mapping.notes(sm.model_runs(["tw"], [0.6, 0.75]), {"tw": config})
    assert len(notes) == 1 and "0.6" in notes[0] and "seeded random" in notes[0]


def test_a_trace_that_does_not_fit_is_refused(minilm):
    vgg_trace = load_trace("vgg16")
    with pytest.raises(InputError, match="from a vgg16 trace, this is a minilm trace"):
        model_sim.trace_mapping(load_workload("vgg16"), minilm)
    short = dataclasses.replace(vgg_trace, layers=vgg_trace.layers[:-1])
    with pytest.raises(InputError, match="13 convolutions, the trace 12 layers"):
        model_sim.trace_mapping(load_workload("vgg16"), short)
    layers = list(vgg_trace.layers)
    layers[3] = dataclasses.replace(layers[3], n=layers[3].n * 2)
    with pytest.raises(InputError, match="does not match vgg16's shapes: conv2_2"):
        model_sim.trace_mapping(
            load_workload("vgg16"), dataclasses.replace(vgg_trace, layers=tuple(layers))
        )
    resnet_trace = load_trace("resnet50")
    swapped = list(resnet_trace.layers)
    swapped[3], swapped[4] = swapped[4], swapped[3]  # downsample <-> conv3
    with pytest.raises(InputError, match="not conv1, conv2, downsample, conv3"):
        model_sim.trace_mapping(
            load_workload("resnet50"), dataclasses.replace(resnet_trace, layers=tuple(swapped))
        )
    ffn = list(minilm.layers)
    ffn[4] = dataclasses.replace(ffn[4], n=ffn[4].k)  # layer0.ffn1 square: wrong aspect
    with pytest.raises(InputError, match="another aspect ratio"):
        model_sim.trace_mapping(
            load_workload("bert-base"), dataclasses.replace(minilm, layers=tuple(ffn))
        )
    with pytest.raises(InputError, match="no real-weight trace family"):
        model_sim.trace_mapping(load_workload("gnmt"), minilm)
