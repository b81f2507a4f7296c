"""The two pictures of sim/: the timeline (sim/timeline.py) and the whole-model speedup
bars (sim/model.py). Assertions are on the Figure's content - bars, their sizes, titles,
axis labels - not on image bytes; the file writers are checked for a whole file with the
normal mode."""

from __future__ import annotations

import os
import stat
import textwrap

import numpy as np
import pytest
from matplotlib.container import BarContainer
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim import model as sm
from tvwsim.sim.engine import simulate
from tvwsim.sim.presets import load_preset
from tvwsim.sim.timeline import draw_timeline, timeline_figure
from tvwsim.traces.catalog import load_workload


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def small_gpu():
    return load_preset("a100", {"sm_count": "16"})


@pytest.fixture(scope="module")
def tw_run(small_gpu):
    schedule = schedule_for_shape(512, 768, 512, "tw", 0.75)
    return schedule, simulate(schedule, small_gpu, cache=False)


def _bars(ax) -> list:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_timeline_draws_one_bar_per_cta_from_dispatch_to_retirement(tw_run):
    schedule, result = tw_run
    fig = timeline_figure(result, schedule=schedule, sparsity=0.75)
    top, gantt = fig.axes
    (bars,) = _bars(gantt)
    assert len(bars) == result.ctas
    us = 1.0 / result.clock_mhz
    widths = sorted(patch.get_width() for patch in bars)
    want = sorted((result.cta_end_cycles - result.cta_start_cycles) * us)
    np.testing.assert_allclose(widths, want)
    starts = sorted(patch.get_x() for patch in bars)
    np.testing.assert_allclose(starts, sorted(result.cta_start_cycles * us))
    # Each bar sits on its SM's row (row = SM + slot / slots).
    rows = sorted(patch.get_y() for patch in bars)
    slots = result.ctas_per_sm
    np.testing.assert_allclose(rows, sorted(result.cta_sm + result.cta_slot / slots))
    # The top panel's step curve never shows more busy SMs than the GPU has.
    (curve,) = top.get_lines()[-1:]
    assert max(curve.get_ydata()) <= result.sm_count


def test_timeline_title_names_the_effective_hardware_and_the_run(tw_run):
    schedule, result = tw_run
    fig = timeline_figure(result, schedule=schedule, sparsity=0.75)
    top, gantt = fig.axes
    title = top.get_title()
    assert title.startswith("a100 (sm_count=16): tw (sparsity 0.75) M=512 N=768 K=512")
    assert f"{result.ctas} CTAs" in title and result.bottleneck in title
    assert gantt.get_xlabel().startswith("time since launch, microseconds")
    assert gantt.get_ylabel().startswith("SM (each row:")
    assert top.get_ylabel() == "busy SMs"


def test_max_sms_draws_only_the_first_sms(tw_run):
    schedule, result = tw_run
    fig = timeline_figure(result, schedule=schedule, max_sms=4)
    (bars,) = _bars(fig.axes[1])
    assert len(bars) == int(np.count_nonzero(result.cta_sm < 4))


def test_timeline_file_is_whole_with_the_normal_mode(tw_run, tmp_path, umask_022):
    schedule, result = tw_run
    path = draw_timeline(result, tmp_path / "t.svg", schedule=schedule)
    assert path.read_text().lstrip().startswith("<?xml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["t.svg"]


TOY = textwrap.dedent(
    """
    description = "two weight GEMMs"
    source = "tests"
    [[gemm]]
    name = "up"
    m = "batch * seq"
    n = 512
    k = 256
    count = 2
    [[gemm]]
    name = "down"
    m = "batch * seq"
    n = 256
    k = 512
    count = 2
    """
)


@pytest.fixture()
def toy_result(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    workload = load_workload(str(path), batch=2, seq=64)
    runs = sm.model_runs(["dense", "tw", "tvw", "vw"], [0.5, 0.75])
    return sm.simulate_model(workload, load_preset("a100", {"sm_count": "54"}), runs)


def test_speedup_bars_are_one_group_per_pattern_at_its_speedups(toy_result):
    fig = sm.speedup_figure(toy_result)
    (ax,) = fig.axes
    containers = _bars(ax)
    assert [c.get_label() for c in containers] == ["vw", "tw", "tvw"]
    for container in containers:
        runs = [r for r in toy_result.runs if r.pattern == container.get_label()]
        heights = [patch.get_height() for patch in container]
        assert heights == pytest.approx([toy_result.speedup(r) for r in runs])
    # tw at both sparsities, vw only at its 0.5, tvw at both (>= 0.5).
    assert [len(c) for c in containers] == [1, 2, 2]
    assert ax.get_title().startswith("toy on a100 (sm_count=54), batch 2, seq 64, policy natural")
    assert ax.get_ylabel() == "end-to-end speedup over dense"
    assert ax.get_xlabel().startswith("target sparsity")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.75"]


def test_speedup_plot_file_is_whole_with_the_normal_mode(toy_result, tmp_path, umask_022):
    path = sm.draw_speedup_plot(toy_result, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
