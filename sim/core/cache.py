"""Core-model results kept in memory and on disk, so whole models stay fast.

Covers
------
`core_cycles_per_stage`: what the engine asks of the core model (a CTA's steady-state
stage period for one loop, one core and some co-resident CTAs), answered from memory,
else from a small JSON file in the cache folder, else by running `simulate_core` and
writing that file.

Scenario
--------
One core run takes 0.1-1 s; a BERT-base pass asks for five kernels, each once per process,
and a sweep process after process asks for the same ones again. The answer depends only
on the loop's instructions, the core's parameters (the hardware fields the model reads),
the CTAs per SM, the run length and the model's own code, so the key is a hash of
exactly those: a regenerated stream, another preset or an edited model gives a new key,
never a stale answer.

The folder is `$TVWSIM_CACHE_DIR/core` when that variable is set (an empty value turns
the disk cache off), else the user's cache folder for tvwsim (`platformdirs`, e.g.
`~/.cache/tvwsim/core` on Linux). A file is written under a temporary name and renamed
into place, so an interrupted run leaves no half-written entry; an entry that does not
parse or names another key is recomputed and rewritten. A folder that cannot be written
only costs the speed-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path

import platformdirs
from tvwsim.sim.core import banks, model
from tvwsim.sim.core.model import CoreParams, simulate_core
from tvwsim.sim.core.streams import Stream

CACHE_ENV = "TVWSIM_CACHE_DIR"

_memory: dict[str, float] = {}
STATS: Counter[str] = Counter()
"""How each request was answered in this process: 'memory', 'disk' or 'computed'."""


def cache_dir() -> Path | None:
    """The tvwsim cache folder ($TVWSIM_CACHE_DIR, else the platform's user cache folder);
    None when $TVWSIM_CACHE_DIR is set but empty (no disk cache)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return Path(env) if env.strip() else None
    return Path(platformdirs.user_cache_dir("tvwsim", appauthor=False))


@cache
def _model_code_digest() -> str:
    """Hash of the model's source (the cycle loop and the bank-conflict twin): editing the
    physics invalidates every cached answer."""
    digest = hashlib.sha256()
    for module in (model, banks):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def entry_key(stream: Stream, params: CoreParams, ctas: int, warmup: int, iterations: int) -> str:
    """The hash an answer is stored under: every input of `simulate_core` and its code."""
    parts = {
        "model": _model_code_digest(),
        "stream": hashlib.sha256(stream.to_json_text().encode()).hexdigest(),
        "params": dataclasses.asdict(params),
        "ctas": ctas,
        "warmup": warmup,
        "iterations": iterations,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _read(path: Path, key: str) -> float | None:
    """The stored figure, or None for a missing, unreadable or foreign entry."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        value = float(data["cycles_per_stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("key") != key or not value > 0:
        return None
    return value


def _write(path: Path, entry: dict) -> None:
    """Write `entry` as `path` atomically (temporary file, then rename); give up quietly
    if the folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry, fh)
        os.replace(tmp, path)
    except BaseException as err:  # an interrupt too: leave no temporary file behind
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise


def core_cycles_per_stage(
    stream: Stream, params: CoreParams, ctas: int, *, warmup: int = 2, iterations: int = 4
) -> float:
    """`simulate_core(stream, params, ctas=ctas, ...).cycles_per_stage`, cached in memory
    and in the cache folder."""
    key = entry_key(stream, params, ctas, warmup, iterations)
    if key in _memory:
        STATS["memory"] += 1
        return _memory[key]
    folder = cache_dir()
    path = folder / "core" / f"{key}.json" if folder is not None else None
    value = _read(path, key) if path is not None else None
    if value is not None:
        STATS["disk"] += 1
    else:
        STATS["computed"] += 1
        result = simulate_core(stream, params, ctas=ctas, warmup=warmup, iterations=iterations)
        value = result.cycles_per_stage
        if path is not None:
            _write(path, {"key": key, "stream": stream.name, "ctas": ctas,
                          "cycles_per_stage": value})  # fmt: skip
    _memory[key] = value
    return value


def clear_memory() -> None:
    """Forget the in-memory answers (the disk entries stay): what a new process sees."""
    _memory.clear()
    STATS.clear()
