"""The roofline (sim/roofline.py, `tvwsim roofline`): the roofs are the preset's peaks, the
points are the simulated GEMMs, and the picture plots exactly those numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tvwsim.sim.roofline import Roof, RooflinePoint, compulsory_bytes, roofline_figure

import tvwsim
from tvwsim.cli import main
from tvwsim.errors import InputError


@pytest.fixture(scope="module")
def a100():
    return tvwsim.load_preset("a100")


@pytest.fixture(scope="module")
def points(a100):
    out = []
    for m, n, k in [(128, 768, 768), (16, 1024, 1024), (1024, 1024, 512)]:
        result = tvwsim.simulate(tvwsim.schedule_for_shape(m, n, k, "dense", 0.0), a100)
        out.append((RooflinePoint.of(result), result))
    return out


def test_roof_is_the_presets_peaks(a100) -> None:
    roof = Roof.of(a100)
    # A100 SXM: 312 dense fp16 tensor TFLOP/s, 1555 GB/s HBM2 (datasheet).
    assert roof.peak_tflops == pytest.approx(312, rel=0.01)
    assert roof.dram_tbps == pytest.approx(1.555)
    assert roof.ridge == pytest.approx(roof.peak_tflops / 1.555)
    assert roof.achievable_tflops == pytest.approx(roof.peak_tflops * a100.mma_efficiency_dense)
    assert roof.sparse_peak_tflops == pytest.approx(2 * roof.peak_tflops)
    assert roof.attainable(10) == pytest.approx(15.55)
    assert roof.attainable(1e6) == roof.peak_tflops
    assert roof.attainable(10, level="l2") == pytest.approx(54.0)
    with pytest.raises(InputError, match="level"):
        roof.attainable(10, level="l3")
    with pytest.raises(InputError, match="hw"):
        Roof.of("a100")


def test_point_is_intensity_and_simulated_throughput(points) -> None:
    for point, result in points:
        m, n, k = result.m, result.n, result.k
        assert compulsory_bytes(m, n, k) == 2 * (m * k + n * k + m * n)
        assert point.intensity == pytest.approx(2 * m * n * k / compulsory_bytes(m, n, k))
        assert point.tflops == pytest.approx(2 * m * n * k / (result.time_us * 1e-6) / 1e12)
        # The simulation never moves less than the compulsory bytes.
        assert point.simulated_intensity <= point.intensity * 1.0001
        assert point.bottleneck == result.bottleneck


def test_no_point_is_above_its_roof(points, a100) -> None:
    roof = Roof.of(a100)
    for point, _ in points:
        assert point.tflops <= roof.attainable(point.intensity) * 1.0001


def test_picture_plots_exactly_the_points_and_the_roofs(points, a100) -> None:
    roof = Roof.of(a100)
    fig = roofline_figure(roof, [p for p, _ in points])
    (ax,) = fig.axes
    (scatter,) = ax.collections
    np.testing.assert_allclose(
        scatter.get_offsets(), [(p.intensity, p.tflops) for p, _ in points], rtol=1e-12
    )
    dram, l2, achievable = ax.lines[:3]
    x, y = dram.get_data()
    np.testing.assert_allclose(y, np.minimum(roof.peak_tflops, roof.dram_tbps * x))
    x, y = l2.get_data()
    np.testing.assert_allclose(y, np.minimum(roof.peak_tflops, roof.l2_tbps * x))
    assert achievable.get_data()[1].max() == pytest.approx(roof.achievable_tflops)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_command_prints_the_same_numbers_as_json(capsys) -> None:
    assert (
        main(["roofline", "--hw", "a100", "--shape", "16,1024,1024", "128,768,768", "--json"]) == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["hardware"] == "a100"
    assert [p["name"] for p in record["points"]] == ["16x1024x1024", "128x768x768"]
    for p in record["points"]:
        assert p["attainable_tflops"] == pytest.approx(
            min(record["roof"]["peak_tflops"], record["roof"]["dram_tbps"] * p["intensity"])
        )


def test_command_places_a_models_distinct_gemms(capsys, tmp_path) -> None:
    out = tmp_path / "roof.png"
    assert main(["roofline", "bert-base", "--hw", "a100", "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    # BERT-base has 8 GEMMs of 5 shapes: q, k, v and attention-out share one.
    assert "attn.q +3" in text and "ffn1" in text and "attn.context" in text
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, named",
    [
        (["roofline", "--hw", "a100"], "--shape"),
        (["roofline", "--hw", "a100", "--shape", "1,2"], "--shape"),
        (["roofline", "--hw", "a100", "--shape", "1,2,3", "--config", "big"], "--config"),
        (["roofline", "--hw", "a100", "--shape", "1,2,3", "--plot", "r.gif"], "--plot"),
        (["roofline", "--hw", "a100", "--shape", "1,2,3", "--plot", "no/dir/r.png"], "--plot"),
        (["roofline", "--hw", "a999", "--shape", "1,2,3"], "--hw"),
        (["roofline", "bert-base", "--hw", "a100", "--batch", "0"], "--batch"),
    ],
)
def test_command_refuses_bad_input_by_name(argv, named, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tvwsim roofline: error: {named}") and len(err.splitlines()) == 1
