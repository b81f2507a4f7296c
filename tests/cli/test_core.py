"""`tvwsim core`: the teaching view of one kernel's main loop on one SM."""

from __future__ import annotations

import json

import pytest
from tvwsim.sim.core.kernel import analyse_kernel, efficiency_stage_cycles, parse_kernel
from tvwsim.sim.presets import load_preset

from tvwsim.cli import main
from tvwsim.errors import InputError


def test_text_view_names_the_critical_resource_and_draws_issue_slots(capsys):
    assert main(["core", "--hw", "a100", "--kernel", "tvw-128x128x64s3w4", "--cycles", "60"]) == 0
    out = capsys.readouterr().out
    assert "tvw-128x128x64s3w4 on a100 (sm_80 code" in out
    assert "critical resource:" in out and "efficiency model:" in out
    assert "hmma_sp 64" in out  # the instruction mix per warp per stage
    rows = [line for line in out.splitlines() if line.startswith("  w") and " |" in line]
    assert len(rows) == 8  # 2 CTAs of 4 warps (register-limited occupancy)
    assert all(len(row.split("|", 1)[1]) == 60 for row in rows)


def test_json_agrees_with_the_library_call(capsys):
    argv = ["core", "--hw", "h200", "--kernel", "dense-128x128x32s3w4", "--ctas", "1", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    hw = load_preset("h200")
    found = analyse_kernel(hw, *parse_kernel("dense-128x128x32s3w4"), ctas=1)
    assert data["cycles_per_stage_per_cta"] == found.result.cycles_per_stage
    assert data["ctas"] == 1 and data["ctas_limited_by"] == "given" and data["code"] == "sm_90"
    assert data["instruction_mix_per_warp_per_stage"]["hmma"] == 64
    assert data["efficiency_model_cycles_per_stage"] == pytest.approx(
        efficiency_stage_cycles(hw, found.config)
    )
    assert data["bound"] in {*data["utilisation"], "latency"}


def test_set_reaches_the_core(capsys):
    base = ["core", "--hw", "a100", "--kernel", "dense-128x128x32s3w4", "--json", "--ctas", "1"]
    main(base)
    slow = json.loads(capsys.readouterr().out)["cycles_per_stage_per_cta"]
    main([*base, "--set", "core_mma_sync_peak_fraction=0.5"])
    slower = json.loads(capsys.readouterr().out)["cycles_per_stage_per_cta"]
    assert slower > slow


def test_no_swizzle_shows_the_bank_conflicts(capsys):
    base = ["core", "--hw", "a100", "--kernel", "dense-128x128x32s3w4", "--json", "--cycles", "0"]
    main(base)
    swizzled = json.loads(capsys.readouterr().out)
    main([*base, "--no-swizzle"])
    plain = json.loads(capsys.readouterr().out)
    assert swizzled["swizzled"] is True and plain["swizzled"] is False
    assert plain["bound"] == "smem" != swizzled["bound"]
    assert plain["sm_cycles_per_stage"] > 2 * swizzled["sm_cycles_per_stage"]


def test_v100_runs_the_translated_loop(capsys):
    assert main(["core", "--hw", "v100", "--kernel", "dense-128x128x32s3w4", "--cycles", "0"]) == 0
    out = capsys.readouterr().out
    assert "(sm_80 code as sm_70 runs it" in out and "hmma 512" in out  # 64 x 8 HMMA.884


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["--hw", "a100", "--kernel", "dense-100x128x32s3w4"], "--kernel"),
        (["--hw", "a100", "--kernel", "ew-128x128x32s3w4"], "--kernel"),
        (["--hw", "a100", "--kernel", "bw-128x128x32s3w4-b48"], "--kernel"),
        (["--hw", "t4", "--kernel", "dense-128x128x32s3w4"], "--hw"),  # Turing: no loop
        (["--hw", "a100", "--kernel", "dense-128x128x32s3w4", "--ctas", "0"], "--ctas"),
        (["--hw", "a100", "--kernel", "dense-128x128x32s3w4", "--set", "core_issue_width=0"],
         "core_issue_width"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_argument(argv, argument, capsys):
    assert main(["core", *argv]) == 2
    err = capsys.readouterr().err
    assert argument in err and len(err.strip().splitlines()) == 1


def test_parse_kernel():
    pattern, config, block = parse_kernel("bw-128x128x32s3w4-b64")
    assert (pattern, config.name, block) == ("bw", "128x128x32s3w4", 64)
    assert parse_kernel("bw-128x128x32s3w4")[2] == 32
    with pytest.raises(InputError, match="--kernel"):
        parse_kernel("dense-128x128x32s3w4-b32")
