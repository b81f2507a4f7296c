"""The `tvwsim` command line.

Each area of the project registers its own subcommands from a `commands` module
(`kernels/commands.py`, `sim/commands.py`, ...) so that a newcomer finds a command next to
the code it drives. Those modules import their heavy dependencies inside the handlers, so
`tvwsim --help` stays fast and never needs a GPU.

Bad input raises `tvwsim.errors.InputError` (or an OSError for files); here it becomes one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tvwsim.errors import InputError

# Modules that define `register(subparsers)`. Order is the order of `tvwsim --help`.
COMMAND_MODULES: list[str] = [
    "tvwsim.cli.prune",  # prune
    "tvwsim.cli.simulate",  # simulate, timeline
    "tvwsim.cli.hw",  # hw list / show
    "tvwsim.cli.model",  # model
    "tvwsim.cli.kernels",  # kernels build / check / list
    "tvwsim.cli.validate",  # validate, calibrate, compare
    "tvwsim.cli.traces",  # traces build, quality
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvwsim",
        description=(
            "Model and measure sparse GEMM (dense, ew, bw, vw, tw, tvw) on GPUs: "
            "prune, encode, simulate on any hardware preset, and validate on silicon."
        ),
    )
    from tvwsim import __version__

    parser.add_argument("--version", action="version", version=f"tvwsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"tvwsim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`tvwsim ... | head`): not an error of ours. Point stdout at
        # devnull so the interpreter's final flush does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        name = err.filename if err.filename is not None else ""
        print(f"tvwsim {args.command}: error: {name}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tvwsim {args.command}: interrupted", file=sys.stderr)
        return 130
