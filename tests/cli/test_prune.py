"""`tvwsim prune`, run in-process: the table, the mask file, and every error path."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels.patterns import prune, prune_with_layout
from tvwsim.kernels.prepare import synthetic_weight

from tvwsim.cli import main
from tvwsim.pattern_spec import PATTERN_NAMES, pattern_spec

HEADER = "pattern  achieved  kept rows  tiles"


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows keyed by pattern name."""
    return {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.split() and line.split()[0] in PATTERN_NAMES
    }


def test_all_patterns_table_on_the_synthetic_weight(capsys):
    argv = ["prune", "--pattern", "all", "--sparsity", "0.75", "--shape", "96,80"]
    assert main([*argv, "--tile", "16", "--block", "8", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "weight 96 x 80 (synthetic, seed 5), target sparsity 0.75" in out
    assert HEADER in out
    rows = _rows(out)
    assert set(rows) == {"ew", "bw", "tw", "tvw"}
    assert "skipped dense" in out and "skipped vw" in out
    w = synthetic_weight(96, 80, seed=5)
    for name, cells in rows.items():
        result = prune_with_layout(w, name, 0.75, tile=16, block=8)
        assert float(cells[0]) == pytest.approx(result.achieved_sparsity, abs=5e-5)
        assert int(cells[1]) == int(result.mask.any(axis=1).sum())
        retained = np.abs(w)[result.mask].sum(dtype=np.float64) / np.abs(w).sum(dtype=np.float64)
        assert float(cells[-1]) == pytest.approx(retained, abs=5e-5)
        if pattern_spec(name).tiled:
            counts = result.layout.kept_k_counts()
            assert int(cells[2]) == result.layout.n_tiles
            assert int(cells[3]) == counts.min() and int(cells[5]) == counts.max()
            assert float(cells[4]) == np.median(counts)
        else:
            assert cells[2:6] == ["-"] * 4


def test_readme_command_prunes_a_bert_ffn1_shaped_matrix(capsys):
    assert main(["prune", "--pattern", "all", "--sparsity", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "weight 3072 x 768 (synthetic, seed 0)" in out
    for cells in _rows(out).values():
        assert abs(float(cells[0]) - 0.75) < 0.01


def test_half_sparsity_includes_vw_and_tvw_and_zero_includes_dense(capsys):
    assert main(["prune", "--pattern", "all", "--sparsity", "0.5", "--shape", "33,30"]) == 0
    assert set(_rows(capsys.readouterr().out)) == {"ew", "bw", "vw", "tw", "tvw"}
    assert main(["prune", "--pattern", "all", "--sparsity", "0", "--shape", "33,30"]) == 0
    out = capsys.readouterr().out
    assert set(_rows(out)) == {"dense", "ew", "bw", "tw"}
    assert "skipped vw" in out and "skipped tvw" in out


def test_weights_file_single_pattern_and_mask_out(tmp_path, capsys):
    w = synthetic_weight(40, 24, seed=1)
    scores = np.abs(synthetic_weight(40, 24, seed=2))
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "s.npy", scores)
    out_path = tmp_path / "mask.npy"
    argv = ["prune", "--weights", str(tmp_path / "w.npy"), "--pattern", "tw"]
    argv += ["--sparsity", "0.6", "--tile", "8", "--importance", str(tmp_path / "s.npy")]
    assert main([*argv, "--row-fraction", "0.2", "--out", str(out_path)]) == 0
    out = capsys.readouterr().out
    expected = prune(w, "tw", 0.6, tile=8, importance=scores, row_fraction=0.2)
    np.testing.assert_array_equal(np.load(out_path), expected)
    assert set(_rows(out)) == {"tw"} and f"mask written to {out_path}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.npy", "s.npy", "w.npy"]


def _bad_files(tmp_path):
    np.save(tmp_path / "vector.npy", np.ones(5))
    np.save(tmp_path / "ints.npy", np.ones((4, 4), dtype=np.int32))
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    np.save(tmp_path / "w.npy", np.ones((4, 8), dtype=np.float32))
    np.save(tmp_path / "neg.npy", -np.ones((4, 8)))
    np.save(tmp_path / "wrong_shape.npy", np.ones((8, 4)))
    np.savez(tmp_path / "archive.npz", a=np.ones((4, 4)))
    (tmp_path / "text.npy").write_text("not an array\n")


W = "{d}/w.npy"
CASES = [
    (["--pattern", "ew", "--sparsity", "abc"], "--sparsity"),
    (["--pattern", "tw", "--sparsity", "1"], "--sparsity"),
    (["--pattern", "ew", "--sparsity", "-0.1"], "--sparsity"),
    (["--pattern", "dense", "--sparsity", "0.5"], "--sparsity"),
    (["--pattern", "vw", "--sparsity", "0.75"], "--sparsity"),
    (["--pattern", "tvw", "--sparsity", "0.3"], "--sparsity"),
    (["--pattern", "sparse", "--sparsity", "0.5"], "--pattern"),
    (["--pattern", "tw", "--sparsity", "0.5", "--tile", "0"], "--tile"),
    (["--pattern", "tw", "--sparsity", "0.5", "--tile", "x"], "--tile"),
    (["--pattern", "bw", "--sparsity", "0.5", "--block", "-2"], "--block"),
    (["--pattern", "tw", "--sparsity", "0.5", "--row-fraction", "0.7"], "--row-fraction"),
    (["--pattern", "ew", "--sparsity", "0.5", "--shape", "3"], "--shape"),
    (["--pattern", "ew", "--sparsity", "0.5", "--shape", "a,b"], "--shape"),
    (["--pattern", "ew", "--sparsity", "0.5", "--shape", "0,5"], "--shape"),
    (["--pattern", "ew", "--sparsity", "0.5", "--seed", "-1"], "--seed"),
    (["--pattern", "all", "--sparsity", "0.5"], "--out"),  # --out with all
    (["--weights", "{d}/missing.npy", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", "{d}/text.npy", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", "{d}/archive.npz", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", "{d}/vector.npy", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", "{d}/ints.npy", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", "{d}/nan.npy", "--pattern", "ew", "--sparsity", "0.5"], "--weights"),
    (["--weights", W, "--shape", "4,8", "--pattern", "ew", "--sparsity", "0.5"], "--shape"),
    (["--weights", W, "--seed", "3", "--pattern", "ew", "--sparsity", "0.5"], "--seed"),
    (["--weights", W, "--importance", "{d}/neg.npy", "--pattern", "ew", "--sparsity", "0.5"],
     "--importance"),
    (["--weights", W, "--importance", "{d}/wrong_shape.npy", "--pattern", "tw",
      "--sparsity", "0.5"], "--importance"),
    (["--weights", W, "--importance", "{d}/missing.npy", "--pattern", "ew", "--sparsity", "0.5"],
     "--importance"),
]  # fmt: skip


@pytest.mark.parametrize("args, argument", CASES)
def test_bad_input_is_one_line_exit_2_and_no_mask_written(tmp_path, capsys, args, argument):
    _bad_files(tmp_path)
    out_path = tmp_path / "mask.npy"
    out_path.write_bytes(b"previous")  # an earlier result must survive a failed run
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["prune", *(a.format(d=tmp_path) for a in args), "--out", str(out_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"tvwsim prune: error: {argument}: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert out_path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left over


def test_out_into_a_missing_folder_is_an_error(tmp_path, capsys):
    out_path = tmp_path / "nowhere" / "mask.npy"
    argv = ["prune", "--pattern", "ew", "--sparsity", "0.5", "--shape", "8,8"]
    assert main([*argv, "--out", str(out_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tvwsim prune: error: --out: ")
    assert not out_path.parent.exists()


def test_missing_required_arguments_exit_2():
    with pytest.raises(SystemExit) as err:
        main(["prune", "--pattern", "ew"])
    assert err.value.code == 2


def test_mask_file_has_the_normal_mode_and_any_name(tmp_path, capsys):
    import os
    import stat

    argv = ["prune", "--pattern", "tw", "--sparsity", "0.5", "--shape", "64,32", "--tile", "16"]
    old = os.umask(0o022)
    try:
        assert main([*argv, "--out", str(tmp_path / "mask.npy")]) == 0
        assert main([*argv, "--out", str(tmp_path / "mask")]) == 0  # no .npy added
    finally:
        os.umask(old)
    capsys.readouterr()
    for name in ("mask.npy", "mask"):
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert np.load(path).shape == (64, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask", "mask.npy"]


def test_a_comma_list_prunes_those_patterns_and_says_which_it_skips(capsys):
    assert main(["prune", "--pattern", "tw,vw,bw", "--sparsity", "0.75", "--shape", "64,64"]) == 0
    out = capsys.readouterr().out
    assert set(_rows(out)) == {"tw", "bw"} and "skipped vw: needs a sparsity of exactly 0.5" in out
