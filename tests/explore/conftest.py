"""Tiny exploration specs: GEMMs of a few tiles, a handful of hardware points."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """
name = "tiny"
base = "a100"
patterns = ["tw", "vw"]
sparsities = [0.75]

[hardware]
sm_count = [2, 4]
l2_bandwidth_gbps = { factors = [0.25, 1.0, 4.0] }

[[workload]]
name = "small"
shape = [256, 512, 512]

[[workload]]
shape = [128, 256, 256]
"""
"""6 hardware points x 2 GEMMs x 3 runs (dense, tw 0.75, vw 0.5): 12 units, 36 rows.
Two and four SMs, so that the SM count moves the time of these few-tile GEMMs."""


def write_spec(directory: Path, text: str, name: str = "tiny.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, TINY)
