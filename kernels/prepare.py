"""The one path from a weight to its schedule: prune, encode, tile work, schedule.

`prepare_weight` is what every caller (simulate, the whole-model simulator, sweeps,
benchmarks) uses, so the weight the model sees is the one the kernels would read.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from tvwsim.kernels.tile_work import regular_tile_work, tile_work

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec
from tvwsim.schedule import Schedule, TileWork, build_schedule, check_positive_int


def config_for(pattern: str, config: KernelConfig | None = None) -> KernelConfig:
    """`config`, or the pattern's default kernel; checks the mma kind fits the pattern."""
    want = pattern_spec(pattern, argument="--pattern").mma
    if config is None:
        return default_config(pattern)
    if config.mma != want:
        raise InputError(
            "--tile", f"{pattern} runs mma={want} kernels; config {config.name} has {config.mma}"
        )
    return config


def random_weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Seeded i.i.d. standard normal float32 N x K weight (same seed, same matrix)."""
    return np.random.default_rng(seed).standard_normal((n, k), dtype=np.float32)


def prune_and_encode(
    weight: np.ndarray, pattern: str, sparsity: float, config: KernelConfig, block: int = 32
) -> TileWork:
    """Prune `weight` with the pattern (importance |W|), encode it, and return its work."""
    from tvwsim.kernels.formats import encode
    from tvwsim.kernels.patterns import prune_with_layout

    pruned = prune_with_layout(weight, pattern, sparsity, tile=config.bm, block=block)
    encoded = encode(weight, pruned.mask, pattern, config, layout=pruned.layout, block=block)
    return tile_work(encoded, kept_weights=int(np.count_nonzero(pruned.mask)))


@lru_cache(maxsize=64)
def _random_work(
    n: int, k: int, pattern: str, sparsity: float, config: KernelConfig, seed: int, block: int
) -> TileWork:
    if pattern in ("dense", "vw"):
        # Their structure does not depend on the values; prune only to check the sparsity.
        from tvwsim.kernels.patterns import prune_with_layout

        prune_with_layout(np.ones((1, 4), np.float32), pattern, sparsity)
        return regular_tile_work(pattern, n, k, config)
    return prune_and_encode(random_weight(n, k, seed), pattern, sparsity, config, block)


def schedule_for_shape(
    m: int,
    n: int,
    k: int,
    pattern: str,
    sparsity: float,
    *,
    config: KernelConfig | None = None,
    policy: str = "natural",
    seed: int = 0,
    weights: np.ndarray | None = None,
    block: int = 32,
    progress: Callable[[str], None] | None = None,
) -> Schedule:
    """Schedule of an M x N x K GEMM whose N x K weight is pruned with `pattern`.

    Without `weights`, the weight is seeded i.i.d. Gaussian (`random_weight(n, k, seed)`),
    so equal (shape, pattern, sparsity, config, seed) give identical schedules - identical
    layers of a network then share one schedule and one cached simulation. dense and vw
    do not depend on the values at all (every tile is alike) and skip materialising W.
    """
    m, n, k = (check_positive_int("--shape", v) for v in (m, n, k))
    config = config_for(pattern, config)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError("--seed", f"must be a non-negative integer, got {seed!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise InputError("--sparsity", f"must be a number in [0, 1), got {sparsity!r}")
    if progress is not None:
        progress(f"pruning and encoding {pattern} {n}x{k}")
    if weights is None:
        work = _random_work(n, k, pattern, float(sparsity), config, int(seed), block)
    else:
        w = np.asarray(weights)
        if w.shape != (n, k):
            raise InputError(
                "--weights", f"has shape {w.shape}; --shape says W is N x K = ({n}, {k})"
            )
        if pattern in ("dense", "vw"):
            from tvwsim.kernels.patterns import prune_with_layout

            kept = int(np.count_nonzero(prune_with_layout(w, pattern, sparsity).mask))
            work = regular_tile_work(pattern, n, k, config, kept)
        else:
            work = prune_and_encode(w, pattern, sparsity, config, block)
    return build_schedule(work, m, policy)
