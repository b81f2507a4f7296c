"""The pruned-matrix picture (kernels/pictures.py, `tvwsim prune --plot`): each image is the
mask's kept magnitudes and the 2:4 positions the mma.sp metadata stores, cell for cell."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels.mma_sp import pack_a_sparse
from tvwsim.kernels.patterns import prune_with_layout
from tvwsim.kernels.pictures import nm_positions, pattern_figure, tile_of
from tvwsim.kernels.prepare import synthetic_weight

from tvwsim.cli import main
from tvwsim.errors import InputError


@pytest.fixture(scope="module")
def weight():
    return synthetic_weight(32, 64, seed=3)


def test_vw_positions_are_the_metadata_mma_sp_reads(weight) -> None:
    pruned = prune_with_layout(weight, "vw", 0.5)
    positions = nm_positions(pruned)
    assert ((positions >= 0) == pruned.mask).all()
    # The 2-bit fields of the metadata word for rows 0 and 8, K 0..15 (lane 0, selector 0).
    block = np.where(pruned.mask, weight, 0)[:16, :32]
    _, e = pack_a_sparse(block, 0, mask=pruned.mask[:16, :32])
    for row, half in ((0, int(e[0]) & 0xFFFF), (8, int(e[0]) >> 16)):
        for group in range(4):
            nibble = half >> (4 * group) & 0xF
            kept = positions[row, 4 * group : 4 * group + 4]
            assert sorted(kept[kept >= 0]) == [nibble & 3, nibble >> 2]


def test_tvw_positions_count_along_each_tiles_kept_k_list(weight) -> None:
    pruned = prune_with_layout(weight, "tvw", 0.75, tile=16)
    positions = nm_positions(pruned)
    assert ((positions >= 0) == pruned.mask).all()
    layout = pruned.layout
    for t, kept in enumerate(layout.kept_k):
        rows = layout.rows[t * 16 : (t + 1) * 16]
        for r in rows:
            within = positions[r, kept]
            for start in range(0, len(kept), 4):
                group = within[start : start + 4]
                # two kept per group of four list entries, each at its index in the group
                assert (group >= 0).sum() <= 2
                idx = np.flatnonzero(group >= 0)
                assert (group[idx] == idx).all()
    assert nm_positions(prune_with_layout(weight, "tw", 0.75, tile=16)) is None


def test_tile_of_marks_each_kept_weight_with_its_tile(weight) -> None:
    pruned = prune_with_layout(weight, "tw", 0.5, tile=8)
    tiles = tile_of(pruned)
    assert ((tiles >= 0) == pruned.mask).all()
    for t in range(pruned.layout.n_tiles):
        rows = pruned.layout.rows[t * 8 : (t + 1) * 8]
        assert set(np.unique(tiles[rows][pruned.mask[rows]])) <= {t}
    assert tile_of(prune_with_layout(weight, "ew", 0.5)) is None


def test_picture_images_are_the_masks_and_positions(weight) -> None:
    results = [prune_with_layout(weight, p, 0.5, tile=16, block=8) for p in ("ew", "vw", "tvw")]
    fig = pattern_figure(weight, results)
    n = len(results)
    for i, pruned in enumerate(results):
        top = fig.axes[i].images[0].get_array()
        expected = np.where(pruned.mask, np.abs(weight.astype(np.float64)), np.nan)
        np.testing.assert_array_equal(np.isnan(np.asarray(top.filled(np.nan))), ~pruned.mask)
        np.testing.assert_allclose(np.asarray(top.filled(np.nan)), expected)
    for i, pruned in enumerate(results[1:], start=1):
        bottom = np.asarray(fig.axes[n + i].images[0].get_array().filled(np.nan))
        positions = nm_positions(pruned).astype(float)
        positions[positions < 0] = np.nan
        np.testing.assert_array_equal(bottom, positions)
    assert not fig.axes[n].images  # ew has no metadata and no tiles: the panel is off


def test_picture_refuses_nothing_to_draw(weight) -> None:
    with pytest.raises(InputError, match="pattern"):
        pattern_figure(weight, [])
    with pytest.raises(InputError, match="weight"):
        pattern_figure(weight[0], [prune_with_layout(weight, "ew", 0.5)])


def test_prune_plot_writes_the_picture(tmp_path, capsys) -> None:
    out = tmp_path / "patterns.png"
    argv = ["prune", "--shape", "32,64", "--tile", "16", "--pattern", "vw,tvw", "--sparsity", "0.5"]
    assert main([*argv, "--plot", str(out)]) == 0
    assert f"picture written to {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("plot", ["p.gif", "no/such/dir/p.png"])
def test_prune_plot_refuses_bad_paths_by_name(plot, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["prune", "--shape", "32,64", "--pattern", "vw", "--sparsity", "0.5", "--plot", plot]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvwsim prune: error: --plot") and len(err.splitlines()) == 1
