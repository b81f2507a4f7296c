"""Measurement files: one JSON object per line, appended and flushed one row at a time.

A sweep on a GPU can be interrupted at any moment (a timeout, Ctrl-C, a lost machine).
The rules that make that safe:

- Each row is written with a single `write` of the complete line plus its newline, then
  flushed and fsync'ed, so a finished row is on disk before the next point starts.
- A row is never rewritten. On resume, the rows already in the file are read, their
  `point` keys tell the sweep what to skip, and new rows are appended after them.
- The only thing an interruption can leave is one partial last line (the row in
  progress). On resume that partial tail - and only that - is cut off, and the cut is
  reported. A malformed line anywhere else is an error: the file is not ours to repair.

Rows follow `SCHEMA_VERSION`; `read_measurements` checks every row and names the file,
line and field of the first problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tvwsim.errors import InputError

SCHEMA_VERSION = 1

# Fields every measurement row carries (validate/sweep.py writes them; see docs/validation.md).
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "point": str,  # deterministic key of the sweep point; resume skips finished keys
    "implementation": str,  # tvwsim | cublas | cusparselt | cusparse-csr | cusparse-bsr
    "device": dict,  # name, sm_count, clocks before/after, driver, cuda
    "date": str,
    "kernel": str,
    "config": str,
    "pattern": str,
    "policy": str,
    "M": int,
    "N": int,
    "K": int,
    "target_sparsity": (int, float),
    "achieved_sparsity": (int, float),
    "times_us": list,
    "median_us": (int, float),
    "max_rel_error": (int, float, type(None)),
}


def check_row(row: Any, where: str) -> dict:
    """Validate one row; raise InputError naming `where` (file:line) and the field."""
    if not isinstance(row, dict):
        raise InputError("measurements", f"{where}: a row must be a JSON object")
    if row.get("schema") != SCHEMA_VERSION:
        raise InputError(
            "measurements",
            f"{where}: schema {row.get('schema')!r}; this tvwsim reads schema {SCHEMA_VERSION}",
        )
    for name, kind in REQUIRED_FIELDS.items():
        if name not in row:
            raise InputError("measurements", f"{where}: missing field {name!r}")
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InputError(
                "measurements", f"{where}: field {name!r} has the wrong type ({value!r})"
            )
    times = row["times_us"]
    if not times or not all(isinstance(t, int | float) and t > 0 for t in times):
        raise InputError("measurements", f"{where}: times_us must be positive numbers")
    if row["median_us"] <= 0:
        raise InputError("measurements", f"{where}: median_us must be positive")
    if not isinstance(row["device"].get("name"), str):
        raise InputError("measurements", f"{where}: device.name missing")
    return row


def read_measurements(path: str | os.PathLike) -> list[dict]:
    """All rows of a measurement file, strictly checked (a partial last line is an error)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("--measured", f"{path}: no such file") from None
    except OSError as err:
        raise InputError("--measured", f"{path}: cannot read ({err.strerror})") from None
    if text and not text.endswith("\n"):
        raise InputError(
            "measurements",
            f"{path.name}: last line is incomplete (an interrupted sweep; resuming it "
            "with the same --out removes the partial row)",
        )
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError("measurements", f"{where}: not valid JSON ({err.msg})") from None
        rows.append(check_row(row, where))
    if not rows:
        raise InputError("measurements", f"{path.name}: holds no rows")
    return rows


class MeasurementWriter:
    """Append-only JSON-lines writer that resumes where an interrupted sweep stopped.

    >>> with MeasurementWriter(path) as log:          # doctest: +SKIP
    ...     for point in sweep:
    ...         if point.key in log.done: continue
    ...         log.append(measure(point))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.done: set[str] = set()
        self.truncated_bytes = 0
        self._file = None

    def __enter__(self) -> MeasurementWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._recover()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _recover(self) -> None:
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1  # everything up to the last newline is finished
        if complete < len(data):
            # The row in progress when the writer died: the only bytes ever dropped.
            self.truncated_bytes = len(data) - complete
            with open(self.path, "r+b") as f:
                f.truncate(complete)
        for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError("--out", f"{where}: not valid JSON ({err.msg})") from None
            self.done.add(check_row(row, where)["point"])

    def append(self, row: dict) -> None:
        """Write one complete row and make it durable before returning."""
        if self._file is None:
            raise RuntimeError("MeasurementWriter.append outside a with-block")
        check_row(row, f"{self.path.name}:new row")
        if row["point"] in self.done:
            raise InputError("point", f"{row['point']!r} is already in {self.path.name}")
        line = json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(row["point"])


def iter_measurement_files(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, dict]]:
    """(file, row) for every row of every file, in order, strictly checked."""
    for p in paths:
        for row in read_measurements(p):
            yield Path(p), row
