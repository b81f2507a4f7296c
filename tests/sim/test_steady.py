"""The fast-forward (`tvwsim.sim.steady`) against the exact engine it stands in for.

The exact engine (`exact=True`) is the reference: the fast one must give the same launch
(time within 1%, every CTA placed), and where it recognises a steady state it must skip
(fewer events) without changing what an exactly periodic launch gives.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim.engine import Dispatcher, Gpu, exact_engine, simulate
from tvwsim.sim.occupancy import occupancy, resources_for
from tvwsim.sim.presets import load_preset

from tvwsim.cli import main
from tvwsim.pattern_spec import PATTERNS
from tvwsim.schedule import POLICIES


@pytest.fixture(autouse=True)
def _no_local_kernel_manifest(tmp_path, monkeypatch):
    """Estimated resources everywhere, whether or not kernels were built here."""
    monkeypatch.chdir(tmp_path)


def launch(
    m,
    n,
    k,
    pattern="dense",
    sparsity=0.0,
    *,
    hw="a100",
    policy="natural",
    seed=0,
    exact=False,
    **overrides,
):
    hardware = load_preset(hw, overrides or None)
    schedule = schedule_for_shape(m, n, k, pattern, sparsity, policy=policy, seed=seed)
    resources = resources_for(hardware, schedule.pattern, schedule.config, None)
    gpu = Gpu(schedule, hardware, resources, occupancy(hardware, resources), exact=exact)
    return gpu.run(), gpu


def assert_every_cta_placed(result, sm_count):
    assert np.all(result.cta_sm >= 0) and np.all(result.cta_sm < sm_count)
    assert np.all(result.cta_slot >= 0)
    assert np.all(result.cta_end_cycles > result.cta_start_cycles)
    assert result.cta_end_cycles.max() == pytest.approx(result.kernel_cycles)


def test_an_exactly_periodic_launch_is_skipped_without_changing_it():
    exact, _ = launch(2048, 2048, 4096, exact=True)
    fast, gpu = launch(2048, 2048, 4096)
    assert [kind for kind, *_ in gpu.steady.skips] and gpu.steady.skips[0][0] == "stage"
    assert fast.events < 0.6 * exact.events
    # A stage skip moves a launch that repeats exactly: the same times, CTA by CTA.
    assert fast.cycles == pytest.approx(exact.cycles, rel=1e-12)
    np.testing.assert_allclose(fast.cta_end_cycles, exact.cta_end_cycles, rtol=1e-12)
    np.testing.assert_array_equal(fast.cta_sm, exact.cta_sm)
    # The totals a skip adds are the skipped stages' own.
    for field in (
        "compute_busy_cycles",
        "l2_busy_cycles",
        "dram_busy_cycles",
        "l2_bytes",
        "dram_bytes",
        "l2_hit_rate",
        "tail_start_cycles",
    ):
        assert getattr(fast, field) == pytest.approx(getattr(exact, field), rel=1e-9), field


def test_whole_waves_are_skipped_at_their_mean_within_a_fraction_of_a_percent():
    # A small L2 makes each wave miss several L2s of data: waves are alike, so whole
    # waves are skipped (the rule that keeps the L2's reuse honest allows it).
    small_l2 = {"sm_count": 8, "l2_bytes": 2**20}
    exact, _ = launch(4096, 2048, 4096, exact=True, **small_l2)
    fast, gpu = launch(4096, 2048, 4096, **small_l2)
    waves = [skip for skip in gpu.steady.skips if skip[0] == "wave"]
    assert waves, gpu.steady.skips
    skipped_ctas = sum(periods * q for _, periods, q, _ in waves)
    assert skipped_ctas > 0.5 * exact.ctas
    assert fast.events < 0.1 * exact.events
    assert abs(fast.cycles / exact.cycles - 1) < 0.01
    assert abs(fast.dram_bytes / exact.dram_bytes - 1) < 0.01
    assert_every_cta_placed(fast, 8)
    # Skipped CTAs are placed where the CTAs a wave earlier ran, so each SM still runs
    # about its share.
    per_sm = np.bincount(fast.cta_sm, minlength=8)
    assert per_sm.min() >= 0.8 * per_sm.mean()


def test_waves_that_would_find_their_data_in_l2_again_are_not_skipped():
    # 4096 x 768 x 768 fits the H200's L2 many times over: a tile's first waves miss and
    # its later ones hit, so waves that look alike early on are not alike later.
    exact, _ = launch(4096, 768, 768, hw="h200", exact=True, sm_count=4)
    fast, gpu = launch(4096, 768, 768, hw="h200", sm_count=4)
    assert all(kind != "wave" for kind, *_ in gpu.steady.skips)
    assert fast.cycles == pytest.approx(exact.cycles, rel=1e-12)
    assert fast.dram_bytes == pytest.approx(exact.dram_bytes, rel=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hw=st.sampled_from(["a100", "h100", "h200", "rtx3090"]),
    sm_count=st.sampled_from([4, 8, 16]),
    m=st.sampled_from([256, 640, 1024, 2048]),
    n=st.sampled_from([256, 512, 1024]),
    k=st.sampled_from([512, 1024, 2048, 4096]),
    pattern=st.sampled_from(list(PATTERNS)),
    sparsity=st.sampled_from([0.5, 0.75]),
    policy=st.sampled_from(POLICIES),
    small_l2=st.booleans(),
    seed=st.integers(0, 99),
)
def test_the_fast_engine_is_within_one_percent_of_the_exact_one(
    hw, sm_count, m, n, k, pattern, sparsity, policy, small_l2, seed
):
    sparsity = PATTERNS[pattern].sparsity_for(sparsity) or 0.0
    overrides = {"sm_count": sm_count} | ({"l2_bytes": 2**20} if small_l2 else {})
    args = (m, n, k, pattern, sparsity)
    exact, _ = launch(*args, hw=hw, policy=policy, seed=seed, exact=True, **overrides)
    fast, _ = launch(*args, hw=hw, policy=policy, seed=seed, **overrides)
    assert abs(fast.cycles / exact.cycles - 1) < 0.01
    assert abs(fast.compute_busy_cycles / exact.compute_busy_cycles - 1) < 0.01
    assert fast.ctas == exact.ctas
    assert_every_cta_placed(fast, sm_count)


def test_a_plugged_in_dispatcher_runs_on_the_exact_engine():
    class Reversed(Dispatcher):
        def __init__(self, tasks):
            super().__init__(list(reversed(tasks)))

    hw = load_preset("a100")
    schedule = schedule_for_shape(1024, 1024, 2048, "dense", 0.0)
    resources = resources_for(hw, schedule.pattern, schedule.config, None)
    gpu = Gpu(schedule, hw, resources, occupancy(hw, resources), dispatcher=Reversed)
    assert gpu.steady is None  # its order is not in the snapshots


def test_exact_is_chosen_per_call_per_block_and_by_the_command_line(capsys):
    schedule = schedule_for_shape(2048, 2048, 4096, "dense", 0.0)
    hw = load_preset("a100")
    fast = simulate(schedule, hw, cache=False)
    exact = simulate(schedule, hw, cache=False, exact=True)
    assert exact.events > fast.events
    with exact_engine():
        assert simulate(schedule, hw, cache=False).events == exact.events
        assert simulate(schedule, hw, cache=False, exact=False).events == fast.events
    assert simulate(schedule, hw, cache=False).events == fast.events

    def events(*extra):
        shape = ["--hw", "a100", "--shape", "2048,2048,4096", "--pattern", "dense", "--json"]
        assert main(["simulate", *shape, *extra]) == 0
        payload = json.loads(capsys.readouterr().out)
        rows = payload["results"] if "results" in payload else [payload]
        return rows[0]["events"]

    assert events("--exact") == exact.events
    assert events() == fast.events
