"""docs/architecture.md is the map a newcomer reads: it must name every module there is."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules() -> list[tuple[str, str]]:
    """(folder, module name) for every module of every installed package."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = pyproject["tool"]["setuptools"]["package-dir"]
    out = []
    for package in pyproject["tool"]["setuptools"]["packages"]:
        parent, _, last = package.rpartition(".")
        folder = REPO / folders.get(package, Path(folders.get(parent, parent)) / last)
        out += [(package, p.stem) for p in sorted(folder.glob("*.py")) if p.stem[0] != "_"]
    return out


def test_every_module_is_on_the_map() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+)(?:\.py)?`", text)) | set(
        re.findall(r"/([a-z_]+)\.py", text)
    )
    missing = [f"{package}.{module}" for package, module in _modules() if module not in named]
    assert not missing, f"docs/architecture.md does not mention: {', '.join(missing)}"


def test_the_map_names_the_layers_pyproject_enforces() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = pyproject["tool"]["importlinter"]["contracts"]
    core = [layer.removeprefix("tvwsim.") for layer in contract["layers"]]
    text = (REPO / "docs" / "architecture.md").read_text()
    contract_line = next(line for line in text.splitlines() if "->" in line and "tvwsim/" in line)
    shown = [word for word in re.split(r"[\s>-]+", contract_line) if word and word != "tvwsim/"]
    assert shown == core[core.index("manifest") :]
