import pytest

from tvwsim.config import KernelConfig, default_config
from tvwsim.errors import InputError


def test_name_round_trip():
    for cfg in (KernelConfig(), default_config("tvw"), KernelConfig(bm=64, bn=32, bk=16)):
        assert KernelConfig.from_name(cfg.name, mma=cfg.mma) == cfg


def test_sparse_stage_holds_half_the_values_plus_metadata():
    dense = KernelConfig(bk=64)
    sparse = KernelConfig(bk=64, mma="sparse")
    assert sparse.weight_stage_bytes == dense.weight_stage_bytes // 2 + 128 * 4 * 2


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"bm": 100}, "bm"),
        ({"bk": 32, "mma": "sparse"}, "bk"),
        ({"mma": "fancy"}, "mma"),
        ({"stages": 1}, "stages"),
        ({"warps": 3}, "warps"),
        ({"bn": 0}, "bn"),
    ],
)
def test_bad_config_names_the_argument(kwargs, argument):
    with pytest.raises(InputError) as err:
        KernelConfig(**kwargs)
    assert err.value.argument == argument


@pytest.mark.parametrize(
    "name, grid",
    [
        ("128x128x32s3w4", (2, 2)),  # 64 x 64 warp tiles
        ("128x64x32s3w4", (2, 2)),  # 64 x 32 and 32 x 64 tie: fewer warps along bm wins
        ("64x128x32s3w4", (1, 4)),  # 64 x 32 and 32 x 64 tie again
        ("256x128x64s3w8", (4, 2)),
        ("64x16x64s4w4", (4, 1)),  # the only split with 16-token warp tiles
        ("128x128x32s3w1", (1, 1)),
        ("16x256x32s3w16", (1, 16)),
    ],
)
def test_warp_grid_is_the_most_square_split_that_fits(name, grid):
    config = KernelConfig.from_name(name)
    assert config.warp_grid == grid
    warps_m, warps_n = grid
    assert warps_m * warps_n == config.warps
    warp_m, warp_n = config.warp_tile
    assert (warp_m * warps_m, warp_n * warps_n) == (config.bm, config.bn)
    assert warp_m % 16 == 0 and warp_n % 16 == 0


def test_a_tile_no_warp_split_fits_is_refused_at_construction():
    for kwargs in ({"bm": 16, "bn": 16, "warps": 16}, {"bm": 32, "bn": 16, "warps": 4}):
        with pytest.raises(InputError) as err:
            KernelConfig(**kwargs)
        assert err.value.argument == "warps"
        assert "multiples of 16" in err.value.problem


def test_footprint_is_the_larger_of_pipeline_and_epilogue():
    shipped = default_config("tvw")
    assert (
        shipped.smem_bytes
        == shipped.pipeline_smem_bytes
        == 3 * (128 * 32 * 2 + 128 * 8 + 64 * 128 * 2)
    )
    # Two shallow stages: the epilogue's bm x (bn + 8) fp16 staging tile is larger.
    shallow = KernelConfig(bm=128, bn=64, bk=16, stages=2)
    assert shallow.pipeline_smem_bytes == 2 * (128 * 16 + 16 * 64) * 2
    assert shallow.smem_bytes == shallow.epilogue_smem_bytes == 128 * (64 + 8) * 2
