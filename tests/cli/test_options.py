"""What a new user meets first: `--help` of every command, option names that mean one
thing everywhere, and the progress-bar convention."""

from __future__ import annotations

import argparse
import io
from collections import defaultdict

import pytest

from tvwsim.cli import build_parser, main
from tvwsim.cli.progress import progress_bar


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every command and subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands(build_parser())]


def _kind(action: argparse.Action) -> str:
    """What an option takes: a flag, a folder, a file, or a value."""
    if action.nargs == 0:
        return "flag"
    metavar = str(action.metavar or "")
    if "DIR" in metavar:
        return "folder"
    if "FILE" in metavar or "." in metavar:
        return "file"
    return "value"


def test_every_option_name_means_one_thing_in_every_command():
    seen: dict[str, set] = defaultdict(set)
    where: dict[str, list] = defaultdict(list)
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    seen[option].add((_kind(action), type(action).__name__))
                    where[option].append(" ".join(path))
    mixed = {option: sorted(kinds) for option, kinds in seen.items() if len(kinds) > 1}
    assert mixed == {}, {option: where[option] for option in mixed}
    # The names the issue found with two meanings now have one each.
    assert "--patterns" not in seen and "--quiet" not in seen and "--tile" in seen
    assert {k for k, _ in seen["--json"]} == {"flag"}
    assert {k for k, _ in seen["--out"]} == {"file"}
    assert {k for k, _ in seen["--plot"]} == {"file"}
    assert {k for k, _ in seen["--build-dir"]} == {"folder"}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "tvwsim")
def test_every_help_prints_and_escapes_nothing(capsys, path):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tvwsim")
    assert "%%" not in out and "%(" not in out


def test_traces_build_help_states_its_sparsities(capsys):
    with pytest.raises(SystemExit):
        main(["traces", "build", "--help"])
    assert "87.5 and 93.75% (tw/tvw" in " ".join(capsys.readouterr().out.split())


def test_timeline_help_offers_only_single_patterns(capsys):
    with pytest.raises(SystemExit):
        main(["timeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--pattern P one of dense, ew, bw, vw, tw, tvw" in text
    assert "or all" not in text and "comma list" not in text


def test_the_tile_option_is_the_tile_width_wherever_it_appears():
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if "--tile" in action.option_strings:
                assert action.metavar == "G" and "tile width" in action.help, path


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_only_when_enabled(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with progress_bar(3, "gemm") as step:
        for name in ("a", "b", "c"):
            step(name)
    assert log.getvalue() == ""  # not a terminal: disable=None turns tqdm off
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress_bar(3, "gemm", enabled=False) as step:
        step("a")
    assert terminal.getvalue() == ""  # --no-progress
    with progress_bar(3, "gemm") as step:
        step("layer7")
    assert "0/3 [" in terminal.getvalue() and "gemm/s" in terminal.getvalue()


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["hw", "show", "a100", "--set", "sm_count=x"], "tvwsim hw show: error: --set sm_count"),
        (["kernels", "build", "--pattern", "xw"], "tvwsim kernels build: error: --pattern"),
        (["simulate", "--hw", "a100", "--shape", "1,1", "--pattern", "tw"], "tvwsim simulate:"),
    ],
)
def test_errors_name_the_full_command(capsys, argv, prefix):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(prefix) and len(err.splitlines()) == 1


def test_quality_takes_set_like_every_simulating_command() -> None:
    """`quality`'s sim speedup column runs on the effective hardware, --set included."""
    from tvwsim.cli import build_parser
    from tvwsim.cli.traces import _speedup_fn

    args = build_parser().parse_args(["quality", "--set", "sm_count=216"])
    assert args.hw == "a100"
    _, note = _speedup_fn(args)
    assert "simulated on a100 (sm_count=216) at 4096 tokens" in note
