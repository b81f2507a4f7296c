"""The size guard (sim/cost.py): estimates close to what a simulation really costs, and
one clear refusal naming the option when they exceed the limits."""

from __future__ import annotations

import textwrap

import pytest
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.sim.cost import (
    CostLimits,
    SimulationCost,
    check_cost,
    format_bytes,
    gemm_cost,
    model_cost,
    total_cost,
)
from tvwsim.sim.engine import simulate
from tvwsim.sim.model import model_runs
from tvwsim.sim.presets import load_preset
from tvwsim.traces.catalog import load_workload

from tvwsim.config import default_config
from tvwsim.errors import InputError


@pytest.mark.parametrize(
    "shape, pattern, sparsity",
    [
        ((512, 1024, 1024), "dense", 0.0),
        ((512, 1024, 1024), "vw", 0.5),
        ((512, 1024, 1024), "ew", 0.75),
        ((512, 1024, 1024), "bw", 0.5),
        ((512, 1024, 1024), "tw", 0.75),
        ((512, 1024, 1024), "tvw", 0.75),
        ((1000, 1300, 700), "tw", 0.5),  # ragged edges everywhere
    ],
)
def test_event_estimate_is_within_a_factor_of_two_of_the_engine(shape, pattern, sparsity):
    config = default_config(pattern)
    schedule = schedule_for_shape(*shape, pattern, sparsity, config=config)
    events = simulate(schedule, load_preset("a100"), cache=False).events
    estimate = gemm_cost(*shape, pattern, sparsity, config).events
    assert events / 2 <= estimate <= 2 * events
    if pattern in ("dense", "vw"):  # regular work: the count is exact up to the SM slots
        assert abs(estimate - events) <= 2 * 108 * 2


def test_memory_estimate_counts_the_weight_only_where_it_is_drawn():
    n, k = 4096, 4096
    dense = gemm_cost(128, n, k, "dense", 0.0, default_config("dense"))
    tw = gemm_cost(128, n, k, "tw", 0.75, default_config("tw"))
    given = gemm_cost(128, n, k, "dense", 0.0, default_config("dense"), weight_bytes_per_element=8)
    # tw draws a float32 weight, a bool mask and an encoding; dense needs none of it ...
    assert tw.memory_bytes >= n * k * 5 > 10 * dense.memory_bytes
    # ... unless a float64 weight file is given, which is pruned whatever the pattern.
    assert given.memory_bytes >= n * k * 9


def test_the_issue_shapes_are_far_over_any_sensible_limit():
    huge_n = gemm_cost(4096, 1_000_000_000, 768, "tw", 0.75, default_config("tw"))
    huge_m = gemm_cost(1_000_000_000, 3072, 768, "tw", 0.75, default_config("tw"))
    assert huge_n.memory_bytes > 2 * 2**40  # numpy asked for 2.8 TiB for the weight alone
    assert huge_m.events > 10**9  # one task per token block and weight tile
    limits = CostLimits(memory_bytes=64 * 2**30, events=100_000_000)
    for cost in (huge_n, huge_m):
        with pytest.raises(InputError) as err:
            check_cost(cost, limits, argument="--shape", what="this GEMM")
        assert err.value.argument == "--shape"
        assert "--force" in err.value.problem and "limit" in err.value.problem


def test_the_message_states_each_estimate_over_its_limit_and_nothing_else():
    limits = CostLimits(memory_bytes=2**30, events=1000)
    with pytest.raises(InputError) as err:
        check_cost(SimulationCost(3 * 2**30, 10), limits)
    assert "3 GiB of memory" in str(err.value) and "limit 1 GiB" in str(err.value)
    assert "events" not in str(err.value)
    with pytest.raises(InputError) as err:
        check_cost(SimulationCost(10, 45_000), limits)
    assert "about 45,000 simulation events" in str(err.value) and "memory" not in str(err.value)
    check_cost(SimulationCost(2**30, 1000), limits)  # at the limit: allowed


def test_costs_of_gemms_in_sequence_take_the_largest_memory_and_add_events():
    total = total_cost([SimulationCost(5, 10), SimulationCost(7, 1), SimulationCost(2, 100)])
    assert total == SimulationCost(7, 111)
    assert format_bytes(3 * 2**40) == "3 TiB" and format_bytes(512) == "512 B"


def test_model_cost_counts_equal_launches_once(tmp_path):
    path = tmp_path / "twice.toml"
    path.write_text(
        textwrap.dedent(
            """
            description = "the same GEMM twice, and once more under another name"
            source = "tests"
            [[gemm]]
            name = "a"
            m = 256
            n = 512
            k = 256
            count = 4
            [[gemm]]
            name = "b"
            m = 256
            n = 512
            k = 256
            count = 1
            """
        )
    )
    workload = load_workload(str(path), batch=1, seq=1)
    runs = model_runs(["dense", "tw"], [0.75])
    one = {
        run.pattern: gemm_cost(
            256, 512, 256, run.pattern, run.sparsity, default_config(run.pattern)
        )
        for run in runs
    }
    untraced = model_cost(workload, runs, traced=False)
    assert untraced.events == one["dense"].events + one["tw"].events
    # With a trace, each instance of a value-dependent GEMM may be its own launch.
    traced = model_cost(workload, runs, traced=True)
    assert traced.events == one["dense"].events + (4 + 1) * one["tw"].events
    assert traced.memory_bytes == max(c.memory_bytes for c in one.values())
