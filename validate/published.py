"""Published silicon timings as measurement rows: traces/published/.

The model has to be calibrated against more GPUs than tvwsim has run on. Others have
timed GEMMs on real GPUs and published the numbers; this module turns those numbers
into rows of our own schema (`tvwsim.validate.rows.MeasurementRow`), with
`origin: "published"` and a `provenance` block that says exactly which cell of which
file at which commit each row comes from, so they load with `read_measurements` beside
rows we measured and can never be mistaken for them.

The source today is Baidu DeepBench (traces/published/README.md). Its sheets are pinned
as small CSV extracts (`deepbench/*.csv`, written by `tvwsim.validate.published_extract`
from a copy of the repository); everything here is pure: extract text in, rows out, no
network. `python -m tvwsim.validate.published` rewrites the rows files from the
extracts, `--check` only compares, `--list` names the shipped files.

The shape convention. tvwsim computes Y (M x N) = X (M x K) @ W.T, W being N x K: M
counts tokens, N output features, K the reduction. DeepBench times C (M x N) =
op(A) (M x K) op(B) (K x N) in cuBLAS's column-major terms, A being the weight and its N
the minibatch. So our M is DeepBench's N, our N is DeepBench's M and K stays K; C, read
row-major, is our Y. Where the benchmark padded a dimension before timing (its tensor
core path rounds some dimensions up to a multiple of 8), our shape is the padded one: the
row describes the GEMM the GPU ran, and its provenance keeps the shape the sheet lists.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from pathlib import Path
from typing import Any

from tvwsim.validate.points import VENDOR
from tvwsim.validate.rows import SCHEMA_VERSION, check_row

from tvwsim.errors import InputError
from tvwsim.io import write_atomic

PUBLISHED_DIR = Path(str(files("tvwsim.traces") / "published"))
"""The shipped rows files (`*.jsonl`) and their README."""
EXTRACT_DIR = PUBLISHED_DIR / "deepbench"
"""The pinned DeepBench extracts (`*.csv`) the rows are built from."""

MAPPING = (
    "M = DeepBench N (its minibatch), N = DeepBench M, K = DeepBench K, of the shape as "
    "timed (after the benchmark's padding)"
)

_HEADER_KEYS = (
    "repository",
    "url",
    "licence",
    "commit",
    "file",
    "file_commit",
    "sheet",
    "section",
    "numbers_commit",
    "numbers_date",
    "code",
    "code_commit",
    "stated_precision",
    "gpu_key",
    "arch",
    "compute_capability",
    "sm_count",
    "implementation",
    "pattern",
    "dtype",
    "kernel",
    "operand_types",
    "compute_type",
    "accumulate",
    "pad_multiple",
    "padding",
    "repeats",
    "alpha_beta",
    "operand_values",
    "timing_method",
    "timing_warmup",
    "timing_statistic",
    "timing_flush",
)
_COLUMNS = {
    "dense": ("row", "M", "N", "K", "a_transpose", "b_transpose", "time_ms", "teraflops"),
    "sparse": ("row", "M", "N", "K", "a_transpose", "b_transpose", "sparsity")
    + ("sparse_time_ms", "dense_time_ms", "sparse_teraflops"),
}
_LIBRARY = {"cublas": "cuBLAS", "cusparse-csr": "cuSPARSE"}


# ---- the unit and shape conversions ----


def ms_to_us(text: Any, argument: str = "time_ms") -> float:
    """Milliseconds as written in a sheet ('0.020') -> microseconds (20.0), exactly.

    Decimal arithmetic, not float: '0.071' must give 71.0, not 70.99999999999999. DeepBench
    printed whole microseconds, so anything finer than 0.001 ms is refused as a misread.
    """
    if not isinstance(text, str):
        raise InputError(argument, f"{text!r} is not the text of a number of milliseconds")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InputError(argument, f"{text!r} is not a number of milliseconds") from None
    if not value.is_finite() or value <= 0:
        raise InputError(argument, f"{text!r} ms is not a positive time")
    us = value * 1000
    if us != us.to_integral_value():
        raise InputError(argument, f"{text!r} ms is not a whole number of microseconds")
    return float(us)


def _dimension(value: Any, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(argument, f"{value!r} is not a positive integer")
    return value


def _transpose(value: Any, argument: str) -> str:
    if value not in ("N", "T"):
        raise InputError(argument, f"{value!r}; allowed: N, T")
    return value


def _round_up(value: int, multiple: int) -> int:
    return value if multiple <= 1 else -(-value // multiple) * multiple


def timed_shape(
    m: int, n: int, k: int, a_transpose: str, b_transpose: str, pad_multiple: int = 0
) -> tuple[int, int, int]:
    """DeepBench's (M, N, K) as its benchmark timed them, in DeepBench's names.

    With `pad_multiple` 8 (gemm_bench.cu from 2019-10-07, fp16 on tensor cores), the
    dimensions cuBLAS needs aligned are rounded up first: M and K when B is not
    transposed (NN, TN), M and N for NT, all three for TT. 0 or 1: no padding.
    """
    m, n, k = (_dimension(v, a) for v, a in ((m, "m"), (n, "n"), (k, "k")))
    a_transpose = _transpose(a_transpose, "a_transpose")
    b_transpose = _transpose(b_transpose, "b_transpose")
    if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 0:
        raise InputError("pad_multiple", f"{pad_multiple!r} is not a non-negative integer")
    if b_transpose == "N":
        return _round_up(m, pad_multiple), n, _round_up(k, pad_multiple)
    if a_transpose == "N":
        return _round_up(m, pad_multiple), _round_up(n, pad_multiple), k
    return tuple(_round_up(v, pad_multiple) for v in (m, n, k))


def tvwsim_shape(
    m: int, n: int, k: int, a_transpose: str, b_transpose: str, pad_multiple: int = 0
) -> tuple[int, int, int]:
    """Our (M, N, K) of a DeepBench GEMM: (its N, its M, its K) of the timed shape."""
    tm, tn, tk = timed_shape(m, n, k, a_transpose, b_transpose, pad_multiple)
    return tn, tm, tk


def operand_layout(a_transpose: str, b_transpose: str) -> dict[str, str]:
    """How X and W lay in memory in our terms (cuBLAS is column-major).

    A not transposed is an M x K column-major array, i.e. our W stored N-contiguous
    (K x N row-major); A transposed is our W as we store it (N x K, K contiguous). B not
    transposed is X as torch.nn.Linear stores it (M x K, K contiguous); B transposed is X
    stored M-contiguous, the XT (K x M) our kernels read. TN is therefore torch.nn.Linear's
    layout and TT ours (`tvwsim.sim.library.Layout`).
    """
    a_transpose = _transpose(a_transpose, "a_transpose")
    b_transpose = _transpose(b_transpose, "b_transpose")
    return {
        "x": "M x K, K contiguous" if b_transpose == "N" else "K x M, M contiguous",
        "w": "N x K, K contiguous" if a_transpose == "T" else "K x N, N contiguous",
        "y": "M x N, N contiguous",
    }


# ---- extracts ----


@dataclass(frozen=True)
class Extract:
    """One pinned sheet section: its header facts and its records, as text."""

    name: str
    header: dict[str, str]
    specs: dict[str, str]
    notes: tuple[str, ...]
    records: tuple[dict[str, str], ...]


def parse_extract(text: str, name: str) -> Extract:
    """An extract's `# key: value` header and CSV records; InputError naming what is wrong."""
    header: dict[str, str] = {}
    spec: dict[str, str] = {}
    notes: list[str] = []
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("##"):
            continue  # a comment
        if not line.startswith("#"):
            body.append(line)
            continue
        key, sep, value = line[1:].strip().partition(": ")
        if not sep:
            raise InputError("extract", f"{name}: header line {line!r} is not '# key: value'")
        if key == "spec":
            spec_key, _, spec_value = value.partition("=")
            spec[spec_key.strip()] = spec_value.strip()
        elif key == "note":
            notes.append(value)
        elif key in header:
            raise InputError("extract", f"{name}: header key {key!r} appears twice")
        else:
            header[key] = value
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise InputError("extract", f"{name}: header lacks {', '.join(missing)}")
    for key in ("GPU Model", "CUDA Version", "Nvidia Driver"):
        if not spec.get(key):
            raise InputError("extract", f"{name}: no 'spec: {key} = ...' line")
    section = header["section"]
    if section not in _COLUMNS:
        raise InputError("section", f"{name}: {section!r}; allowed: {', '.join(_COLUMNS)}")
    records = tuple(csv.DictReader(io.StringIO("\n".join(body))))
    if not records:
        raise InputError("extract", f"{name}: no records")
    absent = [c for c in _COLUMNS[section] if c not in records[0]]
    if absent:
        raise InputError("extract", f"{name}: no column {', '.join(absent)}")
    return Extract(name, header, spec, tuple(notes), records)


def read_extract(path: str | Path) -> Extract:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("extract", f"{path}: no such file") from None
    return parse_extract(text, path.stem)


def _int(text: str, argument: str, where: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InputError(argument, f"{where}: {text!r} is not an integer") from None
    return value


def _float(text: str, argument: str, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InputError(argument, f"{where}: {text!r} is not a number") from None


def _row(extract: Extract, record: dict[str, str]) -> dict:
    """One measurement row from one record (see the module docstring for the mapping)."""
    h = extract.header
    where = f"{extract.name} row {record.get('row')}"
    sheet_row = _int(record["row"], "row", where)
    m, n, k = (_int(record[c], c, where) for c in ("M", "N", "K"))
    a_t, b_t = record["a_transpose"], record["b_transpose"]
    pad = _int(h["pad_multiple"], "pad_multiple", extract.name)
    try:
        tm, tn, tk = timed_shape(m, n, k, a_t, b_t, pad)
    except InputError as err:
        raise InputError(err.argument, f"{where}: {err.problem}") from None
    M, N, K = tn, tm, tk
    sparse = h["section"] == "sparse"
    time_column = "sparse_time_ms" if sparse else "time_ms"
    try:
        us = ms_to_us(record[time_column], time_column)
    except InputError as err:
        raise InputError(err.argument, f"{where}: {err.problem}") from None
    original: dict[str, Any] = {"M": m, "N": n, "K": k, "a_transpose": a_t, "b_transpose": b_t}
    if sparse:
        sparsity = _float(record["sparsity"], "sparsity", where)
        if not 0 < sparsity < 1:
            raise InputError("sparsity", f"{where}: {sparsity!r} is not in (0, 1)")
        original |= {
            "sparsity": sparsity,
            "sparse_time_ms": record["sparse_time_ms"],
            "dense_time_ms": record["dense_time_ms"],
            "sparse_teraflops": _float(record["sparse_teraflops"], "sparse_teraflops", where),
        }
        kernel = "cusparseScsrmv" if n == 1 else "cusparseScsrmm"
    else:
        sparsity = 0.0
        original |= {
            "time_ms": record["time_ms"],
            "teraflops": _float(record["teraflops"], "teraflops", where),
        }
        for column in ("application", "note"):
            if record.get(column):
                original[column] = record[column]
        kernel = h["kernel"]
    implementation = h["implementation"]
    repeats = h["repeats"]
    provenance: dict[str, Any] = {
        "source": "DeepBench",
        **{key: h[key] for key in ("repository", "url", "licence", "commit", "file")},
        "file_commit": h["file_commit"],
        "sheet": h["sheet"],
        "section": h["section"],
        "row": sheet_row,
        "extract": f"deepbench/{extract.name}.csv",
        "numbers_commit": h["numbers_commit"],
        "code": h["code"],
        "code_commit": h["code_commit"],
        "gpu": extract.specs["GPU Model"],
        "library": _LIBRARY.get(implementation, implementation),
        "library_version": f"as shipped with CUDA {extract.specs['CUDA Version']}",
        "precision": {
            "stated": h["stated_precision"],
            "dtype": h["dtype"],
            "operand_types": h["operand_types"],
            "compute_type": h["compute_type"],
            "accumulate": h["accumulate"],
        },
        "deepbench": original,
        "timed_shape": {"M": tm, "N": tn, "K": tk},
        "padding": h["padding"],
        "mapping": MAPPING,
        "layout": operand_layout(a_t, b_t),
        "alpha_beta": h["alpha_beta"],
        "operand_values": h["operand_values"],
        "specs": dict(extract.specs),
    }
    if kernel != h["kernel"]:
        provenance["kernel_note"] = h["kernel"]
    if sparse:
        provenance["achieved_sparsity"] = (
            "the expected value: each weight element was zeroed with this probability, "
            "and the source does not publish the kept count"
        )
        provenance["dense_time"] = h.get("dense_time", "")
    if extract.notes:
        provenance["notes"] = list(extract.notes)
    return {
        "schema": SCHEMA_VERSION,
        "point": (
            f"deepbench/{extract.name}/{implementation}/{h['pattern']}/{M}x{N}x{K}"
            f"/s{sparsity:g}/{VENDOR}/{VENDOR}/{a_t}{b_t}"
        ),
        "origin": "published",
        "implementation": implementation,
        "device": {
            "name": extract.specs["GPU Model"],
            "arch": h["arch"],
            "compute_capability": h["compute_capability"],
            "sm_count": _int(h["sm_count"], "sm_count", extract.name),
            "cuda_runtime_version": extract.specs["CUDA Version"],
            "driver_version": extract.specs["Nvidia Driver"],
            "source": "DeepBench's Specs sheet (name, CUDA, driver); arch, compute "
            "capability and SM count are those of the GPU model",
            "errors": [],
        },
        "date": h["numbers_date"],
        "kernel": kernel,
        "config": VENDOR,
        "mma": VENDOR,
        "pattern": h["pattern"],
        "policy": VENDOR,
        "M": M,
        "N": N,
        "K": K,
        "target_sparsity": sparsity,
        "achieved_sparsity": sparsity,
        "times_us": [us],
        "median_us": us,
        "max_rel_error": None,
        "correct": None,
        "timing": {
            "method": h["timing_method"],
            "warmup": _int(h["timing_warmup"], "timing_warmup", extract.name),
            "repeats": int(repeats) if repeats.isdigit() else repeats,
            "statistic": h["timing_statistic"],
            "flush": h["timing_flush"],
        },
        "extra": {"dtype": h["dtype"]},
        "provenance": provenance,
    }


def rows_from_extract(extract: Extract) -> list[dict]:
    """Every record of `extract` as a checked measurement row, in sheet order."""
    rows = []
    seen: set[str] = set()
    for record in extract.records:
        row = check_row(_row(extract, record), f"{extract.name} row {record.get('row')}")
        if row["point"] in seen:
            raise InputError("extract", f"{extract.name}: two records give {row['point']!r}")
        seen.add(row["point"])
        rows.append(row)
    return rows


def rows_files(extracts: Sequence[Extract]) -> dict[str, list[dict]]:
    """Rows file name ('deepbench-v100.jsonl') -> its rows: one file per GPU."""
    out: dict[str, list[dict]] = {}
    for extract in sorted(extracts, key=lambda e: e.name):
        out.setdefault(f"deepbench-{extract.header['gpu_key']}.jsonl", []).extend(
            rows_from_extract(extract)
        )
    return out


def jsonl_text(rows: Sequence[dict]) -> str:
    """Rows as the JSON lines `MeasurementWriter` writes (sorted keys, no spaces)."""
    return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows)


def extract_files(folder: str | Path = EXTRACT_DIR) -> list[Path]:
    return sorted(Path(folder).glob("*.csv"))


def published_files(folder: str | Path = PUBLISHED_DIR) -> list[Path]:
    """The shipped rows files: read each with `tvwsim.validate.dataset.read_measurements`."""
    return sorted(Path(folder).glob("*.jsonl"))


def build(extract_dir: str | Path = EXTRACT_DIR) -> dict[str, str]:
    """Rows file name -> its full text, from every extract in `extract_dir`."""
    extracts = [read_extract(p) for p in extract_files(extract_dir)]
    if not extracts:
        raise InputError("extract", f"{extract_dir}: no *.csv extracts")
    return {name: jsonl_text(rows) for name, rows in rows_files(extracts).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvwsim.validate.published")
    parser.add_argument("--out", type=Path, default=PUBLISHED_DIR, help="rows folder")
    parser.add_argument("--extracts", type=Path, default=EXTRACT_DIR, help="extract folder")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="only say whether files differ")
    action.add_argument("--list", action="store_true", help="the shipped rows files")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for path in published_files(args.out):
                count = sum(1 for _ in path.open(encoding="utf-8"))
                print(f"{path.name}: {count} rows")
            return 0
        texts = build(args.extracts)
        stale = [name for name, text in texts.items() if _read(args.out / name) != text]
        if args.check:
            for name in stale:
                print(f"{name}: differs from what the extracts give", file=sys.stderr)
            return 1 if stale else 0
        for name, text in texts.items():
            write_atomic(args.out / name, text)
            print(f"{name}: {text.count(chr(10))} rows{' (rewritten)' if name in stale else ''}")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
