"""Host-side checks before a launch (kernels/launch_plan.py): no device, no driver.

A schedule must name existing tiles and token blocks, keep each task's K range inside its
tile in whole stages, cover every (tile, block) exactly once, and have been built for
this pattern, shape and config; anything else is an InputError naming `schedule`.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks, launch_plan
from tvwsim.kernels.tile_work import tile_work

from tvwsim.errors import InputError


def test_plan_accepts_every_policy(tw_case):
    from tvwsim.schedule import build_schedule

    encoded, x, _ = tw_case
    for policy in ("natural", "longest-first", "split"):
        schedule = build_schedule(tile_work(encoded), 100, policy)
        plan = launch_plan.plan_launch(encoded, 100, schedule)
        assert plan.needs_workspace == schedule.has_split_tasks
        assert plan.m8 == 104 and plan.tasks.dtype == np.int32
        # Split tiles are converted per (tile, block) in the finalize pass.
        kinds = plan.regions[:, 0]
        assert (kinds == 0).any() == schedule.has_split_tasks
        assert ((kinds == 2).sum()) == encoded.n - (encoded.row_map >= 0).sum()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: np.vstack([t, [[10_000, 0, 0, 0]]]), "weight tile does not exist"),
        (lambda t: np.vstack([t, [[0, 5, 0, 0]]]), "token block does not exist"),
        (lambda t: t[1:], "no task computes"),
        (lambda t: np.vstack([t, t[:1]]), "exactly once"),
        (lambda t: _shift_end(t, 64), "outside the tile"),
        (lambda t: _shift_end(t, 16), "whole stages"),
        (lambda t: t[:, :3], r"\[n_tasks, 4\]"),
        (lambda t: t[:0], "no task computes"),
        (lambda t: t.astype(np.float32), "integers"),
    ],
)
def test_plan_rejects_a_bad_schedule(tw_case, edit, match):
    encoded, _, schedule = tw_case
    tasks = edit(np.array(schedule.tasks))
    with pytest.raises(InputError, match=match) as err:
        launch_plan.plan_launch(encoded, 100, tasks)
    assert err.value.argument == "schedule"


def _shift_end(tasks: np.ndarray, by: int) -> np.ndarray:
    tasks = tasks.copy()
    i = int(np.argmax(tasks[:, 3]))
    tasks[i, 3] += by
    return tasks


def test_plan_rejects_a_schedule_for_another_gemm(tw_case):
    from tvwsim.schedule import build_schedule

    encoded, _, schedule = tw_case
    with pytest.raises(InputError, match="m = 100") as err:
        launch_plan.plan_launch(encoded, 99, schedule)
    assert err.value.argument == "schedule"
    other = checks.make_case_inputs(
        checks.CheckCase("tw", kbuild.VARIANTS["tw"][3], 100, 300, 260, "natural")
    )[0]
    with pytest.raises(InputError, match="bm, bk and the mma kind"):
        launch_plan.plan_launch(encoded, 100, build_schedule(tile_work(other), 100))
