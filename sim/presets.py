"""Hardware presets: finding, loading and writing the TOML files that describe GPUs.

A preset is a TOML file whose keys are the fields of `tvwsim.sim.hardware.Hardware`; its name is
the file name without `.toml`. Presets are looked up, first match wins, in:

1. `sim/presets/` inside the package - the shipped presets (a100, h100, h200, v100, t4, rtx3090);
2. each directory of the environment variable `TVWSIM_PRESET_PATH` (separated by
   `os.pathsep`, ':' on Linux), in order - user presets, e.g. the calibrated presets that
   `tvwsim calibrate` writes.

A user preset cannot replace a shipped one (the shipped file wins, `tvwsim hw list` marks
the user file as shadowed): give a calibrated preset its own name, e.g. `a100-calibrated`.
Anything that looks like a path (ends in `.toml` or contains a directory separator) is
read directly instead of looked up.

Two kinds of file:

- A complete preset sets every field (all shipped presets do, so no figure is a silent
  default). A missing field is an error.
- A derived preset names `base = "a100"` and sets only what differs - the way to describe
  a hypothetical GPU or to record calibrated efficiencies next to the datasheet figures.

An optional `[extra]` table carries free-form provenance (calibration residuals, which
measurements were used); the model never reads it. `parse_overrides` and
`Hardware.with_overrides` apply `--set key=value` changes on top of any preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tvwsim.sim.hardware import NOT_OVERRIDABLE, Hardware

from tvwsim.errors import InputError
from tvwsim.io import write_atomic

SHIPPED_DIR = Path(__file__).resolve().parent / "presets"
"""Directory of the presets that ship with the package."""
PATH_ENV = "TVWSIM_PRESET_PATH"
"""Environment variable: more preset directories, separated by os.pathsep."""

# Fields a preset file may not set: the name comes from the file name, `extra` is a table,
# `overrides` records what `--set` changed after loading.
_NOT_KEYS = ("name", "extra", "overrides")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class PresetFile:
    """One preset file found on the lookup path."""

    name: str
    """Preset name: the file name without `.toml`."""
    path: Path
    shipped: bool
    """True for the presets inside the package."""
    shadowed: bool = False
    """True when an earlier directory on the lookup path has a preset of the same name."""


def hardware_fields() -> dict[str, dataclasses.Field]:
    """The Hardware fields a preset file sets (all but `name` and `extra`), in order."""
    return {f.name: f for f in dataclasses.fields(Hardware) if f.name not in _NOT_KEYS}


def hardware_record(hardware: Hardware) -> dict[str, object]:
    """The effective hardware for a JSON output: what was overridden and every field.

    {'hardware_overrides': {'sm_count': 216}, 'hardware_fields': {'description': ...,
    'sm_count': 216, ...}}; outputs put `hardware.label` under 'hardware' beside it.
    """
    return {
        "hardware_overrides": dict(hardware.overrides),
        "hardware_fields": {key: getattr(hardware, key) for key in hardware_fields()},
    }


def preset_dirs() -> list[Path]:
    """The preset lookup path: the shipped directory, then TVWSIM_PRESET_PATH entries."""
    dirs = [SHIPPED_DIR]
    for entry in os.environ.get(PATH_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry.strip()).expanduser())
    return dirs


def find_preset_files() -> list[PresetFile]:
    """Every preset file on the lookup path, in lookup order, shadowed ones marked.

    Directories that do not exist are skipped: a stale TVWSIM_PRESET_PATH entry should not
    break every command (`tvwsim hw list` shows the path so the user can spot it).
    """
    found: list[PresetFile] = []
    seen: set[str] = set()
    for index, directory in enumerate(preset_dirs()):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            name = path.stem
            if not _NAME.match(name):
                continue
            found.append(PresetFile(name, path, shipped=index == 0, shadowed=name in seen))
            seen.add(name)
    return found


def list_presets() -> list[str]:
    """Names of all presets that `load_preset` can find by name, sorted."""
    return sorted({p.name for p in find_preset_files() if not p.shadowed})


def find_preset(name: str, *, argument: str = "preset") -> PresetFile:
    """Resolve a preset name (or a path to a .toml file) to its file, or raise InputError.

    `argument` is the option the name came from ('--hw', 'NAME'), used in the error.
    """
    text = str(name).strip()
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(argument, f"preset file {text!r} does not exist")
        return PresetFile(path.stem, path, shipped=False)
    files = [p for p in find_preset_files() if not p.shadowed]
    for p in files:
        if p.name == text:
            return p
    # Forgive case ('A100') when it is unambiguous; anything else is an error with a hint.
    folded = [p for p in files if p.name.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    known = [p.name for p in files]
    close = difflib.get_close_matches(text, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(
        argument,
        f"unknown hardware preset {text!r}{hint}; known: {', '.join(sorted(known))} "
        f"(add directories with {PATH_ENV})",
    )


def load_preset(
    name: str,
    overrides: Mapping[str, object] | None = None,
    *,
    argument: str = "preset",
) -> Hardware:
    """Load a preset by name (or .toml path) and apply `--set` overrides.

    >>> load_preset("a100").sm_count
    108
    >>> load_preset("a100", {"sm_count": "216"}).dense_peak_tflops > 600
    True

    Unknown presets, unknown keys and bad values raise InputError naming what is wrong.
    """
    hardware = load_preset_file(find_preset(name, argument=argument).path)
    if overrides:
        hardware = apply_overrides(hardware, overrides)
    return hardware


def apply_overrides(hardware: Hardware, overrides: Mapping[str, object]) -> Hardware:
    """`hardware.with_overrides`, with every error naming the `--set` option."""
    known = [f.name for f in dataclasses.fields(Hardware) if f.name not in NOT_OVERRIDABLE]
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                "--set", f"unknown hardware field {key!r}{hint}; known: {', '.join(known)}"
            )
    try:
        return hardware.with_overrides(dict(overrides))
    except InputError as err:
        if err.argument == "--set":
            raise
        raise InputError(f"--set {err.argument}", err.problem) from None


def load_preset_file(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> Hardware:
    """Read one preset file (following `base = ...`) into a validated Hardware."""
    path = Path(path).expanduser()
    label = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(label, f"not valid TOML: {err}") from None

    fields = hardware_fields()
    extra = data.pop("extra", {})
    if not isinstance(extra, dict):
        raise InputError(f"{label}: extra", "must be a table ([extra])")
    base_name = data.pop("base", None)
    for key in data:
        if key == "name":
            raise InputError(
                f"{label}: name", "a preset's name is its file name; remove the 'name' key"
            )
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"{label}: {key}", f"unknown hardware field{hint}; known: {', '.join(fields)}"
            )

    values: dict[str, object] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise InputError(f"{label}: base", "must be a preset name in quotes")
        base_path = find_preset(base_name, argument=f"{label}: base").path.resolve()
        if base_path in _chain or base_path == path.resolve():
            raise InputError(f"{label}: base", f"presets form a cycle through {base_name!r}")
        base = load_preset_file(base_path, _chain=(*_chain, path.resolve()))
        values = {key: getattr(base, key) for key in fields}
        extra = {**base.extra, **extra}
    else:
        missing = [key for key in fields if key not in data]
        if missing:
            raise InputError(
                label,
                f"missing fields {', '.join(missing)}; a preset sets every field, or names "
                "base = 'PRESET' and sets only what differs",
            )
    for key, value in data.items():
        values[key] = _check_type(f"{label}: {key}", fields[key].type, value)
    try:
        return Hardware(name=path.stem, extra=extra, **values)
    except InputError as err:
        raise InputError(f"{label}: {err.argument}", err.problem) from None


def _check_type(argument: str, type_name: object, value: object) -> object:
    """TOML already typed the value; check it is the field's type (ints count as floats)."""
    type_name = getattr(type_name, "__name__", type_name)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }.get(str(type_name), True)
    if not ok:
        wanted = {"bool": "true or false", "int": "an integer", "float": "a number"}
        raise InputError(
            argument, f"expected {wanted.get(str(type_name), 'a string')}, got {value!r}"
        )
    return value


def parse_overrides(items: Iterable[str] | None) -> dict[str, str]:
    """Turn `--set key=value` strings into {key: value}; values stay strings.

    `Hardware.with_overrides` converts each value to its field's type and checks its range.
    A missing '=' or an empty key raises InputError naming --set; so does a key given twice,
    because silently keeping one of two contradicting values hides a typo.
    """
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError("--set", f"expected key=value, got {item!r} (e.g. --set sm_count=216)")
        if key in result:
            raise InputError(
                "--set", f"{key!r} given twice ({result[key]!r} and {value.strip()!r})"
            )
        result[key] = value.strip()
    return result


# -- writing -------------------------------------------------------------------------------
COMMENT_COLUMN = 41
"""Column (from 0) of the '#' of a value's source comment, as in the shipped presets."""


def _preset_chain(path: Path) -> list[Path]:
    """The files a preset is built from, root (complete) first, `path` last."""
    chain = [Path(path)]
    while True:
        base = tomllib.loads(chain[-1].read_text(encoding="utf-8")).get("base")
        if base is None:
            return chain[::-1]
        found = find_preset(str(base), argument=f"{chain[-1].name}: base").path
        if found.resolve() in {p.resolve() for p in chain}:
            raise InputError(f"{chain[-1].name}: base", f"presets form a cycle through {base!r}")
        chain.append(found)


def _comment_of(item: object) -> str:
    trivia = getattr(item, "trivia", None)
    return trivia.comment.lstrip("#").strip() if trivia is not None else ""


def preset_to_toml(
    hardware: Hardware,
    *,
    comments: Mapping[str, str] | None = None,
    header: str = "",
    template: str | Path | None = None,
) -> str:
    """A complete preset file for `hardware`: every field, then the `[extra]` table.

    With `template` (a preset file, e.g. the base preset of a calibration) the text is the
    template's own, values replaced, so its comments - the source of every figure, the
    section banners - stay. A derived template (`base = ...`) is followed to its complete
    root: each line carries the comment of the file that set its value. `comments` maps
    field names to new comments (a fitted value's provenance); a value that differs from
    the template with no new comment says so. `header` goes first, as comment lines.
    Loading the text back gives an equal Hardware (and extra).
    """
    import tomlkit

    comments = dict(comments or {})
    fields = hardware_fields()
    doc = tomlkit.document()
    said: dict[str, tuple[object, str]] = {}  # field -> (value, comment) the files give
    if template is not None:
        chain = _preset_chain(Path(template))
        doc = tomlkit.parse(chain[0].read_text(encoding="utf-8"))
        said = {k: (doc.item(k).unwrap(), _comment_of(doc.item(k))) for k in fields if k in doc}
        for path in chain[1:]:
            derived = tomlkit.parse(path.read_text(encoding="utf-8"))
            for key in fields:
                if key in derived:
                    item = derived.item(key)
                    comment = _comment_of(item) or f"{path.name}: no source given"
                    said[key] = (item.unwrap(), comment)
        for key in ("base", "extra"):
            doc.pop(key, None)
    for key in fields:
        value = getattr(hardware, key)
        if key in comments:
            comment = comments[key]
        elif key in said and said[key][0] == value:
            comment = said[key][1]
        else:
            comment = f"differs from {Path(template).stem}: no source given" if template else ""
        old = doc.item(key) if key in doc else None
        if old is not None and old.unwrap() == value and _comment_of(old) == comment:
            continue  # the template's line as it is, alignment and all
        item = tomlkit.item(value)
        if comment:
            item.comment(comment)
            width = len(f"{key} = {item.as_string()}")
            item.trivia.comment_ws = " " * max(1, COMMENT_COLUMN - width)
        doc[key] = item
    if hardware.extra:
        doc["extra"] = hardware.extra
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    prefix = "\n".join(lines) + "\n\n" if lines else ""
    return prefix + tomlkit.dumps(doc)


def write_preset(
    hardware: Hardware,
    path: str | Path,
    *,
    comments: Mapping[str, str] | None = None,
    header: str = "",
    template: str | Path | None = None,
) -> Path:
    """Write `hardware` as a preset file, whole or not at all; returns the path.

    `comments`, `header` and `template` as in `preset_to_toml`. The file's name decides
    the preset's name, so write e.g. `a100-calibrated.toml` into a directory on
    TVWSIM_PRESET_PATH to make `--hw a100-calibrated` work.
    """
    path = Path(path).expanduser()
    if path.suffix != ".toml" or not _NAME.match(path.stem):
        raise InputError(
            "path", f"preset files are named NAME.toml (letters, digits, _.+-), got {path.name!r}"
        )
    text = preset_to_toml(hardware, comments=comments, header=header, template=template)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    return path
