"""`tvwsim prune`: prune a weight matrix with one pattern or all, and show what each keeps.

    tvwsim prune --pattern all --sparsity 0.75
    tvwsim prune --weights W.npy --pattern tw --sparsity 0.8 --tile 64 --out mask.npy
    tvwsim prune --shape 32,64 --tile 16 --pattern all --sparsity 0.75 --plot patterns.png

Without --weights a seeded synthetic matrix is pruned (`tvwsim.kernels.prepare.synthetic_weight`,
default 3072 x 768: the first FFN layer of BERT-base). The table shows, per pattern, the
achieved sparsity, how many output features keep any weight, and for tw/tvw the number
of tiles and the kept-K per tile (min / median / max; for tvw before 2:4, i.e. the
length of the K list a tile gathers) - the skew a tile-wise kernel has to balance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvwsim.cli.args import parse_int, parse_patterns
from tvwsim.errors import InputError

DEFAULT_SHAPE = (3072, 768)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune",
        help="prune a weight matrix with a sparsity pattern and report what it keeps",
        description=(
            "Prune an N x K weight (out x in) with dense, ew, bw, vw, tw, tvw or all of "
            "them, and print the achieved sparsity, kept rows, tiles, kept-K per tile and "
            "importance retained (sum of |W| kept / sum of |W|, or of --importance)."
        ),
    )
    p.add_argument("--weights", metavar="W.npy", help="2-D float .npy (default: synthetic)")
    p.add_argument(
        "--importance", metavar="S.npy", help="non-negative scores of W's shape (default |W|)"
    )
    p.add_argument(
        "--pattern",
        required=True,
        metavar="P",
        help="dense, ew, bw, vw, tw, tvw, a comma list of them, or all (those the sparsity "
        "allows: dense needs 0, vw 0.5, tvw >= 0.5)",
    )
    p.add_argument("--sparsity", required=True, metavar="S", help="fraction removed, [0, 1)")
    p.add_argument("--tile", default="128", metavar="G", help="tw/tvw tile width (128)")
    p.add_argument("--block", default="32", metavar="B", help="bw block side (32)")
    p.add_argument(
        "--row-fraction",
        metavar="R",
        help="tw/tvw: fraction of rows pruned (default: an equal split with the K step)",
    )
    p.add_argument(
        "--shape",
        metavar="N,K",
        help=f"synthetic weight shape (default {DEFAULT_SHAPE[0]},{DEFAULT_SHAPE[1]})",
    )
    p.add_argument("--seed", metavar="N", help="seed of the synthetic weight (default 0)")
    p.add_argument("--out", metavar="FILE.npy", help="write the bool N x K mask (one pattern only)")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="draw what each pattern keeps and the 2:4 metadata positions (.png, .svg, .pdf); "
        "for a small matrix, e.g. --shape 32,64 --tile 16",
    )
    p.set_defaults(func=run_prune)


# Names the library's errors use, and the options they came from.
_OPTIONS = {"weight": "--weights", "row_fraction": "--row-fraction"}
_OPTIONS.update(
    (name, f"--{name}")
    for name in ("pattern", "sparsity", "tile", "block", "shape", "seed", "weights")
)
_OPTIONS.update(importance="--importance", out="--out", plot="--plot")


def run_prune(args: argparse.Namespace) -> int:
    """Every error names the option it came from, as in every other command."""
    try:
        return _run_prune(args)
    except InputError as err:
        option = _OPTIONS.get(err.argument)
        if option is None:
            raise
        raise InputError(option, err.problem) from None


def _run_prune(args: argparse.Namespace) -> int:
    import numpy as np

    from tvwsim.kernels import patterns
    from tvwsim.kernels.prepare import synthetic_weight
    from tvwsim.pattern_spec import pattern_spec

    sparsity = _parse_float("sparsity", args.sparsity)
    tile = parse_int("tile", args.tile)
    block = parse_int("block", args.block)
    row_fraction = (
        None if args.row_fraction is None else _parse_float("row_fraction", args.row_fraction)
    )
    asked = parse_patterns("--pattern", args.pattern)
    if args.out is not None and len(asked) > 1:
        raise InputError("--out", "writes one mask; use it with a single --pattern")
    if args.out is not None and not Path(args.out).parent.is_dir():
        raise InputError("--out", f"folder {Path(args.out).parent} does not exist")
    if args.plot is not None:
        if Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InputError("--plot", f"must end in .png, .svg or .pdf, got {args.plot!r}")
        if not Path(args.plot).parent.is_dir():
            raise InputError("--plot", f"folder {Path(args.plot).parent} does not exist")

    if args.weights is not None:
        for name, value in (("shape", args.shape), ("seed", args.seed)):
            if value is not None:
                raise InputError(name, "describes the synthetic weight; not with --weights")
        weight = _load_matrix("weights", args.weights)
        source = args.weights
    else:
        n_rows, n_cols = _parse_shape(args.shape) if args.shape is not None else DEFAULT_SHAPE
        seed = 0 if args.seed is None else parse_int("seed", args.seed, minimum=0)
        weight = synthetic_weight(n_rows, n_cols, seed=seed)
        source = f"synthetic, seed {seed}"
    importance = None
    if args.importance is not None:
        importance = _load_matrix("importance", args.importance)

    if len(asked) > 1:
        chosen, skipped = _patterns_for(sparsity, asked)
    else:
        chosen, skipped = asked, []
    results = []
    for name in chosen:
        results.append(
            patterns.prune_with_layout(
                weight,
                name,
                sparsity,
                tile=tile,
                block=block,
                importance=importance,
                row_fraction=row_fraction if pattern_spec(name).tiled else None,
            )
        )

    score = np.abs(weight, dtype=np.float64) if importance is None else importance
    total_score = float(score.sum(dtype=np.float64))
    n_rows, n_cols = weight.shape
    print(
        f"weight {n_rows} x {n_cols} ({source}), target sparsity {sparsity:g}, "
        f"tile {tile}, block {block}"
    )
    print(_table(results, score, total_score))
    for name in dict.fromkeys(r.pattern for r in results):
        spec = pattern_spec(name)
        if spec.tiled and spec.nm is not None:
            nm = ":".join(map(str, spec.nm))
            print(f"note: {name} kept-K is before {nm} (the K list a tile gathers; half is stored)")
    for name, why in skipped:
        print(f"skipped {name}: {why}")

    if args.out is not None:
        _save_mask(args.out, results[0].mask)
        print(f"mask written to {args.out}")
    if args.plot is not None:
        from tvwsim.kernels.pictures import draw_patterns

        draw_patterns(weight, results, args.plot)
        print(f"picture written to {args.plot}")
    return 0


def _patterns_for(sparsity: float, names: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The patterns of `names` the target allows, and why the others are left out."""
    from tvwsim.pattern_spec import pattern_spec

    chosen, skipped = [], []
    for name in names:
        spec = pattern_spec(name)
        if spec.accepts(sparsity):
            chosen.append(name)
        else:
            skipped.append((name, f"needs a sparsity {spec.allowed()}"))
    return chosen, skipped


def _table(results: list, score, total_score: float) -> str:
    import numpy as np

    header = (
        "pattern",
        "achieved",
        "kept rows",
        "tiles",
        "kept-K min",
        "median",
        "max",
        "importance kept",
    )
    lines = []
    for r in results:
        kept_rows = int(np.count_nonzero(r.mask.any(axis=1)))
        retained = float(score[r.mask].sum(dtype=np.float64)) / total_score if total_score else 1.0
        if r.layout is not None and r.layout.n_tiles:
            counts = r.layout.kept_k_counts()
            tiles = (
                str(r.layout.n_tiles),
                str(int(counts.min())),
                f"{float(np.median(counts)):g}",
                str(int(counts.max())),
            )
        elif r.layout is not None:
            tiles = ("0", "-", "-", "-")
        else:
            tiles = ("-", "-", "-", "-")
        lines.append(
            (r.pattern, f"{r.achieved_sparsity:.4f}", str(kept_rows), *tiles, f"{retained:.4f}")
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *lines]
    )


# -- argument parsing: every problem is one InputError naming the argument -------------------


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(name, f"must be a number, got {text!r}") from None


def _parse_shape(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise InputError("shape", f"must be N,K (two positive integers), got {text!r}")
    return parse_int("shape", parts[0].strip()), parse_int("shape", parts[1].strip())


def _load_matrix(name: str, path: str):
    """One array from a .npy file; anything unreadable is an InputError naming `name`."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(name, f"no such file: {path}") from None
    except (OSError, ValueError, EOFError) as err:
        raise InputError(name, f"cannot read {path} as a .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        array.close()  # an .npz archive: several arrays, which one would be meant?
        raise InputError(name, f"{path} holds an .npz archive; give a .npy with one array")
    return array


def _save_mask(path: str, mask) -> None:
    """Write the mask whole or not at all (tvwsim.io), with the normal file mode."""
    import numpy as np

    from tvwsim.io import atomic_output

    target = Path(path)
    # Through a file object: np.save given a name would add '.npy' to one without it.
    with atomic_output(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, mask)
