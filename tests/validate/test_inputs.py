"""What the GPU executor launches, built on the CPU: the work the model simulates, and
every point of every shipped sweep builds (prune, encode, schedule, host checks)."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from tvwsim.kernels.launch import plan_launch
from tvwsim.kernels.prepare import schedule_for_shape
from tvwsim.kernels.reference import matmul
from tvwsim.validate.inputs import (
    kernel_inputs,
    point_weight,
    prepare_point,
)
from tvwsim.validate.points import SweepPoint
from tvwsim.validate.rows import REL_TOLERANCE
from tvwsim.validate.spec import load_spec, shipped_sweeps
from tvwsim.validate.timing import check_kernel_output

from tvwsim.config import KernelConfig, default_config
from tvwsim.schedule import build_schedule


@pytest.mark.parametrize(
    "pattern, sparsity, policy, config",
    [
        ("dense", 0.0, "natural", None),
        ("vw", 0.5, "natural", None),
        ("bw", 0.75, "longest-first", None),
        ("tw", 0.75, "split", None),
        ("tvw", 0.875, "longest-first", KernelConfig(64, 128, 64, 4, 3, "sparse")),
    ],
)
def test_executor_inputs_are_the_work_the_model_simulates(pattern, sparsity, policy, config):
    """The GPU executor's schedule digest equals the model's for the same point, and the
    CPU twin's output passes the check that the GPU's output must pass."""
    config = config or default_config(pattern)
    point = SweepPoint("tvwsim", pattern, 200, 300, 257, sparsity, config, policy, seed=3)
    inputs = kernel_inputs(point)
    model = schedule_for_shape(
        200, 300, 257, pattern, sparsity, config=config, policy=policy, seed=3
    )
    assert inputs.schedule.digest() == model.digest()
    assert np.array_equal(inputs.schedule.tasks, model.tasks)
    y = matmul(inputs.x, inputs.encoded).astype(np.float16)
    err, checked = check_kernel_output(y, inputs)
    assert err < 1e-3 and checked == 200
    bad = y.copy()
    bad[-1, 0] += 100.0  # a wrong element in the ragged last token block
    assert check_kernel_output(bad, inputs)[0] > REL_TOLERANCE
    bad = y.copy()
    bad[0, -1] = np.nan  # an element no kernel wrote
    assert check_kernel_output(bad, inputs)[0] == np.inf


def test_every_point_of_every_shipped_sweep_builds_on_the_cpu():
    """What the GPU executor would launch for each point of quick.toml and full.toml:
    the weight pruned, encoded and scheduled, then the launcher's host checks. A spec the
    encoder or launcher refuses fails here, in CI, not on a GPU. Identical layers (same
    N, K, seed, pattern, sparsity, config, block) are prepared once; points that differ
    only in M or policy reuse them."""
    started = time.monotonic()
    points = {p.key: p for name in shipped_sweeps() for p in load_spec(name).points()}
    weights: dict[tuple, np.ndarray] = {}
    prepared: dict[tuple, object] = {}
    checked = Counter()
    for point in sorted(points.values(), key=lambda p: (p.n, p.k, p.seed)):
        shape = (point.n, point.k, point.seed)
        if shape not in weights:
            weights.clear()  # one weight in memory at a time: the largest is 256 MB
            weights[shape] = point_weight(point)
        if point.implementation != "tvwsim":
            checked["vendor"] += 1  # vendor libraries take the dense pruned weight
            continue
        layer = (*shape, point.pattern, point.sparsity, point.config, point.block)
        if layer not in prepared:
            prepared[layer] = prepare_point(point, weights[shape])
        work = prepared[layer]
        schedule = build_schedule(work.work, point.m, point.policy)
        plan = plan_launch(work.encoded, point.m, schedule)
        assert plan.tasks.shape[0] == schedule.n_tasks > 0, point.key
        checked[point.pattern] += 1
    elapsed = time.monotonic() - started
    assert sum(checked.values()) == len(points)
    assert set(checked) == {"dense", "bw", "vw", "tw", "tvw", "vendor"}
    print(f"{len(points)} points, {len(prepared)} distinct layers, {elapsed:.1f} s")
