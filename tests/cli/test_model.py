"""`tvwsim model`, run in-process through tvwsim.cli.main.

Small runs (batch 1, a few patterns) keep this fast; the full-size figures are in
docs/whole-models.md.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from tvwsim.traces.trace_files import trace_path

from tvwsim.cli import main

FAST = ["--hw", "a100", "--pattern", "dense,tw,tvw", "--sparsity", "0.75"]


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Run where no build/kernels/manifest.json exists, so every test sees the same
    (estimated) registers and shared memory whether or not kernels were built here."""
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv):
    code = main(["model", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_output_says_where_the_structure_comes_from(capsys):
    code, out, err = run(capsys, "bert-base", *FAST)
    assert code == 0 and err == ""
    assert out.startswith("bert-base on a100")
    assert "kept-K from real weights (MiniLM-L6 trace, scaled)" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("pattern "))
    table = [line.split() for line in lines[head + 2 : head + 5]]
    assert [row[0] for row in table] == ["dense", "tw", "tvw"]
    assert table[0][4] == "1.00x"
    # end-to-end speedup = dense time / run time, as printed
    dense_us = float(table[0][3])
    for row in table[1:]:
        assert float(row[4].rstrip("x")) == pytest.approx(dense_us / float(row[3]), abs=0.006)
    layers = next(i for i, line in enumerate(lines) if line.startswith("gemm "))
    names = [lines[i].split()[0] for i in range(layers + 2, layers + 10)]
    assert names == [
        "attn.q", "attn.k", "attn.v", "attn.out", "ffn1", "ffn2", "attn.scores", "attn.context"
    ]  # fmt: skip
    assert lines[layers + 2].split()[3] == "trace" and lines[layers + 8].split()[3] == "dense"
    assert "not prunable (attn.scores, attn.context" in out


def test_json_is_one_consistent_object(capsys):
    code, out, err = run(capsys, "bert-base", *FAST, "--batch", "2", "--seq", "64", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert (data["model"], data["batch"], data["seq"], data["trace"]) == (
        "bert-base",
        2,
        64,
        "MiniLM-L6 trace",
    )
    assert [(r["pattern"], r["sparsity"]) for r in data["runs"]] == [
        ("dense", 0.0),
        ("tw", 0.75),
        ("tvw", 0.75),
    ]
    assert len(data["layers"]) == 3 * 8
    for run_rec in data["runs"]:
        mine = [
            layer
            for layer in data["layers"]
            if (layer["pattern"], layer["sparsity"]) == (run_rec["pattern"], run_rec["sparsity"])
        ]
        assert run_rec["time_us"] == pytest.approx(sum(layer["time_us"] for layer in mine))
    ffn1 = [layer for layer in data["layers"] if layer["gemm"] == "ffn1"]
    assert {layer["m"] for layer in ffn1} == {2 * 64}
    tw = next(layer for layer in ffn1 if layer["pattern"] == "tw")
    # 12 BERT layers take MiniLM's 6: two each
    assert tw["sources"] == [f"MiniLM-L6 trace layer{i}.ffn1" for i in range(6)]


def test_csv_rows_and_the_random_fallback(capsys):
    code, out, err = run(capsys, "bert-base", *FAST, "--trace", "none", "--csv")
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 * (8 + 1)
    sparse = [r for r in rows if r["pattern"] in ("tw", "tvw") and r["gemm"] != "TOTAL"]
    weight_rows = [r for r in sparse if r["prunable"] == "True"]
    assert {r["structure"] for r in weight_rows} == {"seeded random weights"}
    assert all(r["sources"] == "" for r in sparse)
    for r in rows:
        if r["gemm"] != "TOTAL":
            expected = float(r["dense_time_us"]) / float(r["time_us"])
            assert float(r["speedup"]) == pytest.approx(expected, abs=1e-4)


def test_a_model_without_a_trace_says_so(capsys):
    code, out, _ = run(capsys, "gnmt", "--hw", "a100", "--pattern", "dense,vw")
    assert code == 0
    assert "note: gnmt has no real-weight trace in its family" in out
    assert "kept-K from real weights" not in out


def test_a_cnn_has_no_sequence_length(capsys):
    code, out, _ = run(capsys, "vgg16", "--hw", "a100", "--pattern", "dense,vw", "--json")
    data = json.loads(out)
    assert code == 0 and data["seq"] is None and data["batch"] == 1
    assert {r["m"] for r in data["layers"] if r["gemm"] == "conv1_1"} == {224 * 224}
    code, out, _ = run(capsys, "vgg16", "--hw", "a100", "--pattern", "dense", "--seq", "7")
    assert code == 0 and out.splitlines()[0].endswith("batch 1, policy natural")


def test_plot_is_written(capsys, tmp_path):
    target = tmp_path / "speedup.png"
    code, out, _ = run(capsys, "bert-base", *FAST[:-1], "0.5,0.75", "--plot", str(target), "--json")
    assert code == 0 and json.loads(out)["model"] == "bert-base"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["gpt5", "--hw", "a100"], "unknown model 'gpt5'"),
        (["bert-base", "--hw", "a100", "--batch", "0"], "--batch: must be a positive integer"),
        (["bert-base", "--hw", "a100", "--seq", "1.5"], "--seq: must be a positive integer"),
        (["bert-base", "--hw", "a100", "--sparsity", "1.5"], "--sparsity"),
        (["bert-base", "--hw", "a100", "--pattern", "tw,xx"], "--pattern"),
        (["bert-base", "--hw", "a100", "--policy", "random"], "--policy"),
        (["bert-base", "--hw", "a100", "--seed", "-1"], "--seed"),
        (["bert-base", "--hw", "nope"], "--hw"),
        (["bert-base", "--hw", "a100", "--trace", "x.txt"], "--trace"),
        (["bert-base", "--hw", "a100", "--plot", "out.gif"], "--plot"),
        (["bert-base", "--hw", "a100", "--plot", "no/such/dir/a.png"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, argv, message):
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("tvwsim model: error:")
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_lists_the_known_ones(capsys):
    _, _, err = run(capsys, "bert-bse", "--hw", "a100")
    assert "did you mean 'bert-base'" in err
    for name in ("bert-base", "bert-large", "deepbench", "gnmt", "resnet50", "vgg16"):
        assert name in err


def test_a_trace_that_does_not_match_is_refused(capsys):
    minilm = str(trace_path("minilm"))
    code, out, err = run(capsys, "vgg16", "--hw", "a100", "--trace", minilm)
    assert code == 2 and out == ""
    assert "vgg16 takes its structure from a vgg16 trace, this is a minilm trace" in err
    code, _, err = run(capsys, "gnmt", "--hw", "a100", "--trace", minilm)
    assert code == 2 and "no real-weight trace family" in err


def test_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "model" in capsys.readouterr().out
    assert Path(trace_path("minilm")).is_file()


def test_overrides_are_named_in_text_json_csv_and_plot(capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    from tvwsim.sim import model as sim_model

    label = "a100 (sm_count=216)"
    argv = ["bert-base", *FAST, "--trace", "none", "--set", "sm_count=216"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.splitlines()[0].startswith(f"bert-base on {label}, NVIDIA A100")
    data = json.loads(run(capsys, *argv, "--json")[1])
    assert data["hardware"] == label and data["hardware_overrides"] == {"sm_count": 216}
    assert data["hardware_fields"]["sm_count"] == 216
    assert data["hardware_fields"]["dram_bandwidth_gbps"] == 1555.0
    rows = list(csv.DictReader(io.StringIO(run(capsys, *argv, "--csv")[1])))
    assert {r["hardware"] for r in rows} == {label}
    titles = []
    real = sim_model.speedup_figure

    def spy(result):
        fig = real(result)
        titles.append(fig.axes[0].get_title())
        assert isinstance(fig, Figure)
        return fig

    monkeypatch.setattr(sim_model, "speedup_figure", spy)
    assert run(capsys, *argv, "--plot", str(tmp_path / "s.png"))[0] == 0
    assert titles and titles[0].startswith(f"bert-base on {label}, batch 1")


def test_plot_has_the_normal_file_mode(capsys, tmp_path):
    import os
    import stat

    target = tmp_path / "speedup.svg"
    old = os.umask(0o022)
    try:
        code, _, _ = run(capsys, "bert-base", *FAST, "--trace", "none", "--plot", str(target))
    finally:
        os.umask(old)
    assert code == 0 and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_model_too_large_is_refused_unless_forced(capsys, monkeypatch):
    monkeypatch.setattr("tvwsim.sim.cost.EVENTS_LIMIT", 100)
    code, out, err = run(capsys, "bert-base", *FAST)
    assert code == 2 and out == ""
    assert err.startswith("tvwsim model: error: MODEL: simulating bert-base at batch 1, seq 128")
    assert "--force" in err and len(err.splitlines()) == 1
    code, out, _ = run(capsys, "bert-base", *FAST, "--force", "--json")
    assert code == 0 and json.loads(out)["model"] == "bert-base"


def test_config_auto_runs_library_patterns_as_a_library_and_keeps_ours(capsys):
    argv = ["bert-base", "--hw", "h100", "--pattern", "dense,vw,tw", "--sparsity", "0.75"]
    argv += ["--seq", "64", "--json"]
    _, out, _ = run(capsys, *argv)
    ours = json.loads(out)
    code, out, err = run(capsys, *argv, "--config", "auto")
    assert code == 0 and err == ""
    lib = json.loads(out)
    assert "library" in lib["policy"] and "library" not in ours["policy"]

    def times(data, pattern):
        return {
            x["gemm"]: x["time_us"]
            for x in data["layers"]
            if x["pattern"] == pattern and x["prunable"]
        }

    # tw has no library: the same kernels either way; dense and vw run other kernels
    # (warpgroup MMA on Hopper), so every one of their GEMMs has another time.
    assert times(lib, "tw") == times(ours, "tw")
    for pattern in ("dense", "vw"):
        mine, theirs = times(ours, pattern), times(lib, pattern)
        assert all(theirs[g] != pytest.approx(mine[g]) for g in mine)
    code, _, err = run(capsys, *argv, "--config", "128x128x32")
    assert code == 2 and "--config" in err and "auto" in err
