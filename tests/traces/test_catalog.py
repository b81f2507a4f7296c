"""Workload catalogs: shapes against known model figures, the formula evaluator, errors."""

from __future__ import annotations

import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.traces.catalog import (
    CATALOG_DIR,
    PATH_ENV,
    Gemm,
    Workload,
    evaluate_formula,
    list_workloads,
    load_workload,
)

from tvwsim.errors import InputError

MODELS = ["bert-base", "bert-large", "deepbench", "gnmt", "resnet50", "vgg16"]


@pytest.fixture(autouse=True)
def _no_user_catalogs(monkeypatch):
    monkeypatch.delenv(PATH_ENV, raising=False)


def test_catalogs_are_listed():
    assert list_workloads() == MODELS
    assert CATALOG_DIR.name == "workloads" and CATALOG_DIR.parent.name == "traces"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch, seq", [(1, 1), (1, 128), (3, 7), (32, 384)])
def test_every_formula_is_a_positive_int(model, batch, seq):
    workload = load_workload(model, batch=batch, seq=seq)
    assert isinstance(workload, Workload) and workload.gemms
    assert (workload.batch, workload.seq) == (batch, seq)
    names = [g.name for g in workload.gemms]
    assert len(names) == len(set(names))
    for g in workload.gemms:
        for value in (g.m, g.n, g.k, g.count):
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
        assert isinstance(g.prunable, bool)


# -- BERT ----------------------------------------------------------------------------------
def test_bert_base_ffn1_shape():
    ffn1 = load_workload("bert-base", batch=32, seq=128).gemm("ffn1")
    assert (ffn1.m, ffn1.n, ffn1.k, ffn1.count) == (4096, 3072, 768, 12)
    assert ffn1.prunable


@pytest.mark.parametrize(
    "model, layers, hidden, ffn, heads",
    [("bert-base", 12, 768, 3072, 12), ("bert-large", 24, 1024, 4096, 16)],
)
def test_bert_linear_flops_per_token(model, layers, hidden, ffn, heads):
    # 2 FLOPs per weight per token: 4 attention projections + 2 FFN layers per layer.
    # BERT-base: 12 x (4 x 768^2 + 2 x 768 x 3072) = 85M weights -> ~170 MFLOP/token.
    expected = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn)
    for batch, seq in [(1, 1), (4, 96)]:
        w = load_workload(model, batch=batch, seq=seq)
        assert w.prunable_flops == expected * batch * seq
    if model == "bert-base":
        assert expected == pytest.approx(170e6, rel=0.01)
    # Attention products: 2 per head, seq x seq x head_dim MACs each, not prunable.
    w = load_workload(model, batch=2, seq=64)
    attention = [g for g in w.gemms if not g.prunable]
    assert {g.name for g in attention} == {"attn.scores", "attn.context"}
    assert sum(g.macs for g in attention) == 2 * layers * 2 * heads * 64 * 64 * (hidden // heads)


def test_bert_scales_linearly_in_batch_and_quadratically_in_attention():
    a = load_workload("bert-base", batch=1, seq=128)
    b = load_workload("bert-base", batch=4, seq=128)
    assert b.flops == 4 * a.flops
    c = load_workload("bert-base", batch=1, seq=256)
    attention = lambda w: sum(g.flops for g in w.gemms if not g.prunable)  # noqa: E731
    assert attention(c) == 4 * attention(a)
    assert c.prunable_flops == 2 * a.prunable_flops


# -- CNNs ----------------------------------------------------------------------------------
def test_resnet50_has_53_convs_and_known_macs():
    w = load_workload("resnet50", batch=1)
    convs = [g for g in w.gemms if g.name != "fc"]
    assert sum(g.count for g in convs) == 53
    # ResNet-50 (v1.5 strides) is about 4.1 GMAC per 224 x 224 image.
    assert sum(g.macs for g in convs) == pytest.approx(4.1e9, rel=0.05)
    fc = w.gemm("fc")
    assert (fc.m, fc.n, fc.k) == (1, 1000, 2048)
    assert w.gemm("conv1").m == 112 * 112 and w.gemm("conv1").k == 147
    assert w.gemm("layer4.1-2.conv2").m == 7 * 7
    assert load_workload("resnet50", batch=8).macs == 8 * w.macs


def test_vgg16_has_13_convs_3_fc_and_known_macs():
    w = load_workload("vgg16", batch=1)
    convs = [g for g in w.gemms if g.name.startswith("conv")]
    fcs = [g for g in w.gemms if g.name.startswith("fc")]
    assert len(convs) == 13 and len(fcs) == 3 and len(w.gemms) == 16
    # VGG-16 is about 15.5 GMAC per 224 x 224 image.
    assert w.macs == pytest.approx(15.5e9, rel=0.05)
    assert w.gemm("fc6").k == 512 * 7 * 7
    assert w.gemm("conv1_1").m == 224 * 224 and w.gemm("conv5_3").m == 14 * 14


def test_convolutions_do_not_depend_on_seq():
    for model in ("resnet50", "vgg16"):
        assert load_workload(model, seq=1).gemms == load_workload(model, seq=512).gemms


# -- GNMT and DeepBench ----------------------------------------------------------------------
def test_gnmt_gate_gemms():
    w = load_workload("gnmt", batch=64, seq=50)
    for g in w.gemms:
        assert g.m == 64 and g.n == 4 * 1024 and g.prunable
        assert g.k in (2048, 3072)  # input (1024 or 2048 wide) + hidden 1024
    # 8 encoder layers (layer 1 both directions = 9 LSTMs) + 8 decoder layers, 50 steps each.
    assert sum(g.count for g in w.gemms) == (9 + 8) * 50


def test_deepbench_matches_the_source_list():
    w = load_workload("deepbench")
    # gemm_problems.h: 160 training, 75 inference_server, 13 inference_device problems.
    sets = {}
    for g in w.gemms:
        sets.setdefault(g.name.split(".")[0], []).append(g)
    assert {k: len(v) for k, v in sets.items()} == {
        "training": 160,
        "inference_server": 75,
        "inference_device": 13,
    }
    # The first training problem is DeepBench (M=1760, N=16, K=1760): N is our M (batch).
    first = w.gemm("training.001.nn")
    assert (first.m, first.n, first.k) == (16, 1760, 1760)
    # Shapes are fixed: batch and seq do not change them.
    assert load_workload("deepbench", batch=7, seq=3).gemms == w.gemms
    # Within one set DeepBench lists no shape twice.
    for entries in sets.values():
        shapes = [(g.m, g.n, g.k, g.name.rsplit(".", 1)[1]) for g in entries]
        assert len(shapes) == len(set(shapes))


# -- errors ----------------------------------------------------------------------------------
def test_unknown_model_lists_known_ones():
    with pytest.raises(InputError) as info:
        load_workload("bert-bas")
    assert info.value.argument == "model"
    assert "did you mean 'bert-base'" in str(info.value)
    assert all(model in str(info.value) for model in MODELS)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(batch=0), "--batch"),
        (dict(batch=-3), "--batch"),
        (dict(batch=1.5), "--batch"),
        (dict(batch=True), "--batch"),
        (dict(batch="8"), "--batch"),
        (dict(seq=0), "--seq"),
        (dict(seq=2.0), "--seq"),
    ],
)
def test_bad_parameters_name_the_option(kwargs, argument):
    with pytest.raises(InputError) as info:
        load_workload("bert-base", **kwargs)
    assert info.value.argument == argument


@pytest.mark.parametrize(
    "formula",
    [
        "__import__('os')",
        "batch ** 2",
        "batch.real",
        "[1, 2]",
        "seq if batch else 1",
        "1.5 * batch",
        "True",
        "hidden",
        "batch / 0",
        "batch // 0",
        "7 / 2",
        "lambda: 1",
        "open('x')",
        "2 * (3",
        "*" * 500,
    ],
)
def test_formula_evaluator_refuses_everything_else(formula):
    with pytest.raises(InputError) as info:
        evaluate_formula(formula, {"batch": 4, "seq": 16})
    assert info.value.argument == "formula"


def test_formula_evaluator_basics():
    names = {"batch": 4, "seq": 16}
    assert evaluate_formula("batch * seq", names) == 64
    assert evaluate_formula("(224 + 2*3 - 7) // 2 + 1", names) == 112
    assert evaluate_formula("768 / 12", names) == 64
    assert evaluate_formula("-(batch - seq)", names) == 12
    assert evaluate_formula(5, names) == 5


# Expression trees over + - * // and parentheses: the evaluator must agree with Python's
# integer arithmetic (it is an interpreter for a tiny subset of it), and refuse values past
# its 2**62 cap instead of building huge integers.
_leaf = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["batch", "seq"]))
_ops = st.sampled_from(["+", "-", "*", "//"])


def _combine(children):
    return st.tuples(children, _ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")


@settings(max_examples=200, deadline=None)
@given(st.recursive(_leaf, _combine, max_leaves=12), st.integers(1, 64), st.integers(1, 512))
def test_formula_evaluator_agrees_with_integer_arithmetic(formula, batch, seq):
    names = {"batch": batch, "seq": seq}
    expected = _reference(formula, names)
    if expected is None:
        with pytest.raises(InputError):
            evaluate_formula(formula, names)
    else:
        assert evaluate_formula(formula, names) == expected


def _reference(formula: str, names: dict[str, int]) -> int | None:
    """An independent evaluator: tokenise and fold the fully parenthesised expression."""
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv}
    tokens = formula.replace("(", " ( ").replace(")", " ) ").split()
    stack: list[list] = [[]]
    for token in tokens:
        if token == "(":
            stack.append([])
        elif token == ")":
            left, op, right = stack.pop()
            if op == "//" and right == 0:
                return None
            value = ops[op](left, right)
            if abs(value) > 2**62:  # the evaluator's cap on intermediate values
                return None
            stack[-1].append(value)
        elif token in ops:
            stack[-1].append(token)
        else:
            stack[-1].append(names[token] if token in names else int(token))
    return stack[0][0]


# -- user catalogs -------------------------------------------------------------------------
def test_user_catalog_and_catalog_errors(tmp_path, monkeypatch):
    (tmp_path / "toy.toml").write_text(
        'description = "toy"\nsource = "made up"\n[constants]\nwidth = "2 * seq"\n'
        '[[gemm]]\nname = "a"\nm = "batch"\nn = "width"\nk = 8\ncount = 3\n'
    )
    (tmp_path / "bad.toml").write_text(
        'description = "bad"\nsource = "made up"\n'
        '[[gemm]]\nname = "a"\nm = "batch - 1"\nn = 1\nk = 1\n'
    )
    (tmp_path / "typo.toml").write_text(
        'description = "typo"\nsource = "made up"\n[[gemm]]\nname = "a"\nm = 1\nn = 1\nkk = 1\n'
    )
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    assert {"toy", "bad", "typo"} <= set(list_workloads())
    toy = load_workload("toy", batch=5, seq=10)
    assert toy.gemms == (Gemm("a", 5, 20, 8, 3, True),)
    assert toy.flops == 2 * 5 * 20 * 8 * 3
    with pytest.raises(InputError) as info:
        load_workload("bad", batch=1)
    assert info.value.argument == "bad.toml: gemm 'a'.m"
    assert load_workload("bad", batch=2).gemms[0].m == 1
    with pytest.raises(InputError, match="unknown key 'kk'"):
        load_workload("typo")
    assert load_workload(str(tmp_path / "toy.toml"), seq=1).gemm("a").n == 2
