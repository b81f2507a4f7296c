"""Workload catalogs: the GEMMs of a DNN, as data.

A catalog is a TOML file in `traces/workloads/` (one per model: bert-base, bert-large,
vgg16, resnet50, gnmt, deepbench). Every entry is one GEMM shape in the project's
convention `Y (M x N) = X (M x K) @ W.T`, where `W` (N x K, out x in) is the weight:

- a linear layer: M = tokens (batch x sequence), N = output features, K = input features;
- a convolution as implicit GEMM: M = batch x H_out x W_out, N = C_out, K = C_in x kh x kw;
- `count` = how many times the shape runs per forward pass (layers x steps x heads ...);
- `prunable = false` marks activation x activation products (attention scores), which have
  no weight to prune; they still cost time and stay in the list.

M, N, K and count are integers or formulas over the parameters `batch` and `seq` and the
file's own `[constants]`, e.g. `m = "batch * seq"`. Formulas are evaluated by a tiny
arithmetic evaluator (integers, names, + - * / // and parentheses; `/` must divide exactly),
never by `eval`, so a catalog file cannot run code. File layout:

    description = "..."             # one line
    source = "..."                  # where the shapes come from
    [constants]                     # optional; evaluated in order, may use batch and seq
    hidden = 768
    [[gemm]]                        # one table per GEMM shape
    name = "ffn1"
    m = "batch * seq"
    n = "4 * hidden"
    k = "hidden"
    count = 12                      # optional, default 1
    prunable = true                 # optional, default true

Catalogs are looked up, first match wins, in `traces/workloads/` of the source tree (found
relative to this file, so the project must be installed editable, `pip install -e .`, or
run from a checkout) and then in the directories of `TVWSIM_WORKLOAD_PATH`
(os.pathsep-separated). A name ending in `.toml` or containing a separator is read as a
path.
"""

from __future__ import annotations

import ast
import difflib
import operator
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from tvwsim.errors import InputError

# Package data (pyproject), so a non-editable install finds the catalogs from any directory.
CATALOG_DIR = Path(str(files("tvwsim.traces") / "workloads"))
"""The shipped catalogs: traces/workloads/ at the top of the source tree."""
PATH_ENV = "TVWSIM_WORKLOAD_PATH"
"""Environment variable: more catalog directories, separated by os.pathsep."""
PARAMETERS = ("batch", "seq")
"""Names every formula may use; their values are the arguments of `load_workload`."""

_MAX_FORMULA_CHARS = 400
_MAX_VALUE = 2**62  # far above any real shape; stops a formula from building huge integers


@dataclass(frozen=True)
class Gemm:
    """One GEMM shape, Y (m x n) = X (m x k) @ W.T, run `count` times per forward pass."""

    name: str
    m: int
    """Rows of X and Y: tokens or output pixels."""
    n: int
    """Output features: rows of the weight W."""
    k: int
    """Reduction dimension: input features (C_in x kh x kw for a convolution)."""
    count: int = 1
    """How many times this shape runs per forward pass."""
    prunable: bool = True
    """False for activation x activation products (no weight to prune)."""

    @property
    def macs(self) -> int:
        """Multiply-accumulates of all `count` runs."""
        return self.m * self.n * self.k * self.count

    @property
    def flops(self) -> int:
        """FLOPs of all `count` runs (2 per multiply-accumulate)."""
        return 2 * self.macs


@dataclass(frozen=True)
class Workload:
    """The GEMMs of one model's forward pass at a given batch and sequence length."""

    name: str
    description: str
    source: str
    gemms: tuple[Gemm, ...]
    batch: int = 1
    seq: int = 128

    @property
    def macs(self) -> int:
        return sum(g.macs for g in self.gemms)

    @property
    def flops(self) -> int:
        return sum(g.flops for g in self.gemms)

    @property
    def prunable_flops(self) -> int:
        """FLOPs of the GEMMs that have a weight (what pruning can remove)."""
        return sum(g.flops for g in self.gemms if g.prunable)

    def gemm(self, name: str) -> Gemm:
        """The entry called `name`, or InputError listing the names."""
        for g in self.gemms:
            if g.name == name:
                return g
        names = ", ".join(g.name for g in self.gemms)
        raise InputError("gemm", f"{self.name} has no GEMM {name!r}; it has: {names}")


# -- formulas ------------------------------------------------------------------------------
def _exact_div(a: int, b: int) -> int:
    if a % b:
        raise ValueError(f"{a} / {b} is not an integer; use // for floor division")
    return a // b


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: _exact_div,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate_formula(formula: int | str, names: Mapping[str, int]) -> int:
    """The integer value of `formula` with `names` bound, e.g. ("batch * seq", {...}).

    Only integer literals, the given names, + - * / // and parentheses are accepted; the
    expression is parsed into a syntax tree and walked here, never executed.
    Raises InputError("formula", ...) on anything else.
    """
    if isinstance(formula, bool) or not isinstance(formula, int | str):
        raise InputError("formula", f"must be an integer or a formula string, got {formula!r}")
    if isinstance(formula, int):
        return formula
    if len(formula) > _MAX_FORMULA_CHARS:
        raise InputError("formula", f"longer than {_MAX_FORMULA_CHARS} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError:
        raise InputError("formula", f"cannot parse {formula!r}") from None
    try:
        return _walk(tree.body, names)
    except ValueError as err:
        raise InputError("formula", f"{formula!r}: {err}") from None


def _walk(node: ast.AST, names: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int):
            raise ValueError(f"only integer literals are allowed, got {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"unknown name {node.id!r}; known: {', '.join(names)}")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, names), _walk(node.right, names)
        if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv):
            raise ValueError("division by zero")
        value = _BINARY[type(node.op)](left, right)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_walk(node.operand, names))
    else:
        raise ValueError("only integers, names and + - * / // ( ) are allowed")
    if abs(value) > _MAX_VALUE:
        raise ValueError(f"value exceeds {_MAX_VALUE}")
    return value


# -- lookup --------------------------------------------------------------------------------
def workload_dirs() -> list[Path]:
    """The catalog lookup path: traces/workloads/, then TVWSIM_WORKLOAD_PATH entries."""
    dirs = [CATALOG_DIR]
    for entry in os.environ.get(PATH_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry.strip()).expanduser())
    return dirs


def _catalog_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for directory in workload_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                files.setdefault(path.stem, path)
    return files


def list_workloads() -> list[str]:
    """Names of all workload catalogs on the lookup path, sorted."""
    return sorted(_catalog_files())


def find_workload(name: str, *, argument: str = "model") -> Path:
    """The catalog file for `name` (or a .toml path), or InputError listing known names."""
    text = str(name).strip()
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(argument, f"workload file {text!r} does not exist")
        return path
    files = _catalog_files()
    if not files:
        raise InputError(
            argument,
            f"no workload catalogs found: {CATALOG_DIR} does not exist (the catalogs ship in "
            f"the source tree; install it editable, pip install -e .) and {PATH_ENV} names "
            "no directory with .toml catalogs",
        )
    if text in files:
        return files[text]
    folded = [key for key in files if key.lower() == text.lower()]
    if len(folded) == 1:
        return files[folded[0]]
    close = difflib.get_close_matches(text, list(files), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(argument, f"unknown model {text!r}{hint}; known: {', '.join(sorted(files))}")


def _positive_int(argument: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(argument, f"must be a positive integer, got {value!r}")
    return value


def load_workload(name: str, *, batch: int = 1, seq: int = 128) -> Workload:
    """Load a catalog and evaluate its shapes at `batch` and `seq`.

    >>> load_workload("bert-base", batch=32, seq=128).gemm("ffn1")
    Gemm(name='ffn1', m=4096, n=3072, k=768, count=12, prunable=True)

    Errors: unknown model (InputError 'model', listing the known ones); batch or seq not
    a positive integer ('--batch', '--seq'); a malformed catalog (names the file and entry).
    """
    batch = _positive_int("--batch", batch)
    seq = _positive_int("--seq", seq)
    path = find_workload(name)
    label = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(label, f"not valid TOML: {err}") from None

    allowed = {"description", "source", "constants", "gemm"}
    for key in data:
        if key not in allowed:
            raise InputError(
                f"{label}: {key}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
            )
    for key in ("description", "source"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InputError(f"{label}: {key}", "must be a non-empty string")

    names: dict[str, int] = {"batch": batch, "seq": seq}
    constants = data.get("constants", {})
    if not isinstance(constants, dict):
        raise InputError(f"{label}: constants", "must be a table ([constants])")
    for key, formula in constants.items():
        if key in names:
            raise InputError(f"{label}: constants.{key}", "redefines a name already in use")
        names[key] = _evaluate(f"{label}: constants.{key}", formula, names)

    entries = data.get("gemm")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{label}: gemm", "needs at least one [[gemm]] entry")
    gemms = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        gemms.append(_gemm(label, index, entry, names))
        if gemms[-1].name in seen:
            raise InputError(f"{label}: gemm {gemms[-1].name!r}", "name used twice")
        seen.add(gemms[-1].name)
    return Workload(
        name=path.stem,
        description=data["description"].strip(),
        source=data["source"].strip(),
        gemms=tuple(gemms),
        batch=batch,
        seq=seq,
    )


def _evaluate(argument: str, formula: object, names: Mapping[str, int]) -> int:
    try:
        return evaluate_formula(formula, names)  # type: ignore[arg-type]
    except InputError as err:
        raise InputError(argument, err.problem) from None


def _gemm(label: str, index: int, entry: object, names: Mapping[str, int]) -> Gemm:
    if not isinstance(entry, dict):
        raise InputError(f"{label}: gemm[{index}]", "must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{label}: gemm[{index}]", "needs a name")
    where = f"{label}: gemm {name!r}"
    allowed = {"name", "m", "n", "k", "count", "prunable"}
    for key in entry:
        if key not in allowed:
            raise InputError(
                f"{where}", f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
    values = {}
    for key in ("m", "n", "k", "count"):
        if key not in entry and key != "count":
            raise InputError(where, f"missing {key}")
        value = _evaluate(f"{where}.{key}", entry.get(key, 1), names)
        if value < 1:
            raise InputError(
                f"{where}.{key}",
                f"{entry.get(key)!r} is {value} at batch={names['batch']}, seq={names['seq']}; "
                "must be >= 1",
            )
        values[key] = value
    prunable = entry.get("prunable", True)
    if not isinstance(prunable, bool):
        raise InputError(f"{where}.prunable", f"must be true or false, got {prunable!r}")
    return Gemm(name=name.strip(), prunable=prunable, **values)
