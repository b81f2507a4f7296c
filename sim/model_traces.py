"""Real weights meet the whole-model simulation: trace families and the quality speedup.

Two connections between what validate knows (real trained weights, their pruned traces,
the MiniLM quality table) and the simulator (`tvwsim.sim.model`), kept here so that sim never
imports validate (docs/design.md):

1. **Trace families.** The traces in traces/pruned/ come from three real models; each
   stands in for the full-size models of its family:

   - bert-base, bert-large <- minilm, by role: Q, K, V and attention-out take MiniLM's
     384x384 layers, FFN1 its 1536x384, FFN2 its 384x1536; encoder layer i of L takes
     MiniLM layer i * 6 // L;
   - vgg16 <- vgg16: conv i <- conv i (the same 13 layers and shapes); fc6-8 have none;
   - resnet50 <- resnet50: the half-width ResNet-50's convolution at the same stage,
     block and role (conv1, conv2, conv3, downsample); fc has none;
   - gnmt, deepbench: no trace, seeded random weights.

   `trace_mapping` checks that the trace fits the catalog (layer count, roles, shapes) and
   refuses one that does not; `TraceMapping.profile` is the `tvwsim.sim.model.ProfileFn`.

2. **The quality table's speedup column.** `quality_speedup_fn` returns the
   `tvwsim.traces.quality.SpeedupFn` that `tvwsim quality` passes: it encodes the 36 pruned
   MiniLM masks actually used for the accuracy numbers, schedules and simulates them,
   and divides the dense model's GEMM time by that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tvwsim.sim.hardware import Hardware
from tvwsim.sim.model import ModelRun
from tvwsim.sim.trace_work import LayerProfile
from tvwsim.traces.catalog import Gemm, Workload
from tvwsim.traces.trace_files import Trace, TraceEntry, load_trace

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import BASELINE_PATTERN, VALUE_DEPENDENT_PATTERNS, pattern_spec

TRACE_FOR = {
    "bert-base": "minilm",
    "bert-large": "minilm",
    "vgg16": "vgg16",
    "resnet50": "resnet50",
}
"""Model (workload catalog name) -> the trace of its family."""
TRACE_LABELS = {
    "minilm": "MiniLM-L6 trace",
    "vgg16": "VGG-16 trace",
    "resnet50": "half-width ResNet-50 trace",
}
"""How the output names each trace."""

BERT_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "ffn1", "ffn2")
RESNET_BLOCKS = (3, 4, 6, 3)
"""Bottleneck blocks per stage of ResNet-50 (He et al., Table 1)."""
QUALITY_TOKENS = 4096
"""Tokens (M) of the quality table's simulated speedup: 32 sequences of 128 tokens, a
serving batch for a sentence encoder (the 32 test sentences alone are only a few
hundred tokens, too few to fill an A100)."""


@dataclass(frozen=True, eq=False)
class TraceMapping:
    """Which trace layer stands in for each instance of each GEMM of a workload."""

    trace: Trace
    label: str
    """'MiniLM-L6 trace'."""
    layers: dict[str, tuple[str, ...]]
    """Catalog GEMM name -> trace layer name of every instance (len = count)."""

    def profile(
        self, gemm: Gemm, instance: int, pattern: str, sparsity: float, config: KernelConfig
    ) -> LayerProfile | None:
        """The `tvwsim.sim.model.ProfileFn`: the trace entry of this instance's layer at this
        pattern and sparsity (tw/tvw at tile width config.bm), or None when the GEMM has no
        trace layer or the trace has no entry for that sparsity or tile width."""
        names = self.layers.get(gemm.name)
        if names is None or pattern not in VALUE_DEPENDENT_PATTERNS:
            return None
        layer = self.trace.layer(names[instance])
        tile = config.bm if pattern_spec(pattern).tiled else None
        entry = layer.entries.get((pattern, float(sparsity), tile))
        if entry is None:
            return None
        return profile_from_entry(self.label, layer.name, layer.n, layer.k, entry)

    def notes(self, runs: Sequence[ModelRun], configs: dict[str, KernelConfig]) -> list[str]:
        """Lines saying which runs fall back to random weights for lack of a trace entry."""
        lines = []
        for run in runs:
            if run.pattern not in VALUE_DEPENDENT_PATTERNS:
                continue
            tile = configs[run.pattern].bm if pattern_spec(run.pattern).tiled else None
            if float(run.sparsity) not in self.trace.sparsities:
                traced = ", ".join(f"{s:g}" for s in self.trace.sparsities)
                lines.append(
                    f"note: {run.label}: the {self.label} has no entry at sparsity "
                    f"{run.sparsity:g} (traced: {traced}); seeded random weights instead"
                )
            elif tile is not None and tile not in self.trace.tile_widths:
                lines.append(
                    f"note: {run.label}: the {self.label} has no tile width {tile}; "
                    "seeded random weights instead"
                )
        return lines


def profile_from_entry(label: str, layer: str, n: int, k: int, entry: TraceEntry) -> LayerProfile:
    """A trace entry as the plain-array `LayerProfile` that sim reads."""
    return LayerProfile(
        source=label,
        layer=layer,
        pattern=entry.pattern,
        sparsity=entry.sparsity,
        n=n,
        k=k,
        tile=entry.tile,
        rows_kept=entry.rows_kept,
        kept_k=entry.kept_k,
        kept_blocks=entry.kept_blocks,
        row_nnz=entry.row_nnz,
    )


def trace_for(model: str) -> str | None:
    """The trace name of a model's family ('minilm' for bert-base), or None."""
    return TRACE_FOR.get(model)


def load_mapping(workload: Workload, spec: str = "auto") -> TraceMapping | None:
    """The trace mapping for `workload`: `spec` 'auto' (its family's committed trace, or
    None for a model without one), 'none' (random weights), or a .json.gz trace path."""
    if spec == "none":
        return None
    family = trace_for(workload.name)
    if spec == "auto":
        if family is None:
            return None
        return trace_mapping(workload, load_trace(family))
    path = Path(spec)
    if not str(spec).endswith(".json.gz"):
        raise InputError("--trace", f"got {spec!r}; allowed: auto, none or a .json.gz trace file")
    if not path.is_file():
        raise InputError("--trace", f"{spec} does not exist")
    return trace_mapping(workload, load_trace(path))


def trace_mapping(workload: Workload, trace: Trace) -> TraceMapping:
    """Map `trace`'s layers onto `workload`'s GEMMs, or InputError('trace') saying how the
    trace does not fit (a trace of another family, missing layers, other shapes)."""
    family = trace_for(workload.name)
    if family is None:
        raise InputError(
            "trace",
            f"{workload.name} has no real-weight trace family (known: "
            f"{', '.join(f'{m} <- {t}' for m, t in TRACE_FOR.items())}); use --trace none",
        )
    if trace.model != family:
        raise InputError(
            "trace",
            f"{workload.name} takes its structure from a {family} trace, this is a "
            f"{trace.model} trace",
        )
    mapper = {"minilm": _map_bert, "vgg16": _map_vgg, "resnet50": _map_resnet}[family]
    return TraceMapping(trace=trace, label=TRACE_LABELS[family], layers=mapper(workload, trace))


def _mismatch(workload: Workload, trace: Trace, problem: str) -> InputError:
    return InputError(
        "trace",
        f"the {trace.model} trace does not match {workload.name}'s shapes: {problem}",
    )


def _shapes(trace: Trace) -> dict[str, tuple[int, int]]:
    return {layer.name: (layer.n, layer.k) for layer in trace.layers}


def _map_bert(workload: Workload, trace: Trace) -> dict[str, tuple[str, ...]]:
    shapes = _shapes(trace)
    pattern = re.compile(r"^layer(\d+)\.(.+)$")
    per_role: dict[str, list[tuple[int, str]]] = {}
    for name in shapes:
        m = pattern.match(name)
        if not m or m.group(2) not in BERT_ROLES:
            raise _mismatch(workload, trace, f"layer {name!r} is not a BERT encoder GEMM")
        per_role.setdefault(m.group(2), []).append((int(m.group(1)), name))
    depth = {role: len(names) for role, names in per_role.items()}
    if set(per_role) != set(BERT_ROLES) or len(set(depth.values())) != 1:
        raise _mismatch(workload, trace, f"needs every role of {BERT_ROLES} in every layer")
    trace_layers = next(iter(depth.values()))
    mapping = {}
    for gemm in workload.gemms:
        if not gemm.prunable:
            continue
        if gemm.name not in per_role:
            raise _mismatch(workload, trace, f"no trace role for GEMM {gemm.name!r}")
        names = [name for _, name in sorted(per_role[gemm.name])]
        n_t, k_t = shapes[names[0]]
        # Same role, same aspect: FFN1 is 4x as tall as wide in MiniLM and BERT alike.
        if n_t * gemm.k != k_t * gemm.n:
            raise _mismatch(
                workload,
                trace,
                f"{gemm.name} is {gemm.n}x{gemm.k} but the trace's {names[0]} is "
                f"{n_t}x{k_t} (another aspect ratio)",
            )
        mapping[gemm.name] = tuple(names[i * trace_layers // gemm.count] for i in range(gemm.count))
    return mapping


def _map_vgg(workload: Workload, trace: Trace) -> dict[str, tuple[str, ...]]:
    convs = [g for g in workload.gemms if g.prunable and g.name.startswith("conv")]
    if len(convs) != len(trace.layers):
        raise _mismatch(
            workload,
            trace,
            f"{workload.name} has {len(convs)} convolutions, the trace {len(trace.layers)} layers",
        )
    mapping = {}
    for gemm, layer in zip(convs, trace.layers, strict=True):
        if (gemm.n, gemm.k) != (layer.n, layer.k) or gemm.count != 1:
            raise _mismatch(
                workload,
                trace,
                f"{gemm.name} is {gemm.n}x{gemm.k} (count {gemm.count}), the trace's "
                f"{layer.name} {layer.n}x{layer.k}",
            )
        mapping[gemm.name] = (layer.name,)
    return mapping


_RESNET_NAME = re.compile(r"^layer(\d)\.(\d+)(?:-(\d+))?\.(conv1|conv2|conv3|downsample)$")


def _resnet_trace_order() -> list[tuple[int, int, str]]:
    """(stage, block, role) of every trace layer in file order: stem, then per stage
    block 0 as conv1, conv2, downsample, conv3 (the ONNX graph's order) and the other
    blocks as conv1, conv2, conv3."""
    order = [(0, 0, "stem")]
    for stage, blocks in enumerate(RESNET_BLOCKS, start=1):
        order += [(stage, 0, role) for role in ("conv1", "conv2", "downsample", "conv3")]
        for block in range(1, blocks):
            order += [(stage, block, role) for role in ("conv1", "conv2", "conv3")]
    return order


def _map_resnet(workload: Workload, trace: Trace) -> dict[str, tuple[str, ...]]:
    order = _resnet_trace_order()
    if len(trace.layers) != len(order):
        raise _mismatch(
            workload,
            trace,
            f"a ResNet-50 has {len(order)} convolutions, the trace {len(trace.layers)}",
        )
    by_role = dict(zip(order, trace.layers, strict=True))
    # The roles must be where the order says: block 0's downsample reads the block input
    # (its K is conv1's), conv3 reads the bottleneck (its K is conv2's N).
    for stage in range(1, len(RESNET_BLOCKS) + 1):
        c1, c2 = by_role[(stage, 0, "conv1")], by_role[(stage, 0, "conv2")]
        ds, c3 = by_role[(stage, 0, "downsample")], by_role[(stage, 0, "conv3")]
        if ds.k != c1.k or c3.k != c2.n or ds.n != c3.n:
            raise _mismatch(
                workload,
                trace,
                f"stage {stage} block 0 of the trace is not conv1, conv2, downsample, conv3",
            )
    mapping = {}
    for gemm in workload.gemms:
        if not gemm.prunable or gemm.name == "fc":
            continue
        if gemm.name == "conv1":
            keys = [(0, 0, "stem")]
        else:
            m = _RESNET_NAME.match(gemm.name)
            if not m:
                raise _mismatch(workload, trace, f"no trace role for GEMM {gemm.name!r}")
            stage, first = int(m.group(1)), int(m.group(2))
            last = int(m.group(3)) if m.group(3) else first
            if last - first + 1 != gemm.count:
                raise _mismatch(
                    workload,
                    trace,
                    f"{gemm.name} names {last - first + 1} blocks, count {gemm.count}",
                )
            keys = [(stage, b, m.group(4)) for b in range(first, last + 1)]
        names = []
        for key in keys:
            layer = by_role.get(key)
            if layer is None:
                raise _mismatch(workload, trace, f"{gemm.name}: the trace has no {key}")
            # Half width: every channel count but the image's 3 and the stem's 64 halves.
            n_ok = gemm.n in (layer.n, 2 * layer.n)
            k_ok = gemm.k in (layer.k, 2 * layer.k)
            if not (n_ok and k_ok):
                raise _mismatch(
                    workload,
                    trace,
                    f"{gemm.name} is {gemm.n}x{gemm.k}, the trace's {layer.name} "
                    f"{layer.n}x{layer.k} (want equal or half of each)",
                )
            names.append(layer.name)
        mapping[gemm.name] = tuple(names)
    return mapping


# =====================================================================================
# The quality table's simulated speedup
# =====================================================================================
def quality_speedup_fn(
    hw: Hardware, *, tokens: int | None = QUALITY_TOKENS, policy: str = "natural"
):
    """A `tvwsim.traces.quality.SpeedupFn`: a pruned MiniLM's simulated speedup on `hw`.

    For a `PrunedModel` it encodes each of its GEMM masks (with the pruner's tile layout)
    through `tvwsim.kernels.formats.encode`, builds the schedules for `tokens` tokens (None: the
    sentence batch's own token count, `model.tokens`) and simulates them; the dense model
    is simulated the same way from the same shapes. Returns dense GEMM time / pruned GEMM
    time over the weight GEMMs (attention products and the non-GEMM work are left out,
    as they are the same in every pattern). The dense model itself is 1.0; a tile width
    that no kernel config can take (not a multiple of 16) gives None.
    """
    from tvwsim.sim.model import simulate_pruned_layers

    dense_us: dict[tuple, float] = {}

    def speedup(model) -> float | None:
        if model.pattern == BASELINE_PATTERN:
            return 1.0
        m = int(tokens if tokens is not None else model.tokens)
        if m <= 0 or not model.layers:
            return None
        tile = model.tile
        if tile is not None and (tile % 16 or tile > 256):
            return None
        masks = [(pruned.mask, pruned.layout) for _, pruned in model.layers]
        shapes = tuple(mask.shape for mask, _ in masks)
        if (shapes, m) not in dense_us:
            dense = simulate_pruned_layers(masks, BASELINE_PATTERN, m, hw, policy=policy)
            dense_us[(shapes, m)] = sum(r.time_us for r in dense)
        pruned = simulate_pruned_layers(masks, model.pattern, m, hw, tile=tile, policy=policy)
        return dense_us[(shapes, m)] / sum(r.time_us for r in pruned)

    return speedup
