"""File helpers every package uses: whole-or-nothing writes, JSON-lines reading, and
shipped TOML files found by name or path.

A file tvwsim writes is either the old one or the complete new one, never half of it
(an interrupted run leaves no torn PNG, manifest or table), and it gets the normal mode
of a new file (0666 less the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tvwsim.errors import InputError


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


def named_toml(
    name_or_path: str | os.PathLike,
    shipped: Path,
    *,
    argument: str,
    kind: str,
    hint: str,
) -> tuple[Path, dict]:
    """A TOML file named like a shipped one ('quick': `shipped`/quick.toml) or given by
    path (it ends in .toml or holds a separator), and its parsed data. One InputError
    naming `argument` for a missing file, an unknown name (listing the shipped ones, then
    `hint`) or bad TOML. A bare 'NAME.toml' that is not here but ships is the shipped one."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            fallback = shipped / Path(text).name
            if Path(text).name != text or not fallback.is_file():
                raise InputError(argument, f"{kind} file {text!r} does not exist")
            path = fallback
    else:
        path = shipped / f"{text}.toml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in shipped.glob("*.toml")))
            raise InputError(argument, f"unknown {kind} {text!r}; shipped: {names} {hint}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(argument, f"{path.name} is not valid TOML: {err}") from None
    return path, data
