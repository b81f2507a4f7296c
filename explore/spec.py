"""Exploration specs: the TOML file that names a design space, checked before anything runs.

A spec (three ship in `explore/specs/`: sparse-tc, memory-wall, future-gpu; format in
docs/explore.md) names

- `base`: the hardware preset every point starts from;
- `[hardware]`: fields to vary on a grid, each a list of values, an inclusive range
  `{ start, stop, step }` or `{ factors = [...] }` of the base preset's value; the grid
  is their cross product;
- `[sample]`: fields to vary by a sampled design, Latin hypercube or Sobol
  (`scipy.stats.qmc`), with a seed and a point count, each field an interval
  `{ low, high }` (or factors of the base value with `relative = true`, on a log scale
  with `log = true`); with a grid too, every grid point gets every sample;
- `[[workload]]`: GEMM shapes (`shape = [M, N, K]`) or whole models from the catalogs
  (`model = "bert-base"`, `batch`, `seq`, `trace`);
- `patterns`, `sparsities`, `policies` and `[configs]` (kernel configs per pattern).

`SpecFile` is the file's pydantic model: TOML is typed, so nothing is coerced and no key
is unknown. Then every hardware point is built as a `Hardware` with `with_overrides` - the
same typed, range-checked model as the presets - and every pattern's kernel is checked to
fit on every point, so a spec that would fail halfway fails here, with one InputError
naming file and entry ("memory-wall.toml: hardware.dram_bandwidth_gbps[2]").
`ExploreSpec.digest` identifies what a store holds (`tvwsim.explore.store`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from tvwsim.explore.design import SAMPLE_METHODS, HardwarePoint, hardware_points
from tvwsim.validate.model_errors import input_error

from tvwsim.config import AUTO, KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.io import named_toml
from tvwsim.pattern_spec import BASELINE_PATTERN, PATTERN_NAMES, PATTERNS, mma_kind
from tvwsim.schedule import POLICIES

SPEC_PACKAGE = "tvwsim.explore"
"""The shipped specs are package data: `specs/*.toml` of this package."""

_FILE = ConfigDict(extra="forbid", strict=True, frozen=True)
PositiveInt = Annotated[StrictInt, Field(gt=0)]
OneOrMore = PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)]


class WorkloadTable(BaseModel):
    """One `[[workload]]`: a GEMM shape, or a model from the catalogs."""

    model_config = _FILE

    shape: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)] | None = Field(
        None, description="[M, N, K] of one GEMM, Y = X (M x K) @ W.T"
    )
    name: StrictStr | None = Field(None, min_length=1, description="Label of a GEMM workload.")
    model: StrictStr | None = Field(
        None, min_length=1, description="Workload catalog: bert-base, vgg16, ... or a .toml"
    )
    batch: OneOrMore = Field(1, description="Batch size(s) of a model.")
    seq: OneOrMore = Field(128, description="Sequence length(s) of a model.")
    trace: StrictStr = Field(
        "auto", description="Structure of a model's weights: auto, none or a .json.gz trace."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> WorkloadTable:
        if (self.shape is None) == (self.model is None):
            raise ValueError("give either shape = [M, N, K] or model = 'NAME'")
        if self.shape is not None:
            extra = [k for k in ("batch", "seq", "trace") if k in self.model_fields_set]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to model workloads only")
        elif self.name is not None:
            raise ValueError("name labels GEMM workloads; a model is named by model")
        return self


class SampleTable(BaseModel):
    """`[sample]`: a sampled design over intervals of hardware fields."""

    model_config = _FILE

    method: Literal[SAMPLE_METHODS] = Field(description="latin-hypercube or sobol")
    points: PositiveInt = Field(description="How many points to draw.")
    seed: Annotated[StrictInt, Field(ge=0)] = Field(0, description="Seed of the design.")
    fields: dict[StrictStr, Any] = Field(
        min_length=1, description="Field -> interval { low, high, log?, relative? }."
    )


class SpecFile(BaseModel):
    """An exploration spec file."""

    model_config = _FILE

    name: StrictStr | None = Field(None, min_length=1, description="Default: the file name.")
    description: StrictStr = ""
    base: StrictStr = Field(min_length=1, description="Hardware preset every point starts from.")
    seed: Annotated[StrictInt, Field(ge=0)] = Field(
        0, description="Seed of the synthetic weights and trace draws."
    )
    hardware: dict[StrictStr, Any] = Field(
        {}, description="Grid: field -> values, { start, stop, step } or { factors }."
    )
    sample: SampleTable | None = None
    workload: list[WorkloadTable] = Field(min_length=1, description="[[workload]] tables.")
    patterns: list[Literal[PATTERN_NAMES]] = Field(
        list(PATTERN_NAMES), min_length=1, description="Patterns; dense always runs."
    )
    sparsities: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.75], min_length=1, description="Target sparsities (dense runs at 0, vw at 0.5)."
    )
    policies: list[Literal[POLICIES]] = Field(["natural"], min_length=1)
    configs: dict[Literal[PATTERN_NAMES], list[StrictStr]] = Field(
        {}, description="Kernel configs per pattern (default: the pattern's own)."
    )

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, values: list[float], info: Any) -> list[float]:
        values = list(dict.fromkeys(float(v) for v in values))
        for pattern in info.data.get("patterns", []):
            spec = PATTERNS[pattern]
            if spec.fixed_sparsity is None and not spec.sparsities_for(values):
                raise ValueError(f"{pattern} needs a sparsity {spec.allowed()}, got {values}")
        return values

    @field_validator("configs")
    @classmethod
    def _configs(cls, configs: dict[str, list[str]], info: Any) -> dict[str, list[str]]:
        for pattern, names in configs.items():
            if pattern not in info.data.get("patterns", []) and pattern != BASELINE_PATTERN:
                raise ValueError(f"{pattern} has configs but is not in patterns")
            if not names:
                raise ValueError(f"{pattern}: name at least one config like '128x128x32s3w4'")
            for name in names:
                try:
                    if name == AUTO:
                        from tvwsim.sim.library import library_for

                        library_for(pattern, argument="configs")
                    else:
                        kernel_config(pattern, name)
                except InputError as err:
                    raise ValueError(f"{pattern} {name!r}: {err.problem}") from None
        return configs


def kernel_config(pattern: str, name: str) -> KernelConfig:
    """A config name for `pattern`, by the kernels' own rules (InputError)."""
    config = KernelConfig.from_name(name, mma=mma_kind(pattern))
    if PATTERNS[pattern].has_kernel:
        from tvwsim.kernels.build import check_pattern_config

        check_pattern_config(pattern, config)
    return config


# =====================================================================================
# The checked spec
# =====================================================================================
@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of the exploration: a GEMM (`model` None) or a model at batch/seq."""

    label: str
    """'ffn1 4096x3072x768', 'bert-base b1 s128': the `workload` column of the store."""
    m: int | None = None
    n: int | None = None
    k: int | None = None
    model: str | None = None
    batch: int | None = None
    seq: int | None = None
    trace: str = "auto"

    @property
    def kind(self) -> str:
        return "model" if self.model is not None else "gemm"


@dataclass(frozen=True)
class Run:
    """One kernel variant a workload runs in: pattern, sparsity, config, policy."""

    pattern: str
    sparsity: float
    config: str
    """The config's name, or 'auto' (a library's pick per point and GEMM)."""
    policy: str


@dataclass(frozen=True)
class ExploreSpec:
    """A checked spec: hardware points, workloads and runs."""

    name: str
    description: str
    base: str
    seed: int
    varied: tuple[str, ...]
    """The hardware fields the design varies, in spec order (grid, then sample)."""
    points: tuple[HardwarePoint, ...]
    workloads: tuple[WorkloadSpec, ...]
    patterns: tuple[str, ...]
    sparsities: tuple[float, ...]
    policies: tuple[str, ...]
    configs: dict[str, tuple[str, ...]]
    """Config names per pattern (dense first in `patterns`)."""
    digest: str
    """sha256 of the checked spec and the base preset's fields: a store refuses to mix."""
    source: str = ""

    def runs(self, workload: WorkloadSpec) -> list[Run]:
        """Every run of `workload`; the first is the dense baseline of its policy."""
        out: list[Run] = []
        for policy in self.policies:
            for pattern in self.patterns:
                spec = PATTERNS[pattern]
                sparsities = spec.sparsities_for(self.sparsities)
                for sparsity in sparsities:
                    for config in self.configs[pattern]:
                        out.append(Run(pattern, float(sparsity), config, policy))
        return out

    @property
    def rows_per_point(self) -> int:
        """Rows one hardware point writes (all workloads)."""
        return sum(len(self.runs(w)) for w in self.workloads)


def _digest(checked: SpecFile, base_fields: dict[str, Any]) -> str:
    data = checked.model_dump(mode="json", exclude={"name", "description"})
    text = json.dumps({"spec": data, "base": base_fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _workloads(tables: list[WorkloadTable], label: str) -> tuple[WorkloadSpec, ...]:
    from tvwsim.traces.catalog import load_workload

    out: list[WorkloadSpec] = []
    for index, table in enumerate(tables):
        entry = f"{label}: workload[{index}]"
        if table.shape is not None:
            m, n, k = table.shape
            name = f"{table.name} " if table.name else ""
            out.append(WorkloadSpec(f"{name}{m}x{n}x{k}", m=m, n=n, k=k))
            continue
        batches = table.batch if isinstance(table.batch, list) else [table.batch]
        seqs = table.seq if isinstance(table.seq, list) else [table.seq]
        if table.trace not in ("auto", "none") and not table.trace.endswith(".json.gz"):
            raise InputError(
                f"{entry}.trace", f"got {table.trace!r}; allowed: auto, none, *.json.gz"
            )
        for batch in dict.fromkeys(batches):
            for seq in dict.fromkeys(seqs):
                try:
                    workload = load_workload(table.model, batch=batch, seq=seq)
                except InputError as err:
                    arg = err.argument.lstrip("-")
                    if arg in ("model", "batch", "seq"):
                        raise InputError(f"{entry}.{arg}", err.problem) from None
                    raise InputError(f"{entry}.model: {err.argument}", err.problem) from None
                out.append(
                    WorkloadSpec(
                        f"{workload.name} b{batch} s{seq}",
                        model=table.model,
                        batch=batch,
                        seq=seq,
                        trace=table.trace,
                    )
                )
    labels = [w.label for w in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise InputError(f"{label}: workload", f"listed twice: {', '.join(twice)}")
    return tuple(out)


def _check_kernels_fit(spec: ExploreSpec, label: str, given: set[str]) -> None:
    """Every pattern's kernel fits an SM of every hardware point (occupancy > 0)."""
    from tvwsim.sim.occupancy import occupancy, resources_for

    seen: set[tuple] = set()
    for point in spec.points:
        hw = point.hardware
        for pattern in spec.patterns:
            for name in spec.configs[pattern]:
                if name == AUTO:
                    continue  # the library's menu holds only tiles that fit
                config = kernel_config(pattern, name)
                key = (hw, pattern, config)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    occupancy(hw, resources_for(hw, pattern, config))
                except InputError as err:
                    entry = f"configs.{pattern}" if pattern in given else "patterns"
                    raise InputError(
                        f"{label}: {entry}",
                        f"{pattern} {name} does not fit on {point.describe()}: {err.problem}",
                    ) from None


def parse_spec(data: dict[str, Any], *, label: str = "spec", source: str = "") -> ExploreSpec:
    """Check a spec's TOML data and build the ExploreSpec (one InputError naming the entry)."""
    from tvwsim.sim.presets import hardware_fields, load_preset

    try:
        checked = SpecFile.model_validate(dict(data))
    except ValidationError as err:
        raise input_error(err, label, SpecFile) from None
    try:
        base = load_preset(checked.base, argument="base")
    except InputError as err:
        raise InputError(f"{label}: base", err.problem) from None
    points = hardware_points(base, checked.hardware, checked.sample, label=label)
    patterns = list(dict.fromkeys([BASELINE_PATTERN, *checked.patterns]))
    configs = {
        p: tuple(
            dict.fromkeys(
                name if name == AUTO else kernel_config(p, name).name
                for name in checked.configs.get(p, [default_config(p).name])
            )
        )
        for p in patterns
    }
    workloads = _workloads(checked.workload, label)
    base_fields = {key: getattr(base, key) for key in hardware_fields()}
    spec = ExploreSpec(
        name=checked.name or Path(label).stem,
        description=checked.description,
        base=checked.base,
        seed=checked.seed,
        varied=tuple(
            dict.fromkeys([*checked.hardware, *(checked.sample.fields if checked.sample else {})])
        ),
        points=tuple(points),
        workloads=workloads,
        patterns=tuple(patterns),
        sparsities=tuple(checked.sparsities),
        policies=tuple(dict.fromkeys(checked.policies)),
        configs=configs,
        digest=_digest(checked, base_fields),
        source=source,
    )
    _check_kernels_fit(spec, label, set(checked.configs))
    return spec


# =====================================================================================
# Finding spec files
# =====================================================================================
def _spec_dir() -> Path:
    return Path(str(resources.files(SPEC_PACKAGE).joinpath("specs")))


def shipped_specs() -> list[str]:
    """Names of the exploration specs that ship with tvwsim."""
    return sorted(p.stem for p in _spec_dir().glob("*.toml"))


def load_spec(name_or_path: str | os.PathLike, *, argument: str = "SPEC") -> ExploreSpec:
    """Read and check a spec: a shipped name or a .toml path."""
    path, data = named_toml(
        name_or_path, _spec_dir(), argument=argument, kind="spec", hint="(or a .toml file)"
    )
    return parse_spec(data, label=path.name, source=str(path))
