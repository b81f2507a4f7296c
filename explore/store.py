"""The exploration store: a folder of Parquet files, one per finished batch.

    DIR/
      _explore.json          what the store holds: spec name, digest, varied fields, counts
      _spec.toml             the spec as it was given (a copy, for the record)
      batch-<hash>.parquet   the rows of one batch of units, written whole or not at all
      _report/               pictures of `tvwsim explore report` (default place)

One row per (hardware point, workload, pattern, sparsity, config, policy), columns in
`row_schema`: every varied field under its own name, time, speedup over dense at the same
point, bottleneck, utilisations, and the full effective hardware as `hw_<field>`. Files
and folders whose names start with `_` or `.` are not data (pyarrow and DuckDB skip them),
so reading back is one line:

    pandas.read_parquet(DIR)                  # or duckdb.sql("FROM 'DIR/*.parquet'")

Resuming: a batch file appears atomically (`tvwsim.io.atomic_output`: written beside it
under a '.'-name, then renamed), so an interrupted run leaves whole files only and loses
at most the batches in flight. The units already in the files are skipped on the next
run. The folder and `_explore.json` appear with the first batch, so a run that fails
before any row leaves nothing behind. `_explore.json` records the spec's digest
(`ExploreSpec.digest`): a store refuses to be resumed with a different spec, whose rows
would not belong together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tvwsim.explore.spec import ExploreSpec

from tvwsim.errors import InputError
from tvwsim.io import atomic_output, write_atomic

MANIFEST = "_explore.json"
SPEC_COPY = "_spec.toml"
REPORT_DIR = "_report"
FORMAT = 3
"""Version of the store layout; a reader refuses another. 2: the `kernel` column (what
ran: the config, or the library's choice for config 'auto'). 3: model rows name their
config (not 'default') and have an L2 hit rate."""

_ARROW = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}


def _hardware_types() -> dict[str, pa.DataType]:
    import dataclasses

    from tvwsim.sim.hardware import Hardware
    from tvwsim.sim.presets import hardware_fields

    kinds = {f.name: str(getattr(f.type, "__name__", f.type)) for f in dataclasses.fields(Hardware)}
    return {name: _ARROW.get(kinds[name], pa.string()) for name in hardware_fields()}


def row_schema(varied: Sequence[str]) -> pa.Schema:
    """The columns of a store whose design varies `varied` (see the module docstring)."""
    hw = _hardware_types()
    s, i, f = pa.string(), pa.int64(), pa.float64()
    columns = [("key", s), ("unit", s), ("point", s), ("point_index", i)]
    columns += [(name, hw[name]) for name in varied]
    columns += [("workload", s), ("workload_kind", s), ("model", s), ("batch", i), ("seq", i)]
    columns += [("m", i), ("n", i), ("k", i)]
    columns += [("pattern", s), ("sparsity", f), ("config", s), ("kernel", s), ("policy", s)]
    columns += [("time_us", f), ("dense_time_us", f), ("speedup", f), ("achieved_sparsity", f)]
    columns += [("bottleneck", s), ("compute_utilisation", f), ("l2_utilisation", f)]
    columns += [("dram_utilisation", f), ("l2_hit_rate", f), ("dram_bytes", f), ("hardware", s)]
    columns += [(f"hw_{name}", t) for name, t in hw.items()]
    return pa.schema(columns)


def _manifest(spec: ExploreSpec) -> dict:
    from tvwsim import __version__

    return {
        "format": FORMAT,
        "spec": spec.name,
        "description": spec.description,
        "digest": spec.digest,
        "base": spec.base,
        "varied": list(spec.varied),
        "workloads": [w.label for w in spec.workloads],
        "patterns": list(spec.patterns),
        "sparsities": list(spec.sparsities),
        "policies": list(spec.policies),
        "points": len(spec.points),
        "rows": len(spec.points) * spec.rows_per_point,
        "written_by": f"tvwsim {__version__}",
    }


def read_manifest(directory: str | Path, *, argument: str = "DIR") -> dict:
    """The `_explore.json` of a store, or InputError when `directory` is not one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise InputError(argument, f"{directory} is not an exploration store (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise InputError(
            argument, f"{path} has store format {manifest.get('format')}; this reads {FORMAT}"
        )
    return manifest


class Store:
    """An exploration store opened for writing one spec's rows."""

    def __init__(self, directory: str | Path, spec: ExploreSpec, *, argument: str = "--store"):
        """Open a new store, or one to resume: it must hold the same spec (digest).
        Nothing is written until the first batch (`write_batch`)."""
        self.directory = Path(directory).expanduser()
        self.spec = spec
        self.schema = row_schema(spec.varied)
        manifest_path = self.directory / MANIFEST
        if manifest_path.is_file():
            held = read_manifest(self.directory, argument=argument)
            if held["digest"] != spec.digest:
                raise InputError(
                    argument,
                    f"{self.directory} holds the rows of another spec ({held['spec']!r}, "
                    f"digest {held['digest'][:12]}; this spec's is {spec.digest[:12]}): "
                    "resume only with the same spec, or give a new directory",
                )
        else:
            if self.directory.exists() and not self.directory.is_dir():
                raise InputError(argument, f"{self.directory} exists and is not a directory")
            if self.directory.is_dir() and any(self.directory.iterdir()):
                raise InputError(
                    argument,
                    f"{self.directory} is not empty and not an exploration store; give a "
                    "new or empty directory",
                )
        for stale in self.directory.glob(".batch-*"):
            stale.unlink(missing_ok=True)  # a temporary file of a batch that never finished

    def _create(self) -> None:
        """Write the manifest and the spec's copy, once, just before the first batch: a
        run that fails before any row (a scheduler it cannot reach, a Ctrl-C during
        start-up) leaves no store behind, not an empty one."""
        manifest_path = self.directory / MANIFEST
        if manifest_path.is_file():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.spec.source:
            write_atomic(self.directory / SPEC_COPY, Path(self.spec.source).read_bytes())
        write_atomic(manifest_path, json.dumps(_manifest(self.spec), indent=2) + "\n")

    def batch_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("batch-*.parquet"))

    def done_units(self) -> set[str]:
        """Keys of the units whose rows are in the store."""
        done: set[str] = set()
        for path in self.batch_files():
            done.update(pq.read_table(path, columns=["unit"]).column("unit").to_pylist())
        return done

    def write_batch(self, rows: Sequence[dict]) -> Path:
        """Write one finished batch's rows as its own Parquet file, whole or not at all."""
        table = pa.Table.from_pylist(list(rows), schema=self.schema)
        units = sorted(set(table.column("unit").to_pylist()))
        name = hashlib.sha256("\n".join(units).encode()).hexdigest()[:20]
        path = self.directory / f"batch-{name}.parquet"
        self._create()
        with atomic_output(path) as tmp:
            pq.write_table(table, tmp)
        return path


def read_rows(directory: str | Path, *, argument: str = "DIR"):
    """Every row of a store as a pandas DataFrame (`pandas.read_parquet(DIR)` does the same)."""
    import pandas as pd

    read_manifest(directory, argument=argument)
    if not any(Path(directory).glob("batch-*.parquet")):
        raise InputError(argument, f"{directory} holds no rows yet")
    return pd.read_parquet(directory)
