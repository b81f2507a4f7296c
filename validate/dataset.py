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

Rows follow `tvwsim.validate.rows.MeasurementRow`; `read_measurements` checks every row
and names the file, line and field of the first problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tvwsim.validate.rows import SCHEMA_VERSION, check_row

from tvwsim.errors import InputError
from tvwsim.io import complete_lines

__all__ = [
    "SCHEMA_VERSION",
    "MeasurementWriter",
    "check_row",
    "file_sha256",
    "iter_measurement_files",
    "load_rows",
    "read_measurements",
]


def _checked_rows(path: Path, argument: str) -> list[dict]:
    """The complete lines of `path`, each parsed and checked (InputError at the first bad)."""
    rows = []
    for number, line in complete_lines(path):
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(argument, f"{where}: not valid JSON ({err.msg})") from None
        rows.append(check_row(row, where))
    return rows


def read_measurements(path: str | os.PathLike) -> list[dict]:
    """All rows of a measurement file, strictly checked (a partial last line is an error)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 1, 0))
            last = f.read(1)
    except FileNotFoundError:
        raise InputError("--measured", f"{path}: no such file") from None
    except OSError as err:
        raise InputError("--measured", f"{path}: cannot read ({err.strerror})") from None
    if size and last != b"\n":
        raise InputError(
            "measurements",
            f"{path.name}: last line is incomplete (an interrupted sweep; resuming it "
            "with the same --out removes the partial row)",
        )
    rows = _checked_rows(path, "measurements")
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
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            complete = f.read().rfind(b"\n") + 1  # everything up to the last newline
        if complete < size:
            # The row in progress when the writer died: the only bytes ever dropped.
            self.truncated_bytes = size - complete
            with open(self.path, "r+b") as f:
                f.truncate(complete)
        self.done = {row["point"] for row in _checked_rows(self.path, "--out")}

    def append(self, row: dict) -> None:
        """Write one complete row and make it durable before returning."""
        if self._file is None:
            raise RuntimeError("MeasurementWriter.append outside a with-block")
        check_row(row, f"{self.path.name}:new row")
        if row["point"] in self.done:
            raise InputError("point", f"{row['point']!r} is already in {self.path.name}")
        # One write of the whole line, then flush and fsync: a finished row is on disk
        # before the next point starts, and an interruption can tear only this line.
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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_rows(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """(rows, file records) of every measurement file, strictly checked.

    A file record is {name, sha256, rows}; the sha256 pins exactly which bytes were used.
    A point measured in two files is refused: one of the two would silently win.
    """
    if not paths:
        raise InputError("--measured", "name at least one measurement file")
    rows: list[dict] = []
    files = []
    seen: set[str] = set()
    for path in paths:
        path = Path(path)
        file_rows = read_measurements(path)
        for row in file_rows:
            if row["point"] in seen:
                raise InputError(
                    "--measured", f"{path.name}: point {row['point']!r} appears in two files"
                )
            seen.add(row["point"])
        rows.extend(file_rows)
        files.append({"name": path.name, "sha256": file_sha256(path), "rows": len(file_rows)})
    return rows, files
