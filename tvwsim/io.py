"""File helpers every package uses: whole-or-nothing writes and JSON-lines reading.

A file tvwsim writes is either the old one or the complete new one, never half of it
(an interrupted run leaves no torn PNG, manifest or table), and it gets the normal mode
of a new file (0666 less the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically.

    For writers that want a file name (matplotlib's savefig, numpy.save):

        with atomic_output("tw.png") as tmp:
            fig.savefig(tmp, format="png")

    The temporary file keeps `path`'s suffix so that writers choosing a format from it
    still do. On any exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` whole or not at all."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


def complete_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number, text) of the complete, non-blank lines of a JSON-lines file.

    A last line without its newline is a row whose writer was interrupted; it is left
    out (a resumed writer truncates it). A missing file has no lines.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    text = data.decode("utf-8", errors="replace")
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_jsonl_tolerant(path: str | os.PathLike) -> Iterator[dict]:
    """The complete rows of a JSON-lines file that parse as objects; damaged ones skipped.

    For bookkeeping files (which points failed, which device wrote a file) where one bad
    line must not stop a run. Measurement files are read strictly by their own reader.
    """
    for _, line in complete_lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and make it durable before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line if line.endswith("\n") else line + "\n")
        f.flush()
        os.fsync(f.fileno())
