"""The picture of a pruned matrix: what each pattern keeps, and what 2:4 metadata says.

`tvwsim prune --plot FILE` draws it; the course's lab 3 uses it. One column per pattern:

- top: the kept weights' magnitudes |W| (pruned weights blank), so a student sees ew's
  scatter, bw's blocks, vw's two-in-every-four, tw's whole rows and K columns per tile;
- bottom, for the n:m patterns (vw, tvw): each kept weight coloured by its position
  (0..m-1) inside its group of m - exactly the 2-bit index the mma.sp metadata stores
  per kept value (`kernels/mma_sp.py`, docs/kernels.md). For vw the groups are aligned
  groups of 4 along K; for tvw they are groups of 4 consecutive entries of the tile's
  compacted kept-K list, so a position is relative to that list, not to K. Other
  patterns have no metadata; their bottom panel shows the tw/tvw tile of each kept
  weight (tiles of G surviving rows) or is left empty.

Only the top-left corner of a large matrix is drawn (`MAX_ROWS` x `MAX_COLS`): the
picture is for small matrices (`--shape 32,64`), where every weight is a visible cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tvwsim.errors import InputError
from tvwsim.io import atomic_output
from tvwsim.pattern_spec import pattern_spec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.figure import Figure
    from tvwsim.kernels.patterns import Pruned

MAX_ROWS = 64
MAX_COLS = 128


def nm_positions(pruned: Pruned) -> np.ndarray | None:
    """int8 N x K: each kept weight's position in its n:m group (-1 where pruned).

    None for a pattern without n:m metadata. vw: column % m; tvw: the entry's index in
    its tile's kept-K list, % m (the groups are cut from that list).
    """
    spec = pattern_spec(pruned.pattern)
    if spec.nm is None:
        return None
    m = spec.nm[1]
    mask = pruned.mask
    positions = np.full(mask.shape, -1, dtype=np.int8)
    if pruned.layout is None:
        cols = np.broadcast_to(np.arange(mask.shape[1]) % m, mask.shape)
        positions[mask] = cols[mask]
        return positions
    layout = pruned.layout
    g = layout.tile_width
    for t, kept in enumerate(layout.kept_k):
        rows = layout.rows[t * g : (t + 1) * g]
        where = np.ix_(rows, kept)
        index = np.broadcast_to(np.arange(len(kept)) % m, (len(rows), len(kept)))
        positions[where] = np.where(mask[where], index, -1)
    return positions


def tile_of(pruned: Pruned) -> np.ndarray | None:
    """int32 N x K: the tw/tvw tile of each kept weight (-1 where pruned); None otherwise."""
    if pruned.layout is None:
        return None
    layout = pruned.layout
    tiles = np.full(pruned.mask.shape, -1, dtype=np.int32)
    g = layout.tile_width
    for t in range(layout.n_tiles):
        rows = layout.rows[t * g : (t + 1) * g]
        tiles[rows, :] = t
    tiles[~pruned.mask] = -1
    return tiles


def pattern_figure(weight: np.ndarray, results: Sequence[Pruned]) -> Figure:
    """One column per pruned result of `weight`; a Figure not attached to pyplot.

    Axes come in pattern order, top row first: axes[i] is pattern i's |W| image, axes[n +
    i] its metadata (or tile) image. Each image's array is exactly the corner of
    `np.where(mask, |W|, nan)`, of `nm_positions` or of `tile_of` (nan where -1).
    """
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise InputError("weight", f"must be a 2-D matrix, got shape {weight.shape}")
    if not results:
        raise InputError("pattern", "give at least one pruned result to draw")
    rows, cols = min(weight.shape[0], MAX_ROWS), min(weight.shape[1], MAX_COLS)
    n = len(results)
    fig = Figure(figsize=(2.2 + 2.6 * n, 5.2), dpi=110, layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    magnitude = np.abs(weight[:rows, :cols].astype(np.float64))
    top = float(magnitude.max()) or 1.0
    positions_cmap = ListedColormap(colormaps["tab10"].colors[:4])
    for i, pruned in enumerate(results):
        if pruned.mask.shape != weight.shape:
            raise InputError("pattern", f"{pruned.pattern} mask has shape {pruned.mask.shape}")
        mask = pruned.mask[:rows, :cols]
        kept = np.where(mask, magnitude, np.nan)
        ax = axes[0, i]
        ax.imshow(kept, cmap="viridis", vmin=0, vmax=top, interpolation="nearest", aspect="auto")
        ax.set_title(
            f"{pruned.pattern}: {pruned.achieved_sparsity:.0%} pruned"
            + (f", {pruned.layout.n_tiles} tile(s)" if pruned.layout is not None else ""),
            fontsize=8,
        )
        below = axes[1, i]
        positions = nm_positions(pruned)
        if positions is not None:
            data = positions[:rows, :cols].astype(float)
            data[data < 0] = np.nan
            image = below.imshow(
                data,
                cmap=positions_cmap,
                norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], 4),
                interpolation="nearest",
                aspect="auto",
            )
            bar = fig.colorbar(image, ax=below, ticks=[0, 1, 2, 3], fraction=0.08)
            bar.set_label("position in group of 4 (metadata)", fontsize=7)
            below.set_title("2:4 metadata: kept value's position", fontsize=8)
        elif (tiles := tile_of(pruned)) is not None:
            data = tiles[:rows, :cols].astype(float)
            data[data < 0] = np.nan
            below.imshow(data, cmap="tab20", interpolation="nearest", aspect="auto")
            below.set_title("tile of each kept weight", fontsize=8)
        else:
            below.set_axis_off()
        for axis in (ax, below):
            axis.set_xlabel("K (input)", fontsize=7)
            axis.set_ylabel("N (output)", fontsize=7)
            axis.tick_params(labelsize=6)
    corner = "" if (rows, cols) == weight.shape else f" (top-left {rows} x {cols} shown)"
    fig.suptitle(
        f"what each pattern keeps of a {weight.shape[0]} x {weight.shape[1]} weight{corner}",
        fontsize=9,
    )
    return fig


def draw_patterns(weight: np.ndarray, results: Sequence[Pruned], path: str | Path) -> Path:
    """Write `pattern_figure(weight, results)` to `path` (.png, .svg, .pdf), whole or not."""
    path = Path(path)
    fig = pattern_figure(weight, results)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png")
    return path
