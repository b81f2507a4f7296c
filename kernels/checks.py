"""Correctness checks of the kernels on a GPU, shared by `tvwsim kernels check` and
tests/kernels/test_gpu_kernels.py.

Probes first: one mma.sp (both metadata selectors) and one dense mma on one warp,
register for register against the numpy emulation (`tvwsim.kernels.mma_sp`), which is
itself checked against a plain matmul - a layout mistake there explains every failure
after it. Then every shipped variant of every pattern against its CPU twin
(`tvwsim.kernels.reference.matmul`, which reads the same buffers): a regular shape, a
ragged one and one with M < 8, under every scheduling policy plus a forced split, and
tw/tvw on a hand-made layout with an empty tile and pruned rows. The output is
NaN-poisoned before each launch, so an element no kernel writes fails the check.

The case inputs (`make_case_inputs`) need no GPU: the CPU tests build them too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tvwsim.kernels import build as kbuild
from tvwsim.kernels.device import KernelError
from tvwsim.kernels.launch import gemm
from tvwsim.kernels.launch_plan import tile_lengths
from tvwsim.kernels.probes import mma_probe, mma_sp_probe
from tvwsim.kernels.tile_work import tile_work

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec

REL_TOLERANCE = 1e-2
"""max |Y_gpu - Y_twin| / max |Y_twin| allowed. fp16 output rounding alone gives up to
2^-11 relative to an element, so a layout or indexing bug shows up orders of magnitude
above this while honest rounding stays far below."""

CHECK_SPARSITY = 0.75
"""Sparsity each pattern is checked at; fixed-sparsity patterns at their own (vw 0.5)."""


@dataclass(frozen=True)
class CheckCase:
    """One kernel correctness check: a variant, a GEMM shape and a scheduling policy."""

    pattern: str
    config: KernelConfig
    m: int
    n: int
    k: int
    policy: str
    seed: int = 0
    edge: bool = False
    """tw/tvw only: a hand-made layout with an empty tile and pruned rows."""
    block: int | None = None
    """bw only: the block side, one of `build.BW_BLOCKS` (each has its own cubin)."""

    @property
    def shape(self) -> str:
        return f"{self.m}x{self.n}x{self.k}" + (" edge" if self.edge else "")

    @property
    def name(self) -> str:
        """'pattern config', and ' b<block>' for bw."""
        block = f" b{self.block}" if self.block is not None else ""
        return f"{self.pattern} {self.config.name}{block}"


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: the largest relative error and whether it passed."""

    name: str
    """'pattern config' or 'mma.sp probe selector s'."""
    shape: str
    policy: str
    max_rel_error: float
    passed: bool
    note: str = ""


# Shapes: a regular one, a ragged one (M, N, K not multiples of anything) and a small
# one with M < 8 (one partial 16-byte token chunk).
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((256, 512, 512), (200, 333, 457), (5, 300, 200))


def check_cases(quick: bool = False, *, wgmma: bool = False) -> list[CheckCase]:
    """Every shipped variant x (shape, policy) pairs that use each policy at least once.

    Full: each variant runs the regular shape with `natural`, the ragged shape with
    `longest-first`, `split` and `forced-split`, and the small shape with `split`; tw/tvw
    add a hand-made edge layout. `split` cuts only tiles longer than the median, which a
    pattern with equal tiles (dense, vw) never has; `forced-split` (natural order, every
    task cut into up to three K pieces) makes every variant run its split-K path.
    Quick: the first variant of each pattern (and class) only. bw runs all of this once per compiled
    block side (`build.BW_BLOCKS`), the quick check included. `wgmma` (an sm_90 GPU) adds
    the warpgroup-MMA variants (`build.WGMMA_VARIANTS`), each with the same plan.
    """
    cases = []
    shipped = {p: list(cs) for p, cs in kbuild.VARIANTS.items()}
    firsts = {p: [cs[0]] for p, cs in kbuild.VARIANTS.items()}
    if wgmma:
        for pattern, configs in kbuild.WGMMA_VARIANTS.items():
            shipped[pattern] += configs
            firsts[pattern].append(configs[0])
    for pattern, configs in shipped.items():
        variants = [(c, b) for c in configs for b in kbuild.variant_blocks(pattern)]
        if quick:
            variants = [(c, b) for c, b in variants if c in firsts[pattern]]
        for i, (config, block) in enumerate(variants):
            plan = [
                (CHECK_SHAPES[0], "natural"),
                (CHECK_SHAPES[1], "longest-first"),
                (CHECK_SHAPES[1], "split"),
                (CHECK_SHAPES[1], "forced-split"),
                (CHECK_SHAPES[2], "split"),
            ]
            for j, ((m, n, k), policy) in enumerate(plan):
                cases.append(
                    CheckCase(pattern, config, m, n, k, policy, seed=100 * i + j, block=block)
                )
            if pattern_spec(pattern).tiled:
                cases.append(CheckCase(pattern, config, 70, 300, 300, "split", seed=7, edge=True))
    return cases


@dataclass(frozen=True)
class _EdgeLayout:
    """A hand-made TileLayout (duck-typed for tvwsim.kernels.formats.encode)."""

    tile_width: int
    rows: np.ndarray
    kept_k: tuple[np.ndarray, ...]


def _edge_encoding(case: CheckCase, weight: np.ndarray):
    """tw/tvw encoding with: rows pruned away (zero rows of YT), a tile with no kept K,
    a ragged last tile, and kept-K lists of uneven length (-1 padding)."""
    from tvwsim.kernels.formats import encode

    rng = np.random.default_rng(case.seed)
    g = case.config.bm
    nm = pattern_spec(case.pattern).nm
    rows = np.sort(rng.choice(case.n, size=min(3 * case.n // 4, 2 * g + g // 2), replace=False))
    tiles = -(-rows.size // g)
    kept = []
    for t in range(tiles):
        count = 0 if t == 1 else int(rng.integers(1, case.k))
        if nm is not None:
            count -= count % nm[1]  # whole n:m groups of the pruner's list
        kept.append(np.sort(rng.choice(case.k, size=count, replace=False)).astype(np.int32))
    mask = np.zeros((case.n, case.k), dtype=bool)
    for t, cols in enumerate(kept):
        tile_rows = rows[t * g : (t + 1) * g]
        if nm is not None:
            # n of every aligned m of the tile's list, per row.
            for r in tile_rows:
                groups = cols.reshape(-1, nm[1])
                pick = np.argsort(rng.random(groups.shape), axis=1)[:, : nm[0]]
                mask[r, np.take_along_axis(groups, pick, 1).ravel()] = True
        else:
            mask[np.ix_(tile_rows, cols)] = True
    layout = _EdgeLayout(g, rows.astype(np.int32), tuple(kept))
    return encode(weight, mask, case.pattern, case.config, layout=layout), mask


def make_case_inputs(case: CheckCase):
    """(encoded weight, X, schedule) of a check case (seeded: the same case, same data).

    The weight is the project's one synthetic weight (skewed rows and columns: uneven
    kept-K per tile), prepared by `prepare_weight` like every other caller's.
    """
    from tvwsim.kernels.prepare import prepare_weight, synthetic_weight

    from tvwsim.schedule import build_schedule

    weight = synthetic_weight(case.n, case.k, seed=case.seed)
    if case.edge:
        encoded, _ = _edge_encoding(case, weight)
        work = tile_work(encoded)
    else:
        sparsity = pattern_spec(case.pattern).sparsity_for(CHECK_SPARSITY)
        block = case.block if case.block is not None else 32
        prepared = prepare_weight(weight, case.pattern, sparsity, case.config, block=block)
        encoded, work = prepared.encoded, prepared.work
    # Another stream than the weight's: X must not repeat W's first draws.
    x = np.random.default_rng([case.seed, 1]).standard_normal((case.m, case.k))
    x = x.astype(np.float32)
    if case.policy == "forced-split":
        natural = build_schedule(work, case.m, "natural")
        return encoded, x, force_split(natural.tasks, case.config.bk)
    return encoded, x, build_schedule(work, case.m, case.policy)


def force_split(tasks: np.ndarray, bk: int, pieces: int = 3) -> np.ndarray:
    """Cut every task into up to `pieces` K ranges of whole stages (a raw tasks array).

    The pieces of one output tile then all add into the fp32 workspace: the split-K path
    of a kernel runs even when no policy would split its (equal) tiles.
    """
    rows = []
    for tile, block, lo, hi in np.asarray(tasks, dtype=np.int64):
        stages = (hi - lo) // bk
        cuts = np.unique(np.linspace(0, stages, min(pieces, max(stages, 1)) + 1).astype(int))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            rows.append((tile, block, lo + a * bk, lo + b * bk))
        if stages == 0:
            rows.append((tile, block, lo, hi))
    return np.array(rows, dtype=np.int32).reshape(-1, 4)


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref| over every element; inf if y has a non-finite element
    (an element no kernel wrote keeps the NaN poison)."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise InputError("y", f"shape {y.shape} differs from the reference's {ref.shape}")
    if not np.isfinite(y).all():
        return float("inf")
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-6)
    return float(np.abs(y - ref).max(initial=0.0) / scale)


def run_check(case: CheckCase, build_dir: Path | str | None = None) -> CheckResult:
    """Run one case on the GPU and compare every element with the CPU twin."""
    from tvwsim.kernels.reference import matmul

    encoded, x, schedule = make_case_inputs(case)
    y = gemm(encoded, x, schedule, build_dir=build_dir, poison=True)
    ref = matmul(x, encoded)
    err = relative_error(y, ref)
    note = "" if np.isfinite(err) else "non-finite output (unwritten or overflow)"
    tasks = np.asarray(getattr(schedule, "tasks", schedule), dtype=np.int64)
    whole = tile_lengths(encoded)[tasks[:, 0]]
    split = " (split tasks)" if ((tasks[:, 2] != 0) | (tasks[:, 3] != whole)).any() else ""
    return CheckResult(
        case.name,
        case.shape,
        case.policy + split,
        err,
        bool(err <= REL_TOLERANCE),
        note,
    )


def probe_cases(seed: int = 0, trials: int = 8) -> list[tuple[str, Callable[[], float]]]:
    """One-warp layout checks: (name, function returning the max relative error).

    Each sparse trial draws random fp16 values, a random legal 2:4 pattern per group
    (so every ordered nibble appears), random C, and garbage in the metadata lanes the
    selector does not read; silicon must equal `tvwsim.kernels.mma_sp` for both selectors.
    """
    from tvwsim.kernels import mma_sp

    rng = np.random.default_rng(seed)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]

    def sparse_trial(selector: int) -> float:
        worst = 0.0
        for _ in range(trials):
            a = np.zeros((16, 32), dtype=np.float16)
            mask = np.zeros((16, 32), dtype=bool)
            for r in range(16):
                for grp in range(8):
                    p, q = pairs[rng.integers(len(pairs))]
                    mask[r, 4 * grp + p] = mask[r, 4 * grp + q] = True
            a[mask] = rng.standard_normal(int(mask.sum())).astype(np.float16)
            a_regs, e_regs = mma_sp.pack_a_sparse(a, selector, mask=mask)
            unread = (np.arange(32) & 3) // 2 != selector
            e_regs = e_regs.copy()
            e_regs[unread] = rng.integers(0, 2**32, unread.sum(), dtype=np.uint32)
            b = rng.standard_normal((32, 8)).astype(np.float16)
            c = rng.standard_normal((16, 8)).astype(np.float32)
            b_regs, c_regs = mma_sp.pack_b(b), mma_sp.pack_c(c)
            want = mma_sp.mma_sp_m16n8k32(a_regs, b_regs, c_regs, e_regs, selector)
            got = mma_sp_probe(a_regs, b_regs, c_regs, e_regs, selector)
            # Check the emulation itself against a plain matmul: the probe pins silicon to
            # the emulation, and this pins the emulation to the math.
            plain = a.astype(np.float64) @ b.astype(np.float64) + c
            worst = max(
                worst,
                relative_error(mma_sp.unpack_d(got), mma_sp.unpack_d(want)),
                relative_error(mma_sp.unpack_d(want), plain),
            )
        return worst

    def dense_trial() -> float:
        worst = 0.0
        for _ in range(trials):
            a = rng.standard_normal((16, 16)).astype(np.float16)
            b = rng.standard_normal((16, 8)).astype(np.float16)
            c = rng.standard_normal((16, 8)).astype(np.float32)
            regs = (mma_sp.pack_a(a), mma_sp.pack_b(b), mma_sp.pack_c(c))
            got = mma_probe(*regs)
            want = mma_sp.mma_m16n8k16(*regs)
            worst = max(worst, relative_error(mma_sp.unpack_d(got), mma_sp.unpack_d(want)))
        return worst

    return [
        ("mma.sp probe selector 0", lambda: sparse_trial(0)),
        ("mma.sp probe selector 1", lambda: sparse_trial(1)),
        ("mma probe (dense)", dense_trial),
    ]


def wgmma_probe_cases(seed: int = 0, trials: int = 4) -> list[tuple[str, Callable[[], float]]]:
    """One-warpgroup wgmma layout checks (sm_90 only): one m64n256k16 and one wgmma.sp
    m64n256k32 per selector on a stage laid out exactly as the sm_90a kernels lay it out
    (`tvwsim.kernels.wgmma.probe_case`: random warpgroup, K step, values, 2:4 pairs, C
    and garbage in the metadata lanes a selector skips). Silicon must equal the emulation
    register for register, and the emulation the plain matrix math: one run settles the
    descriptors, both swizzle modes, the accumulator ownership and wgmma.sp's metadata."""
    from tvwsim.kernels.probes import wgmma_probe
    from tvwsim.kernels.wgmma import probe_case

    def trial(sparse: bool, selector: int) -> float:
        worst = 0.0
        for i in range(trials):
            case, plain = probe_case(sparse, seed + i, selector)
            want = case.expected()
            got = wgmma_probe(case)
            worst = max(worst, relative_error(got, want), relative_error(want, plain))
        return worst

    return [
        ("wgmma.sp probe selector 0", lambda: trial(True, 0)),
        ("wgmma.sp probe selector 1", lambda: trial(True, 1)),
        ("wgmma probe (dense)", lambda: trial(False, 0)),
    ]


PROBE_TOLERANCE = 1e-5
"""Probe D vs emulation: one instruction, fp32 accumulation of exact fp16 products; only
the order of the fp32 adds may differ."""


def run_probe(name: str, fn: Callable[[], float]) -> CheckResult:
    err = fn()
    if name.startswith("wgmma"):
        shape = "64x256x32" if ".sp" in name else "64x256x16"
    else:
        shape = "16x8x32" if "sp" in name else "16x8x16"
    return CheckResult(name, shape, "-", err, err <= PROBE_TOLERANCE)


def run_all_checks(
    quick: bool = False,
    build_dir: Path | str | None = None,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Probes first (a layout mistake there explains everything after), then kernels.
    On an sm_90 GPU the warpgroup probes and the sm_90a kernels (build.WGMMA_VARIANTS)
    are checked too."""
    from tvwsim.kernels.device import device_info

    hopper = device_info().arch in ("sm_90", kbuild.WGMMA_ARCH)
    results = []
    probes = probe_cases() + (wgmma_probe_cases() if hopper else [])
    for name, fn in probes:
        results.append(run_probe(name, fn))
        if progress:
            progress(results[-1])
    for case in check_cases(quick, wgmma=hopper):
        try:
            result = run_check(case, build_dir)
        except KernelError as err:  # a crashed kernel is a failed check, with its reason
            result = CheckResult(
                case.name,
                case.shape,
                case.policy,
                float("inf"),
                False,
                str(err)[:120],
            )
        if progress:
            progress(result)
        results.append(result)
    return results
