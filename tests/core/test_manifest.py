"""The kernel manifest: one reader, one writer, one kernel directory, one KernelResources."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from tvwsim.cli import main
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import (
    KERNEL_DIR_ENV,
    MANIFEST_NAME,
    BuiltKernel,
    KernelResources,
    Manifest,
    compatible_archs,
    default_manifest_path,
    kernel_dir,
    load_resources,
    read_manifest,
    write_manifest,
)

VW = KernelConfig.from_name("128x128x64s3w4", mma="sparse")


def _entry(arch: str = "sm_80", registers: int = 168, config: str = VW.name) -> BuiltKernel:
    return BuiltKernel(
        pattern="vw",
        config=config,
        arch=arch,
        cubin=f"vw-{config}-{arch}.cubin",
        function="vw_gemm",
        registers=registers,
        shared_static_bytes=0,
        shared_dynamic_bytes=76800,
        stack_frame_bytes=0,
        spill_store_bytes=0,
        spill_load_bytes=0,
    )


def test_write_then_read_gives_the_same_manifest_with_a_normal_file_mode(tmp_path):
    manifest = Manifest(nvcc="Build cuda_13.0", kernels=(_entry(), _entry("sm_90", 200)))
    old = os.umask(0o022)
    try:
        path = write_manifest(manifest, tmp_path)
    finally:
        os.umask(old)
    assert path == tmp_path / MANIFEST_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not a temporary file's 0600
    assert read_manifest(path) == manifest
    assert read_manifest(tmp_path) == manifest  # a directory means its manifest.json
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["kernels"][1]["registers"] == 200


def test_an_entry_gives_what_one_cta_holds():
    entry = _entry(registers=168)
    assert entry.resources() == KernelResources(168, 76800, 128, "manifest")
    eight_warps = _entry(config="256x128x64s3w8").resources()
    assert eight_warps.threads == 256


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not JSON"),
        ('{"schema": 2, "kernels": []}', "schema-1"),
        ('{"schema": 1, "kernels": {}}', "must be a list"),
        ('{"schema": 1, "kernels": [{"pattern": "vw"}]}', "malformed kernel entry"),
        ("registers=-1", "registers = -1"),
        ("registers=true", "registers = True"),
        ("arch=", "arch = ''"),
        ("extra", "malformed kernel entry"),
    ],
)
def test_anything_but_a_manifest_is_refused_by_name(tmp_path, text, match):
    path = tmp_path / MANIFEST_NAME
    if "=" in text and not text.startswith("{"):
        key, value = text.split("=")
        entry = _entry().to_json()
        entry[key] = json.loads(value) if value else ""
        text = json.dumps({"schema": 1, "kernels": [entry]})
    elif text == "extra":
        text = json.dumps({"schema": 1, "kernels": [{**_entry().to_json(), "note": 1}]})
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_manifest(path)
    assert err.value.argument == "--manifest"
    with pytest.raises(InputError, match="does not exist") as err:
        read_manifest(tmp_path / "other.json", argument="manifest")
    assert err.value.argument == "manifest"


def test_a_rewritten_manifest_is_read_afresh(tmp_path):
    write_manifest(Manifest("a", (_entry(registers=100),)), tmp_path)
    assert read_manifest(tmp_path).kernels[0].registers == 100
    write_manifest(Manifest("a", (_entry(registers=1000),)), tmp_path)
    assert read_manifest(tmp_path).kernels[0].registers == 1000


def test_a_gpu_runs_cubins_of_its_own_major_version_and_lower_minor():
    assert compatible_archs("sm_86") == [f"sm_8{m}" for m in range(6, -1, -1)]
    assert compatible_archs("sm_90a") == ["sm_90a", "sm_90"]
    assert compatible_archs("sm_100") == ["sm_100"]
    manifest = Manifest("x", (_entry("sm_80", 100), _entry("sm_90", 200)))
    assert manifest.find_for_device("vw", VW.name, "sm_86").registers == 100
    assert manifest.find_for_device("vw", VW.name, "sm_90a").registers == 200
    assert manifest.find_for_device("vw", VW.name, "sm_89").registers == 100
    assert manifest.find_for_device("vw", VW.name, "sm_70") is None  # no sm_80 on Volta
    assert manifest.find_for_device("tvw", VW.name, "sm_80") is None
    with pytest.raises(InputError) as err:
        compatible_archs("compute_80")
    assert err.value.argument == "arch"


def test_load_resources_estimates_without_a_manifest_or_an_arch(tmp_path):
    write_manifest(Manifest("x", (_entry(),)), tmp_path)
    assert load_resources(tmp_path / MANIFEST_NAME, "vw", VW, "sm_80").registers_per_thread == 168
    assert load_resources(tmp_path / MANIFEST_NAME, "vw", VW, None) is None
    assert load_resources(tmp_path / "absent.json", "vw", VW, "sm_80") is None


def test_the_kernel_directory_never_depends_on_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(KERNEL_DIR_ENV, str(tmp_path / "mine"))
    assert kernel_dir() == tmp_path / "mine"
    assert default_manifest_path() == tmp_path / "mine" / MANIFEST_NAME
    monkeypatch.delenv(KERNEL_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kernel_dir() == tmp_path / "cache" / "tvwsim" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by XDG: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_dir() == tmp_path / "home" / ".cache" / "tvwsim" / "kernels"
    monkeypatch.chdir(tmp_path)
    assert kernel_dir().is_absolute()


def _simulate_json(capsys) -> dict:
    argv = ["simulate", "--hw", "a100", "--shape", "512,1024,1024", "--pattern", "vw", "--json"]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_gives_the_same_result_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """A manifest under ./build/kernels (where one used to be looked up) changes nothing;
    the kernel directory's manifest is used from every directory."""
    here, there = tmp_path / "here", tmp_path / "there"
    (here / "build" / "kernels").mkdir(parents=True)
    there.mkdir()
    write_manifest(Manifest("x", (_entry(registers=64),)), here / "build" / "kernels")

    results = []
    for cwd in (here, there):
        monkeypatch.chdir(cwd)
        results.append(_simulate_json(capsys))
    assert results[0] == results[1]
    assert results[0]["resources_source"] == "estimate"

    kernels = tmp_path / "kernels"
    kernels.mkdir()
    write_manifest(Manifest("x", (_entry(registers=128),)), kernels)
    monkeypatch.setenv(KERNEL_DIR_ENV, str(kernels))
    built = []
    for cwd in (here, there):
        monkeypatch.chdir(cwd)
        built.append(_simulate_json(capsys))
    assert built[0] == built[1]
    assert built[0]["resources_source"] == "manifest"
    assert built[0]["registers_per_thread"] == 128
    # Fewer registers than the estimate's 216: registers stop being the limit.
    assert results[0]["occupancy_limited_by"] == "registers"
    assert built[0]["occupancy_limited_by"] == "shared memory"
    assert Path(os.getcwd()) == there


def test_bw_entries_are_per_block_and_old_entries_without_a_block_still_read(tmp_path):
    """One bw entry per compiled block: `find` picks the block asked for, else the
    smallest (32, the sweeps' default); an entry written before the field existed reads
    as block 0."""
    bw = KernelConfig.from_name("128x128x32s3w4", mma="dense")

    def bw_entry(block: int, registers: int) -> BuiltKernel:
        return dataclasses.replace(
            _entry(config=bw.name, registers=registers),
            pattern="bw",
            function="bw_gemm",
            cubin=f"bw-{bw.name}-b{block}-sm_80.cubin",
            block=block,
        )

    manifest = Manifest(nvcc="x", kernels=(bw_entry(64, 230), bw_entry(32, 236)))
    assert manifest.find("bw", bw.name, "sm_80", 64).registers == 230
    assert manifest.find("bw", bw.name, "sm_80").registers == 236  # no block: the smallest
    assert manifest.find("bw", bw.name, "sm_80", 128) is None
    assert manifest.find_for_device("bw", bw.name, "sm_86", 64).registers == 230
    assert load_resources(write_manifest(manifest, tmp_path), "bw", bw, "sm_80", 64) is not None
    legacy = _entry().to_json()
    del legacy["block"]
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"schema": 1, "nvcc": "x", "kernels": [legacy]})
    )
    assert read_manifest(tmp_path).kernels == (_entry(),)
