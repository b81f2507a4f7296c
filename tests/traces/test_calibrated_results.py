"""Calibrated presets kept with measurements (traces/measured/, traces/published/) stay
loadable: a preset file sets every Hardware field, so a field added to the model must be
added to these files too (with a comment saying it was not fitted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tvwsim.sim.presets import load_preset_file

TRACES = Path(__file__).resolve().parents[2] / "traces"
CALIBRATED = sorted(TRACES.glob("*/**/*-calibrated.toml"))


def test_there_are_calibrated_results():
    names = {p.stem for p in CALIBRATED}
    assert {"h200-calibrated", "v100-published-calibrated"} <= names


@pytest.mark.parametrize("path", CALIBRATED, ids=lambda p: p.stem)
def test_every_kept_calibrated_preset_loads_and_names_its_fit(path):
    hw = load_preset_file(path)
    calibration = hw.extra["calibration"]
    assert calibration["base"] in path.stem
    assert calibration["files"] and calibration["parameters"]
    for name, fitted in calibration["parameters"].items():
        assert getattr(hw, name) == pytest.approx(fitted["value"])
