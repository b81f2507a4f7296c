"""The installed package, as a user gets it from `pip install .` (not editable).

The repository keeps the design card's folders at the top level (`sim/`, `kernels/`, ...)
and installs them as `tvwsim.sim`, `tvwsim.kernels`, ... (pyproject `package-dir`). These
tests build the wheel, install it into a scratch folder and check, from outside the
checkout, that (1) the package data travels with it: a whole-model run needs the
workload catalogs and the real-weight traces; (2) imports only go down: import-linter's
layer contract (pyproject) holds on the installed tree. import-linter reads an installed
copy because it cannot follow a package-dir mapping in an editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A non-editable install of this checkout (no dependencies: the venv has them)."""
    root = tmp_path_factory.mktemp("wheel")
    wheels, site = root / "dist", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
    )
    if build.returncode:
        pytest.fail(f"pip wheel failed:\n{build.stdout}\n{build.stderr}")
    (wheel,) = wheels.glob("tvwsim-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    env.pop("TVWSIM_WORKLOAD_PATH", None)
    return env


def test_installed_copy_is_the_one_imported(installed: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import tvwsim.sim, tvwsim.traces; print(tvwsim.sim.__file__)"],
        cwd="/",
        env=_env(installed),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(out.strip()).is_relative_to(installed)


def test_whole_model_runs_from_any_directory(installed: Path) -> None:
    """`tvwsim model bert-base` from `/`: catalogs and traces come from the package."""
    run = subprocess.run(
        [sys.executable, "-m", "tvwsim", "model", "bert-base", "--hw", "a100"]
        + ["--sparsity", "0.75", "--json"],
        cwd="/",
        env=_env(installed),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["model"] == "bert-base"
    totals = {r["pattern"]: r for r in result["runs"]}
    assert set(totals) >= {"dense", "tw", "tvw"}
    # The tw/tvw structure came from the packaged MiniLM trace, not from random weights.
    assert result["trace"] == "MiniLM-L6 trace"
    assert totals["tvw"]["speedup"] > 1.0


def test_imports_only_go_down(installed: Path, tmp_path: Path) -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    run = subprocess.run(
        [lint, str(REPO / "pyproject.toml")],
        cwd=tmp_path,  # not the checkout: it must read the installed copy
        env=_env(installed),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_namespace_tree_imports_the_checkout_without_pip(tmp_path: Path) -> None:
    """benchmarks/namespace_tree.sh: how the GPU campaign imports the checkout on a machine
    without network (no build backend): a symlinked tvwsim/ with the four folders in it."""
    tree = tmp_path / "src"
    subprocess.run(["bash", str(REPO / "benchmarks" / "namespace_tree.sh"), str(tree)], check=True)
    env = _env(tree)
    code = "import tvwsim.validate.runner as r, tvwsim.kernels.build as b; print(r.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, check=True
    ).stdout
    assert Path(out.strip()) == tree / "tvwsim" / "validate" / "runner.py"
    # package data resolves through the links: the shipped sweep lists its points
    run = subprocess.run(
        [sys.executable, "-m", "tvwsim", "validate", "--sweep", "quick", "--dry-run"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("sweep quick: ") and run.stdout.count("\n") > 10
