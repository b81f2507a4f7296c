"""The core model feeding the engine (`Hardware.core_model`): our shipped kernels' stage
hold comes from their SASS loop; everything without a stored loop keeps the efficiency
rule; the shipped presets leave it off."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels.tile_work import regular_tile_work
from tvwsim.sim.core.kernel import analyse_kernel, core_stage_cycles
from tvwsim.sim.engine import simulate
from tvwsim.sim.occupancy import estimate_resources, occupancy
from tvwsim.sim.presets import SHIPPED_DIR, load_preset
from tvwsim.sim.sm import TensorCoreMma

from tvwsim.config import KernelConfig, default_config
from tvwsim.schedule import build_schedule


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def schedule(pattern, config, m=512, n=512, k=1024):
    return build_schedule(regular_tile_work(pattern, n, k, config), m)


@pytest.mark.parametrize("pattern", ["dense", "vw"])
def test_a_shipped_kernels_stage_is_the_core_models_sm_time(pattern):
    hw = load_preset("a100", {"core_model": "true"})
    config = default_config(pattern)
    s = schedule(pattern, config)
    ctas = occupancy(hw, estimate_resources(config)).ctas_per_sm
    cycles = TensorCoreMma.stage_cycles(s, hw, ctas_per_sm=ctas)
    core = analyse_kernel(hw, pattern, config, ctas=ctas)
    assert np.allclose(cycles, core.sm_cycles_per_stage)
    assert core_stage_cycles(hw, pattern, config, ctas) == pytest.approx(cycles[0])
    # The efficiency rule gives another figure: the switch really changes the engine.
    off = TensorCoreMma.stage_cycles(s, load_preset("a100"), ctas_per_sm=ctas)
    assert not np.allclose(off, cycles)


def test_kernels_without_a_stored_loop_keep_the_efficiency_rule():
    on = load_preset("a100", {"core_model": "true"})
    off = load_preset("a100")
    odd = KernelConfig(bm=64, bn=64, bk=32, warps=4, stages=2)  # not a shipped variant
    s = schedule("dense", odd)
    assert core_stage_cycles(on, "dense", odd) is None
    assert np.array_equal(TensorCoreMma.stage_cycles(s, on), TensorCoreMma.stage_cycles(s, off))
    # A GPU no loop of ours is compiled or translated for (Turing) has no loop either.
    t4 = load_preset("t4", {"core_model": "true"})
    assert core_stage_cycles(t4, "dense", default_config("dense")) is None


def test_the_engine_uses_the_occupancys_ctas_for_the_core():
    hw = load_preset("a100", {"core_model": "true", "sm_count": 4})
    config = default_config("dense")
    s = schedule("dense", config, m=1024, n=1024, k=512)
    result = simulate(s, hw, estimate_resources(config), cache=False)
    per_stage = core_stage_cycles(hw, "dense", config, result.ctas_per_sm)
    stages = int(s.task_stages().sum())
    assert result.compute_busy_cycles == pytest.approx(stages * per_stage)


def test_every_shipped_preset_leaves_the_core_model_off():
    for path in sorted(SHIPPED_DIR.glob("*.toml")):
        assert load_preset(path.stem).core_model is False
