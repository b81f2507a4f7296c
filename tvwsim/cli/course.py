"""`tvwsim course build`: the student notebooks of the architecture labs (docs/course/).

    tvwsim course build                       # docs/course/lab*.py -> docs/course/student/
    tvwsim course build --src DIR --out-dir DIR [--instructor]

The labs are kept as jupytext percent-format scripts (`# %%` cells), so a change to a lab
is a readable diff and CI can execute it. Each holds the instructor's answers in cells
tagged `solution`, right after the `exercise` cell a student fills in. A teacher hands
out notebooks without those answers, so the build writes one `.ipynb` per lab with
every `solution` cell removed and no outputs (a student runs it and sees their own
results). `--instructor` keeps the solutions, for a teacher who wants `.ipynb` files
rather than opening the scripts through jupytext.

jupytext and nbformat come with the `course` (and `test`) extra; without them the command
says which extra to install.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvwsim.errors import InputError

SOLUTION_TAG = "solution"
"""Cells with this tag hold the instructor's answer; the student build drops them."""
EXERCISE_TAG = "exercise"
"""The cell a student edits: a stub the solution cell (instructor version) replaces."""
EXPERIMENT_TAG = "experiment"
"""A cell that runs an experiment; a 'Predict first' question must come before it."""
LAB_GLOB = "lab*.py"
DEFAULT_SRC = Path("docs") / "course"


def register(subparsers: argparse._SubParsersAction) -> None:
    course = subparsers.add_parser(
        "course",
        help="the architecture-course labs: build the student notebooks",
        description="The labs of docs/course/ (jupytext scripts) as Jupyter notebooks.",
    )
    actions = course.add_subparsers(dest="course_action", metavar="ACTION")
    course.set_defaults(func=lambda args: _usage(course))
    build = actions.add_parser(
        "build",
        help="write one .ipynb per lab, without the instructor's solution cells",
        description=(
            "Read every lab*.py (jupytext percent format) in --src and write LABNAME.ipynb "
            "to --out-dir, with every cell tagged 'solution' removed and no outputs. "
            "Needs the course extra (pip install -e '.[course]')."
        ),
    )
    build.add_argument(
        "--src", metavar="DIR", help=f"folder of the lab scripts (default {DEFAULT_SRC})"
    )
    build.add_argument(
        "--out-dir", metavar="DIR", help="where the notebooks go (default: SRC/student)"
    )
    build.add_argument(
        "--instructor", action="store_true", help="keep the solution cells (a teacher's copy)"
    )
    build.set_defaults(func=_build)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _build(args: argparse.Namespace) -> int:
    src = Path(args.src) if args.src is not None else DEFAULT_SRC
    out = Path(args.out_dir) if args.out_dir is not None else src / "student"
    written = build_notebooks(src, out, instructor=args.instructor)
    kind = "instructor" if args.instructor else "student"
    for path in written:
        print(f"{kind} notebook: {path}")
    return 0


def _jupytext():
    try:
        import jupytext
        import nbformat
    except ImportError:
        raise InputError(
            "course", "needs jupytext and nbformat: pip install -e '.[course]'"
        ) from None
    return jupytext, nbformat


def lab_sources(src: str | Path) -> list[Path]:
    """The lab scripts of `src`, in lab order (lab1_..., lab2_...)."""
    src = Path(src)
    if not src.is_dir():
        raise InputError("--src", f"folder {src} does not exist")
    labs = sorted(src.glob(LAB_GLOB))
    if not labs:
        raise InputError("--src", f"{src} holds no {LAB_GLOB} lab scripts")
    return labs


def read_lab(path: str | Path):
    """One lab script as an nbformat notebook (every cell, solutions included)."""
    jupytext, _ = _jupytext()
    return jupytext.read(Path(path), fmt="py:percent")


def cell_tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def student_notebook(notebook):
    """A copy of `notebook` without its solution cells and without outputs."""
    _, nbformat = _jupytext()
    student = nbformat.from_dict(notebook)
    student.cells = [c for c in student.cells if SOLUTION_TAG not in cell_tags(c)]
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    student.metadata.pop("jupytext", None)
    student.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    return student


def build_notebooks(src: str | Path, out: str | Path, *, instructor: bool = False) -> list[Path]:
    """Write one .ipynb per lab of `src` into `out`; returns the paths written.

    The student version (default) has no `solution` cell; `instructor=True` keeps them.
    Each file is written whole or not at all (`tvwsim.io.atomic_output`).
    """
    from tvwsim.io import atomic_output

    _, nbformat = _jupytext()
    labs = lab_sources(src)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("--out-dir", f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for lab in labs:
        notebook = read_lab(lab)
        if instructor:
            notebook = nbformat.from_dict(notebook)
            notebook.metadata.pop("jupytext", None)
        else:
            notebook = student_notebook(notebook)
        target = out / f"{lab.stem}.ipynb"
        with atomic_output(target) as tmp:
            nbformat.write(notebook, str(tmp))
        written.append(target)
    return written
