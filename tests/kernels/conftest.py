"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks

# The stand-in driver checks the launcher's calls with plain asserts: let pytest explain
# them as it does in test modules.
pytest.register_assert_rewrite("tests.fakes")

from tests.fakes import pycuda_driver  # noqa: E402 - after the rewrite hook


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path) -> pycuda_driver.FakeDriver:
    """The launcher on a numpy stand-in for pycuda.driver (tests/fakes/pycuda_driver.py),
    with an empty build directory: every kernel it loads is "compiled" into its cache."""
    return pycuda_driver.install(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def tw_case():
    """(encoded, X, schedule) of a tw GEMM with 128 x 64 tiles, ragged in M, N and K."""
    case = checks.CheckCase("tw", kbuild.VARIANTS["tw"][2], 100, 300, 260, "natural", seed=5)
    return checks.make_case_inputs(case)
