"""One `InputError` from pydantic's `ValidationError`, naming the bad entry.

The sweep spec and the measurement row are checked by pydantic models; a user still gets
the project's one-line error, naming the file and the entry: "quick.toml:
group[1].configs.tw" or "m.jsonl:7: times_us".
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from tvwsim.errors import InputError


def entry_name(loc: Sequence[int | str]) -> str:
    """pydantic's location as a reader writes it: ('group', 1, 'shapes') -> 'group[1].shapes'."""
    text = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad dict key: the key is the entry
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class whose field list applies at `loc` (for "allowed keys" hints)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        found = _nested_model(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _nested_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def input_error(
    err: ValidationError,
    label: str,
    model: type[BaseModel],
    *,
    separator: str = ": ",
    top_keys: Sequence[str] | None = None,
) -> InputError:
    """The first problem pydantic found, as InputError('<label><sep><entry>', problem).

    `top_keys` lists what the top level accepts where that is more than `model`'s fields.
    """
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    kind = first["type"]
    if kind == "missing":
        problem = "missing (required)"
    elif kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        keys = top_keys if top_keys is not None and len(loc) == 1 else None
        if keys is None and owner is not None:
            keys = list(owner.model_fields)
        allowed = f"; allowed: {', '.join(keys)}" if keys else ""
        problem = f"unknown key{allowed}"
    elif kind == "value_error":
        # Our own validators' messages: already say what is wrong and what is allowed.
        problem = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
    else:
        problem = f"{first['msg']}, got {first['input']!r}"
    name = entry_name(loc)
    return InputError(f"{label}{separator}{name}" if name else label, problem)
