"""The report: its tables come from the store's rows, its pictures from its tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tvwsim.explore.report import (
    choose,
    fastest_figure,
    fastest_table,
    heatmap_figure,
    heatmap_table,
    report,
    sensitivity,
    tornado_figure,
)
from tvwsim.explore.runner import run_exploration
from tvwsim.explore.spec import load_spec
from tvwsim.explore.store import Store, read_rows

from tests.explore.conftest import TINY, write_spec
from tvwsim.cli import main
from tvwsim.pattern_spec import PATTERN_NAMES

WORKLOAD = "small 256x512x512"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    spec = load_spec(write_spec(root, TINY))
    run_exploration(spec, Store(root / "store", spec), workers=0)
    return root / "store"


@pytest.fixture(scope="module")
def chosen(store):
    return choose(read_rows(store), WORKLOAD, 0.75)


def test_choose_keeps_one_row_per_point_and_pattern(store, chosen):
    rows = read_rows(store)
    assert len(chosen) == 6 * 3  # points x (dense, tw, vw)
    mine = rows[(rows.workload == WORKLOAD)].set_index(["point", "pattern"])["speedup"]
    for _, row in chosen.iterrows():
        assert row.speedup == mine[(row.point, row.pattern)]


def test_heatmap_cells_are_the_table_speedups(store, chosen):
    fig = heatmap_figure(chosen, "l2_bandwidth_gbps", "sm_count", "t")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["vw", "tw"]  # registry order
    rows = read_rows(store)
    for ax in panels:
        image = np.asarray(ax.images[0].get_array())
        table = heatmap_table(chosen, "l2_bandwidth_gbps", "sm_count", ax.get_title())
        assert image.shape == (2, 3)  # sm_count levels x l2 levels
        for i, sm in enumerate(table.index):
            for j, l2 in enumerate(table.columns):
                # Each cell is one row of the store here (nothing else varies).
                match = rows[
                    (rows.workload == WORKLOAD)
                    & (rows.pattern == ax.get_title())
                    & (rows.sm_count == sm)
                    & (rows.l2_bandwidth_gbps == l2)
                ]
                assert len(match) == 1
                assert image[i, j] == match.speedup.iloc[0]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["2", "4"]


def test_sensitivity_is_the_spread_of_the_per_level_means(chosen):
    table = sensitivity(chosen, ["sm_count", "l2_bandwidth_gbps"])
    assert set(table.pattern) == {"tw", "vw"}
    tw = chosen[chosen.pattern == "tw"]
    means = tw.groupby("sm_count").speedup.mean()
    row = table[(table.pattern == "tw") & (table.field == "sm_count")].iloc[0]
    assert row.low == means.min() and row.high == means.max()
    assert row.swing == pytest.approx(means.max() - means.min())
    assert row.swing > 0
    fig = tornado_figure(table, "t")
    ax = next(a for a in fig.axes if a.get_title() == "tw")
    part = table[table.pattern == "tw"].sort_values("swing", ascending=False)
    bars = sorted(ax.patches, key=lambda p: -p.get_y())  # top bar first
    assert [b.get_width() for b in bars] == pytest.approx(list(part.high - part.low))
    assert [b.get_x() for b in bars] == pytest.approx(list(part.low))


def test_fastest_map_names_the_pattern_with_the_highest_speedup(chosen):
    table = fastest_table(chosen, "l2_bandwidth_gbps", "sm_count")
    for sm in table.index:
        for l2 in table.columns:
            cell = chosen[(chosen.sm_count == sm) & (chosen.l2_bandwidth_gbps == l2)]
            assert table.loc[sm, l2] == cell.sort_values("speedup").pattern.iloc[-1]
    fig = fastest_figure(table, "l2_bandwidth_gbps", "sm_count", "t")
    image = np.asarray(fig.axes[0].images[0].get_array())
    expected = table.map(PATTERN_NAMES.index).to_numpy()
    assert (image == expected).all()


def test_report_prints_best_points_and_writes_three_pictures_per_workload(store, tmp_path):
    text, paths = report(store, top=3, plot_dir=tmp_path)
    assert text.startswith("tiny: 36 of 36 rows, 6 of 6 hardware points on a100")
    rows = read_rows(store)
    best = rows[rows.pattern != "dense"].speedup.max()
    assert f"{best:.4g}" in text.split("best 3 points")[1].splitlines()[2]
    assert sorted(p.name for p in paths) == sorted(
        f"{kind}-{w}.png"
        for kind in ("heatmap", "tornado", "fastest")
        for w in ("small-256x512x512", "128x256x256")
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_explore_command_runs_resumes_and_reports(tiny_spec, tmp_path, capsys):
    store = tmp_path / "cli-store"
    args = ["explore", str(tiny_spec), "--store", str(store), "--workers", "0"]
    assert main([*args, "--max-batches", "1", "--batch-size", "2"]) == 0
    assert "wrote 6 rows (2 units, 1 batches)" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr()
    assert "wrote 30 rows (10 units" in out.out and "store complete" in out.out
    assert "2 of 12 units already in" in out.err
    assert main(["explore", "report", str(store), "--fields", "sm_count"]) == 0
    assert "best 10 points" in capsys.readouterr().out
    assert (store / "_report" / "heatmap-small-256x512x512.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explore", "nope", "--store", "x"], "SPEC: unknown spec 'nope'; shipped:"),
        (["explore", "sparse-tc"], "--store: required"),
        (["explore", "sparse-tc", "--store", "x", "--workers", "two"], "--workers: must be"),
        (
            ["explore", "sparse-tc", "--store", "x", "--scheduler", "host:1", "--workers", "2"],
            "--scheduler: an address like tcp://",
        ),
        (["explore", "report"], "DIR: `tvwsim explore report DIR` needs"),
        (["explore", "report", "nowhere"], "DIR: nowhere is not an exploration store"),
        (["explore", "report", "d", "--workers", "2"], "--workers: is not an option"),
    ],
)
def test_bad_command_lines_are_one_error(capsys, argv, message):
    assert main(argv) == 2
    assert f"tvwsim explore: error: {message}" in capsys.readouterr().err


def test_report_refuses_a_field_that_is_not_varied(store, capsys):
    assert main(["explore", "report", str(store), "--fields", "clock_mhz"]) == 2
    err = capsys.readouterr().err
    assert "--fields: 'clock_mhz' is not varied here; varied: sm_count, l2_bandwidth_gbps" in err
