"""CPU-side checks of the CUDA kernels: they build, the SASS is what we meant, nothing
spills, and the manifest tells the truth.

Every shipped variant is compiled once per test session for sm_80 and sm_90 (parallel
nvcc jobs into a temporary directory). Then, per cubin: the tensor-core instruction
(HMMA.16816 for dense/tw/bw, HMMA.SP.16832 for vw/tvw), cp.async (LDGSTS) and ldmatrix
(LDSM) are in the SASS; the ldmatrix and mma counts per stage show the warp grid the
model assumes (`KernelConfig.warp_grid`); no local memory is used; the manifest's
registers and stack agree with cuobjdump's independent reading of the cubin. Skipped only
when nvcc is absent; the CPU tests below them pin the same rules without nvcc.

The launcher's host side is tested in test_launch.py, test_launch_plan.py, test_cubins.py,
test_probes.py and test_device.py (a numpy stand-in for the driver, tests/fakes/); the
kernels on silicon in test_gpu_kernels.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from tvwsim.kernels import build as kbuild

from tvwsim.cli import main
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import MANIFEST_NAME, BuiltKernel, read_manifest
from tvwsim.pattern_spec import mma_kind

HAVE_NVCC = shutil.which("nvcc") is not None or any(
    (Path(r) / "bin" / "nvcc").is_file()
    for r in (os.environ.get("CUDA_HOME"), *kbuild.CUDA_ROOTS)
    if r
)
needs_nvcc = pytest.mark.skipif(
    not HAVE_NVCC,
    reason="nvcc not found: install the CUDA toolkit (12.5+) or put it on PATH",
)

MMA_OPCODE = {"dense": "HMMA.16816.F32", "tw": "HMMA.16816.F32", "bw": "HMMA.16816.F32"}
MMA_OPCODE.update({"vw": "HMMA.SP.16832.F32", "tvw": "HMMA.SP.16832.F32"})


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Every shipped variant for sm_80 and sm_90, built once (parallel nvcc)."""
    if not HAVE_NVCC:
        pytest.skip("nvcc not found: install the CUDA toolkit (12.5+) or put it on PATH")
    out = tmp_path_factory.mktemp("kernels")
    manifest = kbuild.build(kbuild.ARCHS, out, jobs=os.cpu_count(), progress=None)
    return manifest, out


@pytest.fixture(scope="session")
def sass(built):
    """Per cubin name: its per-function SASS opcode counts (cuobjdump, read once)."""
    import concurrent.futures

    manifest, out = built
    names = [k.cubin for k in manifest.kernels]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        ops = pool.map(lambda name: kbuild.sass_opcodes(out / name), names)
        return dict(zip(names, ops, strict=True))


def _entries(built):
    manifest, out = built
    return [(k, out / k.cubin) for k in manifest.kernels]


def _config_of(entry: BuiltKernel) -> KernelConfig:
    mma = mma_kind(entry.pattern)
    return KernelConfig.from_name(entry.config, mma=mma)


# =====================================================================================
# The build
# =====================================================================================
@needs_nvcc
def test_every_variant_is_built_for_every_arch(built):
    manifest, out = built
    want = {
        (p, c.name, a, b or 0)
        for p, configs in kbuild.VARIANTS.items()
        for c in configs
        for a in kbuild.ARCHS
        for b in kbuild.variant_blocks(p)
    }
    got = {k.key for k in manifest.kernels}
    assert got == want
    assert len(manifest.kernels) == len(want)  # no duplicates
    for k in manifest.kernels:
        block = f"-b{k.block}" if k.pattern == "bw" else ""
        assert k.cubin == f"{k.pattern}-{k.config}{block}-{k.arch}.cubin"
        assert (out / k.cubin).is_file() and (out / k.cubin).stat().st_size > 0
        assert k.function == kbuild.KERNEL_FUNCTIONS[k.pattern]
    for arch in kbuild.ARCHS:
        assert (out / kbuild.probe_cubin_name(arch)).is_file()
    # Nothing half-done is left behind.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@needs_nvcc
def test_manifest_has_exactly_the_documented_format(built):
    manifest, out = built
    data = json.loads((out / MANIFEST_NAME).read_text())
    assert set(data) == {"schema", "nvcc", "kernels"}
    assert data["schema"] == 1
    assert data["nvcc"] == kbuild.nvcc_version()
    keys = {
        "pattern", "config", "arch", "cubin", "function", "registers",
        "shared_static_bytes", "shared_dynamic_bytes", "stack_frame_bytes",
        "spill_store_bytes", "spill_load_bytes", "block",
    }  # fmt: skip
    for entry in data["kernels"]:
        assert set(entry) == keys
        for key in keys - {"pattern", "config", "arch", "cubin", "function"}:
            assert isinstance(entry[key], int) and entry[key] >= 0
    assert read_manifest(out) == manifest
    assert (out / MANIFEST_NAME).stat().st_mode & 0o044 == 0o044  # readable, not 0600


@needs_nvcc
def test_sass_has_the_tensor_core_op_cp_async_and_ldmatrix(built, sass):
    for entry, _ in _entries(built):
        ops = sass[entry.cubin][entry.function]
        mma = MMA_OPCODE[entry.pattern]
        assert ops[mma] > 0, f"{entry.cubin}: no {mma}"
        other = "HMMA.16816.F32" if mma.startswith("HMMA.SP") else "HMMA.SP.16832.F32"
        assert ops[other] == 0, f"{entry.cubin}: unexpected {other}"
        # The main loop is unrolled over whole stages: the mma count is a multiple of one
        # stage's (warp tile / mma tile x K steps per stage).
        per_stage = _per_stage(_config_of(entry), _config_of(entry).warp_grid)["mma"]
        assert ops[mma] % per_stage == 0, f"{entry.cubin}: {ops[mma]} mma, {per_stage}/stage"
        assert sum(v for op, v in ops.items() if op.startswith("LDGSTS")) > 0, entry.cubin
        assert sum(v for op, v in ops.items() if op.startswith("LDSM.16.MT88")) > 0  # B, .trans
        assert sum(v for op, v in ops.items() if op.startswith("LDSM.16.M88")) > 0  # A
        assert sum(v for op, v in ops.items() if op.startswith("RED")) > 0  # split-K


# -- the warp grid, read back from the SASS ----------------------------------------------
def _per_stage(config: KernelConfig, grid: tuple[int, int]) -> dict[str, int]:
    """ldmatrix and mma instructions of one warp's compute of one stage, for warp grid
    `grid` (common.cuh, warp_stage_dense / warp_stage_sparse): per mma-K step, one
    ldmatrix.x4 per 16 weight rows (A); one ldmatrix.x4.trans per 16 tokens (dense B) or
    per 8 tokens (sparse B, 32 K deep); one mma per 16 x 8 output piece."""
    warp_m, warp_n = config.bm // grid[0], config.bn // grid[1]
    mt, nt = warp_m // 16, warp_n // 8
    steps = config.bk // (32 if config.mma == "sparse" else 16)
    b_per_step = nt if config.mma == "sparse" else nt // 2
    return {"a": mt * steps, "b": b_per_step * steps, "mma": mt * nt * steps}


def _sass_warp_grids(ops, config: KernelConfig) -> list[tuple[int, int]]:
    """Every warp grid whose per-stage counts explain the kernel's SASS: the main loop
    holds some whole number of stage bodies, so the A loads (LDSM.16.M88), B loads
    (LDSM.16.MT88) and mma must all be that many times one stage's. A 2 x 2 and a 4 x 1
    grid of the same tile issue the same mma but different A and B loads."""
    a = sum(n for op, n in ops.items() if op.startswith("LDSM.16.M88"))
    b = sum(n for op, n in ops.items() if op.startswith("LDSM.16.MT88"))
    mma = sum(n for op, n in ops.items() if op.startswith("HMMA."))
    grids = []
    warps_m = 1
    while warps_m <= config.warps:
        grid = (warps_m, config.warps // warps_m)
        warps_m *= 2
        if config.bm % (16 * grid[0]) or config.bn % (16 * grid[1]):
            continue
        per = _per_stage(config, grid)
        copies = mma // per["mma"]
        counts = (copies * per["a"], copies * per["b"], copies * per["mma"])
        if copies and (a, b, mma) == counts:
            grids.append(grid)
    return grids


@needs_nvcc
def test_the_compiled_warp_grid_is_the_models(built, sass):
    """For every shipped variant and arch, the SASS shows exactly one warp grid: the one
    the simulator charges (registers, shared-memory fragment traffic)."""
    for entry, _ in _entries(built):
        config = _config_of(entry)
        ops = sass[entry.cubin][entry.function]
        assert _sass_warp_grids(ops, config) == [config.warp_grid], entry.cubin


@needs_nvcc
def test_the_kernel_takes_its_warp_grid_from_the_build(tmp_path):
    """Built with another (fitting) split, the same tile compiles to that split's SASS:
    the kernel computes no grid of its own. A split that does not fit, or none at all,
    does not compile."""
    config = kbuild.VARIANTS["dense"][2]  # 128 x 64: the build passes 2 x 2
    assert config.warp_grid == (2, 2)
    nvcc = kbuild.find_nvcc()
    defines = [d for d in kbuild.config_defines(config) if not d.startswith("-DWARPS_M=")]
    source = kbuild.CUDA_DIR / "dense.cu"
    cubin = tmp_path / "x.cubin"
    kbuild._run_nvcc(kbuild.nvcc_command(nvcc, source, "sm_80", cubin, [*defines, "-DWARPS_M=4"]))
    ops = kbuild.sass_opcodes(cubin)["dense_gemm"]
    assert _sass_warp_grids(ops, config) == [(4, 1)]
    small = KernelConfig(bm=32, bn=64, bk=32)  # 2 x 2 fits, 4 x 1 (8-row warp tiles) does not
    bad = [d for d in kbuild.config_defines(small) if not d.startswith("-DWARPS_M=")]
    with pytest.raises(kbuild.BuildError, match="WARPS_M must split BM"):
        kbuild._run_nvcc(kbuild.nvcc_command(nvcc, source, "sm_80", cubin, [*bad, "-DWARPS_M=4"]))
    with pytest.raises(kbuild.BuildError, match="WARPS_M .* must be given"):
        kbuild._run_nvcc(kbuild.nvcc_command(nvcc, source, "sm_80", cubin, bad))


def test_the_sass_reader_tells_warp_grids_apart():
    """The reader above on the counts each grid would produce (no nvcc needed): the
    shipped 128 x 64 and 64 x 128 tiles are the ones where a most-square rule has a tie."""
    for config in (
        kbuild.VARIANTS["dense"][2],
        kbuild.VARIANTS["tw"][3],
        kbuild.VARIANTS["vw"][2],
        kbuild.VARIANTS["tvw"][3],
    ):
        fits = [(1, 4), (2, 2), (4, 1)] if config.bm == 128 else [(1, 4), (2, 2)]
        for grid in fits:
            per = _per_stage(config, grid)
            ops = {"LDSM.16.M88.4": 3 * per["a"], "LDSM.16.MT88.4": 3 * per["b"]}
            ops["HMMA.16816.F32" if config.mma == "dense" else "HMMA.SP.16832.F32"] = 3 * per["mma"]
            assert _sass_warp_grids(ops, config) == [grid], (config.name, grid)


def test_the_build_passes_the_configs_warp_grid_and_footprint():
    want = {"128x128": (2, 2), "128x64": (2, 2), "64x128": (1, 4), "128x256": (2, 4)}
    want["256x128"] = (4, 2)  # the 8-warp tiles: warp tiles of 64 x 64, as 128 x 128
    for configs in kbuild.VARIANTS.values():
        for c in configs:
            assert c.warp_grid == want[f"{c.bm}x{c.bn}"], c.name
            defines = kbuild.config_defines(c)
            assert f"-DWARPS_M={c.warp_grid[0]}" in defines
            assert f"-DTVW_SMEM_BYTES={c.smem_bytes}" in defines
    # The kernel source keeps no rule of its own to disagree with.
    assert "pick_warps_m" not in (kbuild.CUDA_DIR / "common.cuh").read_text()


@needs_nvcc
def test_no_kernel_uses_local_memory(built, sass):
    for entry, _ in _entries(built):
        assert entry.spill_store_bytes == entry.spill_load_bytes == 0, entry.cubin
        assert entry.stack_frame_bytes == 0, entry.cubin
        assert entry.registers <= 255
        ops = sass[entry.cubin][entry.function]
        local = {op: n for op, n in ops.items() if op.split(".")[0] in ("LDL", "STL")}
        assert not local, f"{entry.cubin} touches local memory: {local}"


@needs_nvcc
def test_manifest_matches_cuobjdump(built):
    for entry, cubin in _entries(built):
        usage = kbuild.resource_usage(cubin)[entry.function]
        assert usage["REG"] == entry.registers, entry.cubin
        assert usage["STACK"] == entry.stack_frame_bytes, entry.cubin
        assert usage["LOCAL"] == 0, entry.cubin
        # Hopper cubins carry 1 KiB of shared memory the system reserves per CTA, which
        # cuobjdump counts as static; our kernels declare none.
        reserved = usage["SHARED"] - entry.shared_static_bytes
        assert reserved in (0, 1024), entry.cubin
        assert entry.shared_static_bytes == 0


@needs_nvcc
def test_dynamic_shared_memory_is_the_configs(built):
    manifest, _ = built
    for entry in manifest.kernels:
        config = _config_of(entry)
        assert entry.shared_dynamic_bytes == config.smem_bytes
        # For every shipped variant the pipeline, not the epilogue, sets the size.
        assert entry.shared_dynamic_bytes == config.pipeline_smem_bytes


@needs_nvcc
def test_the_kernel_rejects_a_shared_memory_size_it_does_not_use(tmp_path):
    config = kbuild.VARIANTS["dense"][0]
    nvcc = kbuild.find_nvcc()
    defines = [d for d in kbuild.config_defines(config) if not d.startswith("-DTVW_SMEM")]
    defines.append(f"-DTVW_SMEM_BYTES={config.smem_bytes + 16}")
    cmd = kbuild.nvcc_command(
        nvcc, kbuild.CUDA_DIR / "dense.cu", "sm_80", tmp_path / "x.cubin", defines
    )
    with pytest.raises(kbuild.BuildError, match="disagree on the shared memory size"):
        kbuild._run_nvcc(cmd)


@needs_nvcc
def test_an_interrupted_build_leaves_nothing_half_written(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(kbuild.CUDA_DIR, src)
    (src / "tw.cu").write_text((src / "tw.cu").read_text() + "\n#error deliberately broken\n")
    monkeypatch.setattr(kbuild, "CUDA_DIR", src)
    out = tmp_path / "out"
    variants = [("dense", kbuild.VARIANTS["dense"][2]), ("tw", kbuild.VARIANTS["tw"][2])]
    with pytest.raises(kbuild.BuildError, match="deliberately broken"):
        kbuild.build(["sm_80"], out, variants=variants, jobs=1, probe=False, progress=None)
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.glob("tw-*"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temp dir removed


@needs_nvcc
def test_rebuilding_one_arch_keeps_the_other_archs_entries(tmp_path):
    variants = [("vw", kbuild.VARIANTS["vw"][2])]
    kbuild.build(["sm_80"], tmp_path, variants=variants, jobs=2, probe=False, progress=None)
    lines: list[str] = []
    manifest = kbuild.build(
        ["sm_90"], tmp_path, variants=variants, jobs=2, probe=False, progress=lines.append
    )
    assert {k.arch for k in manifest.kernels} == {"sm_80", "sm_90"}
    assert len(lines) == 1 and lines[0].startswith("[1/1] vw 128x64x64s3w4 sm_90:")


@needs_nvcc
def test_cli_build_writes_cubins_and_manifest(tmp_path, capsys):
    rc = main(
        ["kernels", "build", "--arch", "sm_90", "--build-dir", str(tmp_path), "--pattern", "bw"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    n = len(kbuild.VARIANTS["bw"]) * len(kbuild.BW_BLOCKS)  # one cubin per config and block
    assert len(re.findall(r"^\[\s*\d+/\d+\] bw ", out, re.M)) == n  # one line per kernel
    assert f"built {n} kernels for sm_90" in out
    manifest = read_manifest(tmp_path)
    assert [k.pattern for k in manifest.kernels] == ["bw"] * n
    assert sorted({k.block for k in manifest.kernels}) == list(kbuild.BW_BLOCKS)


# What nvcc emits for an integer division or modulo by a value it does not know: a float
# reciprocal (I2F.U32.RP, MUFU.RCP, F2I) once, then IMAD.HI multiplies and fix-ups per use.
# With the bw block a kernel argument, the loader did that for every chunk of every stage.
DIVISION_OPCODES = ("I2F", "MUFU.RCP", "F2I", "IMAD.HI")


@needs_nvcc
def test_the_bw_loader_divides_by_a_compile_time_block(built):
    """Per shipped block: the bw main loop (and the whole kernel) has no integer-division
    sequence - the block is -DTVWSIM_BW_BLOCK, a power of two, so / and % are shifts and
    masks."""
    manifest, out = built
    entries = [k for k in manifest.kernels if k.pattern == "bw"]
    assert {k.block for k in entries} == set(kbuild.BW_BLOCKS)
    for entry in entries:
        instrs = kbuild.sass_functions(out / entry.cubin)[entry.function]
        loop = kbuild.main_loop(instrs)
        assert sum(op.startswith("HMMA") for _, op, _ in loop) > 0, entry.cubin
        for where, body in (("main loop", loop), ("kernel", instrs)):
            division = [op for _, op, _ in body if op.startswith(DIVISION_OPCODES)]
            assert not division, f"{entry.cubin}: division in the {where}: {division}"


# =====================================================================================
# Build-side bad input and parsing (no nvcc needed)
# =====================================================================================
def test_missing_nvcc_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(kbuild, "CUDA_ROOTS", ())
    with pytest.raises(InputError) as err:
        kbuild.find_nvcc()
    assert err.value.argument == "nvcc"
    assert "install the CUDA toolkit (nvcc 12.5+ for mma.sp::ordered_metadata)" in str(err.value)


def test_cli_build_without_nvcc_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(kbuild, "CUDA_ROOTS", ())
    assert main(["kernels", "build", "--build-dir", str(tmp_path / "k")]) == 2
    assert "nvcc" in capsys.readouterr().err
    assert not (tmp_path / "k" / MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["kernels", "build", "--arch", "sm_70"], "--arch"),
        (["kernels", "build", "--arch", "compute_80"], "--arch"),
        (["kernels", "build", "--arch", ","], "--arch"),
        (["kernels", "build", "--jobs", "0"], "--jobs"),
        (["kernels", "build", "--pattern", "ew"], "--pattern"),
    ],
)
def test_cli_build_bad_arguments(argv, argument, capsys, tmp_path):
    assert main([*argv, "--build-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{argument}:" in err and len(err.strip().splitlines()) == 1


def test_pattern_and_config_must_fit():
    with pytest.raises(InputError, match="mma='sparse'"):
        kbuild.check_pattern_config("vw", KernelConfig(bk=64))
    with pytest.raises(InputError, match="mma='dense'"):
        kbuild.check_pattern_config("tw", KernelConfig(bk=64, mma="sparse"))
    with pytest.raises(InputError) as err:
        kbuild.check_pattern_config("ew", KernelConfig())
    assert err.value.argument == "pattern"
    # The swizzle needs rows of a power of two or a multiple of 8 chunks: refused here
    # rather than by a static_assert inside nvcc at launch time.
    for pattern, config in (
        ("dense", KernelConfig(bk=48)),
        ("tw", KernelConfig(bk=96)),
        ("vw", KernelConfig(bk=192, mma="sparse")),
        ("dense", KernelConfig(bn=48)),
    ):
        with pytest.raises(InputError, match="power of two or a multiple of 8") as err:
            kbuild.check_pattern_config(pattern, config)
        assert err.value.argument == "config"


@needs_nvcc
def test_configs_the_check_accepts_compile(tmp_path):
    """check_pattern_config and the kernels' static_asserts agree at their edges: row
    lengths of 2 and 24 chunks (dense bk = 16, 192) and 16 chunks compressed (bk = 256)."""
    for pattern, config in (
        ("dense", KernelConfig(bm=64, bn=64, bk=16, stages=2)),
        ("tw", KernelConfig(bm=64, bn=64, bk=192, stages=2)),
        ("tvw", KernelConfig(bm=64, bn=64, bk=256, stages=2, mma="sparse")),
    ):
        kbuild.check_pattern_config(pattern, config)
        entry = kbuild.compile_kernel(pattern, config, "sm_80", tmp_path)
        assert (tmp_path / entry.cubin).is_file()


def test_parse_ptxas_reads_every_field():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'a_kernel' for 'sm_80'
ptxas info    : Function properties for a_kernel
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 2048 bytes smem, 392 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function 'other' for 'sm_80'
ptxas info    : Function properties for other
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 392 bytes cmem[0]
"""
    res = kbuild.parse_ptxas(text)
    assert res["a_kernel"] == kbuild.PtxasReport(96, 2048, 16, 8, 4)
    assert res["other"] == kbuild.PtxasReport(24, 0, 0, 0, 0)


def test_cuda_tools_come_from_their_pypi_packages():
    for tool in ("cuobjdump", "nvdisasm"):
        path = Path(kbuild.find_cuda_tool(tool))
        assert path.name == tool and os.access(path, os.X_OK)


def test_kernels_list(capsys):
    assert main(["kernels", "list"]) == 0
    out = capsys.readouterr().out
    for pattern, configs in kbuild.VARIANTS.items():
        for c in configs:
            assert re.search(rf"^{pattern}\s+{c.name}\s", out, re.M)


@needs_nvcc
def test_kernels_list_reads_a_real_build(tmp_path, capsys):
    """`kernels list --sass` on one really built variant: the manifest's registers, the
    h200's CTAs from them, and a main loop of HMMA, LDSM and LDGSTS found in the SASS
    (the same `loop_mix` as benchmarks/bench_sass.py)."""
    config = kbuild.VARIANTS["tvw"][0]
    manifest = kbuild.build(
        ["sm_90"], tmp_path, variants=[("tvw", config)], jobs=1, probe=False, progress=None
    )
    (entry,) = manifest.kernels
    assert main(["kernels", "list", "--build-dir", str(tmp_path), "--sass", "--json"]) == 0
    rows = {(r["pattern"], r["config"]): r for r in json.loads(capsys.readouterr().out)}
    row = rows[("tvw", config.name)]
    assert row["registers"] == entry.registers and row["shared_bytes"] == config.smem_bytes
    assert row["ctas_per_sm"]["h200"]["source"] == "manifest"
    assert row["ctas_per_sm"]["a100"]["source"] == "estimate"
    mix = row["sass"]
    assert mix["hmma"] > 0 and mix["ldsm"] > 0 and mix["ldgsts"] > 0 and mix["other"] > 0
    assert rows[("dense", kbuild.VARIANTS["dense"][0].name)]["sass"] is None
