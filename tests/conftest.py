"""Fixtures every test gets."""

from __future__ import annotations

import pytest
from tvwsim.sim.core.cache import CACHE_ENV

from tvwsim.manifest import KERNEL_DIR_ENV


@pytest.fixture(autouse=True)
def _private_kernel_dir(tmp_path, monkeypatch):
    """Give each test its own (absent) kernel directory: no test sees the cubins or the
    manifest a `tvwsim kernels build` left in the user's kernel directory, so the
    simulator estimates kernel resources unless a test hands it a manifest."""
    monkeypatch.setenv(KERNEL_DIR_ENV, str(tmp_path / "kernel-dir"))
    # Nor the user's cache folder: core-model results are written to the test's own.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
