"""Published silicon rows (traces/published/): they follow the row schema, they are
exactly what the pinned extracts give, their units are physically possible, and the
shape mapping from DeepBench's convention to ours is the documented one.

Nothing here downloads anything: the extracts are committed, and the build script's
sheet parser is tested on hand-made cells.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tvwsim.sim.library import OURS
from tvwsim.validate.dataset import load_rows, read_measurements
from tvwsim.validate.published import (
    EXTRACT_DIR,
    PUBLISHED_DIR,
    build,
    extract_files,
    main,
    ms_to_us,
    operand_layout,
    parse_extract,
    published_files,
    read_extract,
    rows_from_extract,
    timed_shape,
    tvwsim_shape,
)
from tvwsim.validate.published_extract import section_records, specs
from tvwsim.validate.replay import row_layout
from tvwsim.validate.rows import MeasurementRow, check_row

from tests.validate.fakes import make_row
from tvwsim.errors import InputError

REPO = Path(__file__).resolve().parents[2]

EXPECTED_ROWS = {
    "deepbench-v100.jsonl": 160,
    "deepbench-t4.jsonl": 160,
    "deepbench-p100.jsonl": 160,
    "deepbench-1080ti.jsonl": 24,
    "deepbench-titanx-pascal.jsonl": 24,
    "deepbench-titanxp.jsonl": 24,
}

PEAK_TFLOPS = {
    # The rate each row's arithmetic runs at, from the vendor's datasheet.
    "NVIDIA V100": 125.0,  # SXM2 (a DGX-1), fp16 tensor cores
    "NVIDIA T4": 65.0,  # fp16 tensor cores
    "NVIDIA Tesla P100": 10.6,  # fp16 storage, fp32 math: the SXM2 fp32 peak (PCIe: 9.3)
    "Nvidia 1080Ti": 11.3,  # fp32
    "Nvidia TitanX Pascal": 11.0,  # fp32
    "Nvidia TitanXp": 12.1,  # fp32
}


def all_rows() -> list[dict]:
    return [row for path in published_files() for row in read_measurements(path)]


def original(row: dict) -> dict:
    return row["provenance"]["deepbench"]


# ---- the shipped files ----


def test_the_shipped_files_are_the_expected_ones_and_every_row_follows_the_schema():
    files = {p.name: p for p in published_files()}
    assert set(files) == set(EXPECTED_ROWS)
    for name, path in files.items():
        rows = read_measurements(path)  # strict: every row checked
        assert len(rows) == EXPECTED_ROWS[name], name
        for row in rows:
            MeasurementRow.model_validate(row)
            assert row["origin"] == "published"
            assert row["config"] == row["policy"] == row["mma"] == "vendor"
            assert row["times_us"] == [row["median_us"]]
            assert row["max_rel_error"] is None and row["correct"] is None
            prov = row["provenance"]
            for key in ("repository", "commit", "file", "sheet", "row", "gpu", "precision"):
                assert prov[key], (row["point"], key)
            assert prov["repository"] == "baidu-research/DeepBench"
            assert len(prov["commit"]) == 40 and len(prov["numbers_commit"]) == 40
            assert row["device"]["name"] == prov["gpu"]
            assert row["date"].endswith("Z")


def test_published_rows_load_beside_our_measured_rows():
    measured = sorted((REPO / "traces" / "measured").glob("*.jsonl"))[:1]
    rows, files = load_rows([*measured, *published_files()])  # no point key collides
    assert sum(f["rows"] for f in files) == len(rows)


def test_rows_are_exactly_what_the_committed_extracts_give():
    """Data and converter cannot drift: rebuilding gives the committed bytes."""
    texts = build()
    assert set(texts) == {p.name for p in published_files()}
    for name, text in texts.items():
        assert (PUBLISHED_DIR / name).read_text(encoding="utf-8") == text, name
    assert main(["--check"]) == 0


def test_list_names_the_shipped_files(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, count in EXPECTED_ROWS.items():
        assert f"{name}: {count} rows" in out


def test_check_reports_a_rows_file_that_differs(tmp_path, capsys):
    for path in published_files():
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"))
    victim = tmp_path / "deepbench-t4.jsonl"
    victim.write_text(victim.read_text().replace('"median_us":', '"median_us": ', 1))
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert "deepbench-t4.jsonl: differs" in capsys.readouterr().err


# ---- units: physically possible, and the source agrees with itself ----


def test_every_row_runs_below_its_gpus_peak_and_above_a_ten_thousandth_of_it():
    """A ms/us (or s) slip moves a rate by 1000x: it would cross one of the bounds."""
    for row in all_rows():
        useful = 2 * row["M"] * row["N"] * row["K"] * (1 - row["target_sparsity"])
        tflops = useful / (row["median_us"] * 1e-6) / 1e12
        peak = PEAK_TFLOPS[row["device"]["name"]]
        assert 1e-4 * peak < tflops < peak, (row["point"], tflops)


def test_the_sheets_own_rates_match_our_times():
    """The sheet's TFLOP/s column, recomputed from its shape and our microseconds."""
    for row in all_rows():
        d = original(row)
        seconds = row["median_us"] * 1e-6
        flops = 2 * d["M"] * d["N"] * d["K"]
        if row["pattern"] == "dense":
            assert flops / seconds / 1e12 == pytest.approx(d["teraflops"], rel=1e-9)
            assert row["median_us"] == float(Decimal(d["time_ms"]) * 1000)
        else:
            # DeepBench's "SparseTERAFLOPS" counts the zeroed fraction (x sparsity), not
            # the kept one: checked here so the README's statement stays true.
            rate = flops * d["sparsity"] / seconds / 1e12
            assert rate == pytest.approx(d["sparse_teraflops"], rel=1e-9)
            assert row["median_us"] == float(Decimal(d["sparse_time_ms"]) * 1000)


# ---- the mapping ----


def test_every_row_maps_deepbench_shape_to_ours_as_documented():
    padded = 0
    for row in all_rows():
        d, prov = original(row), row["provenance"]
        t = prov["timed_shape"]
        # Our M = DeepBench N, our N = DeepBench M, K = K, of the timed shape.
        assert (row["M"], row["N"], row["K"]) == (t["N"], t["M"], t["K"])
        pad = 8 if prov["code_commit"].startswith("30c5115") else 0
        shape = tvwsim_shape(d["M"], d["N"], d["K"], d["a_transpose"], d["b_transpose"], pad)
        assert shape == (row["M"], row["N"], row["K"])
        # Padding only rounds a dimension up to the next multiple of 8.
        for ours, theirs in ((row["M"], d["N"]), (row["N"], d["M"]), (row["K"], d["K"])):
            assert ours == theirs or (ours % 8 == 0 and theirs < ours < theirs + 8)
        padded += (row["M"], row["N"], row["K"]) != (d["N"], d["M"], d["K"])
        assert prov["layout"] == operand_layout(d["a_transpose"], d["b_transpose"])
        a_t, b_t = d["a_transpose"], d["b_transpose"]
        assert row["point"].endswith(
            f"/{row['M']}x{row['N']}x{row['K']}/"
            + (f"s{row['target_sparsity']:g}/vendor/vendor/{a_t}{b_t}")
        )
    assert padded == 60  # 30 V100 and 30 T4 shapes (README)


def test_a_few_rows_by_hand():
    rows = {r["point"]: r for r in all_rows()}
    # V100, sheet row 5: DeepBench 1760 x 16 x 1760 NN, 0.020 ms.
    r = rows["deepbench/v100-fp16/cublas/dense/16x1760x1760/s0/vendor/vendor/NN"]
    assert (r["median_us"], r["provenance"]["row"], r["device"]["arch"]) == (20.0, 5, "sm_70")
    # DeepBench 35 x 8457 x 1760 NN ran padded to 40 x 8457 x 1760.
    r = rows["deepbench/v100-fp16/cublas/dense/8457x40x1760/s0/vendor/vendor/NN"]
    assert original(r)["M"] == 35 and r["median_us"] == 83.0
    # P100, not padded: DeepBench 35 x 8457 x 1760 stays 35.
    assert "deepbench/p100-fp16/cublas/dense/8457x35x1760/s0/vendor/vendor/NN" in rows
    # 1080 Ti, sparse, 95%: DeepBench 7680 x 1 x 2560, 0.034 ms.
    r = rows["deepbench/1080ti-sparse/cusparse-csr/ew/1x7680x2560/s0.95/vendor/vendor/NN"]
    assert r["median_us"] == 34.0 and r["kernel"] == "cusparseScsrmv"
    assert r["extra"]["dtype"] == "fp32" and r["achieved_sparsity"] == 0.95


# ---- the converter's pure functions ----


@given(st.integers(1, 10**9))
def test_ms_text_to_us_is_exact(us):
    text = f"{us // 1000}.{us % 1000:03d}"
    assert ms_to_us(text) == float(us)


@given(
    st.integers(1, 100_000),
    st.integers(1, 100_000),
    st.integers(1, 1_000_000),
    st.sampled_from("NT"),
    st.sampled_from("NT"),
)
def test_without_padding_the_mapping_only_swaps_m_and_n(m, n, k, a_t, b_t):
    assert tvwsim_shape(m, n, k, a_t, b_t) == (n, m, k)
    assert timed_shape(m, n, k, a_t, b_t, 1) == (m, n, k)


@given(
    st.integers(1, 100_000),
    st.integers(1, 100_000),
    st.integers(1, 1_000_000),
    st.sampled_from("NT"),
    st.sampled_from("NT"),
)
def test_padding_rounds_up_exactly_the_dimensions_cublas_needs_aligned(m, n, k, a_t, b_t):
    tm, tn, tk = timed_shape(m, n, k, a_t, b_t, 8)
    needs = {"NN": "mk", "TN": "mk", "NT": "mn", "TT": "mnk"}[a_t + b_t]
    for name, before, after in (("m", m, tm), ("n", n, tn), ("k", k, tk)):
        if name in needs:
            assert after % 8 == 0 and before <= after < before + 8
        else:
            assert after == before
    assert timed_shape(tm, tn, tk, a_t, b_t, 8) == (tm, tn, tk)  # idempotent


def test_tn_is_torch_linears_layout_and_tt_ours():
    assert operand_layout("T", "N") == {
        "x": "M x K, K contiguous",
        "w": "N x K, K contiguous",
        "y": "M x N, N contiguous",
    }
    assert operand_layout("N", "T")["x"] == "K x M, M contiguous"
    assert row_layout({"provenance": {"layout": operand_layout("T", "T")}}) == OURS


def test_the_library_model_replays_every_row_in_its_own_transposes():
    for row in all_rows():
        if row["pattern"] == "dense":  # the sparse sections have no transposes
            assert row_layout(row).blas == row["point"].rsplit("/", 1)[1], row["point"]


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: ms_to_us("abc"), "time_ms"),
        (lambda: ms_to_us("0.0205"), "time_ms"),  # finer than a microsecond
        (lambda: ms_to_us("-0.020"), "time_ms"),
        (lambda: ms_to_us("0"), "time_ms"),
        (lambda: ms_to_us("inf"), "time_ms"),
        (lambda: ms_to_us(0.02), "time_ms"),  # a float: its text is not the sheet's
        (lambda: timed_shape(0, 16, 1760, "N", "N"), "m"),
        (lambda: timed_shape(1760, 16.0, 1760, "N", "N"), "n"),
        (lambda: timed_shape(1760, 16, True, "N", "N"), "k"),
        (lambda: timed_shape(1760, 16, 1760, "X", "N"), "a_transpose"),
        (lambda: tvwsim_shape(1760, 16, 1760, "N", "t"), "b_transpose"),
        (lambda: timed_shape(1760, 16, 1760, "N", "N", -8), "pad_multiple"),
        (lambda: operand_layout("N", None), "b_transpose"),
    ],
)
def test_bad_input_is_one_input_error_naming_the_argument(call, argument):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.argument == argument


def _extract_text(**changes) -> str:
    text = (EXTRACT_DIR / "v100-fp16.csv").read_text(encoding="utf-8")
    head, _, body = text.partition("\nrow,")
    lines = ["row," + body.splitlines()[0], *body.splitlines()[1:3]]
    for old, new in changes.items():
        lines = [line.replace(old, new) for line in lines]
    return head + "\n" + "\n".join(lines) + "\n"


def test_an_extract_converts_on_its_own():
    rows = rows_from_extract(parse_extract(_extract_text(), "v100-fp16"))
    assert [r["median_us"] for r in rows] == [20.0, 21.0]
    for row in rows:
        check_row(row, "test")


@pytest.mark.parametrize(
    ("text", "argument", "words"),
    [
        (lambda: _extract_text(**{",0.020,": ",0.0205,"}), "time_ms", "v100-fp16 row 5"),
        (lambda: _extract_text(**{",0.020,": ",,"}), "time_ms", "row 5"),
        (lambda: _extract_text(**{"5,DeepSpeech,1760": "5,DeepSpeech,0"}), "m", "row 5"),
        (lambda: _extract_text(**{",N,N,": ",N,Q,"}), "b_transpose", "row 5"),
        (lambda: _extract_text().replace("# arch: sm_70\n", ""), "extract", "arch"),
        (lambda: _extract_text().replace("# spec: GPU Model", "# spec: GPU"), "extract", "GPU"),
        (lambda: _extract_text().replace("# section: dense", "# section: conv"), "section", ""),
        (lambda: _extract_text().replace("# arch:", "# arch"), "extract", "key: value"),
        (lambda: _extract_text().partition("\nrow,")[0] + "\n", "extract", "no records"),
    ],
)
def test_a_bad_extract_is_one_input_error(text, argument, words):
    with pytest.raises(InputError) as err:
        rows_from_extract(parse_extract(text(), "v100-fp16"))
    assert err.value.argument == argument
    assert words in err.value.problem


def test_two_records_of_one_point_are_refused():
    text = _extract_text()
    first = text.rstrip("\n").splitlines()[-2]
    with pytest.raises(InputError, match="two records"):
        rows_from_extract(parse_extract(text + first + "\n", "v100-fp16"))


def test_a_missing_extract_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_extract(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="no \\*.csv extracts"):
        build(tmp_path)
    assert [p.name for p in extract_files()] == sorted(p.name for p in extract_files())


# ---- the build script's sheet parsing, on hand-made cells ----

DENSE_SHEET = [
    ("Precision", "16 bit inputs"),
    (),
    (None, None),
    ("Dense Matrix Multiplication", None, "M", "N", "K", "A Transpose", "B Transpose"),
    (None, "DeepSpeech", 1760, 16, 1760, "N", "N", None, 0.02, 4.95616),
    (None, None, None, None),
    (None, None, 35, 8457, 1760, "T", "N", "a note", 0.07100000000000001, 7.3),
    ("Convolution",),
    (None, None, 1, 2, 3, "N", "N", None, 1.0, 1.0),
]


def test_section_records_reads_one_section_and_keeps_row_numbers():
    records = section_records(DENSE_SHEET, "dense", "test")
    assert [r["row"] for r in records] == ["5", "7"]
    assert records[1]["time_ms"] == "0.071"  # a float artefact, written as the sheet shows
    assert records[1]["note"] == "a note" and records[0]["application"] == "DeepSpeech"


def test_section_records_skips_untimed_sparse_shapes():
    sheet = [
        ("Sparse Matrix Multiplication",),
        (None, None, 7680, 1, 2560, "N", "N", 0.95, None, 0.034, 0.223, 1.09, 6.5),
        (None, None, 7680, 2, 2560, "N", "N", 0.95, None, None, None, "#DIV/0!", "#DIV/0!"),
    ]
    records = section_records(sheet, "sparse", "test")
    assert [(r["row"], r["sparse_time_ms"], r["dense_time_ms"]) for r in records] == [
        ("2", "0.034", "0.223")
    ]


@pytest.mark.parametrize(
    ("cells", "argument"),
    [
        ([("Dense Matrix Multiplication",), (None, None, 0, 16, 1760, "N", "N")], "M/N/K"),
        ([("Dense Matrix Multiplication",), (None, None, 1, 16, 1760, "n", "N")], "transpose"),
        (
            [("Dense Matrix Multiplication",), (None, None, 1, 1, 1, "N", "N", None, 0.0205)],
            "time_ms",
        ),
        ([("Dense Matrix Multiplication",), ("Convolution",)], "sheet"),
        ([("Sparse Matrix Multiplication",), (None, None, 1, 1, 1, "N", "N", 1.5)], "sparsity"),
    ],
)
def test_section_records_refuses_a_changed_layout(cells, argument):
    section = "sparse" if cells[0][0].startswith("Sparse") else "dense"
    with pytest.raises(InputError) as err:
        section_records(cells, section, "test")
    assert err.value.argument == argument


def test_specs_keeps_key_only_lines():
    assert specs([("GPU Model", "NVIDIA V100"), ("Nvidia Driver", 418.67), ("NVIDIA DGX-1",)]) == [
        ("GPU Model", "NVIDIA V100"),
        ("Nvidia Driver", "418.67"),
        ("NVIDIA DGX-1", ""),
    ]


# ---- the schema change ----


def test_origin_and_provenance_are_optional_and_checked():
    check_row(make_row(0), "old row")  # rows measured before the fields existed
    check_row(make_row(0, origin=None, provenance={}), "explicit defaults")
    check_row(make_row(0, origin="measured"), "measured")
    check_row(make_row(0, origin="published", provenance={"repository": "x"}), "published")
    with pytest.raises(InputError, match="origin"):
        check_row(make_row(0, origin="guessed"), "bad origin")
    with pytest.raises(InputError, match="provenance"):
        check_row(make_row(0, provenance="DeepBench"), "bad provenance")
    with pytest.raises(InputError, match="surprise"):
        check_row(make_row(0, surprise=1), "extra=forbid still holds")
    json.dumps(MeasurementRow.model_json_schema())  # the published schema still builds
