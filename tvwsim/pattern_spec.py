"""The pattern vocabulary: one `PatternSpec` per sparsity pattern, and nothing else.

Every CLI choice, every "which sparsities does this pattern accept" check and every
"dense or sparse mma", "tiled or not", "does the work depend on the values" decision in
the project derives from `PATTERNS` below, so a new pattern is one entry here plus its
pruner, encoder and kernel (definitions: docs/formats.md and the pattern docs).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tvwsim.errors import InputError

SPARSITY_TOLERANCE = 1e-6
"""How far a given sparsity may sit from a fixed one (0.5 typed as 0.5000001 is 2:4)."""


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
    regular: bool = False
    """Every tile does the same work whatever the weight values (dense, vw: n of every m
    in every row), so the work follows from the shape alone and no weight need be drawn,
    pruned or traced to simulate it."""
    compute_unit: Literal["tensor", "cuda"] = "tensor"
    """Where the math runs: tensor cores, or CUDA cores (ew's CSR SpMM)."""
    description: str = ""
    """One line for help texts."""

    def __post_init__(self) -> None:
        # The registry is code, so these are programming errors, not user input.
        if self.mma not in ("dense", "sparse") or self.compute_unit not in ("tensor", "cuda"):
            raise ValueError(f"{self.name}: mma {self.mma!r}, compute {self.compute_unit!r}")
        if self.sparse_mma and self.nm is None:
            raise ValueError(f"{self.name}: an mma.sp kernel needs an n:m pattern")
        if self.regular and self.fixed_sparsity is None:
            raise ValueError(f"{self.name}: a regular pattern's sparsity follows from the shape")

    @property
    def sparse_mma(self) -> bool:
        """The kernel runs mma.sp, so its config needs `mma == 'sparse'`."""
        return self.mma == "sparse"

    @property
    def prunes(self) -> bool:
        """The pattern removes weights (all but dense): what traces and quality cover."""
        return self.fixed_sparsity != 0.0

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
            return f"of exactly {self.fixed_sparsity:g}"
        if self.min_sparsity > 0:
            return f"in [{self.min_sparsity:g}, 1)"
        return "in [0, 1)"

    def sparsities_for(self, targets: Iterable[float]) -> tuple[float, ...]:
        """The sparsities the pattern runs at when `targets` are asked of every pattern.

        A fixed-sparsity pattern runs once at its own sparsity whatever the targets (vw at
        0.5, dense at 0); a free one at each target it accepts, in order, without repeats
        (tvw drops those below 0.5).
        """
        if self.fixed_sparsity is not None:
            return (self.fixed_sparsity,)
        return tuple(dict.fromkeys(float(s) for s in targets if self.accepts(float(s))))

    def sparsity_for(self, target: float) -> float | None:
        """`sparsities_for` of one target: the sparsity to run at, or None (not accepted)."""
        runs = self.sparsities_for((target,))
        return runs[0] if runs else None

    def kept_along_k(self, length: int | np.ndarray) -> int | np.ndarray:
        """Weights one row keeps of `length` candidate K (an int or an int array).

        All of them, or for an n:m pattern n of every m consecutive ones, a partial last
        group keeping min(n, its length): vw over K, tvw over a tile's kept-K list.
        """
        if self.nm is None:
            return length
        n, m = self.nm
        return n * (length // m) + np.minimum(n, length % m)

    def with_nm(self, n: int, m: int) -> PatternSpec:
        """This pattern with another n:m (the pruner takes any; the kernels only 2:4).

        Patterns without an n:m step are returned unchanged.
        """
        if self.nm is None:
            return self
        nm_sparsity = 1.0 - n / m
        if self.fixed_sparsity is not None:
            return dataclasses.replace(self, nm=(n, m), fixed_sparsity=nm_sparsity)
        return dataclasses.replace(self, nm=(n, m), min_sparsity=nm_sparsity)


NM_24 = (2, 4)
"""The sparse tensor core's pattern: 2 kept of every 4 along K."""

VW_SPARSITY = 1.0 - NM_24[0] / NM_24[1]
"""Sparsity of a 2:4 weight (0.5): vw's only sparsity and tvw's least."""

PATTERNS: dict[str, PatternSpec] = {
    spec.name: spec
    for spec in (
        PatternSpec("dense", "dense", False, 0.0, regular=True, description="no pruning"),
        PatternSpec(
            "ew",
            "dense",
            False,
            None,
            has_kernel=False,
            compute_unit="cuda",
            description="element-wise (unstructured); runs as a CSR SpMM on CUDA cores",
        ),
        PatternSpec("bw", "dense", False, None, description="block-wise (square blocks)"),
        PatternSpec(
            "vw",
            "sparse",
            False,
            VW_SPARSITY,
            nm=NM_24,
            regular=True,
            description="vector-wise 2:4 (N:M)",
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

BASELINE_PATTERN = "dense"
"""The unpruned pattern: every speedup is measured against it, and it always runs first."""

PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS)
"""Every pattern, in the order reports list them."""

PRUNED_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.prunes)
"""Patterns that remove weights (what trace files and the quality table cover)."""

SPARSE_MMA_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.sparse_mma)
"""Patterns whose kernels run mma.sp on a 2:4 weight."""

TILED_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.tiled)
"""Patterns with per-tile kept K (tile width = config.bm)."""

KERNEL_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.has_kernel)
"""Patterns with a tvwsim CUDA kernel."""

REGULAR_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if s.regular)
"""Patterns whose work follows from the shape alone (every tile alike)."""

VALUE_DEPENDENT_PATTERNS: tuple[str, ...] = tuple(n for n, s in PATTERNS.items() if not s.regular)
"""Patterns whose structure depends on which weights are large: their work needs a weight
(or a real-weight trace), and an unevenly skewed one gives uneven tiles."""


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
