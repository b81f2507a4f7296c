"""Which measured rows the model is fitted to and which it is tested on.

- Rows: our kernels (`implementation == "tvwsim"`), or - kind 'library' - the vendor
  rows the model has a library kernel for (cuBLAS, cuSPARSELt; `tvwsim.sim.library`),
  never both at once: they are different kernels. Correct ones only (`model_rows`), from
  one device, which must match the preset (`device_matches`, `check_device`).
- Split (`split_shapes`), deterministic and shape-disjoint: each (M, N, K) is hashed
  with sha256; shapes whose hash, read as a fraction in [0, 1), is below
  HELD_OUT_FRACTION (0.3) are held out - every row of such a shape, whatever its
  pattern, config or policy. Training never sees a held-out shape, so `tvwsim compare`
  on the held-out rows tests prediction, not recall. The hash depends on nothing but the
  shape, so every file, machine and rerun splits alike. (With few shapes the hash may
  hold out none: then the shape with the smallest hash is held out, so there is always
  something to compare on; a single shape is never held out.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tvwsim.sim.hardware import Hardware

from tvwsim.errors import InputError

HELD_OUT_FRACTION = 0.3
"""Share of shapes (by hash) kept out of training."""


def _alnum(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def device_family(hw: Hardware) -> str:
    """The GPU a preset describes, as matched against device names: the preset name's
    first segment ('h100' for 'h100', 'h100-calibrated', 'h100_lowclock')."""
    return _alnum(re.split(r"[-_.+]", hw.name, maxsplit=1)[0])


def device_matches(hw: Hardware, device_name: str) -> bool:
    """Whether measurements from `device_name` may be compared with preset `hw`.

    The rule: the preset's family (`device_family`, e.g. 'h100') must occur in the device
    name with everything but letters and digits removed ('NVIDIA H100 80GB HBM3' ->
    'nvidiah10080gbhbm3'), or the preset must have been calibrated on exactly that
    device name (`extra.calibration.device_names`). So h100 matches every H100 variant
    and not an H200; rtx3090 matches 'NVIDIA GeForce RTX 3090'.
    """
    calibration = hw.extra.get("calibration", {}) if isinstance(hw.extra, dict) else {}
    names = calibration.get("device_names", []) if isinstance(calibration, dict) else []
    if device_name in names:
        return True
    family = device_family(hw)
    return bool(family) and family in _alnum(device_name)


def preset_for_device(device_name: str, names: Sequence[str] | None = None) -> str:
    """The shipped preset describing `device_name` ('NVIDIA H200' -> 'h200'), by the rule of
    `device_matches`; InputError when no shipped preset, or more than one, matches."""
    from tvwsim.sim.presets import SHIPPED_DIR, load_preset

    if names is None:
        names = sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))
    found = [n for n in names if device_matches(load_preset(n), device_name)]
    if len(found) != 1:
        what = "no shipped preset" if not found else f"several presets ({', '.join(found)})"
        raise InputError(
            "--hw",
            f"{what} describes the measured device {device_name!r}; name the base preset "
            f"with --hw (shipped: {', '.join(names)})",
        )
    return found[0]


def check_device(rows: Sequence[Mapping], hw: Hardware, *, argument: str = "--hw") -> str:
    """The one device name of `rows`; InputError if they mix devices or `hw` is another."""
    names = sorted({str(r["device"]["name"]) for r in rows})
    if len(names) != 1:
        raise InputError(
            "--measured", f"rows come from several devices ({', '.join(names)}); use one"
        )
    if not device_matches(hw, names[0]):
        raise InputError(
            argument,
            f"preset {hw.name!r} ({hw.description or 'no description'}) describes another "
            f"GPU than the measurements' {names[0]!r} (rule: the preset family "
            f"{device_family(hw)!r} must appear in the device name)",
        )
    return names[0]


def shape_fraction(m: int, n: int, k: int) -> float:
    """sha256 of 'MxNxK' read as a fraction in [0, 1): the shape's place in the split."""
    digest = hashlib.sha256(f"{m}x{n}x{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


@dataclass(frozen=True)
class Split:
    """Which shapes train the model and which test it."""

    train: tuple[tuple[int, int, int], ...]
    held_out: tuple[tuple[int, int, int], ...]
    rule: str
    """How the split was made, in words (recorded in the calibrated preset)."""

    def is_held_out(self, row: Mapping) -> bool:
        return (row["M"], row["N"], row["K"]) in self.held_out

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "held_out_fraction": HELD_OUT_FRACTION,
            "train_shapes": [shape_name(s) for s in self.train],
            "held_out_shapes": [shape_name(s) for s in self.held_out],
        }


def split_shapes(shapes: Iterable[Sequence[int]]) -> Split:
    """Deterministic shape-disjoint split (module docstring, step 2)."""
    unique = sorted({tuple(int(v) for v in s) for s in shapes})
    frac = {s: shape_fraction(*s) for s in unique}
    held = [s for s in unique if frac[s] < HELD_OUT_FRACTION]
    rule = f"sha256('MxNxK') as a fraction < {HELD_OUT_FRACTION} -> held out"
    if not held and len(unique) >= 2:
        held = [min(unique, key=lambda s: frac[s])]
        rule += "; none fell below, so the shape with the smallest hash is held out"
    if held and len(held) == len(unique):
        keep = max(held, key=lambda s: frac[s])
        held.remove(keep)
        rule += "; all fell below, so the shape with the largest hash trains"
    train = [s for s in unique if s not in held]
    return Split(train=tuple(train), held_out=tuple(held), rule=rule)


ROW_KINDS = ("tvwsim", "library")
"""Which rows a calibration or comparison uses: our kernels ('tvwsim'), or vendor library
rows ('library': cuBLAS and cuSPARSELt, replayed as `tvwsim.sim.library` would run them)."""

LIBRARY_IMPLEMENTATIONS = {"cublas": "dense", "cusparselt": "vw", "cusparse-csr": "ew"}
"""Vendor implementations the model has a library kernel for, and their pattern. cuSPARSE
CSR (`ew`) is a row-split CSR SpMM in closed form (`tvwsim.sim.library.cusparse_csr_us`),
whose `cuda_core_efficiency` and `csr_nonzero_cycles` a fit to these rows sets."""


def check_kind(kind: str, argument: str = "--rows") -> str:
    if kind not in ROW_KINDS:
        raise InputError(argument, f"got {kind!r}; allowed: {', '.join(ROW_KINDS)}")
    return kind


def default_kind(rows: Iterable[Mapping]) -> str:
    """'tvwsim' when the rows hold any of our kernels, else 'library'."""
    return "tvwsim" if any(r["implementation"] == "tvwsim" for r in rows) else "library"


def check_only(only: Iterable[str] | None, argument: str = "--only") -> frozenset[str] | None:
    """The implementations `--only` names (None: all), each one a known implementation."""
    if only is None:
        return None
    from tvwsim.validate.points import IMPLEMENTATIONS

    names = frozenset(n.strip() for n in only if n.strip())
    unknown = sorted(names - set(IMPLEMENTATIONS))
    if not names or unknown:
        raise InputError(
            argument,
            f"got {', '.join(unknown) or 'nothing'}; allowed: {', '.join(IMPLEMENTATIONS)}",
        )
    return names


def model_rows(
    rows: Iterable[Mapping], kind: str = "tvwsim", only: Iterable[str] | None = None
) -> list[dict]:
    """Rows the model describes, results correct (or unchecked, as published rows are):
    our kernels, or (`kind` 'library') the vendor rows of LIBRARY_IMPLEMENTATIONS on
    their pattern; `only`: of these implementations alone."""
    check_kind(kind)
    keep = check_only(only)
    if keep is not None:
        rows = [r for r in rows if r["implementation"] in keep]
    if kind == "tvwsim":
        return [
            dict(r)
            for r in rows
            if r["implementation"] == "tvwsim" and r.get("correct") is not False
        ]
    return [
        dict(r)
        for r in rows
        if LIBRARY_IMPLEMENTATIONS.get(r["implementation"]) == r["pattern"]
        and r.get("correct") is not False
    ]


def fitted_to(rows: Sequence[Mapping], kind: str) -> str:
    """What a calibration was fitted to, in words (recorded in the preset)."""
    if kind == "tvwsim":
        return "tvwsim's own kernels, measured by tvwsim validate"
    published = all(r.get("origin") == "published" for r in rows)
    libraries = ", ".join(sorted({str(r["implementation"]) for r in rows}))
    where = "published silicon measurements" if published else "measured by tvwsim validate"
    return f"vendor library rows ({libraries}), {where}"


MAX_TRAIN_STAGES = 250_000
"""Training rows larger than this (`row_stages`) are left out of a fit by default: a fit
simulates every training row a few dozen times, and the engine spends about 10 us per
CTA stage, so one 48000 x 8448 x 2816 GEMM (3 million stages) would cost half a minute
per evaluation. They stay in `tvwsim compare`, which simulates each row once."""


def row_stages(row: Mapping) -> int:
    """The engine's work for a row, in CTA stages of a 128 x 128 x 32 kernel: a size proxy
    known before any schedule is built (a library row's kernel is chosen by simulating)."""
    m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
    return -(-m // 128) * -(-n // 128) * -(-k // 32)
