"""The public Python API in tvwsim/__init__.py."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tvwsim


@pytest.mark.parametrize("name", sorted(tvwsim._API))
def test_every_public_name_is_defined_by_its_module(name: str) -> None:
    module = importlib.import_module(tvwsim._API[name])
    assert name in vars(module), f"{module.__name__} does not define {name}"
    assert getattr(tvwsim, name) is vars(module)[name]


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        tvwsim.simulat  # noqa: B018


def test_import_tvwsim_loads_none_of_the_packages() -> None:
    code = "import sys, tvwsim; print(sorted(m for m in sys.modules if m.startswith('tvwsim.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_docstring_example_runs_and_matches_the_cli_path() -> None:
    """The module docstring's example is the same computation `tvwsim simulate` does."""
    hw = tvwsim.load_preset("a100", overrides={"sm_count": 216})
    weight = tvwsim.synthetic_weight(3072, 768, seed=0)
    prepared = tvwsim.prepare_weight(weight, "tvw", 0.75, tvwsim.default_config("tvw"))
    schedule = tvwsim.build_schedule(prepared.work, m=4096, policy="longest-first")
    result = tvwsim.simulate(schedule, hw)
    via_shape = tvwsim.schedule_for_shape(4096, 3072, 768, "tvw", 0.75, policy="longest-first")
    assert via_shape.digest() == schedule.digest()
    assert result.time_us > 0
    assert hw.sm_count == 216


def test_readme_python_example_runs(capsys) -> None:
    """README's "From Python" block is executed as written and prints a time."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
    assert float(capsys.readouterr().out) > 0
