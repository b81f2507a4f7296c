"""What a worker evaluates: points that differ only in the sparse tensor core share the
simulations of the kernels that do not use it, and the rows do not change for it."""

from __future__ import annotations

import dataclasses

import pytest
from tvwsim.explore import evaluate
from tvwsim.explore.evaluate import SPARSE_MMA_FIELDS, evaluate_unit, seen_by, units
from tvwsim.explore.spec import load_spec
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim import engine
from tvwsim.sim.engine import simulate
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.presets import load_preset

from tests.explore.conftest import write_spec
from tvwsim.pattern_spec import PATTERN_NAMES, mma_kind

OTHER_SPARSE_CORE = {
    "sparse_tflop_ratio": 4.0,
    "mma_efficiency_sparse": 0.5,
    "wgmma_efficiency_sparse": 0.3,
    "core_mma_sp_peak_fraction": 0.5,
}


def test_the_sparse_core_fields_are_hardware_fields():
    assert set(OTHER_SPARSE_CORE) == set(SPARSE_MMA_FIELDS)
    assert set(SPARSE_MMA_FIELDS) <= {f.name for f in dataclasses.fields(Hardware)}


@pytest.mark.parametrize("preset", ["a100", "h100", "v100"])  # v100: no sparse core at all
@pytest.mark.parametrize("core_model", [False, True])
def test_a_kernel_without_sparse_mma_ignores_the_sparse_core(preset, core_model):
    """The rule `seen_by` relies on: changing only the sparse core's fields leaves every
    dense-MMA kernel's result as it was, and moves a sparse-MMA one."""
    hw = load_preset(preset, {"core_model": core_model})
    other = hw.with_overrides(OTHER_SPARSE_CORE)
    for pattern in PATTERN_NAMES:
        sparsity = {"dense": 0.0, "vw": 0.5}.get(pattern, 0.75)
        schedule = schedule_for_shape(512, 1024, 1024, pattern, sparsity)
        mine, theirs = simulate(schedule, hw), simulate(schedule, other)
        if mma_kind(pattern) == "sparse":
            if not core_model:  # the efficiency rule's 2:4 rate binds on this shape
                assert mine.time_us != theirs.time_us, pattern
            assert seen_by(pattern, hw) is hw
        else:
            assert (mine.time_us, mine.l2_hit_rate) == (theirs.time_us, theirs.l2_hit_rate)
            assert mine.compute_utilisation == theirs.compute_utilisation, pattern
            assert seen_by(pattern, hw) == seen_by(pattern, other)


SIBLINGS = """
base = "a100"
patterns = ["tw", "tvw"]
sparsities = [0.75]
[hardware]
sparse_tflop_ratio = [0, 2, 4]
sm_count = [2, 4]
[[workload]]
model = "{catalog}"
seq = 64
trace = "none"
"""


def test_sparse_core_siblings_share_the_dense_mma_runs_and_keep_their_rows(tmp_path, monkeypatch):
    from tvwsim.sim import model as sim_model

    from tests.explore.test_run import MODEL

    catalog = tmp_path / "toy3.toml"
    catalog.write_text(MODEL.replace("n = 256", "n = 384"))  # a workload no other test ran
    spec = load_spec(write_spec(tmp_path, SIBLINGS.format(catalog=catalog), "siblings.toml"))
    every = units(spec)
    # Grid order has the ratio slowest; the units put a point's three ratios together.
    assert [dict(u.point.values)["sm_count"] for u in every] == [2, 2, 2, 4, 4, 4]
    assert sorted(u.point.index for u in every) == list(range(6))
    asked = []
    real = sim_model.simulate_model
    monkeypatch.setattr(
        sim_model,
        "simulate_model",
        lambda workload, hw, runs, **kw: (
            asked.append(runs[-1].pattern) or real(workload, hw, runs, **kw)
        ),
    )
    simulated = []
    real_gpu = engine.Gpu

    def gpu(schedule, hw, *args, **kwargs):
        simulated.append((schedule.pattern, hw.sparse_tflop_ratio))
        return real_gpu(schedule, hw, *args, **kwargs)

    monkeypatch.setattr(engine, "Gpu", gpu)
    engine.clear_cache()
    rows = [row for unit in every for row in evaluate_unit(unit)]
    assert asked.count("tw") == 2 and asked.count("tvw") == 6  # dense+tw once per SM count
    # No kernel without sparse MMA ever ran on a point's own sparse core: the view's.
    assert {ratio for pattern, ratio in simulated if pattern != "tvw"} == {2.0}
    assert {ratio for pattern, ratio in simulated if pattern == "tvw"} == {0.0, 2.0, 4.0}
    monkeypatch.setattr(engine, "Gpu", real_gpu)
    # Every row is what the whole model gives on that very point.
    evaluate._model_result.cache_clear()
    workload = evaluate._workload(str(catalog), 1, 64)
    for unit in every:
        fresh = real(workload, unit.point.hardware, sim_model.model_runs(["tw", "tvw"], [0.75]))
        mine = [r for r in rows if r["unit"] == unit.key]
        assert [r["time_us"] for r in mine] == [fresh.total_us(run) for run in fresh.runs]
    tvw = {r["sparse_tflop_ratio"]: r["time_us"] for r in rows if r["pattern"] == "tvw"}
    assert len(set(tvw.values())) == 3  # the ratio does move the sparse kernel
