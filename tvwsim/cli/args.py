"""Parsers for command-line values shared by every `tvwsim` command.

Commands take numbers as strings (argparse `type=` would print its own usage error) and
parse them here, so every bad value becomes one `InputError` that names the option.
"""

from __future__ import annotations

from tvwsim.config import AUTO
from tvwsim.errors import InputError


def parse_int(name: str, text: str | int, *, minimum: int = 1) -> int:
    """An integer >= `minimum` written as plain digits (no sign, no decimal point)."""
    value = str(text).strip()
    if not value.isdigit() or int(value) < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(name, f"must be {wanted}, got {text!r}")
    return int(value)


def parse_sparsity_list(name: str, text: str) -> list[float]:
    """A comma list of sparsities, each strictly between 0 and 1 ('0.5,0.75')."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            s = float(part)
        except ValueError:
            raise InputError(name, f"got {part!r}; a number in (0, 1)") from None
        if not 0.0 < s < 1.0:
            raise InputError(name, f"got {s:g}; each sparsity must lie in (0, 1)")
        values.append(s)
    if not values:
        raise InputError(name, f"got {text!r}; a comma list of numbers in (0, 1)")
    return values


def parse_patterns(
    name: str, text: str, *, allowed: tuple[str, ...] | None = None, several: bool = True
) -> list[str]:
    """`--pattern`: one pattern, or (when `several`) a comma list or 'all' of `allowed`.

    Every command spells it the same way; `allowed` defaults to every pattern of the
    registry, in its order. Repeats are dropped; the order given is kept.
    """
    from tvwsim.pattern_spec import PATTERN_NAMES

    allowed = PATTERN_NAMES if allowed is None else allowed
    if several:
        wanted = f"allowed: {', '.join(allowed)}, a comma list of them, or all"
    else:
        wanted = f"this command takes one of {', '.join(allowed)}"
    text = str(text).strip()
    names = list(allowed) if several and text == "all" else [p.strip() for p in text.split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    if not names or any(n not in allowed for n in names) or (not several and len(names) > 1):
        raise InputError(name, f"got {text!r}; {wanted}")
    return names


def parse_sparsity(name: str, text: str | None) -> float | None:
    """One sparsity in [0, 1) (None when not given)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(name, f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise InputError(name, f"must be in [0, 1), got {text!r}")
    return value


def parse_library_config(name: str, text: str | None) -> bool:
    """True for `--config auto` (a vendor library's kernel), False when absent; a command
    whose --config takes nothing else gets one InputError for any other value."""
    if text is None:
        return False
    if text.strip() != AUTO:
        raise InputError(name, f"got {text!r}; allowed: auto (this project's kernels otherwise)")
    return True
