"""The hardware points of a design: a grid, a sampled design, or both crossed.

A grid field is a list of values, an inclusive range `{ start, stop, step }`, or
`{ factors = [...] }` of the base preset's value; the grid is the cross product of its
fields, in the order the spec lists them. A sampled design draws `points` points in the
unit cube with `scipy.stats.qmc` (Latin hypercube or scrambled Sobol, seeded) and maps
each coordinate onto its field's interval `{ low, high }` - factors of the base value
with `relative = true`, on a log scale with `log = true` (a bandwidth range from 1/4x to
4x spends as many points below 1x as above). Integer fields are rounded.

Every point becomes a `Hardware` through `Hardware.with_overrides`, the typed and
range-checked model the presets use; a value it refuses is an InputError naming the spec
entry, and a combination it refuses (shared memory per CTA above that per SM) names the
point. Values are checked here, one by one, before any point is built, so the message
names the entry the user wrote rather than a point number wherever it can.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvwsim.sim.hardware import NOT_OVERRIDABLE, Hardware

from tvwsim.errors import InputError

SAMPLE_METHODS = ("latin-hypercube", "sobol")
FIXED_FIELDS = ("name", "description", "source", *NOT_OVERRIDABLE)
"""Hardware fields a design cannot vary: labels and provenance, not hardware."""
MAX_POINTS = 1_000_000
"""Refuse a grid larger than this before building it (a typo in a step, usually)."""


@dataclass(frozen=True)
class HardwarePoint:
    """One point of the design: the values of the varied fields and the Hardware."""

    index: int
    """Position in the design (grid order, samples inner)."""
    values: tuple[tuple[str, object], ...]
    """(field, value) of every varied field, in spec order."""
    hardware: Hardware

    @property
    def id(self) -> str:
        """Short stable identity of the values: resume and speedups key on it."""
        text = json.dumps([[k, _plain(v)] for k, v in self.values])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """'point 3 (sm_count=216, l2_bandwidth_gbps=2700)'."""
        values = ", ".join(f"{k}={_plain(v)}" for k, v in self.values)
        return f"point {self.index}" + (f" ({values})" if values else "")


def _plain(value: object) -> object:
    return float(f"{value:.12g}") if isinstance(value, float) else value


def _fields(base: Hardware) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(base) if f.name not in FIXED_FIELDS}


def _type_name(field: dataclasses.Field) -> str:
    return str(getattr(field.type, "__name__", field.type))


def _field(fields: Mapping[str, dataclasses.Field], name: str, entry: str) -> dataclasses.Field:
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(entry, f"unknown hardware field{hint}; known: {', '.join(fields)}")
    return fields[name]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric(field: dataclasses.Field, entry: str, what: str) -> None:
    if _type_name(field) not in ("int", "float"):
        raise InputError(
            entry, f"{what} needs a numeric field; {field.name} is {_type_name(field)}"
        )


def _cast(field: dataclasses.Field, value: float) -> object:
    """A drawn or scaled value in the field's type (ints rounded, floats to 12 digits)."""
    if _type_name(field) == "int":
        return int(round(value))
    return float(f"{value:.12g}")


def _check_value(base: Hardware, name: str, value: object, entry: str) -> object:
    """The value as the Hardware keeps it (216.0 -> 216), or InputError naming `entry`."""
    try:
        return getattr(base.with_overrides({name: value}), name)
    except InputError as err:
        raise InputError(entry, err.problem) from None


def grid_values(base: Hardware, name: str, raw: Any, entry: str) -> list[object]:
    """The values of one grid field, each checked on the base preset."""
    field = _field(_fields(base), name, entry)
    if isinstance(raw, list):
        if not raw:
            raise InputError(entry, "give at least one value")
        values = raw
        entries = [f"{entry}[{i}]" for i in range(len(raw))]
    elif isinstance(raw, dict) and set(raw) == {"factors"}:
        _numeric(field, entry, "factors")
        factors = raw["factors"]
        if not isinstance(factors, list) or not factors or not all(_is_number(f) for f in factors):
            raise InputError(f"{entry}.factors", f"a list of numbers, got {factors!r}")
        if any(f <= 0 for f in factors):
            raise InputError(f"{entry}.factors", f"factors must be > 0, got {factors}")
        values = [_cast(field, getattr(base, name) * f) for f in factors]
        entries = [f"{entry}.factors[{i}]" for i in range(len(factors))]
    elif isinstance(raw, dict) and set(raw) == {"start", "stop", "step"}:
        _numeric(field, entry, "a range")
        start, stop, step = raw["start"], raw["stop"], raw["step"]
        if not all(_is_number(v) for v in (start, stop, step)):
            raise InputError(entry, f"start, stop and step must be numbers, got {raw!r}")
        if step <= 0 or stop < start:
            raise InputError(entry, f"needs step > 0 and stop >= start, got {raw!r}")
        count = math.floor((stop - start) / step * (1 + 1e-9)) + 1
        if count > MAX_POINTS:
            raise InputError(entry, f"a range of {count} values; at most {MAX_POINTS}")
        values = [_cast(field, start + i * step) for i in range(count)]
        entries = [f"{entry} (value {v})" for v in values]
    else:
        raise InputError(
            entry,
            f"a list of values, {{ start, stop, step }} or {{ factors = [...] }}, got {raw!r}",
        )
    checked = [_check_value(base, name, v, e) for v, e in zip(values, entries, strict=True)]
    return list(dict.fromkeys(checked))


@dataclass(frozen=True)
class _Interval:
    name: str
    low: float
    high: float
    log: bool
    field: dataclasses.Field

    def at(self, u: float) -> object:
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return _cast(self.field, value)


def _interval(base: Hardware, name: str, raw: Any, entry: str) -> _Interval:
    field = _field(_fields(base), name, entry)
    _numeric(field, entry, "a sampled interval")
    allowed = {"low", "high", "log", "relative"}
    if not isinstance(raw, dict) or not {"low", "high"} <= set(raw) or set(raw) - allowed:
        raise InputError(entry, f"an interval {{ low, high, log?, relative? }}, got {raw!r}")
    low, high = raw["low"], raw["high"]
    log, relative = raw.get("log", False), raw.get("relative", False)
    if not (_is_number(low) and _is_number(high)) or not low < high:
        raise InputError(entry, f"needs numbers low < high, got low={low!r}, high={high!r}")
    if not isinstance(log, bool) or not isinstance(relative, bool):
        raise InputError(entry, "log and relative are true or false")
    if relative:
        if low <= 0:
            raise InputError(entry, f"relative factors must be > 0, got low={low}")
        low, high = getattr(base, name) * low, getattr(base, name) * high
    if log and low <= 0:
        raise InputError(entry, f"a log scale needs low > 0, got {low}")
    interval = _Interval(name, float(low), float(high), log, field)
    for end in (interval.at(0.0), interval.at(1.0)):
        _check_value(base, name, end, entry)
    return interval


def unit_samples(method: str, dimensions: int, points: int, seed: int) -> np.ndarray:
    """`points` x `dimensions` coordinates in [0, 1) from a seeded qmc design."""
    from scipy.stats import qmc

    engine = qmc.LatinHypercube if method == "latin-hypercube" else qmc.Sobol
    try:
        sampler = engine(d=dimensions, rng=np.random.default_rng(seed))
    except TypeError:  # scipy < 1.15 names it seed
        sampler = engine(d=dimensions, seed=seed)
    with warnings.catch_warnings():
        # Sobol's balance is best at powers of two; any count is still a valid design.
        warnings.simplefilter("ignore", UserWarning)
        return sampler.random(points)


def hardware_points(
    base: Hardware, grid: Mapping[str, Any], sample: Any, *, label: str = "spec"
) -> list[HardwarePoint]:
    """Every point of the design (grid x samples), each a checked Hardware."""
    axes: list[tuple[str, list[object]]] = [
        (name, grid_values(base, name, raw, f"{label}: hardware.{name}"))
        for name, raw in grid.items()
    ]
    total = math.prod(len(values) for _, values in axes)
    draws: list[tuple[tuple[str, object], ...]] = [()]
    if sample is not None:
        intervals = []
        for name, raw in sample.fields.items():
            entry = f"{label}: sample.fields.{name}"
            if name in grid:
                raise InputError(entry, "varied on the grid too ([hardware]); vary it once")
            intervals.append(_interval(base, name, raw, entry))
        cube = unit_samples(sample.method, len(intervals), sample.points, sample.seed)
        draws = [
            tuple((iv.name, iv.at(float(u))) for iv, u in zip(intervals, row, strict=True))
            for row in cube
        ]
    if total * len(draws) > MAX_POINTS:
        raise InputError(f"{label}: hardware", f"{total * len(draws)} points; at most {MAX_POINTS}")
    points: list[HardwarePoint] = []
    seen: set[str] = set()
    names = [name for name, _ in axes]
    for combo in itertools.product(*(values for _, values in axes)):
        for draw in draws:
            values = (*zip(names, combo, strict=True), *draw)
            try:
                hardware = base.with_overrides(dict(values))
            except InputError as err:
                where = HardwarePoint(len(points), values, base).describe()
                raise InputError(f"{label}: hardware", f"{where}: {err}") from None
            point = HardwarePoint(len(points), tuple(values), hardware)
            if point.id not in seen:
                seen.add(point.id)
                points.append(point)
    return points


def varied_fields(points: Sequence[HardwarePoint]) -> list[str]:
    """The fields the points vary, in order."""
    return list(dict.fromkeys(k for p in points for k, _ in p.values))
