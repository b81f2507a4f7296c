"""`tvwsim kernels list`: every shipped variant with its compiled resources (from a
manifest), its CTAs per SM on the a100 and h200 presets, and optionally the main loop's
SASS mix. No nvcc here: the manifests are written by hand and the SASS is a stand-in
text (tests/kernels/test_cuda_build.py lists a really built kernel)."""

from __future__ import annotations

import json

import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.sim.occupancy import estimate_resources, occupancy
from tvwsim.sim.presets import load_preset

from tvwsim.cli import main
from tvwsim.config import KernelConfig
from tvwsim.manifest import BuiltKernel, Manifest, kernel_dir, write_manifest

TVW_128 = "128x128x64s3w4"  # 128 threads, 76800 B shared memory
TVW_64 = "128x64x64s3w4"  # 128 threads, 52224 B shared memory


def _variant(pattern: str, config: str) -> KernelConfig:
    return next(c for c in kbuild.VARIANTS[pattern] if c.name == config)


def _entry(config: str, arch: str, registers: int, spill: int = 0) -> BuiltKernel:
    c = _variant("tvw", config)
    return BuiltKernel(
        pattern="tvw",
        config=config,
        arch=arch,
        cubin=f"tvw-{config}-{arch}.cubin",
        function="tvw_gemm",
        registers=registers,
        shared_static_bytes=0,
        shared_dynamic_bytes=c.smem_bytes,
        stack_frame_bytes=0,
        spill_store_bytes=spill,
        spill_load_bytes=spill // 2,
    )


def _fake_build(directory, *entries: BuiltKernel):
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(Manifest(nvcc="fake nvcc", kernels=entries), directory)
    for e in entries:
        (directory / e.cubin).write_bytes(b"not really a cubin")
    return directory


def _row(out: str, pattern: str, config: str) -> list[str]:
    """The table line of one variant, split: its last five cells are regs, spill_B,
    built_smem_B, ctas_a100, ctas_h200 (without --sass)."""
    for line in out.splitlines():
        cells = line.split()
        if cells[:2] == [pattern, config]:
            return cells
    raise AssertionError(f"no row {pattern} {config} in\n{out}")


def _list(capsys, *argv: str) -> str:
    assert main(["kernels", "list", *argv]) == 0
    return capsys.readouterr().out


def test_kernels_list_shows_manifest_registers_and_their_occupancy(tmp_path, capsys):
    # 238 registers x 128 threads: 7616 per warp, allocated as 7680, x 4 warps = 30720 of a
    # 64K-register SM -> 2 CTAs (shared memory would allow 3 on the h200).
    # 96 registers: 3072 per warp x 4 = 12288 -> 5 by registers; 233472 B / (52224 + 1024)
    # -> 4 by shared memory, where the estimate (the simulator's 3) says otherwise.
    build_dir = _fake_build(
        tmp_path / "kb", _entry(TVW_128, "sm_90", 238), _entry(TVW_64, "sm_90", 96, spill=8)
    )
    out = _list(capsys, "--build-dir", str(build_dir))
    assert out.splitlines()[0].split() == [
        "pattern", "config", "mma", "threads", "warp_grid", "warp_tile", "smem_B", "regs",
        "spill_B", "built_smem_B", "ctas_a100", "ctas_h200",
    ]  # fmt: skip
    # The h200 (sm_90) runs the built kernels; the a100 (sm_80) has none built: estimated.
    assert _row(out, "tvw", TVW_128)[-5:] == ["238", "0", "76800", "2~", "2"]
    assert _row(out, "tvw", TVW_64)[-5:] == ["96", "12", "52224", "3~", "4"]
    h200 = load_preset("h200")
    res = _entry(TVW_64, "sm_90", 96).resources()
    assert occupancy(h200, res).ctas_per_sm == 4
    assert occupancy(h200, estimate_resources(_variant("tvw", TVW_64))).ctas_per_sm == 3


def test_kernels_list_marks_unbuilt_variants_and_estimates(tmp_path, capsys):
    build_dir = _fake_build(tmp_path / "kb", _entry(TVW_128, "sm_90", 238))
    out = _list(capsys, "--build-dir", str(build_dir))
    # Not built: '-' for the compiled columns, the estimate's CTAs marked '~' on both GPUs.
    config = _variant("dense", "128x128x32s3w4")
    expected = [occupancy(load_preset(g), estimate_resources(config)).ctas_per_sm for g in
                ("a100", "h200")]  # fmt: skip
    assert _row(out, "dense", config.name)[-5:] == ["-", "-", "-", *(f"{n}~" for n in expected)]
    # Every shipped variant has its row, built or not.
    for pattern, configs in kbuild.VARIANTS.items():
        for c in configs:
            assert _row(out, pattern, c.name)
    assert "'-' = not built" in out and "'~'" in out


def test_kernels_list_reads_the_entries_of_the_chosen_arch(tmp_path, capsys):
    build_dir = _fake_build(
        tmp_path / "kb", _entry(TVW_128, "sm_90", 238), _entry(TVW_128, "sm_80", 168)
    )
    out = _list(capsys, "--build-dir", str(build_dir), "--arch", "sm_80")
    # regs are sm_80's; each GPU's CTAs come from the kernel built for its own arch.
    assert _row(out, "tvw", TVW_128)[-5:] == ["168", "0", "76800", "2", "2"]


def test_kernels_list_default_is_the_kernel_directory(capsys):
    # conftest gives every test a private, absent kernel directory: nothing is built.
    out = _list(capsys)
    assert _row(out, "tvw", TVW_128)[-5:-2] == ["-", "-", "-"]
    assert "no manifest.json" in out
    _fake_build(kernel_dir(), _entry(TVW_128, "sm_90", 200))
    assert _row(_list(capsys), "tvw", TVW_128)[-5] == "200"


def test_kernels_list_json(tmp_path, capsys):
    build_dir = _fake_build(tmp_path / "kb", _entry(TVW_128, "sm_90", 238))
    rows = json.loads(_list(capsys, "--build-dir", str(build_dir), "--json"))
    # one row per compiled variant: bw once per block side it is compiled for
    assert len(rows) == sum(
        len(c) * len(kbuild.variant_blocks(p)) for p, c in kbuild.VARIANTS.items()
    )
    bw = [r for r in rows if r["pattern"] == "bw"]
    assert {r["block"] for r in bw} == set(kbuild.BW_BLOCKS)
    assert all(r["block"] is None for r in rows if r["pattern"] != "bw")
    by_key = {(r["pattern"], r["config"]): r for r in rows}
    built = by_key[("tvw", TVW_128)]
    assert built["built"] and built["registers"] == 238 and built["shared_bytes"] == 76800
    assert built["ctas_per_sm"]["h200"] == {
        "ctas": 2, "limited_by": "registers", "source": "manifest", "registers": 238
    }  # fmt: skip
    assert built["ctas_per_sm"]["a100"]["source"] == "estimate"
    unbuilt = by_key[("dense", "128x128x32s3w4")]
    assert not unbuilt["built"] and unbuilt["registers"] is None
    assert unbuilt["warp_grid"] == [2, 2] and unbuilt["threads"] == 128
    assert "sass" not in unbuilt


# A stand-in for `cuobjdump --dump-sass`: the loop from 0x10 back-branching at 0x70 holds
# BAR, LDSM, LDGSTS, 2 x HMMA, IADD3 and the BRA itself.
FAKE_SASS = """
        code for sm_90
                Function : tvw_gemm
        .headerflags    @"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;          /* 0x000a0000ff017624 */
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x0000000000007b1d */
        /*0020*/                   LDSM.16.M88.4 R4, [R2] ;        /* 0x000000000204783b */
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ;  /* 0x0 */
        /*0040*/                   HMMA.SP.16832.F32 R8, R4, R12, R8, R0, 0x0 ;  /* 0x0 */
        /*0050*/                   HMMA.SP.16832.F32 R16, R4, R14, R16, R0, 0x0 ; /* 0x0 */
        /*0060*/                   IADD3 R2, R2, 0x1, RZ ;         /* 0x0000000102027810 */
        /*0070*/               @P0 BRA 0x10 ;                      /* 0xfffffffc00000947 */
        /*0080*/                   EXIT ;                          /* 0x000000000000794d */
"""


def test_kernels_list_sass_mix(tmp_path, capsys, monkeypatch):
    build_dir = _fake_build(tmp_path / "kb", _entry(TVW_128, "sm_90", 238))
    monkeypatch.setattr(kbuild, "dump_sass", lambda cubin: FAKE_SASS)
    out = _list(capsys, "--build-dir", str(build_dir), "--sass")
    assert out.splitlines()[0].split()[-4:] == ["HMMA", "LDSM", "LDGSTS", "other"]
    assert _row(out, "tvw", TVW_128)[-4:] == ["2", "1", "1", "3"]
    assert _row(out, "tvw", TVW_64)[-4:] == ["-", "-", "-", "-"]
    rows = json.loads(_list(capsys, "--build-dir", str(build_dir), "--sass", "--json"))
    mix = {(r["pattern"], r["config"]): r["sass"] for r in rows}
    assert mix[("tvw", TVW_128)] == {
        "hmma": 2, "ldsm": 1, "ldgsts": 1, "other": 3, "instructions": 7
    }  # fmt: skip
    assert mix[("tvw", TVW_64)] is None


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--arch", "sm_70"], "--arch: got 'sm_70'"),
        (["--arch", "hopper"], "--arch: got 'hopper'"),
        (["--arch", "sm_80,sm_90"], "--arch: one arch"),
        (["--build-dir", "{tmp}/absent"], "--build-dir: {tmp}/absent is not a directory"),
        (["--build-dir", "{tmp}"], "--build-dir: {tmp} has no manifest.json"),
        (["--build-dir", "{tmp}/broken"], "--build-dir: {tmp}/broken/manifest.json is not JSON"),
    ],
)
def test_kernels_list_bad_input(tmp_path, capsys, argv, problem):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["kernels", "list", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvwsim kernels list: error: " + problem.replace("{tmp}", str(tmp_path)))
