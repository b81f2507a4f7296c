"""`tvwsim simulate` and `tvwsim timeline`, run in-process through tvwsim.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvwsim.cli import main

SMALL = ["--hw", "a100", "--shape", "512,768,512"]


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Run where no build/kernels/manifest.json exists, so every test sees the same
    (estimated) registers and shared memory whether or not kernels were built here."""
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_the_documented_keys_and_consistent_figures(capsys):
    code, out, err = run(
        capsys, "simulate", *SMALL, "--pattern", "tw", "--sparsity", "0.75", "--json"
    )
    assert code == 0 and err == ""
    data = json.loads(out)
    for key in (
        "hardware",
        "pattern",
        "sparsity",
        "M",
        "N",
        "K",
        "cycles",
        "time_us",
        "tflops",
        "ctas",
        "waves",
        "bottleneck",
    ):
        assert key in data
    assert (data["hardware"], data["pattern"], data["sparsity"]) == ("a100", "tw", 0.75)
    assert (data["M"], data["N"], data["K"]) == (512, 768, 512)
    assert data["time_us"] == pytest.approx(data["cycles"] / 1410.0)
    flops = 2 * 512 * 768 * 512 * (1 - data["achieved_sparsity"])
    assert data["tflops"] == pytest.approx(flops / (data["time_us"] * 1e-6) / 1e12, rel=1e-6)
    assert data["bottleneck"] in ("compute", "memory bandwidth", "latency", "imbalance tail")


def test_same_arguments_give_the_same_cycles(capsys):
    args = ("simulate", *SMALL, "--pattern", "tvw", "--sparsity", "0.8", "--seed", "7", "--json")
    _, first, _ = run(capsys, *args)
    _, second, _ = run(capsys, *args)
    assert json.loads(first)["cycles"] == json.loads(second)["cycles"]


def test_text_output_names_time_grid_and_bottleneck(capsys):
    code, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "dense")
    assert code == 0
    assert "M=512 N=768 K=512" in out and "CTAs" in out and "bottleneck" in out
    assert "128x128x32s3w4" in out


def test_pattern_all_prints_every_pattern_with_speedup_over_dense(capsys):
    code, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "all", "--sparsity", "0.75")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.strip()}
    for pattern in ("dense", "ew", "bw", "vw", "tw", "tvw"):
        assert pattern in rows
    assert rows["dense"][6] == "1.00x"
    assert rows["vw"][1] == "0.5" and rows["tw"][1] == "0.75"


def test_pattern_all_json_and_tvw_skipped_below_half(capsys):
    code, out, _ = run(
        capsys, "simulate", *SMALL, "--pattern", "all", "--sparsity", "0.3", "--json"
    )
    assert code == 0
    data = json.loads(out)
    patterns = [r["pattern"] for r in data["results"]]
    assert patterns == ["dense", "ew", "bw", "vw", "tw"]  # tvw needs sparsity >= 0.5
    dense = data["results"][0]
    assert dense["speedup_over_dense"] == pytest.approx(1.0)


def test_overrides_change_the_hardware(capsys):
    base = json.loads(run(capsys, "simulate", *SMALL, "--pattern", "dense", "--json")[1])
    half = json.loads(
        run(capsys, "simulate", *SMALL, "--pattern", "dense", "--json", "--set", "clock_mhz=705")[1]
    )
    assert half["time_us"] > 1.5 * base["time_us"]


def test_weights_file_is_pruned(tmp_path, capsys):
    w = np.random.default_rng(1).standard_normal((768, 512)).astype(np.float32)
    path = tmp_path / "w.npy"
    np.save(path, w)
    code, out, _ = run(
        capsys,
        "simulate",
        *SMALL,
        "--pattern",
        "tw",
        "--sparsity",
        "0.5",
        "--weights",
        str(path),
        "--json",
    )
    assert code == 0 and json.loads(out)["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_config_warps_stages_and_policy_reach_the_kernel(capsys):
    code, out, _ = run(
        capsys,
        "simulate",
        *SMALL,
        "--pattern",
        "tw",
        "--sparsity",
        "0.75",
        "--config",
        "64x64x32",
        "--warps",
        "2",
        "--stages",
        "4",
        "--policy",
        "longest-first",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["config"] == "64x64x32s4w2" and data["policy"] == "longest-first"


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--hw", "b200"], "--hw"),
        (["--set", "sm_cnt=4"], "--set"),
        (["--set", "sm_count=abc"], "sm_count"),
        (["--set", "dram_efficiency=2"], "dram_efficiency"),
        (["--set", "sm_count"], "--set"),
        (["--shape", "4096,3072"], "--shape"),
        (["--shape", "0,3072,768"], "--shape"),
        (["--shape", "a,b,c"], "--shape"),
        (["--sparsity", "1.5"], "--sparsity"),
        (["--policy", "random"], "--policy"),
        (["--pattern", "xw"], "--pattern"),
        (["--config", "128x128"], "--config"),
        (["--config", "128x128x64", "--stages", "4", "--hw", "rtx3090"], "shared memory"),
        (["--config", "256x256x32"], "registers"),
        (["--warps", "3"], "--warps"),
        (["--manifest", "missing.json"], "--manifest"),
        (["--config", "auto"], "libraries multiply dense (cuBLAS), vw (cuSPARSELt)"),
        (
            ["--config", "auto", "--pattern", "dense", "--sparsity", "0", "--stages", "3"],
            "--stages",
        ),
        (["--config", "128x128x64s3w4-wgmma", "--pattern", "vw", "--sparsity", "0.5"], "wgmma"),
    ],
)
def test_bad_input_is_one_clear_error(capsys, extra, needle):
    argv = [
        "simulate",
        "--hw",
        "a100",
        "--shape",
        "512,768,512",
        "--pattern",
        "tw",
        "--sparsity",
        "0.75",
    ]
    # Later options win in argparse, so `extra` replaces the defaults above.
    code, out, err = run(capsys, *argv, *extra)
    assert code == 2 and out == ""
    assert err.startswith("tvwsim simulate: error:") and needle in err
    assert len(err.strip().splitlines()) == 1


def test_tile_too_big_says_by_how_much(capsys):
    code, _, err = run(
        capsys,
        "simulate",
        "--hw",
        "rtx3090",
        "--shape",
        "512,768,512",
        "--pattern",
        "dense",
        "--config",
        "128x128x64s4w4",
    )
    assert code == 2
    assert "131072 B shared memory" in err and "rtx3090 allows 101376" in err
    assert "over by 29696" in err


def test_weights_of_the_wrong_shape_write_nothing(tmp_path, capsys):
    path = tmp_path / "w.npy"
    np.save(path, np.ones((512, 768), dtype=np.float32))  # K x N, not N x K
    out_png = tmp_path / "t.png"
    code, _, err = run(
        capsys,
        "timeline",
        *SMALL,
        "--pattern",
        "tw",
        "--sparsity",
        "0.75",
        "--weights",
        str(path),
        "--out",
        str(out_png),
    )
    assert code == 2 and "--weights" in err and "(768, 512)" in err
    assert list(tmp_path.iterdir()) == [path]


def test_timeline_writes_a_png(tmp_path, capsys):
    out_png = tmp_path / "tw.png"
    code, out, _ = run(
        capsys,
        "timeline",
        *SMALL,
        "--pattern",
        "tw",
        "--sparsity",
        "0.75",
        "--set",
        "sm_count=16",
        "--out",
        str(out_png),
    )
    assert code == 0 and "wrote" in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tw.png"]  # no temporary left


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--out", "picture.bmp"], "--out"),
        (["--out", "no/such/dir/t.png"], "--out"),
        (["--pattern", "all", "--out", "t.png"], "--pattern"),
    ],
)
def test_timeline_bad_input(tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "timeline", *SMALL, "--pattern", "tw", "--sparsity", "0.75", *extra)
    assert code == 2 and needle in err
    assert list(tmp_path.iterdir()) == []


# -- size guard -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, unit",
    [("4096,1000000000,768", "TiB"), ("1000000000,3072,768", "GiB")],
)
def test_a_shape_too_large_is_refused_before_any_work(capsys, shape, unit):
    argv = ["simulate", "--hw", "a100", "--shape", shape, "--pattern", "tw", "--sparsity", "0.75"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("tvwsim simulate: error: --shape: ") and len(err.splitlines()) == 1
    # The estimate, the limit and the way past, in one line.
    assert unit in err and "limit" in err and "million simulation events" in err
    assert "--force" in err and "Traceback" not in err


def test_force_goes_past_the_guard(capsys, monkeypatch):
    monkeypatch.setattr("tvwsim.sim.cost.EVENTS_LIMIT", 50)
    argv = ["simulate", *SMALL, "--pattern", "tw", "--sparsity", "0.75", "--json"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and "--shape" in err and "limit about 50" in err
    code, out, err = run(capsys, *argv, "--force")
    assert code == 0 and json.loads(out)["pattern"] == "tw"


# -- the effective hardware is in every output --------------------------------------------------
def test_overrides_are_named_in_text_json_and_table(capsys):
    overrides = ["--set", "sm_count=216", "--set", "l2_bytes=83886080"]
    label = "a100 (sm_count=216, l2_bytes=83886080)"
    _, text, _ = run(capsys, "simulate", *SMALL, "--pattern", "dense", *overrides)
    assert text.splitlines()[0].startswith(f"{label}, NVIDIA A100")
    _, table, _ = run(
        capsys, "simulate", *SMALL, "--pattern", "all", "--sparsity", "0.75", *overrides
    )
    assert table.splitlines()[0].startswith(f"{label}: M=512")
    _, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "dense", "--json", *overrides)
    data = json.loads(out)
    assert data["hardware"] == label
    assert data["hardware_overrides"] == {"sm_count": 216, "l2_bytes": 83886080}
    fields = data["hardware_fields"]
    assert fields["sm_count"] == 216 and fields["l2_bytes"] == 83886080
    assert fields["clock_mhz"] == 1410.0 and fields["description"].startswith("NVIDIA A100")
    _, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "dense", "--json")
    plain = json.loads(out)
    assert plain["hardware"] == "a100" and plain["hardware_overrides"] == {}
    _, out, _ = run(
        capsys, "simulate", *SMALL, "--pattern", "tw,vw", "--sparsity", "0.75", "--json", *overrides
    )
    several = json.loads(out)
    assert several["hardware"] == label and several["hardware_fields"]["sm_count"] == 216
    assert {r["hardware"] for r in several["results"]} == {label}


def test_timeline_names_the_effective_hardware(capsys, tmp_path):
    out_png = tmp_path / "t.png"
    argv = ["timeline", *SMALL, "--pattern", "tw", "--sparsity", "0.75", "--out", str(out_png)]
    code, out, _ = run(capsys, *argv, "--set", "sm_count=16")
    assert code == 0 and out.startswith(f"wrote {out_png}: a100 (sm_count=16), ")


# -- files get the normal mode ------------------------------------------------------------------
def test_timeline_picture_has_the_normal_file_mode(capsys, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out_png = tmp_path / "t.png"
        argv = ["timeline", *SMALL, "--pattern", "dense", "--out", str(out_png)]
        assert run(capsys, *argv)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out_png.stat().st_mode) == 0o644


# -- patterns ------------------------------------------------------------------------------------
def test_ew_is_not_labelled_as_an_mma(capsys):
    _, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "ew", "--sparsity", "0.75")
    kernel = next(line for line in out.splitlines() if line.startswith("kernel"))
    assert "CUDA cores" in kernel and "mma" not in kernel
    _, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "all", "--sparsity", "0.75")
    ew = next(line for line in out.splitlines() if line.startswith("ew "))
    tw = next(line for line in out.splitlines() if line.startswith("tw "))
    assert "(CUDA cores)" in ew and "CUDA" not in tw


def test_a_comma_list_of_patterns_is_one_table_with_dense_as_baseline(capsys):
    code, out, _ = run(capsys, "simulate", *SMALL, "--pattern", "tw,vw", "--sparsity", "0.75")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[3:-1]]
    assert [(r[0], r[1]) for r in rows] == [("dense", "0"), ("tw", "0.75"), ("vw", "0.5")]
    assert rows[0][6] == "1.00x"


@pytest.mark.parametrize("pattern", ["all", "tw,tvw"])
def test_timeline_takes_exactly_one_pattern(capsys, tmp_path, pattern):
    argv = ["timeline", *SMALL, "--pattern", pattern, "--sparsity", "0.75"]
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "t.png"))
    assert code == 2 and err.startswith("tvwsim timeline: error: --pattern: ")
    assert "one of dense, ew, bw, vw, tw, tvw" in err
    assert list(tmp_path.iterdir()) == []


def test_config_auto_runs_the_layout_it_is_given(capsys):
    # 16 tokens against a 32 MB weight on a V100: the weight streams from DRAM, and a
    # K-contiguous weight (TN) streams at k_contiguous_stream_efficiency of the rate of
    # an N-contiguous one (NN).
    argv = ["simulate", "--hw", "v100", "--shape", "16,4096,4096", "--pattern", "dense"]
    times = {}
    for layout in ("NN", "tn"):
        code, out, _ = run(capsys, *argv, "--config", "auto", "--layout", layout, "--json")
        assert code == 0
        record = json.loads(out)
        assert record["library"]["layout"] == layout.upper()
        times[layout.upper()] = record["time_us"]
    assert times["TN"] > 1.2 * times["NN"]
    code, out, _ = run(capsys, *argv, "--config", "auto", "--layout", "NN")
    assert code == 0 and "layout NN" in out
    code, _, err = run(capsys, *argv, "--config", "auto", "--layout", "NX")
    assert code == 2 and err.startswith("tvwsim simulate: error: --layout: ")
    code, _, err = run(capsys, *argv, "--layout", "NN")  # our kernel reads one layout
    assert code == 2 and "--config auto" in err


def test_config_auto_reports_the_library_kernel_in_json_and_text(capsys):
    # 16 tokens, K = 65536 on a Hopper GPU shrunk to 16 SMs: a narrow tile, warpgroup MMA
    # and split-K (4 output tiles cannot fill 16 SMs).
    argv = ["simulate", "--hw", "h100", "--set", "sm_count=16", "--shape", "16,512,65536"]
    code, out, _ = run(capsys, *argv, "--pattern", "dense", "--config", "auto", "--json")
    assert code == 0
    record = json.loads(out)
    lib = record["library"]
    assert lib["library"] == "cuBLAS" and lib["mma_class"] == "wgmma"
    assert lib["split_k"] > 1 and lib["policy"] == "grouped"
    assert record["config"] == lib["config"] and record["config"].endswith("-wgmma")
    simulated = [c["simulated_us"] for c in lib["candidates"] if c["simulated_us"] is not None]
    assert record["time_us"] == pytest.approx(min(simulated))
    code, out, _ = run(capsys, *argv, "--pattern", "dense", "--config", "auto")
    assert code == 0
    assert "warpgroup MMA" in out and f"split-K {lib['split_k']}" in out
    assert "cuBLAS-like" in out
