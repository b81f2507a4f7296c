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
