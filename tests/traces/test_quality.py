"""The numpy MiniLM forward pass and the pruning-quality table.

The reference test compares the dense numpy forward with embeddings computed once by
sentence-transformers (an independent implementation: transformers' BertModel on torch),
stored in traces/reference/ (docs/real-weights.md says how). The invariant tests run a
small random BERT, no download needed.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.traces import quality as q

from tvwsim.cli import main
from tvwsim.errors import InputError

TINY = q.BertShape(hidden=16, heads=2, layers=2, intermediate=32, max_positions=24)


def tiny_bert(seed: int = 0, shape: q.BertShape = TINY) -> dict[str, np.ndarray]:
    """A random BERT state dict with MiniLM's tensor names and a tiny shape."""
    rng = np.random.default_rng(seed)
    h, f = shape.hidden, shape.intermediate

    def r(*dims: int) -> np.ndarray:
        return (0.3 * rng.standard_normal(dims)).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": r(50, h),
        "embeddings.position_embeddings.weight": r(shape.max_positions, h),
        "embeddings.token_type_embeddings.weight": r(2, h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
    }
    for i in range(shape.layers):
        p = f"encoder.layer.{i}."
        for name, (n, k) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (f, h),
            "output.dense": (h, f),
        }.items():
            t[p + name + ".weight"] = r(n, k)
            t[p + name + ".bias"] = r(n)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + r(h)
            t[p + ln + ".bias"] = r(h)
    return t


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    seq = max(len(r) for r in rows)
    ids = np.zeros((len(rows), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


# -- invariants on a tiny random BERT ----------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(1, 49), min_size=1, max_size=12), min_size=1, max_size=4),
    extra=st.integers(0, 10),
)
def test_padding_changes_nothing(rows: list[list[int]], extra: int) -> None:
    """Each sentence's embedding is the same alone, in a padded batch, and with more
    padding: the attention mask and the masked mean really exclude padded positions."""
    t = tiny_bert()
    ids, mask = _pad(rows)
    batch = q.encode(t, ids, mask, shape=TINY)
    wider_ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=7)  # junk in the padding
    wider = q.encode(t, wider_ids, np.pad(mask, ((0, 0), (0, extra))), shape=TINY)
    np.testing.assert_allclose(wider, batch, atol=1e-12)
    for i, r in enumerate(rows):
        alone = q.encode(t, np.array([r]), np.ones((1, len(r)), dtype=np.int64), shape=TINY)
        np.testing.assert_allclose(alone[0], batch[i], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-12)


def test_gelu_is_the_erf_form() -> None:
    x = np.linspace(-6, 6, 25)
    expect = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(q._gelu(x), expect, rtol=1e-12, atol=1e-15)
    # the tanh approximation differs by up to ~1e-3 here, so this pins the exact form
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(q._gelu(x) - tanh).max() > 1e-4


def test_missing_tensor_is_named() -> None:
    t = tiny_bert()
    del t["encoder.layer.1.output.dense.weight"]
    with pytest.raises(InputError, match="output.dense.weight"):
        q.encode(t, np.array([[1, 2]]), np.array([[1, 1]]), shape=TINY)


def test_quality_cases() -> None:
    cases = q.quality_cases(["ew", "vw", "tvw"], [0.25, 0.75])
    # Pattern order; vw at its fixed 0.5 even when not asked; tvw only at >= 0.5.
    assert cases == [("ew", 0.25), ("ew", 0.75), ("vw", 0.5), ("tvw", 0.75)]
    assert ("vw", 0.5) in q.quality_cases()
    assert not any(p == "vw" and s != 0.5 for p, s in q.quality_cases())


def test_quality_table_on_tiny_bert_and_the_speedup_hook() -> None:
    """Dense row is exact; pruned rows carry the pruning record to the speedup hook."""
    t = tiny_bert(1)
    ids, mask = _pad([[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13], [14, 15, 16]])
    seen: list[q.PrunedModel] = []

    def hook(model: q.PrunedModel) -> float | None:
        seen.append(model)
        return None if model.pattern == "dense" else float(len(model.layers))

    rows = q.quality_table(
        t, ids, mask, [("ew", 0.5), ("tw", 0.75)], tile=16, speedup_fn=hook, shape=TINY
    )
    dense, ew, tw = rows
    assert (dense.pattern, dense.cosine_mean, dense.top1, dense.simulated_speedup) == (
        "dense",
        1.0,
        1.0,
        None,
    )
    assert ew.achieved_sparsity == pytest.approx(0.5)
    assert 0.0 < ew.importance_retained < 1.0 and -1.0 <= ew.cosine_min <= ew.cosine_mean <= 1.0
    assert ew.tile is None and tw.tile == 16
    assert [m.pattern for m in seen] == ["dense", "ew", "tw"]
    assert all(m.tokens == int(mask.sum()) for m in seen)
    assert len(seen[2].layers) == 6 * TINY.layers and ew.simulated_speedup == 12.0
    # the masks handed to the hook are the ones applied
    name, pruned = seen[2].layers[4]
    assert name == "layer0.ffn1" and pruned.mask.shape == (32, 16) and pruned.layout is not None
    assert "n/a" in q.format_table(rows) and "12.00x" in q.format_table(rows)


def test_unrelated_cosine() -> None:
    e = np.eye(3)
    assert q.unrelated_cosine(e) == 0.0
    assert q.unrelated_cosine(np.ones((4, 2)) / math.sqrt(2)) == pytest.approx(1.0)


def test_sentences_file_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        q.load_sentences(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="no sentence"):
        q.load_sentences(empty)


def test_cli_bad_input_is_one_line(capsys) -> None:
    for argv in (
        ["quality", "--sparsity", "1.5"],
        ["quality", "--pattern", "dense,xx"],
        ["quality", "--tile", "0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tvwsim quality: error:")


# -- the real model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> tuple[dict[str, np.ndarray], str]:
    from tvwsim.traces.real_weights import load_model_tensors, minilm_tokenizer_json

    try:
        return load_model_tensors("minilm"), minilm_tokenizer_json()
    except InputError as err:
        pytest.skip(f"MiniLM weights not obtainable here: {err}")


def test_dense_forward_matches_the_reference(minilm) -> None:
    """numpy forward vs sentence-transformers' own embeddings: max |difference| < 1e-4."""
    tensors, tokenizer_json = minilm
    meta = json.loads(q.REFERENCE_META_PATH.read_text())
    sentences = q.load_sentences()
    digest = hashlib.sha256(q.SENTENCES_PATH.read_bytes()).hexdigest()
    assert digest == meta["sentences_sha256"], "sentences changed: recompute the reference"
    ids, mask = q.tokenize(sentences, tokenizer_json)
    assert mask.sum(axis=1).tolist() == meta["token_counts"]  # same tokenizer, same tokens
    reference = np.load(q.REFERENCE_PATH)
    ours = q.encode(tensors, ids, mask)
    assert ours.shape == reference.shape == (len(sentences), 384)
    assert np.abs(ours - reference).max() < 1e-4


def test_cli_quality_prints_the_table(minilm, capsys) -> None:
    args = ["quality", "--pattern", "vw,ew", "--sparsity", "0.5"]
    assert main(args) == 0
    text = capsys.readouterr().out
    lines = [line.split() for line in text.splitlines()]
    assert lines[0][:2] == ["pattern", "target"]
    assert [row[0] for row in lines[2:5]] == ["dense", "vw", "ew"]
    assert "sim speedup: the 36 pruned GEMMs" in text and "at 4096 tokens" in text
    # --json is a flag, as in every command: the same rows as one JSON array on stdout
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["pattern"]: r for r in rows}
    assert by["vw"]["achieved_sparsity"] == pytest.approx(0.5)
    # the simulator is connected: ew (CUDA cores) is slower than 2:4 on sparse tensor cores
    assert 0.0 < by["ew"]["simulated_speedup"] < by["vw"]["simulated_speedup"]
    # ew keeps the largest |W| of every layer, vw only the larger 2 of each 4: ew keeps
    # more magnitude and, on this model, stays closer to the dense embeddings.
    assert by["ew"]["importance_retained"] > by["vw"]["importance_retained"]
    assert 1.0 > by["ew"]["cosine_mean"] > by["vw"]["cosine_mean"] > 0.0
