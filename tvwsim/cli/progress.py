"""The one progress-bar convention of the command line.

A long loop shows a tqdm bar on stderr. `disable=None` turns it off when stderr is not a
terminal, so logs, pipes and tests get no carriage-return noise; `--no-progress` turns
it off on a terminal too. Each step can name what it just finished.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(
    total: int, unit: str, *, enabled: bool = True, desc: str | None = None
) -> Iterator[Callable[[str], None]]:
    """Yield `step(label)`, which advances the bar by one and shows `label` beside it."""
    from tqdm import tqdm

    with tqdm(
        total=total,
        unit=unit,
        desc=desc,
        file=sys.stderr,
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
    ) as bar:

        def step(label: str = "") -> None:
            if label:
                bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        yield step


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """`--no-progress`: the same name and help on every command with a bar."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar on stderr (there is none anyway when stderr is not a terminal)",
    )
