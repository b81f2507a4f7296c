"""Pin Baidu DeepBench's GEMM timings as small text extracts (run by hand, rarely).

DeepBench publishes its results only as .xlsx workbooks. tvwsim keeps no workbook and
reads none at run time: this script reads the few sheets that fit the row schema out of a
local copy of the DeepBench repository, once, and writes one CSV per sheet under
traces/published/deepbench/. Each CSV starts with `# key: value` lines that pin where the
numbers came from (repository, commit, file, sheet, the commit that published them, the
benchmark code that produced them and what that code does) and then holds the sheet's
numbers, unchanged. `python -m tvwsim.validate.published` turns the CSVs into rows; a
test checks the committed rows are exactly what the CSVs give, so the two cannot drift.

How to run it (git and openpyxl are needed; openpyxl is not a tvwsim dependency):

    pip install openpyxl                      # into the dev venv, by hand
    git clone --bare https://github.com/baidu-research/DeepBench deepbench.git
    python -m tvwsim.validate.published_extract deepbench.git
    python -m tvwsim.validate.published       # rewrite the rows from the new extracts

The script refuses a copy whose HEAD is not `PINNED_COMMIT`, and refuses to run if the
benchmark source that produced a sheet is not the version read for `READINGS` below:
those statements (compute type, padding, repeats) were read from that code by a person,
and a different version would need a new reading, not a silent rebuild.

Why the history walk (`numbers_commit`): a workbook is rewritten whenever any of its
sheets changes, so the commit that last touched the file is not always the one whose
measurement run produced the GEMM numbers (P100: the file changed in 2018 for RNN
results; its GEMM numbers are those of 2017-08-07). The oldest commit from which the
section's numbers are unchanged is the one whose date and code the rows cite.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tvwsim.errors import InputError

REPOSITORY = "baidu-research/DeepBench"
URL = "https://github.com/baidu-research/DeepBench"
PINNED_COMMIT = "da81ba7820739e2e506dc27f382d15be5479f98f"
"""The snapshot every extract was read from (HEAD of master, merged 2020-08-11)."""
LICENCE = "Apache-2.0 (the repository's LICENSE covers code and results)"

_TIMING = {
    "timing_method": "host wall clock (std::chrono::steady_clock) around a loop of "
    "back-to-back calls on one stream, cudaDeviceSynchronize before and after the loop",
    "timing_warmup": "1",
    "timing_statistic": "mean per call, truncated to a whole microsecond",
    "timing_flush": "none: the same operands every call, so they stay in L2 when they fit",
}

# What the benchmark code does, read by hand from the named version of the source.
READINGS: dict[str, dict[str, str]] = {
    # gemm_bench.cu at 30c5115 (2019-10-07), "half" precision in training mode, built
    # with CUDA > 8 so USE_TENSOR_CORES is on; PAD_KERNELS defaults to 1.
    "gemm-2019": {
        **_TIMING,
        "implementation": "cublas",
        "pattern": "dense",
        "dtype": "fp16",
        "kernel": "cublasGemmEx, algorithm CUBLAS_GEMM_DFALT_TENSOR_OP, handle math mode "
        "CUBLAS_TENSOR_OP_MATH",
        "operand_types": "A, B, C: CUDA_R_16F",
        "compute_type": "CUDA_R_16F",
        "accumulate": "fp16: the code asks for compute type CUDA_R_16F, although the "
        "sheet's precision cell says 32-bit addition",
        "pad_multiple": "8",
        "padding": "each dimension cuBLAS needs aligned for tensor cores is rounded up to a "
        "multiple of 8 before timing (NN and TN: M and K; NT: M and N; TT: all three); "
        "the sheet lists the shape before padding",
        "repeats": "400",
        "alpha_beta": "an int 1 where cuBLAS reads a half: a tiny non-zero subnormal, so "
        "C is read as well as written",
        "operand_values": "uniform floats in (0, 1] converted to 16-bit integers, so the "
        "fp16 bit patterns are 0x0000 (a rare 0x0001): the operands are zeros",
    },
    # gemm_bench.cu at 7b75e76 (2017-06-28), "half" precision on a Pascal GPU, CUDA 8.
    "gemm-2017": {
        **_TIMING,
        "implementation": "cublas",
        "pattern": "dense",
        "dtype": "fp16",
        "kernel": "cublasGemmEx, algorithm CUBLAS_GEMM_DFALT",
        "operand_types": "A, B, C: CUDA_R_16F",
        "compute_type": "CUDA_R_32F",
        "accumulate": "fp32 (fp16 storage, fp32 multiply and add; no tensor cores)",
        "pad_multiple": "0",
        "padding": "none",
        "repeats": "max(ceil(1e11 / (M*K*N)), 10), the product taken in 32-bit int",
        "alpha_beta": "an int 1 where cuBLAS reads a float: a tiny non-zero subnormal, "
        "so C is read as well as written",
        "operand_values": "uniform floats in (0, 1] converted to 16-bit integers, so the "
        "fp16 bit patterns are 0x0000 (a rare 0x0001): the operands are zeros",
    },
    # sparse_bench.cu at 7b75e76 (2017-06-28), fp32, CUDA 8.
    "sparse-2017": {
        **_TIMING,
        "implementation": "cusparse-csr",
        "pattern": "ew",
        "dtype": "fp32",
        "kernel": "cusparseScsrmm (cusparseScsrmv when DeepBench N is 1); the CSR matrix "
        "is built by cusparseSdense2csr before timing",
        "operand_types": "A (sparse, CSR), B, C: fp32",
        "compute_type": "fp32",
        "accumulate": "fp32",
        "pad_multiple": "0",
        "padding": "none",
        "repeats": "max(ceil(1e11 / (M*K*N)), 10), the product taken in 32-bit int",
        "alpha_beta": "alpha 1, beta 0",
        "operand_values": "A: uniform floats in (0, 1], each one below the sparsity set to "
        "zero (so the kept fraction is 1 - sparsity in expectation, not exactly); B: "
        "uniform floats in (0, 1]",
        "dense_time": "cublasSgemm on the same A as a dense fp32 matrix (alpha 1/K, beta "
        "1), timed the same way; kept in the extract, not converted",
    },
}
"""Keyed by reading name; `Sheet.reading` picks one, and it is copied into the header."""


@dataclass(frozen=True)
class Sheet:
    """One sheet section to extract, and the facts about its GPU and code."""

    name: str  # extract file stem
    gpu_key: str  # rows file: deepbench-<gpu_key>.jsonl
    file: str
    sheet: str
    section: str  # "dense" or "sparse"
    arch: str
    compute_capability: str
    sm_count: int
    code: str  # benchmark source path
    code_commit: str  # the version READINGS[reading] was read from
    reading: str
    notes: tuple[str, ...] = field(default=())


SHEETS: tuple[Sheet, ...] = (
    Sheet(
        "v100-fp16",
        "v100",
        "results/train/DeepBench_NV_V100.xlsx",
        "Results - FP16 ip, Mixed math",
        "dense",
        "sm_70",
        "7.0",
        80,
        "code/nvidia/gemm_bench.cu",
        "30c51150869ee217f150ef5f31dc69241ed23b49",
        "gemm-2019",
        ("the Specs sheet names a DGX-1, whose V100s are the SXM2 part",),
    ),
    Sheet(
        "t4-fp16",
        "t4",
        "results/train/DeepBench_NV_T4.xlsx",
        "Results - FP16 ip, Mixed math",
        "dense",
        "sm_75",
        "7.5",
        40,
        "code/nvidia/gemm_bench.cu",
        "30c51150869ee217f150ef5f31dc69241ed23b49",
        "gemm-2019",
        (
            "the Specs sheet's last line names a DGX-1, which holds no T4 (and its CPU "
            "line names a Xeon Gold 6140, which a DGX-1 does not have): read it as left "
            "over from the V100 sheet, not as the system",
        ),
    ),
    Sheet(
        "p100-fp16",
        "p100",
        "results/train/DeepBench_NV_P100.xlsx",
        "Results - Psuedo FP16",
        "dense",
        "sm_60",
        "6.0",
        56,
        "code/nvidia/gemm_bench.cu",
        "7b75e76ba0fa60e67a1f4c11ea5ff9381072eb67",
        "gemm-2017",
        ("the sheet does not say whether the P100 was the PCIe or the SXM2 part",),
    ),
    Sheet(
        "1080ti-sparse",
        "1080ti",
        "results/inference/server/DeepBench_NV_1080Ti.xlsx",
        "Results - Mixed Precision",
        "sparse",
        "sm_61",
        "6.1",
        28,
        "code/nvidia/sparse_bench.cu",
        "7b75e76ba0fa60e67a1f4c11ea5ff9381072eb67",
        "sparse-2017",
    ),
    Sheet(
        "titanx-pascal-sparse",
        "titanx-pascal",
        "results/inference/server/DeepBench_NV_TitanX_Pascal.xlsx",
        "Results - Mixed Precision",
        "sparse",
        "sm_61",
        "6.1",
        28,
        "code/nvidia/sparse_bench.cu",
        "7b75e76ba0fa60e67a1f4c11ea5ff9381072eb67",
        "sparse-2017",
    ),
    Sheet(
        "titanxp-sparse",
        "titanxp",
        "results/inference/server/DeepBench_NV_TitanXp.xlsx",
        "Results - Mixed Precision",
        "sparse",
        "sm_61",
        "6.1",
        30,
        "code/nvidia/sparse_bench.cu",
        "7b75e76ba0fa60e67a1f4c11ea5ff9381072eb67",
        "sparse-2017",
    ),
)

DENSE_COLUMNS = (
    "row",
    "application",
    "M",
    "N",
    "K",
    "a_transpose",
    "b_transpose",
    "note",
    "time_ms",
    "teraflops",
)
SPARSE_COLUMNS = (
    "row",
    "M",
    "N",
    "K",
    "a_transpose",
    "b_transpose",
    "sparsity",
    "sparse_time_ms",
    "dense_time_ms",
    "sparse_teraflops",
)
_SECTION_TITLE = {
    "dense": "Dense Matrix Multiplication",
    "sparse": "Sparse Matrix Multiplication",
}


def _ms(value: Any, where: str) -> str:
    """A sheet time as text with three decimals: the benchmark printed whole microseconds."""
    if not isinstance(value, int | float) or value <= 0:
        raise InputError("time_ms", f"{where}: {value!r} is not a positive time")
    if abs(value * 1000 - round(value * 1000)) > 1e-6:
        raise InputError("time_ms", f"{where}: {value!r} ms is not a whole microsecond")
    return f"{value:.3f}"


def section_records(
    cells: Iterable[Sequence[Any]], section: str, where: str
) -> list[dict[str, str]]:
    """The records of one section of a sheet, from its rows of cell values (row 1 first).

    The section starts after the row whose first cell is its title and ends at the next
    row with a first cell (the next section); blank rows inside it are skipped. A data
    row whose cells do not parse is an InputError naming the sheet row: a changed layout
    must stop the build, not drop rows.
    """
    title = _SECTION_TITLE[section]
    records: list[dict[str, str]] = []
    inside = False
    for number, row in enumerate(cells, start=1):
        row = tuple(row) + (None,) * max(0, 13 - len(tuple(row)))
        if row[0] == title:
            inside = True
            continue
        if not inside:
            continue
        if row[0] is not None:
            break
        if all(v is None for v in row):
            continue
        here = f"{where} row {number}"
        m, n, k, a_t, b_t = row[2:7]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (m, n, k)):
            raise InputError("M/N/K", f"{here}: {row[2:5]!r} is not three positive integers")
        if a_t not in ("N", "T") or b_t not in ("N", "T"):
            raise InputError("transpose", f"{here}: {a_t!r}, {b_t!r} are not N/T")
        if section == "dense":
            records.append(
                {
                    "row": str(number),
                    "application": "" if row[1] is None else str(row[1]),
                    "M": str(m),
                    "N": str(n),
                    "K": str(k),
                    "a_transpose": a_t,
                    "b_transpose": b_t,
                    "note": "" if row[7] is None else str(row[7]),
                    "time_ms": _ms(row[8], here),
                    "teraflops": repr(float(row[9])),
                }
            )
        else:
            sparsity = row[7]
            if not isinstance(sparsity, float) or not 0 < sparsity < 1:
                raise InputError("sparsity", f"{here}: {sparsity!r} is not in (0, 1)")
            if row[9] is None and row[10] is None:
                continue  # a shape the sheet lists but did not time (T4's sparse section)
            records.append(
                {
                    "row": str(number),
                    "M": str(m),
                    "N": str(n),
                    "K": str(k),
                    "a_transpose": a_t,
                    "b_transpose": b_t,
                    "sparsity": repr(sparsity),
                    "sparse_time_ms": _ms(row[9], here),
                    "dense_time_ms": _ms(row[10], here),
                    "sparse_teraflops": repr(float(row[11])),
                }
            )
    if not records:
        raise InputError("sheet", f"{where}: no {title!r} rows")
    return records


def specs(cells: Iterable[Sequence[Any]]) -> list[tuple[str, str]]:
    """(key, value) of a Specs sheet, in its order; a key with no value keeps ''."""
    out = []
    for row in cells:
        row = tuple(row) + (None, None)
        if row[0] is None:
            continue
        value = row[1]
        out.append((str(row[0]).strip(), "" if value is None else str(value).strip()))
    return out


# ---- reading the snapshot (git + openpyxl) ----


def _git(git_dir: Path, *args: str) -> bytes:
    done = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise InputError("snapshot", f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def _workbook(git_dir: Path, commit: str, path: str):
    import openpyxl  # only this script needs it: see the module docstring

    data = _git(git_dir, "show", f"{commit}:{path}")
    with warnings.catch_warnings():
        # The workbooks carry Excel extensions openpyxl does not read (formatting only).
        warnings.simplefilter("ignore", UserWarning)
        return openpyxl.load_workbook(io.BytesIO(data), data_only=True)


def _sheet_cells(workbook, title: str) -> list[tuple]:
    if title not in workbook.sheetnames:
        raise InputError("sheet", f"no sheet {title!r} (has {workbook.sheetnames})")
    return [tuple(r) for r in workbook[title].iter_rows(values_only=True)]


def _numbers(records: list[dict[str, str]]) -> list[tuple]:
    """A section's numbers without sheet row numbers (rows move when sheets are edited)."""
    return [tuple(v for k, v in r.items() if k != "row") for r in records]


def numbers_commit(git_dir: Path, sheet: Sheet, records: list[dict[str, str]]) -> str:
    """The oldest commit from which the section's numbers are those of the snapshot."""
    history = _git(git_dir, "log", "--format=%H", PINNED_COMMIT, "--", sheet.file)
    oldest = None
    for commit in history.decode().split():
        try:
            cells = _sheet_cells(_workbook(git_dir, commit, sheet.file), sheet.sheet)
            theirs = section_records(cells, sheet.section, f"{sheet.file}@{commit[:7]}")
        except InputError:
            break
        if _numbers(theirs) != _numbers(records):
            break
        oldest = commit
    if oldest is None:
        raise InputError("snapshot", f"{sheet.file}: its history does not reach the pin")
    return oldest


def _utc(git_dir: Path, commit: str) -> str:
    text = _git(git_dir, "log", "-1", "--format=%cI", commit).decode().strip()
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def extract_text(git_dir: Path, sheet: Sheet) -> tuple[str, int]:
    """The CSV text of one extract (header lines, then the section's records), and its
    number of records."""
    where = f"{sheet.file} [{sheet.sheet}]"
    workbook = _workbook(git_dir, PINNED_COMMIT, sheet.file)
    cells = _sheet_cells(workbook, sheet.sheet)
    records = section_records(cells, sheet.section, where)
    spec = specs(_sheet_cells(workbook, "Specs"))
    first = numbers_commit(git_dir, sheet, records)
    code_at = _git(git_dir, "log", "-1", "--format=%H", first, "--", sheet.code).decode().strip()
    if code_at != sheet.code_commit:
        raise InputError(
            "snapshot",
            f"{where}: produced by {sheet.code} at {code_at[:7]}, but READINGS describe "
            f"{sheet.code_commit[:7]}: read the new code before rebuilding",
        )
    precision = "; ".join(str(r[1]) for r in cells[:2] if len(r) > 1 and r[1] is not None)
    header = {
        "source": "DeepBench",
        "repository": REPOSITORY,
        "url": URL,
        "licence": LICENCE,
        "commit": PINNED_COMMIT,
        "file": sheet.file,
        "file_commit": _git(git_dir, "log", "-1", "--format=%H", PINNED_COMMIT, "--", sheet.file)
        .decode()
        .strip(),
        "sheet": sheet.sheet,
        "section": sheet.section,
        "numbers_commit": first,
        "numbers_date": _utc(git_dir, first),
        "code": sheet.code,
        "code_commit": sheet.code_commit,
        "stated_precision": precision,
        "gpu_key": sheet.gpu_key,
        "arch": sheet.arch,
        "compute_capability": sheet.compute_capability,
        "sm_count": str(sheet.sm_count),
        **READINGS[sheet.reading],
    }
    lines = [
        "## DeepBench timings pinned by python -m tvwsim.validate.published_extract, and",
        "## turned into rows by python -m tvwsim.validate.published. Not edited by hand.",
    ]
    lines += [f"# {key}: {value}" for key, value in header.items()]
    lines += [f"# spec: {key} = {value}".rstrip() for key, value in spec]
    lines += [f"# note: {note}" for note in sheet.notes]
    out = io.StringIO()
    columns = DENSE_COLUMNS if sheet.section == "dense" else SPARSE_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return "\n".join(lines) + "\n" + out.getvalue(), len(records)


def main(argv: Sequence[str] | None = None) -> int:
    from tvwsim.validate.published import EXTRACT_DIR

    from tvwsim.io import write_atomic

    parser = argparse.ArgumentParser(prog="python -m tvwsim.validate.published_extract")
    parser.add_argument("snapshot", type=Path, help="git dir of a DeepBench clone")
    parser.add_argument("--out", type=Path, default=EXTRACT_DIR, help="extract folder")
    args = parser.parse_args(argv)
    try:
        head = _git(args.snapshot, "rev-parse", "HEAD").decode().strip()
        if head != PINNED_COMMIT:
            raise InputError("snapshot", f"HEAD is {head}; the pin is {PINNED_COMMIT}")
        for sheet in SHEETS:
            text, count = extract_text(args.snapshot, sheet)
            write_atomic(args.out / f"{sheet.name}.csv", text)
            print(f"{sheet.name}.csv: {count} records")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
