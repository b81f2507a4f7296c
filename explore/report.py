"""What an exploration found: best points, speedup heatmaps, sensitivity, fastest pattern.

Every table here is a pandas DataFrame computed from the store's rows, and every picture
is drawn from exactly that table (the tests compare the pictures' arrays with it):

- `best_points`: the rows with the highest speedup over dense;
- `heatmap_table`: a pattern's mean speedup over two varied fields (the other varied
  fields averaged out; a field with more than `MAX_LEVELS` distinct values, as in a
  sampled design, is cut into `BINS` equal-count bins labelled by their mean);
- `sensitivity`: per pattern and varied field, the mean speedup at each level of the
  field, its lowest and highest: how far that field alone moves the speedup (the
  tornado chart draws the swing, largest first);
- `fastest_table`: per cell of two fields, the pattern with the highest mean speedup,
  dense included (1.0) - where each pattern is the one to build.

Each pattern is read at one target sparsity (`sparsity`, default the spec's first);
dense and vw at their fixed 0 and 0.5. Where a spec has several configs or policies the
row of each (unit, pattern) is the fastest of them: the kernel a designer would pick.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tvwsim.explore.store import REPORT_DIR, read_manifest, read_rows

from tvwsim.errors import InputError
from tvwsim.io import atomic_output
from tvwsim.pattern_spec import BASELINE_PATTERN, PATTERN_NAMES, PATTERNS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

MAX_LEVELS = 12
"""A field with more distinct values than this is binned (sampled designs)."""
BINS = 6


def choose(rows: pd.DataFrame, workload: str, sparsity: float) -> pd.DataFrame:
    """One row per (point, pattern) of `workload`: each pattern at `sparsity` (fixed-
    sparsity patterns at their own), the fastest config and policy."""
    picked = rows[rows["workload"] == workload]
    keep = np.zeros(len(picked), dtype=bool)
    for pattern in picked["pattern"].unique():
        fixed = PATTERNS[pattern].fixed_sparsity
        target = fixed if fixed is not None else sparsity
        keep |= (picked["pattern"] == pattern).to_numpy() & np.isclose(
            picked["sparsity"].to_numpy(), target
        )
    picked = picked[keep]
    fastest = picked.sort_values("time_us", kind="stable").drop_duplicates(["point", "pattern"])
    dense = fastest[fastest["pattern"] == BASELINE_PATTERN].set_index("point")["time_us"]
    fastest = fastest.assign(
        speedup=dense.reindex(fastest["point"]).to_numpy() / fastest["time_us"]
    )
    return fastest.sort_values(["point_index", "pattern"], kind="stable").reset_index(drop=True)


def levels(values: pd.Series) -> pd.Series:
    """The level of each value: itself, or its bin's mean when there are too many."""
    import pandas as pd

    if values.nunique() <= MAX_LEVELS or values.dtype == bool or values.dtype == object:
        return values
    bins = pd.qcut(values.rank(method="first"), BINS, labels=False)
    means = values.groupby(bins).transform("mean")
    return means.round(4) if means.dtype.kind == "f" else means


def best_points(rows: pd.DataFrame, varied: Sequence[str], top: int = 10) -> pd.DataFrame:
    """The `top` sparse rows by speedup, with what makes them: fields, pattern, time."""
    sparse = rows[rows["pattern"] != BASELINE_PATTERN]
    columns = ["workload", "pattern", "sparsity", *varied, "time_us", "speedup", "bottleneck"]
    return sparse.sort_values("speedup", ascending=False, kind="stable")[columns].head(top)


def heatmap_table(chosen: pd.DataFrame, x: str, y: str, pattern: str) -> pd.DataFrame:
    """Mean speedup of `pattern` with rows = levels of `y`, columns = levels of `x`."""
    rows = chosen[chosen["pattern"] == pattern]
    table = rows.assign(_x=levels(rows[x]), _y=levels(rows[y]))
    return table.pivot_table(index="_y", columns="_x", values="speedup", aggfunc="mean")


def sensitivity(chosen: pd.DataFrame, varied: Sequence[str]) -> pd.DataFrame:
    """Per (pattern, field): lowest and highest mean speedup over the field's levels."""
    import pandas as pd

    out = []
    for pattern in [p for p in PATTERN_NAMES if p in set(chosen["pattern"])]:
        if pattern == BASELINE_PATTERN:
            continue
        rows = chosen[chosen["pattern"] == pattern]
        for field in varied:
            means = rows.groupby(levels(rows[field]).to_numpy())["speedup"].mean()
            out.append(
                {
                    "pattern": pattern,
                    "field": field,
                    "low": float(means.min()),
                    "high": float(means.max()),
                    "at_low": means.idxmin(),
                    "at_high": means.idxmax(),
                    "swing": float(means.max() - means.min()),
                }
            )
    return pd.DataFrame(
        out, columns=["pattern", "field", "low", "high", "at_low", "at_high", "swing"]
    )


def fastest_table(chosen: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per cell of (`y`, `x`) levels, the pattern with the highest mean speedup."""
    table = chosen.assign(_x=levels(chosen[x]), _y=levels(chosen[y]))
    means = table.groupby(["_y", "_x", "pattern"])["speedup"].mean().reset_index()
    order = {p: i for i, p in enumerate(PATTERN_NAMES)}
    means["_order"] = means["pattern"].map(order)
    best = means.sort_values(["speedup", "_order"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates(["_y", "_x"])
    return best.pivot(index="_y", columns="_x", values="pattern")


# =====================================================================================
# Pictures
# =====================================================================================
def _tick(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def heatmap_figure(chosen: pd.DataFrame, x: str, y: str, title: str) -> Figure:
    """One panel per sparse pattern: its mean speedup over (x, y), cells annotated.

    Each panel's image array is `heatmap_table(chosen, x, y, pattern)` (rows = y levels
    from the bottom); the panel's title is the pattern's name.
    """
    from matplotlib.figure import Figure

    patterns = [p for p in PATTERN_NAMES if p in set(chosen["pattern"]) and p != BASELINE_PATTERN]
    tables = {p: heatmap_table(chosen, x, y, p) for p in patterns}
    top = max(1.0, max(float(np.nanmax(t.to_numpy())) for t in tables.values()))
    low = min(1.0, min(float(np.nanmin(t.to_numpy())) for t in tables.values()))
    cols = min(3, len(patterns))
    rows = -(-len(patterns) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 0.6), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    from matplotlib.colors import TwoSlopeNorm

    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(low, 0.999), vmax=max(top, 1.001))
    image = None
    for ax, pattern in zip(axes, patterns, strict=False):
        table = tables[pattern]
        data = table.to_numpy(dtype=float)
        image = ax.imshow(data, origin="lower", aspect="auto", cmap="RdBu", norm=norm)
        ax.set_xticks(range(data.shape[1]), [_tick(v) for v in table.columns], rotation=45)
        ax.set_yticks(range(data.shape[0]), [_tick(v) for v in table.index])
        for (i, j), value in np.ndenumerate(data):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(pattern, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(y, fontsize=8)
    for ax in axes[len(patterns) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(patterns)]), label="speedup over dense", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def tornado_figure(table: pd.DataFrame, title: str) -> Figure:
    """One panel per pattern: a bar per field from its lowest to its highest mean
    speedup, the largest swing on top (bar i of a panel is row i of the pattern's
    rows of `table` sorted by swing, largest first)."""
    from matplotlib.figure import Figure

    patterns = list(dict.fromkeys(table["pattern"]))
    cols = min(3, len(patterns))
    rows = -(-len(patterns) // cols)
    fig = Figure(
        figsize=(4.4 * cols, 0.5 * table["field"].nunique() * rows + 1.6 * rows),
        dpi=110,
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, pattern in zip(axes, patterns, strict=False):
        part = table[table["pattern"] == pattern].sort_values(
            "swing", ascending=False, kind="stable"
        )
        ys = np.arange(len(part))[::-1]
        ax.barh(ys, part["high"] - part["low"], left=part["low"], color="tab:blue", alpha=0.75)
        # A field that does not move this pattern has a bar of width 0: mark where it sits.
        ax.plot(part["low"], ys, "|", color="tab:blue", markersize=10)
        ax.set_yticks(ys, list(part["field"]), fontsize=7)
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(pattern, fontsize=9)
        ax.set_xlabel("mean speedup over dense", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(patterns) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig


def fastest_figure(table: pd.DataFrame, x: str, y: str, title: str) -> Figure:
    """The fastest pattern per cell: colour = pattern (index in PATTERN_NAMES, the
    image's array), the name written in each cell."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    codes = table.map(lambda p: PATTERN_NAMES.index(p) if isinstance(p, str) else np.nan)
    data = codes.to_numpy(dtype=float)
    colours = ListedColormap([colormaps["tab10"](i) for i in range(len(PATTERN_NAMES))])
    norm = BoundaryNorm(np.arange(len(PATTERN_NAMES) + 1) - 0.5, len(PATTERN_NAMES))
    fig = Figure(
        figsize=(max(4.5, 0.6 * data.shape[1] + 2.5), max(3.2, 0.45 * data.shape[0] + 2)),
        dpi=110,
        layout="constrained",
    )
    ax = fig.subplots()
    ax.imshow(data, origin="lower", aspect="auto", cmap=colours, norm=norm)
    for (i, j), name in np.ndenumerate(table.to_numpy()):
        if isinstance(name, str):
            ax.text(j, i, name, ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(range(data.shape[1]), [_tick(v) for v in table.columns], rotation=45)
    ax.set_yticks(range(data.shape[0]), [_tick(v) for v in table.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


def slug(text: str) -> str:
    """A file-name-safe form of a workload label."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


# =====================================================================================
# The report
# =====================================================================================
def report(
    directory: str | Path,
    *,
    top: int = 10,
    fields: Sequence[str] | None = None,
    sparsity: float | None = None,
    plot_dir: str | Path | None = None,
) -> tuple[str, list[Path]]:
    """The text report of a store and the pictures written: (text, paths).

    `fields`: the two varied fields of the heatmaps and the fastest-pattern map (default
    the first two the spec varies); `plot_dir` default DIR/_report.
    """
    import pandas as pd

    manifest = read_manifest(directory)
    rows = read_rows(directory)
    varied = list(manifest["varied"])
    if fields is None:
        fields = varied[:2]
    for field in fields:
        if field not in varied:
            raise InputError(
                "--fields", f"{field!r} is not varied here; varied: {', '.join(varied) or 'none'}"
            )
    if len(fields) == 1:
        fields = [fields[0], fields[0]]
    targets = [s for s in manifest["sparsities"]]
    if sparsity is None:
        sparsity = targets[0]
    elif not any(np.isclose(sparsity, t) for t in targets):
        raise InputError(
            "--sparsity", f"got {sparsity:g}; this store has {', '.join(f'{t:g}' for t in targets)}"
        )
    out_dir = Path(plot_dir) if plot_dir is not None else Path(directory) / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    lines = [
        f"{manifest['spec']}: {len(rows)} of {manifest['rows']} rows, {rows['point'].nunique()} "
        f"of {manifest['points']} hardware points on {manifest['base']}; varied: "
        f"{', '.join(varied) or 'nothing'}",
        "",
        f"best {top} points (speedup over dense at the same hardware point):",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lines.append(
            best_points(rows, varied, top).to_string(index=False, float_format=lambda v: f"{v:.4g}")
        )
    written: list[Path] = []
    for workload in manifest["workloads"]:
        if workload not in set(rows["workload"]):
            continue
        chosen = choose(rows, workload, sparsity)
        title = f"{manifest['spec']}: {workload}, sparsity {sparsity:g} (vw 0.5)"
        if varied:
            table = sensitivity(chosen, varied)
            lines += [
                "",
                f"{workload}: how far each field moves the mean speedup (sparsity {sparsity:g})",
            ]
            lines.append(
                table.sort_values(["pattern", "swing"], ascending=[True, False]).to_string(
                    index=False, float_format=lambda v: f"{v:.3f}"
                )
            )
            name = slug(workload)
            x, y = fields
            written.append(
                _save(heatmap_figure(chosen, x, y, title), out_dir / f"heatmap-{name}.png")
            )
            written.append(_save(tornado_figure(table, title), out_dir / f"tornado-{name}.png"))
            winners = fastest_table(chosen, x, y)
            written.append(
                _save(
                    fastest_figure(winners, x, y, f"fastest pattern\n{title}"),
                    out_dir / f"fastest-{name}.png",
                )
            )
    if written:
        lines += ["", *(f"wrote {p}" for p in written)]
    return "\n".join(lines), written
