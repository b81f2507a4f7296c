"""The GPU campaign script's CPU side: its plan, and that every sweep it names ships."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tvwsim.validate.spec import load_spec, shipped_sweeps

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_campaign.sh"


def _plan(**env: str) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=30,
    )
    return proc.stdout


def test_dry_run_orders_the_steps_so_the_first_minutes_buy_the_most():
    plan = _plan(BUDGET_S="420")
    assert "BUDGET_S=420" in plan
    steps = [
        "nvidia-smi",
        "PyCUDA built on the machine",
        "kernels build",
        "kernels check",
        "--sweep quick",
        "--sweep targets",
        "ncu counters",
        "--sweep full",
    ]
    at = [plan.index(step) for step in steps]
    assert at == sorted(at), plan
    # every bounded step says how long it may take
    assert re.search(r"kernels check \(probes first\)\s+\d+", plan)


def test_sweeps_named_by_the_campaign_ship_and_parse():
    text = SCRIPT.read_text()
    named = set(re.findall(r"--sweep (\w+)", text)) | {"quick", "targets", "full", "counters"}
    named |= set(re.search(r"SWEEPS:-([a-z ]+)\}", text).group(1).split())
    assert named <= set(shipped_sweeps())
    for name in named:
        assert load_spec(name).points()
    # the counters sweep profiles every kernel and the two libraries it is compared with
    counters = load_spec("counters").points()
    assert {p.pattern for p in counters} >= {"dense", "bw", "vw", "tw", "tvw"}
    assert {p.implementation for p in counters} == {"tvwsim", "cublas", "cusparselt"}


def test_sweeps_named_in_the_environment_appear_in_the_plan():
    plan = _plan(SWEEPS="quick variants")
    assert "--sweep variants" in plan and "--sweep targets" not in plan


def test_an_sm_90_campaign_builds_checks_and_times_the_wgmma_kernels_after_quick():
    plan = _plan()
    assert "kernels build --arch sm_90,sm_90a" in plan
    at = [plan.index(step) for step in ("kernels check", "--sweep quick", "--sweep hopper")]
    assert at == sorted(at) and plan.index("--sweep hopper") < plan.index("--sweep targets")
    assert "sm_90a" not in _plan(ARCH="sm_80")
    hopper = load_spec("hopper").points()
    wgmma = {p.pattern for p in hopper if p.config is not None and p.config.mma_class == "wgmma"}
    assert wgmma == {"dense", "tw", "vw", "tvw"}
    assert {p.implementation for p in hopper} == {"tvwsim", "cublas", "cusparselt"}
