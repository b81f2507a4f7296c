"""Parsers for command-line values shared by every `tvwsim` command.

Commands take numbers as strings (argparse `type=` would print its own usage error) and
parse them here, so every bad value becomes one `InputError` that names the option.
"""

from __future__ import annotations

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
