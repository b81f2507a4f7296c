"""The per-SM utilisation picture (sim/timeline.py, `tvwsim timeline --utilisation`): each
cell is the share of an SM's CTA slots busy in a time bin, computed from the CTAs'
intervals, and the picture's arrays are exactly those numbers."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.sim.timeline import sm_utilisation, utilisation_figure

import tvwsim
from tvwsim.cli import main
from tvwsim.errors import InputError


@pytest.fixture(scope="module")
def nine_ctas():
    """9 equal CTAs on 8 single-slot SMs: one full wave, then one CTA alone."""
    hw = tvwsim.load_preset("a100", {"sm_count": 8, "max_ctas_per_sm": 1})
    return tvwsim.simulate(tvwsim.schedule_for_shape(128, 9 * 128, 2048, "dense", 0.0), hw)


@pytest.fixture(scope="module")
def two_per_sm():
    hw = tvwsim.load_preset("a100", {"sm_count": 4})
    return tvwsim.simulate(tvwsim.schedule_for_shape(256, 5 * 128, 1024, "dense", 0.0), hw)


def test_cells_add_up_to_every_ctas_lifetime(nine_ctas, two_per_sm) -> None:
    for result in (nine_ctas, two_per_sm):
        edges, util = sm_utilisation(result, bins=40)
        assert util.shape == (result.sm_count, 40)
        assert edges[0] == 0 and edges[-1] == pytest.approx(result.kernel_us)
        width_cycles = (edges[1] - edges[0]) * result.clock_mhz
        total = util.sum() * width_cycles * result.ctas_per_sm
        lifetimes = (result.cta_end_cycles - result.cta_start_cycles).sum()
        assert total == pytest.approx(lifetimes, rel=1e-9)
        assert util.min() >= 0 and util.max() <= 1 + 1e-9


def test_the_lone_last_cta_is_the_only_busy_sm_at_the_end(nine_ctas) -> None:
    _, util = sm_utilisation(nine_ctas, bins=20)
    last = nine_ctas.cta_sm[np.argmax(nine_ctas.cta_start_cycles)]
    assert util[:, 2].min() == pytest.approx(1.0)  # first wave: every SM busy
    assert util[last, -2] == pytest.approx(1.0)
    assert np.delete(util[:, -2], last).max() == 0.0
    # 9 CTAs in 16 slot-waves: the mean utilisation is about 9/16.
    assert util.mean() == pytest.approx(9 / 16, abs=0.03)


def test_picture_draws_exactly_the_utilisation(two_per_sm) -> None:
    fig = utilisation_figure(two_per_sm, bins=30)
    top, heat = fig.axes[:2]
    edges, util = sm_utilisation(two_per_sm, bins=30)
    np.testing.assert_array_equal(heat.images[0].get_array(), util)
    assert heat.images[0].get_extent() == [edges[0], edges[-1], two_per_sm.sm_count, 0]
    x, y = top.lines[0].get_data()
    np.testing.assert_allclose(x, (edges[:-1] + edges[1:]) / 2)
    np.testing.assert_allclose(y, util.mean(axis=0))


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_bins_must_be_a_positive_integer(nine_ctas, bins) -> None:
    with pytest.raises(InputError, match="bins"):
        sm_utilisation(nine_ctas, bins=bins)


def test_timeline_command_writes_the_utilisation_picture(tmp_path, capsys) -> None:
    out, util = tmp_path / "t.png", tmp_path / "u.svg"
    argv = ["timeline", "--hw", "a100", "--set", "sm_count=8", "--shape", "128,1152,2048"]
    argv += ["--pattern", "dense", "--out", str(out), "--utilisation", str(util)]
    assert main(argv) == 0
    assert f"wrote {util}: per-SM utilisation" in capsys.readouterr().out
    assert out.exists() and util.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("path", ["u.gif", "no/such/dir/u.png"])
def test_timeline_refuses_a_bad_utilisation_path(path, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["timeline", "--hw", "a100", "--shape", "128,128,128", "--pattern", "dense"]
    assert main([*argv, "--out", "t.png", "--utilisation", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvwsim timeline: error: --utilisation") and len(err.splitlines()) == 1
