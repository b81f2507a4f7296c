"""The pattern vocabulary: one `PatternSpec` per sparsity pattern, and nothing else.

Every CLI choice, every "which sparsities does this pattern accept" check and every
"dense or sparse mma" decision in the project derives from `PATTERNS` below, so a new
pattern is one entry here plus its pruner, encoder and kernel
(definitions: docs/formats.md and the pattern docs).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from tvwsim.errors import InputError


@dataclass(frozen=True)
class PatternSpec:
    """What the rest of tvwsim needs to know about one sparsity pattern."""

    name: str
    """Short name used on the command line and in every file: 'dense', 'tvw', ..."""
    mma: Literal["dense", "sparse"]
    """The kernel's tensor-core instruction: mma.sync ('dense') or mma.sp ('sparse', 2:4)."""
    tiled: bool
    """tw/tvw: each weight tile (config.bm rows) keeps its own K subset."""
    fixed_sparsity: float | None
    """The one sparsity the pattern has (dense 0, vw 1 - n/m); None: any in range."""
    min_sparsity: float = 0.0
    """Smallest sparsity a free pattern accepts (tvw: its 2:4 half, 1 - n/m)."""
    has_kernel: bool = True
    """A tvwsim CUDA kernel exists (ew runs only as a vendor baseline)."""
    nm: tuple[int, int] | None = None
    """(n, m) of the N:M pattern inside each group of m along K, or None."""
    description: str = ""
    """One line for help texts."""

    @property
    def sparse_mma(self) -> bool:
        return self.mma == "sparse"

    @property
    def default_sparsity(self) -> float | None:
        """The sparsity used when none is given: the fixed one, else None (must be given)."""
        return self.fixed_sparsity

    def accepts(self, sparsity: float) -> bool:
        """Whether the pattern can prune to `sparsity` (a number in [0, 1))."""
        if self.fixed_sparsity is not None:
            return math.isclose(sparsity, self.fixed_sparsity, abs_tol=SPARSITY_TOLERANCE)
        return self.min_sparsity - SPARSITY_TOLERANCE <= sparsity < 1.0

    def allowed(self) -> str:
        """The accepted sparsities in words, for error messages."""
        if self.fixed_sparsity is not None:
            return f"exactly {self.fixed_sparsity:g}"
        if self.min_sparsity > 0:
            return f"in [{self.min_sparsity:g}, 1)"
        return "in [0, 1)"


SPARSITY_TOLERANCE = 1e-6
"""How far a given sparsity may sit from a fixed one (0.5 typed as 0.5000001 is 2:4)."""

NM_24 = (2, 4)
"""The sparse tensor core's pattern: 2 kept of every 4 along K."""

VW_SPARSITY = 1.0 - NM_24[0] / NM_24[1]
"""Sparsity of a 2:4 weight (0.5): vw's only sparsity and tvw's least."""

PATTERNS: dict[str, PatternSpec] = {
    spec.name: spec
    for spec in (
        PatternSpec("dense", "dense", False, 0.0, description="no pruning"),
        PatternSpec(
            "ew",
            "dense",
            False,
            None,
            has_kernel=False,
            description="element-wise (unstructured); runs as a CSR SpMM on CUDA cores",
        ),
        PatternSpec("bw", "dense", False, None, description="block-wise (square blocks)"),
        PatternSpec(
            "vw", "sparse", False, VW_SPARSITY, nm=NM_24, description="vector-wise 2:4 (N:M)"
        ),
        PatternSpec("tw", "dense", True, None, description="tile-wise: per-tile kept K"),
        PatternSpec(
            "tvw",
            "sparse",
            True,
            None,
            min_sparsity=VW_SPARSITY,
            nm=NM_24,
            description="tile-vector-wise: tile-wise, then 2:4 inside each tile",
        ),
    )
}

PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS)
"""Every pattern, in the order reports list them."""

PRUNED_PATTERNS: tuple[str, ...] = tuple(n for n in PATTERNS if n != "dense")
"""Patterns that remove weights (what traces and the quality table cover)."""

SPARSE_MMA_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.sparse_mma)
"""Patterns whose kernels run mma.sp on a 2:4 weight."""

TILED_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.tiled)
"""Patterns with per-tile kept K (tile width = config.bm)."""

KERNEL_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.has_kernel)
"""Patterns with a tvwsim CUDA kernel."""


def pattern_spec(name: object, *, argument: str = "pattern") -> PatternSpec:
    """The spec of pattern `name`; InputError naming `argument` for anything else."""
    spec = PATTERNS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InputError(argument, f"got {name!r}; allowed: {', '.join(PATTERN_NAMES)}")
    return spec


def mma_kind(pattern: str) -> str:
    """'sparse' or 'dense': the tensor-core instruction `pattern`'s kernels use."""
    return pattern_spec(pattern).mma


def check_sparsity(pattern: str, sparsity: object, *, argument: str = "sparsity") -> float:
    """`sparsity` as a float if `pattern` accepts it, else one InputError naming `argument`."""
    spec = pattern_spec(pattern)
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, numbers.Real)
        or not 0.0 <= float(sparsity) < 1.0
    ):
        raise InputError(argument, f"must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not spec.accepts(value):
        raise InputError(argument, f"{spec.name} needs a sparsity {spec.allowed()}, got {value:g}")
    return value
