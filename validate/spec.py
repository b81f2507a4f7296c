"""Sweep specs: the TOML file that says which GEMMs to time, checked and expanded into points.

A spec (`quick` and `full` ship in `validate/sweeps/`; format in docs/validation.md)
names shapes, patterns, sparsities, kernel configs, scheduling policies and vendor
baselines - at the top level, or in several `[[group]]` tables that inherit every key
they do not set from the top level. Each group measures the cross product of its lists.

`SweepFile` and `GroupTable` are the file's pydantic models (their JSON Schema is
published in docs/validation.md). Every key is checked there, configs by the kernels'
own rules (`check_pattern_config`, the shipped variants, `bw_block_problem`, the `hw`
preset's shared memory), so a spec the encoder or launcher would refuse fails here, not
on the GPU. A bad spec is one InputError naming file and entry
("quick.toml: group[1].configs.tw"). `SweepSpec.points()` expands a checked spec.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
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
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from tvwsim.validate.model_errors import input_error
from tvwsim.validate.points import (
    BASELINE_PATTERN,
    BASELINES,
    DEFAULT_BLOCK,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    MIN_REPEATS,
    VENDOR,
    SweepPoint,
    TimingPlan,
)

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.io import named_toml
from tvwsim.pattern_spec import KERNEL_PATTERNS, PATTERNS, REGULAR_PATTERNS, mma_kind
from tvwsim.schedule import POLICIES

SWEEP_PACKAGE = "tvwsim.validate"
"""The shipped sweep specs are package data: `sweeps/*.toml` of this package."""


def _sweep_dir() -> Path:
    return Path(str(resources.files(SWEEP_PACKAGE).joinpath("sweeps")))


# =====================================================================================
# The file's models
# =====================================================================================
_FILE = ConfigDict(extra="forbid", strict=True, frozen=True)
"""TOML is typed: no coercion ("128" is not 128, true is not 1), no unknown key."""

PositiveInt = Annotated[StrictInt, Field(gt=0)]
Shape = Annotated[list[PositiveInt], Field(min_length=3, max_length=3, description="[M, N, K]")]
Sparsity = Annotated[float, Field(gt=0, lt=1)]
KernelPattern = Literal[KERNEL_PATTERNS]
Baseline = Literal[BASELINES]
Policy = Literal[POLICIES]


def kernel_config(pattern: str, name: str, hardware: Any = None) -> KernelConfig:
    """A config name of `pattern` -> KernelConfig, by the kernels' own rules (ValueError).

    `hardware`, when given, is the preset whose shared memory per CTA it must fit.
    """
    from tvwsim.kernels import build as kbuild

    try:
        config = KernelConfig.from_name(name, mma=mma_kind(pattern))
        kbuild.check_pattern_config(pattern, config)
    except InputError as err:
        raise ValueError(f"{name!r}: {err.problem}") from None
    built = kbuild.VARIANTS.get(pattern, []) + kbuild.WGMMA_VARIANTS.get(pattern, [])
    shipped = [c.name for c in built]
    if config.name not in shipped:
        raise ValueError(
            f"{name!r} is not a built {pattern} variant; shipped: {', '.join(shipped)} "
            "(kernels/build.py VARIANTS, WGMMA_VARIANTS)"
        )
    if hardware is not None and config.smem_bytes > hardware.smem_per_cta_bytes:
        raise ValueError(
            f"{name!r} needs {config.smem_bytes} B shared memory per CTA; {hardware.name} "
            f"allows {hardware.smem_per_cta_bytes}"
        )
    return config


def _hardware(info: ValidationInfo) -> Any:
    return (info.context or {}).get("hardware")


class _ConfigLists(BaseModel):
    model_config = _FILE

    @field_validator("*")
    @classmethod
    def _buildable(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if names is not None:
            if not names:
                raise ValueError("name at least one config like '128x128x32s3w4'")
            for name in names:
                kernel_config(info.field_name, name, _hardware(info))
        return names


ConfigTable = create_model(
    "ConfigTable",
    __base__=_ConfigLists,
    __doc__="Kernel variants per pattern: shipped configs (kernels/build.py VARIANTS).",
    **{
        p: (list[StrictStr] | None, Field(None, description=f"{p} configs, e.g. '128x128x32s3w4'"))
        for p in KERNEL_PATTERNS
    },
)
"""`[group.configs]`: one optional list per pattern with a kernel (from the registry)."""


class GroupTable(BaseModel):
    """One `[[group]]` (or the top level): its lists' cross product is measured.

    Fields are checked in the order written, so each check may rely on the ones above.
    """

    model_config = _FILE

    note: StrictStr = Field("", description="What the group is for (not used otherwise).")
    shapes: list[Shape] = Field(min_length=1, description="GEMMs [M, N, K]: Y = X (M x K) @ W.T")
    baselines: list[Baseline] = Field([], description="Vendor libraries timed on each shape.")
    configs: ConfigTable = Field(
        default_factory=ConfigTable,
        description="Kernel variants per pattern (default: the pattern's default config).",
    )
    patterns: list[KernelPattern] = Field(
        [], validate_default=True, description="Patterns of our kernels to time."
    )
    policies: list[Policy] = Field(
        ["natural"], min_length=1, description="Scheduling policies (bw, tw, tvw)."
    )
    sparsities: list[Sparsity] = Field(
        [], validate_default=True, description="Target sparsities (dense runs at 0, vw at 0.5)."
    )
    seeds: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        [0], min_length=1, description="Seeds of the weight and of X."
    )

    @field_validator("patterns", mode="before")
    @classmethod
    def _no_ew(cls, value: Any) -> Any:
        if isinstance(value, list) and "ew" in value:
            raise ValueError(
                "ew has no tvwsim kernel; list 'cusparse-csr' in baselines to time "
                "unstructured sparsity"
            )
        return value

    @field_validator("patterns")
    @classmethod
    def _something_to_run(cls, patterns: list[str], info: ValidationInfo) -> list[str]:
        if not patterns and not info.data.get("baselines"):
            raise ValueError("a group needs patterns or baselines")
        # A pattern without a config list runs its default config, which must fit too.
        configs = info.data.get("configs")
        for pattern in patterns:
            if configs is not None and getattr(configs, pattern) is None:
                try:
                    kernel_config(pattern, default_config(pattern).name, _hardware(info))
                except ValueError as err:
                    raise ValueError(f"{pattern}'s default config {err}") from None
        return list(dict.fromkeys(patterns))

    @field_validator("sparsities")
    @classmethod
    def _sparsities_fit(cls, sparsities: list[float], info: ValidationInfo) -> list[float]:
        sparsities = list(dict.fromkeys(float(s) for s in sparsities))
        patterns = info.data.get("patterns", [])
        wanted = [*patterns, *(BASELINE_PATTERN[b] for b in info.data.get("baselines", []))]
        for pattern in dict.fromkeys(wanted):
            spec = PATTERNS[pattern]
            if spec.fixed_sparsity is None and not spec.sparsities_for(sparsities):
                raise ValueError(f"{pattern} needs a sparsity {spec.allowed()}, got {sparsities}")
        return sparsities

    def kernel_configs(self, pattern: str) -> tuple[KernelConfig, ...]:
        """The configs `pattern` runs in this group (its list, else its default)."""
        names = getattr(self.configs, pattern) or [default_config(pattern).name]
        return tuple(KernelConfig.from_name(n, mma=mma_kind(pattern)) for n in names)


GROUP_KEYS = tuple(GroupTable.model_fields)
"""Keys a group takes; at the top level they are every group's defaults."""


class SweepFile(BaseModel):
    """A sweep spec file: how to time, and one or more groups of points.

    Besides these keys the top level may hold any group key (`shapes`, `patterns`, ...):
    without `[[group]]` tables they form the one group, with them they are defaults that
    each table inherits unless it sets the key itself.
    """

    model_config = _FILE

    name: StrictStr | None = Field(None, min_length=1, description="Default: the file name.")
    description: StrictStr = ""
    hw: StrictStr | None = Field(
        None, description="Preset whose shared memory per CTA the configs must fit."
    )
    warmup: Annotated[StrictInt, Field(ge=0)] = Field(
        DEFAULT_WARMUP, description="Untimed launches per point."
    )
    repeats: Annotated[StrictInt, Field(ge=MIN_REPEATS)] = Field(
        DEFAULT_REPEATS, description="Timed launches per point (a median of few is noise)."
    )
    group: list[GroupTable] = Field(min_length=1, description="Groups of points ([[group]]).")
    block: StrictInt = Field(DEFAULT_BLOCK, description="Block side of bw and BSR.")

    @model_validator(mode="before")
    @classmethod
    def _groups_inherit(cls, data: Any) -> Any:
        """Top-level group keys become every group's defaults (or the one group)."""
        if not isinstance(data, dict):
            return data
        defaults = {k: data[k] for k in GROUP_KEYS if k in data and k != "note"}
        rest = {k: v for k, v in data.items() if k not in defaults}
        tables = data.get("group", [{}])
        if isinstance(tables, list):
            tables = [{**defaults, **t} if isinstance(t, dict) else t for t in tables]
        return {**rest, "group": tables}

    # Fields are checked in the order written: `hw` before the groups (their configs must
    # fit its shared memory), `block` after them (it must suit their bw kernels).
    @field_validator("hw")
    @classmethod
    def _hw_exists(cls, hw: str | None, info: ValidationInfo) -> str | None:
        if hw is not None:
            from tvwsim.sim.presets import load_preset

            try:
                hardware = load_preset(hw, argument="hw")
            except InputError as err:
                raise ValueError(err.problem) from None
            if info.context is not None:
                info.context["hardware"] = hardware
        return hw

    @field_validator("block")
    @classmethod
    def _block_fits(cls, block: int, info: ValidationInfo) -> int:
        from tvwsim.kernels.formats import bw_block_problem

        if block <= 0:
            raise ValueError(f"must be a positive integer, got {block}")
        for index, table in enumerate(info.data.get("group", [])):
            if "bw" in table.patterns:
                for config in table.kernel_configs("bw"):
                    problem = bw_block_problem(block, config)
                    if problem is not None:
                        raise ValueError(f"{problem}; the bw kernel of group[{index}]")
        return block


def spec_json_schema() -> dict:
    """JSON Schema of a sweep spec file, top-level group keys included (docs/validation.md)."""
    schema = SweepFile.model_json_schema()
    group = schema["$defs"]["GroupTable"]["properties"]
    for key in GROUP_KEYS:
        if key != "note":
            schema["properties"][key] = {
                **group[key],
                "description": f"Default for every group: {group[key].get('description', '')}",
            }
    schema["required"] = []
    return schema


# =====================================================================================
# The checked spec
# =====================================================================================
@dataclass(frozen=True)
class SweepGroup:
    """One block of a spec: the cross product of its lists is measured."""

    shapes: tuple[tuple[int, int, int], ...]
    patterns: tuple[str, ...]
    sparsities: tuple[float, ...]
    policies: tuple[str, ...]
    baselines: tuple[str, ...]
    seeds: tuple[int, ...]
    configs: Mapping[str, tuple[KernelConfig, ...]]
    """Our kernel variants per pattern (default: the pattern's default config)."""

    def points(self, block: int) -> Iterable[SweepPoint]:
        """Shape-major, so an executor can keep one shape's weight and activations around."""
        for m, n, k in self.shapes:
            for seed in self.seeds:
                for pattern in self.patterns:
                    # Every tile of a regular pattern walks the same K: longest-first and
                    # split yield the natural schedule, so it runs once; grouped is
                    # another order of the same tiles and runs as itself.
                    policies = self.policies
                    if pattern in REGULAR_PATTERNS:
                        same = ("longest-first", "split")
                        policies = tuple(
                            dict.fromkeys("natural" if p in same else p for p in policies)
                        )
                    for s in PATTERNS[pattern].sparsities_for(self.sparsities):
                        for config in self.configs[pattern]:
                            for policy in policies:
                                yield SweepPoint(
                                    "tvwsim", pattern, m, n, k, s, config, policy, seed, block
                                )
                for baseline in self.baselines:
                    pattern = BASELINE_PATTERN[baseline]
                    for s in PATTERNS[pattern].sparsities_for(self.sparsities):
                        yield SweepPoint(baseline, pattern, m, n, k, s, None, VENDOR, seed, block)


@dataclass(frozen=True)
class SweepSpec:
    """A named sweep: groups of points plus how to time them."""

    name: str
    description: str
    groups: tuple[SweepGroup, ...]
    timing: TimingPlan
    block: int = DEFAULT_BLOCK
    hw: str | None = None
    """Preset whose shared-memory limit the configs are checked against (optional)."""
    source: str = ""
    """The file the spec came from."""

    def points(self) -> list[SweepPoint]:
        """Every point of every group, in order, duplicates (same key) dropped."""
        seen: set[str] = set()
        out: list[SweepPoint] = []
        for group in self.groups:
            for point in group.points(self.block):
                if point.key not in seen:
                    seen.add(point.key)
                    out.append(point)
        return out


def _group(table: GroupTable) -> SweepGroup:
    configs = {pattern: table.kernel_configs(pattern) for pattern in table.patterns}
    return SweepGroup(
        shapes=tuple((m, n, k) for m, n, k in table.shapes),
        patterns=tuple(table.patterns),
        sparsities=tuple(table.sparsities),
        policies=tuple(dict.fromkeys(table.policies)),
        baselines=tuple(dict.fromkeys(table.baselines)),
        seeds=tuple(dict.fromkeys(table.seeds)),
        configs=configs,
    )


def parse_spec(data: Mapping[str, Any], *, label: str = "spec", source: str = "") -> SweepSpec:
    """Check a spec's TOML data and build the SweepSpec (one InputError naming the entry)."""
    try:
        checked = SweepFile.model_validate(dict(data), context={})
    except ValidationError as err:
        top_keys = [k for k in SweepFile.model_fields if k != "group"]
        top_keys += [k for k in GROUP_KEYS if k != "note"] + ["group"]
        error = input_error(err, label, SweepFile, top_keys=top_keys)
        if "group" not in data and error.argument.startswith(f"{label}: group[0]"):
            # No [[group]] tables: the entry the user wrote is a top-level key.
            suffix = error.argument.removeprefix(f"{label}: group[0]").lstrip(".")
            error = InputError(f"{label}: {suffix}" if suffix else label, error.problem)
        raise error from None
    spec = SweepSpec(
        name=checked.name or Path(label).stem,
        description=checked.description,
        groups=tuple(_group(t) for t in checked.group),
        timing=TimingPlan(warmup=checked.warmup, repeats=checked.repeats),
        block=checked.block,
        hw=checked.hw,
        source=source,
    )
    if not spec.points():
        raise InputError(f"{label}: patterns", "the spec expands to no points")
    return spec


def shipped_sweeps() -> list[str]:
    """Names of the sweep specs that ship with tvwsim."""
    return sorted(p.stem for p in _sweep_dir().glob("*.toml"))


def load_spec(name_or_path: str | os.PathLike, *, argument: str = "--spec") -> SweepSpec:
    """A shipped sweep by name ('quick', 'full') or a spec file by path."""
    path, data = named_toml(
        name_or_path,
        _sweep_dir(),
        argument=argument,
        kind="sweep",
        hint="(or give a spec file with --spec)",
    )
    return parse_spec(data, label=path.name, source=str(path))
