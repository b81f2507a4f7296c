"""The core model's result cache (tvwsim.sim.core.cache): an answer computed once is read
back from disk by a later process, a changed input never reads an old answer, a corrupt
or half-written entry is recomputed, and the cache never changes a figure."""

from __future__ import annotations

import json

import pytest
from tvwsim.sim.core import cache
from tvwsim.sim.core.model import CoreParams, simulate_core
from tvwsim.sim.core.streams import load_stream

from tvwsim.config import KernelConfig

DENSE = KernelConfig(bm=128, bn=128, bk=32, stages=3, warps=4, mma="dense")
P = CoreParams()


@pytest.fixture
def stream():
    return load_stream("dense", DENSE, "sm_80")


@pytest.fixture(autouse=True)
def _fresh_process():
    cache.clear_memory()
    yield
    cache.clear_memory()


def _no_core_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the core model ran although the answer was cached")

    monkeypatch.setattr(cache, "simulate_core", refuse)


def _entries(tmp_path):
    return sorted((tmp_path / "cache" / "core").glob("*.json"))


def test_an_answer_is_computed_once_then_read_from_disk(stream, tmp_path, monkeypatch):
    first = cache.core_cycles_per_stage(stream, P, 2)
    assert first == simulate_core(stream, P, ctas=2).cycles_per_stage
    assert cache.STATS["computed"] == 1 and len(_entries(tmp_path)) == 1
    cache.clear_memory()  # a new process: only the disk entry is left
    _no_core_runs(monkeypatch)
    assert cache.core_cycles_per_stage(stream, P, 2) == first
    assert cache.STATS == {"disk": 1}
    assert cache.core_cycles_per_stage(stream, P, 2) == first
    assert cache.STATS["memory"] == 1


def test_every_input_is_part_of_the_key(stream):
    sparse = load_stream("vw", KernelConfig(bm=128, bn=128, bk=64, stages=3, warps=4,
                                            mma="sparse"), "sm_80")  # fmt: skip
    base = cache.entry_key(stream, P, 2, 2, 4)
    others = {
        cache.entry_key(sparse, P, 2, 2, 4),
        cache.entry_key(stream, P.replace(issue_width=2), 2, 2, 4),
        cache.entry_key(stream, P.replace(global_latency=300.0), 2, 2, 4),
        cache.entry_key(stream, P, 1, 2, 4),
        cache.entry_key(stream, P, 2, 3, 4),
        cache.entry_key(stream, P, 2, 2, 5),
    }
    assert base not in others and len(others) == 6
    assert cache.entry_key(stream, CoreParams(), 2, 2, 4) == base  # equal inputs, equal key


def test_a_corrupt_entry_is_recomputed_and_rewritten(stream, tmp_path):
    good = cache.core_cycles_per_stage(stream, P, 1)
    (entry,) = _entries(tmp_path)
    for junk in ("{half a fi", json.dumps({"key": "someone else's", "cycles_per_stage": 1.0})):
        entry.write_text(junk, encoding="utf-8")
        cache.clear_memory()
        assert cache.core_cycles_per_stage(stream, P, 1) == good
        assert cache.STATS == {"computed": 1}
        assert json.loads(entry.read_text(encoding="utf-8"))["cycles_per_stage"] == good


def test_an_interrupted_write_leaves_no_entry_and_no_temporary_file(stream, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.core_cycles_per_stage(stream, P, 1)
    assert list((tmp_path / "cache" / "core").iterdir()) == []


def test_an_empty_cache_dir_variable_turns_the_disk_cache_off(stream, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, "")
    assert cache.cache_dir() is None
    cache.core_cycles_per_stage(stream, P, 1)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_folder_only_costs_the_speed_up(stream, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker))
    assert cache.core_cycles_per_stage(stream, P, 1) == simulate_core(stream, P).cycles_per_stage


def test_the_default_folder_is_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs on Linux
    folder = cache.cache_dir()
    assert folder is not None and folder.name == "tvwsim"
    if folder.is_relative_to(tmp_path):  # Linux: XDG is honoured
        assert folder == tmp_path / "xdg" / "tvwsim"
