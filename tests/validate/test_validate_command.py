"""`tvwsim validate` on a machine without a GPU: the dry run, clean failure, bad input."""

from __future__ import annotations

import pytest
from tvwsim.validate.runner import run_sweep
from tvwsim.validate.spec import load_spec

from tests.validate.fakes import FakeExecutor
from tvwsim.cli import main


def test_validate_dry_run_lists_points_and_what_is_done(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'shapes = [[64, 256, 128]]\npatterns = ["dense", "tw"]\nsparsities = [0.75]\n'
        'baselines = ["cublas"]\n'
    )
    out = tmp_path / "m.jsonl"
    points = load_spec(str(spec)).points()
    run_sweep(points[:1], FakeExecutor(), out, progress=False)
    assert main(["validate", "--spec", str(spec), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 points (2 tvwsim kernels, 1 vendor baselines)" in text
    assert "1 already in" in text
    assert f"done {points[0].key}" in text and f"  {points[2].key}" in text


def test_validate_without_a_gpu_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    from tvwsim.kernels.launch import gpu_status

    usable, why = gpu_status()
    if usable:
        pytest.skip("a GPU is present; this checks the machine without one")
    out = tmp_path / "m.jsonl"
    assert main(["validate", "--sweep", "quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err  # e.g. pycuda: not installed: pip install ...
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "--sweep", "nope", "--dry-run"], "unknown sweep 'nope'"),
        (["validate", "--sweep", "quick"], "--out: name the measurement file"),
        (["validate", "--sweep", "quick", "--budget-s", "-3", "--out", "x"], "--budget-s"),
    ],
)
def test_validate_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
