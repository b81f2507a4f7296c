"""The measurement row: one JSON object per timed point, its schema and how it is built.

`MeasurementRow` is the schema (pydantic; its JSON Schema is published in
docs/validation.md): every row a sweep writes is checked against it before it is
appended, and every row read back is checked again, so calibration and comparison can
rely on each field's type. A bad row is one InputError naming file, line and field.
Rows stay plain dicts in memory: the JSON line is the data, the model only its rules.
A row tvwsim did not measure itself (a published timing, traces/published/) carries
`origin` and `provenance`; both are optional, so every earlier row still reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)
from tvwsim.kernels.checks import REL_TOLERANCE  # the rule of `tvwsim kernels check`
from tvwsim.validate.model_errors import input_error
from tvwsim.validate.points import IMPLEMENTATIONS, VENDOR, Measurement, SweepPoint

from tvwsim.errors import InputError
from tvwsim.pattern_spec import PATTERN_NAMES
from tvwsim.schedule import POLICIES

SCHEMA_VERSION = 1

PositiveFloat = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]


class DeviceBlock(BaseModel):
    """The GPU a row ran on (`tvwsim.validate.device_info`); more keys may follow."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: StrictStr = Field(description="As the driver reports it: 'NVIDIA H100 80GB HBM3'.")
    sm_count: Count | None = None
    compute_capability: StrictStr | None = None
    l2_bytes: Count | None = None
    memory_bytes: Count | None = None
    driver_version: StrictStr | None = None
    cuda_driver_version: StrictStr | None = None
    cuda_runtime_version: StrictStr | None = None
    arch: StrictStr | None = None
    source: StrictStr | None = Field(None, description="Which tools answered.")
    errors: list[StrictStr] = Field([], description="What could not be read.")
    clocks_before: dict[str, Any] | None = Field(None, description="Clocks before the point.")
    clocks_after: dict[str, Any] | None = Field(None, description="Clocks after the point.")


class MeasurementRow(BaseModel):
    """One timed point (schema 1): what ran, on what, how long, and was it right."""

    model_config = ConfigDict(extra="forbid", strict=True)

    schema_version: Literal[1] = Field(alias="schema", description="Row layout version.")
    point: StrictStr = Field(description="The point's key; resume skips keys in the file.")
    implementation: Literal[IMPLEMENTATIONS]
    device: DeviceBlock
    date: StrictStr = Field(description="ISO 8601 UTC time the row was written.")
    kernel: StrictStr = Field(description="Entry point ('tvw_gemm') or vendor call.")
    config: StrictStr = Field(description="KernelConfig name ('128x128x64s3w4') or 'vendor'.")
    pattern: Literal[PATTERN_NAMES]
    policy: Literal[(*POLICIES, VENDOR)]
    M: Annotated[int, Field(gt=0)] = Field(description="Tokens: Y (M x N) = X (M x K) @ W.T.")
    N: Annotated[int, Field(gt=0)] = Field(description="Output features.")
    K: Annotated[int, Field(gt=0)] = Field(description="Input features.")
    target_sparsity: Annotated[float, Field(ge=0, lt=1)]
    achieved_sparsity: Annotated[float, Field(ge=0, le=1)] = Field(
        description="1 - kept / (N x K)."
    )
    times_us: list[PositiveFloat] = Field(min_length=1, description="Every timed run.")
    median_us: PositiveFloat
    max_rel_error: Annotated[float, Field(ge=0)] | None = Field(
        description="max |y - ref| / max |ref| on the checked tokens; null when unchecked or "
        "when the output held a non-finite value (then correct is false)."
    )
    # Written by `tvwsim validate`; optional for rows from elsewhere.
    sweep: StrictStr | None = None
    tvwsim_version: StrictStr | None = None
    mma: Literal["dense", "sparse", VENDOR] | None = None
    seed: Count = 0
    block: Annotated[int, Field(gt=0)] = 32
    schedule_digest: StrictStr | None = Field(None, description="sha256 of the CTA schedule.")
    ctas: Count | None = None
    resources: dict[str, Any] = Field({}, description="registers, smem_bytes, threads, ...")
    timing: dict[str, Any] = Field({}, description="method, flush, cushion, warmup, repeats.")
    tolerance: PositiveFloat | None = None
    correct: StrictBool | None = None
    extra: dict[str, Any] = Field({}, description="Checked tokens, baseline dtype, ...")
    # Rows converted from someone else's published timings (traces/published/) say so;
    # a row without `origin` was measured by tvwsim itself.
    origin: Literal["measured", "published"] | None = Field(
        None, description="'published': converted from a public source; null: measured here."
    )
    provenance: dict[str, Any] = Field(
        {}, description="Where a published row came from: repository, commit, file, row, ..."
    )

    @field_validator("schema_version", mode="before")
    @classmethod
    def _this_schema(cls, value: Any) -> Any:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema {value!r}; this tvwsim reads schema {SCHEMA_VERSION}")
        return value


def check_row(row: Any, where: str) -> dict:
    """`row` if it follows `MeasurementRow`; else InputError naming `where` and the field."""
    if not isinstance(row, dict):
        raise InputError("measurements", f"{where}: a row must be a JSON object")
    try:
        MeasurementRow.model_validate(row)
    except ValidationError as err:
        problem = input_error(err, "", MeasurementRow, separator="")
        raise InputError(
            "measurements", f"{where}: {problem.argument}: {problem.problem}"
        ) from None
    return row


def build_row(
    point: SweepPoint,
    measurement: Measurement,
    device: Mapping[str, Any],
    clocks_before: Mapping[str, Any],
    clocks_after: Mapping[str, Any],
    *,
    sweep: str,
    date: str,
) -> dict:
    """One measurement row (the schema above; docs/validation.md)."""
    from tvwsim import __version__

    times = [float(t) for t in measurement.times_us]
    err = measurement.max_rel_error
    extra = dict(measurement.extra)
    if err is not None and not math.isfinite(err):
        extra["non_finite_output"] = True
    return {
        "schema": SCHEMA_VERSION,
        "point": point.key,
        "implementation": point.implementation,
        "device": {
            **dict(device),
            "clocks_before": dict(clocks_before),
            "clocks_after": dict(clocks_after),
        },
        "date": date,
        "sweep": sweep,
        "tvwsim_version": __version__,
        "kernel": measurement.kernel,
        "config": point.config.name if point.config is not None else VENDOR,
        "mma": point.config.mma if point.config is not None else VENDOR,
        "pattern": point.pattern,
        "policy": point.policy,
        "seed": point.seed,
        "block": point.block,
        "M": point.m,
        "N": point.n,
        "K": point.k,
        "target_sparsity": float(point.sparsity),
        "achieved_sparsity": float(measurement.achieved_sparsity),
        "schedule_digest": measurement.schedule_digest,
        "ctas": measurement.ctas,
        "resources": dict(measurement.resources),
        "timing": dict(measurement.timing),
        "times_us": times,
        "median_us": float(np.median(times)) if times else 0.0,
        # JSON has no infinity: a non-finite output (an element no kernel wrote, or an
        # overflow) is recorded as no error value, correct = false and a flag.
        "max_rel_error": None if err is None or not math.isfinite(err) else float(err),
        "tolerance": REL_TOLERANCE,
        "correct": None if err is None else bool(err <= REL_TOLERANCE),
        "extra": extra,
    }


def row_json_schema() -> dict:
    """JSON Schema of a measurement row (docs/validation.md)."""
    return MeasurementRow.model_json_schema()
