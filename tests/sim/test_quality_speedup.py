"""The `sim speedup` column of `tvwsim quality`: tvwsim.sim.model_traces.quality_speedup_fn and
its wiring in validate/weight_commands.py.

No real weights are needed: the speedup function is fed pruned random layers of MiniLM's
shapes, and the command's weight loading and forward pass are replaced by stand-ins so
that only the wiring is under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels.formats import encode
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.kernels.tile_work import tile_work
from tvwsim.sim.engine import simulate
from tvwsim.sim.model_traces import QUALITY_TOKENS, quality_speedup_fn
from tvwsim.sim.presets import load_preset
from tvwsim.traces import quality as q

from tvwsim.cli import main
from tvwsim.schedule import build_schedule

SHAPES = ((384, 384), (1536, 384), (384, 1536))  # MiniLM's Q/K/V/out, FFN1, FFN2


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Run where no build/kernels/manifest.json exists (estimated kernel resources)."""
    monkeypatch.chdir(tmp_path)


def pruned_model(pattern: str, sparsity: float, tile: int = 128) -> q.PrunedModel:
    rng = np.random.default_rng(7)
    layers = []
    for i, (n, k) in enumerate(SHAPES):
        w = rng.standard_normal((n, k)).astype(np.float32)
        layers.append((f"layer0.gemm{i}", prune_with_layout(w, pattern, sparsity, tile=tile)))
    return q.PrunedModel(pattern, sparsity, tile if pattern in ("tw", "tvw") else None,
                         tuple(layers), tokens=300)  # fmt: skip


def test_speedup_is_dense_time_over_the_masks_time():
    hw = load_preset("a100")
    fn = quality_speedup_fn(hw)
    model = pruned_model("tw", 0.75)
    # recomputed by hand: the same masks and layouts, encoded, scheduled, simulated
    dense = pruned = 0.0
    for _, p in model.layers:
        n, k = p.mask.shape
        dense += simulate(schedule_for_shape(QUALITY_TOKENS, n, k, "dense", 0.0), hw).time_us
        enc = encode(np.ones((n, k), np.float16), p.mask, "tw", layout=p.layout)
        work = tile_work(enc, kept_weights=int(p.mask.sum()))
        pruned += simulate(build_schedule(work, QUALITY_TOKENS), hw).time_us
    assert fn(model) == pytest.approx(dense / pruned)
    assert fn(model) > 1.0  # 75% tile-wise sparsity is faster than dense at 4096 tokens
    assert fn(q.PrunedModel("dense", 0.0, None, (), tokens=300)) == 1.0


def test_token_count_and_tile_width():
    hw = load_preset("a100")
    model = pruned_model("tw", 0.75, tile=64)
    own = quality_speedup_fn(hw, tokens=None)(model)  # the sentence batch's 300 tokens
    assert own is not None and own != quality_speedup_fn(hw)(model)
    assert quality_speedup_fn(hw)(pruned_model("tw", 0.75, tile=40)) is None  # no kernel
    # more sparsity, more speed (same masks' family, same hardware)
    fn = quality_speedup_fn(hw)
    assert fn(pruned_model("tvw", 0.875)) > fn(pruned_model("tvw", 0.5))


def test_quality_command_passes_the_simulator(monkeypatch, capsys):
    """run_quality hands quality_table a working SpeedupFn and says what it measured."""
    import tvwsim.traces.real_weights as rw

    seen = {}
    monkeypatch.setattr(rw, "load_model_tensors", lambda *a, **k: {})
    monkeypatch.setattr(rw, "minilm_tokenizer_json", lambda *a, **k: "{}")
    monkeypatch.setattr(q, "tokenize", lambda s, t: (np.ones((2, 3), int), np.ones((2, 3), int)))
    monkeypatch.setattr(q, "encode", lambda *a, **k: np.eye(2))

    def table(tensors, ids, mask, cases, *, speedup_fn, **kwargs):
        seen["fn"] = speedup_fn
        return [q.QualityRow("tw", 0.75, 128, 0.75, 0.5, 0.9, 0.8, 1.0,
                             speedup_fn(pruned_model("tw", 0.75)))]  # fmt: skip

    monkeypatch.setattr(q, "quality_table", table)
    assert main(["quality", "--pattern", "tw", "--sparsity", "0.75", "--hw", "h100"]) == 0
    out = capsys.readouterr().out
    assert callable(seen["fn"])
    h100 = quality_speedup_fn(load_preset("h100"))(pruned_model("tw", 0.75))
    assert f"{h100:.2f}x" in out and "n/a" not in out
    assert "simulated on h100 at 4096 tokens" in out


@pytest.mark.parametrize(
    "argv,message",
    [(["--hw", "nope"], "--hw"), (["--sim-tokens", "0"], "--sim-tokens")],
)
def test_quality_bad_sim_options(capsys, argv, message):
    assert main(["quality", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvwsim quality: error:") and message in err[0]
