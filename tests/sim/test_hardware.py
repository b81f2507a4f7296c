"""Hardware presets: shipped data, lookup path, overrides, writing, and `tvwsim hw`."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.presets import (
    PATH_ENV,
    SHIPPED_DIR,
    find_preset_files,
    hardware_fields,
    hardware_record,
    list_presets,
    load_preset,
    parse_overrides,
    write_preset,
)

from tvwsim.cli import main
from tvwsim.errors import InputError

SHIPPED = ["a100", "h100", "h200", "rtx3090", "t4", "v100"]

# Datasheet figures (TFLOP/s, fp16 tensor, fp32 accumulate): dense, 2:4 sparse (None = no
# sparse tensor cores), fp32 CUDA-core peak and the clock that peak is quoted at.
DATASHEET = {
    "a100": dict(dense=312.0, sparse=624.0, fp32=19.5, fp32_clock_mhz=1410.0),
    "h100": dict(dense=989.4, sparse=1978.9, fp32=67.0, fp32_clock_mhz=1980.0),
    # H200 datasheet: the H100 SXM's compute figures (same GH100 SM, same clocks).
    "h200": dict(dense=989.4, sparse=1978.9, fp32=67.0, fp32_clock_mhz=1980.0),
    "v100": dict(dense=125.0, sparse=None, fp32=15.7, fp32_clock_mhz=1530.0),
    # GA102 runs fp16 tensor math with fp32 accumulation at half the 142 TF fp16-acc rate.
    "rtx3090": dict(dense=71.0, sparse=142.0, fp32=35.6, fp32_clock_mhz=1695.0),
    # T4: 65 TF "mixed precision" (fp16 in, fp32 accumulate at full rate), no sparse cores.
    "t4": dict(dense=65.0, sparse=None, fp32=8.1, fp32_clock_mhz=1590.0),
}


@pytest.fixture(autouse=True)
def _no_user_presets(monkeypatch):
    """Tests see only the shipped presets unless they set the path themselves."""
    monkeypatch.delenv(PATH_ENV, raising=False)


def _assignments(text: str) -> list[tuple[str, str]]:
    """(key, comment) for every `key = value` line of a TOML file ('' when uncommented)."""
    found = []
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if not m:
            continue
        key, rest = m.groups()
        if rest.startswith('"'):
            end = rest.index('"', 1)  # shipped strings contain no escaped quotes
            rest = rest[end + 1 :]
        _, hash_, comment = rest.partition("#")
        found.append((key, comment.strip() if hash_ else ""))
    return found


# -- shipped presets -------------------------------------------------------------------------
def test_shipped_presets_are_listed_and_load():
    assert set(SHIPPED) <= set(list_presets())
    for name in SHIPPED:
        hardware = load_preset(name)
        assert isinstance(hardware, Hardware)
        assert hardware.name == name
        assert hardware.description and hardware.source


@pytest.mark.parametrize("name", SHIPPED)
def test_every_field_set_explicitly(name):
    # No figure may come from a dataclass default: the file sets every field but the
    # name (its file name) and extra (free-form provenance).
    data = tomllib.loads((SHIPPED_DIR / f"{name}.toml").read_text())
    assert "base" not in data
    assert set(data) == set(hardware_fields())
    assert "name" not in data and "extra" not in data


@pytest.mark.parametrize("name", SHIPPED)
def test_every_value_line_has_a_source_comment(name):
    text = (SHIPPED_DIR / f"{name}.toml").read_text()
    lines = _assignments(text)
    assert {key for key, _ in lines} == set(hardware_fields())
    for key, comment in lines:
        assert len(comment) >= 10, f"{name}.toml: {key} has no source comment"
    comments = dict(lines)
    for key in (
        "dram_efficiency",
        "l2_efficiency",
        "mma_efficiency_dense",
        "mma_efficiency_sparse",
        "cta_fixed_cycles",
    ):
        assert "first guess" in comments[key], f"{name}.toml: {key} must say it is a guess"
    for key, comment in comments.items():
        if key.endswith("_flops_per_clk_per_sm") and key.startswith("dense"):
            assert "derived" in comment


@pytest.mark.parametrize("name", SHIPPED)
def test_derived_peaks_match_datasheet(name):
    hw = load_preset(name)
    sheet = DATASHEET[name]
    assert hw.dense_peak_tflops == pytest.approx(sheet["dense"], rel=0.02)
    if sheet["sparse"] is None:
        assert not hw.has_sparse_tensor_cores
        assert hw.sparse_flops_per_clk_per_sm == hw.dense_flops_per_clk_per_sm
    else:
        sparse_tflops = hw.sparse_flops_per_clk_per_sm * hw.sm_count * hw.clock_mhz / 1e6
        assert sparse_tflops == pytest.approx(sheet["sparse"], rel=0.02)
    fp32 = hw.cuda_core_flops_per_clk_per_sm * hw.sm_count * sheet["fp32_clock_mhz"] / 1e6
    assert fp32 == pytest.approx(sheet["fp32"], rel=0.02)


@pytest.mark.parametrize("name", SHIPPED)
def test_presets_are_internally_consistent(name):
    hw = load_preset(name)
    assert hw.max_threads_per_sm == 32 * hw.max_warps_per_sm
    assert hw.smem_per_cta_bytes <= hw.smem_per_sm_bytes
    assert hw.l2_latency_cycles < hw.dram_latency_cycles
    assert hw.dram_bandwidth_gbps < hw.l2_bandwidth_gbps
    assert 1.0 <= hw.launch_overhead_us <= 10.0
    assert isinstance(hw.sm_count, int) and isinstance(hw.clock_mhz, float)


def test_generation_specific_facts():
    v100, a100, h100, rtx = (load_preset(n) for n in ("v100", "a100", "h100", "rtx3090"))
    assert not v100.has_cp_async and v100.sparse_tflop_ratio == 0
    assert all(hw.has_cp_async and hw.sparse_tflop_ratio == 2 for hw in (a100, h100, rtx))
    # The model's H100 clock is the one implied by the tensor peak, not the 1980 MHz boost.
    assert h100.clock_mhz == 1830.0
    # mma.sync-class code reaches only ~60-65% of Hopper's wgmma peak.
    assert 0.60 <= h100.mma_efficiency_dense <= 0.65
    assert h100.mma_efficiency_sparse < h100.mma_efficiency_dense
    assert rtx.max_warps_per_sm == 48 and rtx.max_ctas_per_sm == 16
    # Turing (cc 7.5): no cp.async, no sparse tensor cores, 32 warps and 64 KB per SM.
    t4 = load_preset("t4")
    assert not t4.has_cp_async and t4.sparse_tflop_ratio == 0
    assert t4.max_warps_per_sm == 32 and t4.max_ctas_per_sm == 16
    assert t4.smem_per_sm_bytes == t4.smem_per_cta_bytes == 64 * 1024


def test_h200_is_an_h100_with_more_memory_bandwidth_and_l2():
    """The H200 keeps the H100 SXM's processor; what differs is the memory system: 4.8
    against 3.35 TB/s of HBM, and 60 MB of L2 as the driver reported it on our machine."""
    h100, h200 = load_preset("h100"), load_preset("h200")
    same = (
        "sm_count",
        "clock_mhz",
        "dense_flops_per_clk_per_sm",
        "sparse_tflop_ratio",
        "smem_per_sm_bytes",
        "regs_per_sm",
        "max_warps_per_sm",
    )
    assert all(getattr(h100, f) == getattr(h200, f) for f in same)
    assert h200.dram_bandwidth_gbps / h100.dram_bandwidth_gbps == pytest.approx(4.8 / 3.35)
    assert h200.l2_bytes == 60 * 2**20 > h100.l2_bytes


def test_each_preset_names_the_arch_its_kernels_are_built_for():
    # CUDA GPUs list: V100 7.0, T4 7.5, A100 8.0, RTX 3090 8.6, H100 9.0.
    want = {
        "v100": "sm_70",
        "t4": "sm_75",
        "a100": "sm_80",
        "rtx3090": "sm_86",
        "h100": "sm_90",
        "h200": "sm_90",
    }
    assert {name: load_preset(name).arch for name in SHIPPED} == want
    # Nothing is guessed from a name: a hypothetical GPU has no arch until it is given one.
    assert Hardware(name="a100-like").arch == ""
    assert load_preset("a100", {"arch": "sm_90a"}).arch == "sm_90a"
    assert Hardware(name="future", arch="sm_120").arch == "sm_120"


def test_a_derived_preset_keeps_or_replaces_its_bases_arch(tmp_path, monkeypatch):
    (tmp_path / "big-a100.toml").write_text('base = "a100"\nsm_count = 216\n')
    (tmp_path / "h100-a.toml").write_text('base = "h100"\narch = "sm_90a"\n')
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    assert load_preset("big-a100").arch == "sm_80"
    assert load_preset("h100-a").arch == "sm_90a"


# -- overrides -------------------------------------------------------------------------------
def test_overrides_describe_hypothetical_hardware():
    base = load_preset("h100")
    hw = load_preset("h100", parse_overrides(["sm_count=256", "sparse_tflop_ratio=4"]))
    assert hw.sm_count == 256 and hw.sparse_tflop_ratio == 4.0
    assert hw.dense_peak_tflops == pytest.approx(base.dense_peak_tflops * 256 / 132)
    assert hw.sparse_flops_per_clk_per_sm == 4 * hw.dense_flops_per_clk_per_sm
    off = load_preset("a100", {"has_cp_async": "false", "description": "no cp.async"})
    assert off.has_cp_async is False and off.description == "no cp.async"
    none = load_preset("a100", {"sparse_tflop_ratio": "0"})
    assert not none.has_sparse_tensor_cores


def test_overrides_are_recorded_and_named_in_the_label():
    base = load_preset("a100")
    assert base.overrides == () and base.label == "a100"
    hw = load_preset("a100", parse_overrides(["sm_count=216", "clock_mhz=1500", "has_cp_async=no"]))
    # Normalised values, in the order given: what every output prints after the name.
    assert hw.overrides == (("sm_count", 216), ("clock_mhz", 1500.0), ("has_cp_async", False))
    assert hw.label == "a100 (sm_count=216, clock_mhz=1500, has_cp_async=false)"
    assert hw.name == "a100"  # the preset's name stays what finds its file
    # A second round of overrides adds to the record; a changed field keeps its place.
    again = hw.with_overrides({"clock_mhz": "1200", "l2_bytes": "83886080"})
    assert (
        again.label == "a100 (sm_count=216, clock_mhz=1200, has_cp_async=false, l2_bytes=83886080)"
    )
    # Hardware that differs only in its overrides record is not the same hardware label.
    assert load_preset("a100", {"sm_count": "108"}).label == "a100 (sm_count=108)"


def test_overrides_cannot_be_set_from_a_file_or_the_command_line(tmp_path, monkeypatch):
    with pytest.raises(InputError) as info:
        load_preset("a100", {"overrides": "x"})
    assert info.value.argument == "--set"
    (tmp_path / "sneaky.toml").write_text('base = "a100"\noverrides = []\n')
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    with pytest.raises(InputError) as info:
        load_preset("sneaky")
    assert info.value.argument == "sneaky.toml: overrides"


def test_hardware_record_has_every_effective_field():
    hw = load_preset("h100", {"sm_count": "256"})
    record = json.loads(json.dumps(hardware_record(hw)))
    assert record["hardware_overrides"] == {"sm_count": 256}
    assert set(record["hardware_fields"]) == set(hardware_fields())
    assert record["hardware_fields"]["sm_count"] == 256
    assert record["hardware_fields"]["clock_mhz"] == hw.clock_mhz


@pytest.mark.parametrize(
    "overrides, argument",
    [
        ({"sm_cuont": "8"}, "--set"),  # unknown key
        ({"sm_count": "many"}, "--set sm_count"),  # wrong type
        ({"sm_count": "1.5"}, "--set sm_count"),  # not an integer
        ({"sm_count": "0"}, "--set sm_count"),  # out of range
        ({"has_cp_async": "maybe"}, "--set has_cp_async"),
        ({"dram_efficiency": "1.5"}, "--set dram_efficiency"),
        ({"mma_efficiency_dense": "0"}, "--set mma_efficiency_dense"),
        ({"mma_efficiency_sparse": "1.2"}, "--set mma_efficiency_sparse"),  # above the peak
        ({"wgmma_efficiency_dense": "1.01"}, "--set wgmma_efficiency_dense"),
        ({"has_warpgroup_mma": "sometimes"}, "--set has_warpgroup_mma"),
        ({"sparse_tflop_ratio": "0.5"}, "--set sparse_tflop_ratio"),
        ({"launch_overhead_us": "-1"}, "--set launch_overhead_us"),
        ({"clock_mhz": "inf"}, "--set clock_mhz"),
        ({"smem_per_sm_bytes": "1024"}, "--set smem_per_cta_bytes"),  # below per-CTA max
        ({"arch": "compute_80"}, "--set arch"),  # a PTX target, not a cubin arch
        ({"arch": "sm80"}, "--set arch"),
        ({"arch": "sm_9"}, "--set arch"),
    ],
)
def test_bad_overrides_raise_one_clear_error(overrides, argument):
    with pytest.raises(InputError) as info:
        load_preset("a100", overrides)
    assert info.value.argument == argument


def test_unknown_override_key_suggests_the_near_miss():
    with pytest.raises(InputError, match="did you mean 'sm_count'"):
        load_preset("a100", {"sm_cuont": "8"})


@pytest.mark.parametrize("items", [["sm_count"], ["=5"], ["sm_count=1", "sm_count=2"]])
def test_parse_overrides_rejects_malformed(items):
    with pytest.raises(InputError) as info:
        parse_overrides(items)
    assert info.value.argument == "--set"


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
        max_size=6,
    )
)
def test_parse_overrides_round_trips(pairs):
    parsed = parse_overrides([f"{key}={value}" for key, value in pairs.items()])
    assert parsed == {key: value.strip() for key, value in pairs.items()}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4096), st.floats(100.0, 5000.0), st.sampled_from(SHIPPED))
def test_peak_scales_with_overridden_sm_count_and_clock(sm_count, clock_mhz, name):
    hw = load_preset(name, {"sm_count": str(sm_count), "clock_mhz": repr(clock_mhz)})
    expected = hw.dense_flops_per_clk_per_sm * sm_count * clock_mhz * 1e6 / 1e12
    assert hw.dense_peak_tflops == pytest.approx(expected)
    assert hw.cycles_to_us(clock_mhz) == pytest.approx(1.0)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(InputError) as info:
        load_preset("a1000", argument="--hw")
    assert info.value.argument == "--hw"
    assert all(name in str(info.value) for name in SHIPPED)
    assert "a100" in str(info.value)
    assert load_preset("A100").name == "a100"  # case is forgiven when unambiguous


# -- user presets, lookup path, writing ------------------------------------------------------
def test_user_directory_and_derived_presets(tmp_path, monkeypatch):
    user = tmp_path / "presets"
    user.mkdir()
    (user / "half-a100.toml").write_text(
        'base = "a100"  # start from the shipped A100\n'
        "sm_count = 54  # half the SMs\n"
        'description = "half an A100"  # for hw list\n'
    )
    (user / "a100.toml").write_text('base = "v100"\n')  # cannot replace the shipped a100
    monkeypatch.setenv(PATH_ENV, f"{tmp_path / 'missing'}:{user}")
    assert "half-a100" in list_presets()
    half, full = load_preset("half-a100"), load_preset("a100")
    assert half.sm_count == 54 and half.description == "half an A100"
    assert half.dense_peak_tflops == pytest.approx(full.dense_peak_tflops / 2)
    assert full.sm_count == 108  # the shipped file wins
    shadowed = [p for p in find_preset_files() if p.shadowed]
    assert [p.name for p in shadowed] == ["a100"] and shadowed[0].path.parent == user
    assert load_preset(str(user / "half-a100.toml")).sm_count == 54  # by path too


@pytest.mark.parametrize(
    "text, argument",
    [
        ("sm_count = 80\n", "bad.toml"),  # complete preset with missing fields
        ('base = "a100"\nsm_cuont = 80\n', "bad.toml: sm_cuont"),
        ('base = "a100"\nsm_count = "many"\n', "bad.toml: sm_count"),
        ('base = "a100"\nsm_count = 1.5\n', "bad.toml: sm_count"),
        ('base = "a100"\nhas_cp_async = 1\n', "bad.toml: has_cp_async"),
        ('base = "a100"\narch = 80\n', "bad.toml: arch"),
        ('base = "a100"\narch = "ampere"\n', "bad.toml: arch"),
        ('base = "a100"\ndram_efficiency = 2.0\n', "bad.toml: dram_efficiency"),
        ('base = "a100"\nname = "other"\n', "bad.toml: name"),
        ('base = "nope"\n', "bad.toml: base"),
        ('base = "bad"\n', "bad.toml: base"),  # a cycle
        ("sm_count = = 3\n", "bad.toml"),  # not TOML
    ],
)
def test_bad_preset_files_name_file_and_key(tmp_path, monkeypatch, text, argument):
    (tmp_path / "bad.toml").write_text(text)
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    with pytest.raises(InputError) as info:
        load_preset("bad")
    assert info.value.argument == argument


def test_write_preset_round_trips(tmp_path, monkeypatch):
    fitted = load_preset("a100", {"mma_efficiency_dense": "0.781", "cta_fixed_cycles": "640"})
    fitted = Hardware(
        **{**{k: getattr(fitted, k) for k in hardware_fields()}, "name": "x"},
        extra={"fit": {"residual_rms": 0.031, "files": ["a.jsonl", "b.jsonl"]}, "n": 12},
    )
    path = write_preset(
        fitted,
        tmp_path / "a100-calibrated.toml",
        comments={"mma_efficiency_dense": "fitted to 12 kernels"},
        header="A100, calibrated",
    )
    text = path.read_text()
    assert text.startswith("# A100, calibrated")
    assert "fitted to 12 kernels" in text
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    back = load_preset("a100-calibrated")
    assert back.name == "a100-calibrated"
    assert {k: getattr(back, k) for k in hardware_fields()} == {
        k: getattr(fitted, k) for k in hardware_fields()
    }
    assert back.extra == fitted.extra
    with pytest.raises(InputError):
        write_preset(fitted, tmp_path / "bad name.txt")


# -- command line ------------------------------------------------------------------------------
def test_cli_hw_list(capsys):
    assert main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert re.search(rf"^{name}\s", out, re.MULTILINE)
    assert main(["hw", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert by_name["v100"]["sparse_peak_tflops"] is None
    assert by_name["a100"]["dense_peak_tflops"] == pytest.approx(312, rel=0.02)


def test_cli_hw_show_text_and_json(capsys):
    assert main(["hw", "show", "a100", "--set", "sm_count=216"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a100 (sm_count=216): NVIDIA A100")
    assert re.search(r"^ \*sm_count\s+216$", out, re.MULTILINE)
    assert "dense_peak_tflops" in out and "source:" in out
    assert re.search(r"^  arch\s+sm_80$", out, re.MULTILINE)
    # an empty arch is said in words, not printed as a blank
    assert main(["hw", "show", "a100", "--set", "arch="]) == 0
    assert re.search(
        r"^ \*arch\s+none \(kernel resources are estimated", capsys.readouterr().out, re.M
    )
    assert main(["hw", "show", "h100", "--json", "--set", "sparse_tflop_ratio=4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["sparse_tflop_ratio"] == 4.0 and record["overrides"] == {
        "sparse_tflop_ratio": 4.0
    }
    assert set(hardware_fields()) <= set(record)
    assert record["label"] == "h100 (sparse_tflop_ratio=4)"
    assert record["derived"]["sparse_peak_tflops"] == pytest.approx(
        4 * record["derived"]["dense_peak_tflops"]
    )


def test_cli_hw_show_says_whether_the_efficiencies_were_fitted(capsys, tmp_path, monkeypatch):
    assert main(["hw", "show", "a100"]) == 0
    shipped = capsys.readouterr().out
    heading = next(line for line in shipped.splitlines() if line.startswith("efficiency"))
    assert "assumed" in heading and "not fitted" in heading
    (tmp_path / "a100-fit.toml").write_text(
        'base = "a100"\nmma_efficiency_dense = 0.8\n[extra.calibration]\nrows = 12\n'
    )
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    assert main(["hw", "show", "a100-fit"]) == 0
    fitted = capsys.readouterr().out
    heading = next(line for line in fitted.splitlines() if line.startswith("efficiency"))
    assert "fitted to measurements" in heading and "assumed" not in heading


def test_shipped_preset_files_do_not_claim_fitted_efficiencies():
    for preset in SHIPPED:
        text = (SHIPPED_DIR / f"{preset}.toml").read_text()
        heading = next(line for line in text.splitlines() if "efficiency parameters" in line)
        assert "not fitted" in heading, preset


@pytest.mark.parametrize(
    "argv, message",
    [
        (["hw", "show", "a1000"], "unknown hardware preset 'a1000'"),
        (["hw", "show", "a100", "--set", "sm_count"], "--set: expected key=value"),
        (["hw", "show", "a100", "--set", "bogus=1"], "--set: unknown hardware field 'bogus'"),
        (["hw", "show", "a100", "--set", "sm_count=x"], "--set sm_count: expected an integer"),
    ],
)
def test_cli_hw_errors_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert captured.err.count("\n") == 1
    if "a1000" in argv:
        assert all(name in captured.err for name in SHIPPED)


def test_cli_hw_list_shows_user_presets_and_survives_a_broken_one(capsys, tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text('base = "a100"\nsm_count = 54\n')
    (tmp_path / "broken.toml").write_text('base = "a100"\nsm_count = "many"\n')
    (tmp_path / "v100.toml").write_text('base = "a100"\n')
    monkeypatch.setenv(PATH_ENV, str(tmp_path))
    assert main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mine\s+54\s", out, re.MULTILINE)
    assert re.search(r"^broken\s+error: broken.toml: sm_count", out, re.MULTILINE)
    assert re.search(r"^v100 .*\[shadowed, ", out, re.MULTILINE)
