"""The `tvwsim` command line.

One module per command group registers its subcommands (`tvwsim/cli/simulate.py` for
`simulate` and `timeline`, `tvwsim/cli/hw.py` for `hw list` and `hw show`, ...); nothing
else imports this package. The modules import their heavy dependencies inside the
handlers, so `tvwsim --help` stays fast and never needs a GPU. An option name means one
thing in every command (`--pattern`, `--out FILE`, `--json`, `--no-progress`, ...;
tests/cli/test_options.py checks it).

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
    "tvwsim.cli.roofline",  # roofline
    "tvwsim.cli.hw",  # hw list / show
    "tvwsim.cli.model",  # model
    "tvwsim.cli.explore",  # explore, explore report
    "tvwsim.cli.kernels",  # kernels build / check / list
    "tvwsim.cli.core",  # core (one kernel's main loop, cycle by cycle)
    "tvwsim.cli.validate",  # validate, calibrate, compare
    "tvwsim.cli.traces",  # traces build, quality
    "tvwsim.cli.course",  # course build (the architecture labs, docs/course/)
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
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command know its full name ('tvwsim hw show') for its errors."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command_name=sub.prog)
                _name_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = getattr(args, "command_name", f"tvwsim {args.command}")
    try:
        from tvwsim.sim.engine import exact_engine

        with exact_engine(getattr(args, "exact", False)):
            return int(args.func(args) or 0)
    except InputError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`tvwsim ... | head`): not an error of ours. Point stdout at
        # devnull so the interpreter's final flush does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        name = err.filename if err.filename is not None else ""
        print(f"{command}: error: {name}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
