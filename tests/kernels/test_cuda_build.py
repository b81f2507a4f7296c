"""CPU-side checks of the CUDA kernels: they build, the SASS is what we meant, nothing
spills, the manifest tells the truth, and the launcher's host side is right.

Every shipped variant is compiled once per test session for sm_80 and sm_90 (parallel
nvcc jobs into a temporary directory). Then, per cubin: the tensor-core instruction
(HMMA.16816 for dense/tw/bw, HMMA.SP.16832 for vw/tvw), cp.async (LDGSTS) and ldmatrix
(LDSM) are in the SASS; no local memory is used; the manifest's registers and stack agree
with cuobjdump's independent reading of the cubin. Skipped only when nvcc is absent.

The launcher tests run `tvwsim.kernels.launch` against a stand-in for `pycuda.driver` whose
"kernels" re-implement, in numpy, what each .cu kernel does with its arguments (mapped
by the parameter names parsed from the .cu source). They check the host side - argument
order and types against the real kernel signatures, XT padding, poisoning, the split-K
workspace and the finalize regions - against the CPU twin, with no GPU. Whether the CUDA
code itself computes the right thing is tests/test_gpu_kernels.py's job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels.tile_work import tile_work

from tvwsim.cli import main
from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

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


def _config_of(entry: kbuild.BuiltKernel) -> KernelConfig:
    mma = "sparse" if entry.pattern in kbuild.SPARSE_PATTERNS else "dense"
    return KernelConfig.from_name(entry.config, mma=mma)


# =====================================================================================
# The build
# =====================================================================================
@needs_nvcc
def test_every_variant_is_built_for_every_arch(built):
    manifest, out = built
    want = {
        (p, c.name, a)
        for p, configs in kbuild.VARIANTS.items()
        for c in configs
        for a in kbuild.ARCHS
    }
    got = {(k.pattern, k.config, k.arch) for k in manifest.kernels}
    assert got == want
    assert len(manifest.kernels) == len(want)  # no duplicates
    for k in manifest.kernels:
        assert k.cubin == f"{k.pattern}-{k.config}-{k.arch}.cubin"
        assert (out / k.cubin).is_file() and (out / k.cubin).stat().st_size > 0
        assert k.function == kbuild.KERNEL_FUNCTIONS[k.pattern]
    for arch in kbuild.ARCHS:
        assert (out / kbuild.probe_cubin_name(arch)).is_file()
    # Nothing half-done is left behind.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@needs_nvcc
def test_manifest_has_exactly_the_documented_format(built):
    manifest, out = built
    data = json.loads((out / kbuild.MANIFEST_NAME).read_text())
    assert set(data) == {"schema", "nvcc", "kernels"}
    assert data["schema"] == 1
    assert data["nvcc"] == kbuild.nvcc_version()
    keys = {
        "pattern", "config", "arch", "cubin", "function", "registers",
        "shared_static_bytes", "shared_dynamic_bytes", "stack_frame_bytes",
        "spill_store_bytes", "spill_load_bytes",
    }  # fmt: skip
    for entry in data["kernels"]:
        assert set(entry) == keys
        for key in keys - {"pattern", "config", "arch", "cubin", "function"}:
            assert isinstance(entry[key], int) and entry[key] >= 0
    assert kbuild.load_manifest(out) == manifest


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
        c = _config_of(entry)
        wm = _warps_m(c)
        mt, nt = c.bm // wm // 16, c.bn // (c.warps // wm) // 8
        per_stage = mt * nt * c.bk // (32 if c.mma == "sparse" else 16)
        assert ops[mma] % per_stage == 0, f"{entry.cubin}: {ops[mma]} mma, {per_stage}/stage"
        assert sum(v for op, v in ops.items() if op.startswith("LDGSTS")) > 0, entry.cubin
        assert sum(v for op, v in ops.items() if op.startswith("LDSM.16.MT88")) > 0  # B, .trans
        assert sum(v for op, v in ops.items() if op.startswith("LDSM.16.M88")) > 0  # A
        assert sum(v for op, v in ops.items() if op.startswith("RED")) > 0  # split-K


def _warps_m(c: KernelConfig) -> int:
    """The warp grid common.cuh picks (pick_warps_m), restated."""
    best, best_cost = -1, None
    wm = 1
    while wm <= c.warps:
        wn = c.warps // wm
        if c.bm % (16 * wm) == 0 and c.bn % (16 * wn) == 0:
            cost = abs(c.bm // wm - c.bn // wn)
            if best_cost is None or cost < best_cost:
                best, best_cost = wm, cost
        wm *= 2
    return best


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
        assert entry.shared_dynamic_bytes == kbuild.kernel_smem_bytes(config)
        # For every shipped variant the pipeline, not the epilogue, sets the size: the
        # simulator's KernelConfig.smem_bytes is then exactly what the kernel asks for.
        assert entry.shared_dynamic_bytes == config.smem_bytes


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
    assert not (out / kbuild.MANIFEST_NAME).exists()
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
    rc = main(["kernels", "build", "--arch", "sm_90", "--out", str(tmp_path), "--pattern", "bw"])
    out = capsys.readouterr().out
    assert rc == 0
    n = len(kbuild.VARIANTS["bw"])
    assert len(re.findall(r"^\[\s*\d+/\d+\] bw ", out, re.M)) == n  # one line per kernel
    manifest = kbuild.load_manifest(tmp_path)
    assert [k.pattern for k in manifest.kernels] == ["bw"] * n


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
    assert main(["kernels", "build", "--out", str(tmp_path / "k")]) == 2
    assert "nvcc" in capsys.readouterr().err
    assert not (tmp_path / "k" / kbuild.MANIFEST_NAME).exists()


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
    assert main([*argv, "--out", str(tmp_path)]) == 2
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
    with pytest.raises(InputError, match="warp"):
        kbuild.check_pattern_config("dense", KernelConfig(bm=16, bn=16, warps=16))
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
    assert res["a_kernel"] == kbuild.KernelResources(96, 2048, 16, 8, 4)
    assert res["other"] == kbuild.KernelResources(24, 0, 0, 0, 0)


def test_kernel_smem_bytes_mirrors_the_stage_layout():
    for configs in kbuild.VARIANTS.values():
        for c in configs:
            assert kbuild.kernel_smem_bytes(c) >= c.smem_bytes
    # A shallow pipeline (two stages of 16 K): the epilogue's staging tile is larger.
    shallow = KernelConfig(bm=128, bn=64, bk=16, stages=2)
    assert kbuild.kernel_smem_bytes(shallow) == 128 * (64 + 8) * 2 > shallow.smem_bytes


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


# =====================================================================================
# The launcher's host side, with a numpy stand-in for the driver
# =====================================================================================
# C scalar type -> the PyCUDA `prepare` code that passes it with the right size: an
# `int64_t` parameter handed 'i' would read 4 garbage bytes on the GPU.
_SCALAR_CODES = {
    "int": "i",
    "int32_t": "i",
    "unsigned": "I",
    "unsigned int": "I",
    "uint32_t": "I",
    "long long": "q",
    "int64_t": "q",
    "float": "f",
}


def _kernel_params(source: Path, function: str) -> list[tuple[str, str]]:
    """(name, PyCUDA type code) of each parameter of an extern "C" kernel in a .cu file:
    'P' for a pointer, else the code of its C type (_SCALAR_CODES)."""
    text = source.read_text()
    m = re.search(rf"\b{function}\s*\(([^)]*)\)", text)
    assert m, f"{function} not found in {source.name}"
    params = []
    for raw in m.group(1).split(","):
        words = re.findall(r"[A-Za-z_]\w*", raw)
        name = words[-1]
        if "*" in raw:
            params.append((name, "P"))
            continue
        ctype = " ".join(w for w in words[:-1] if w not in ("const", "__restrict__"))
        assert ctype in _SCALAR_CODES, f"{function}({raw.strip()}): no PyCUDA code for {ctype!r}"
        params.append((name, _SCALAR_CODES[ctype]))
    return params


def test_kernel_parameter_parsing_knows_the_argument_sizes():
    params = dict(_kernel_params(kbuild.CUDA_DIR / "bw.cu", "bw_gemm"))
    assert params["values"] == params["tasks"] == "P" and params["b"] == params["K"] == "i"
    assert dict(_kernel_params(kbuild.CUDA_DIR / "common.cuh", "finalize_rows")) == {
        "regions": "P", "row_map": "P", "n": "i", "m8": "i", "ws": "P", "yt": "P",
    }  # fmt: skip


class _FakeAlloc:
    def __init__(self, registry: dict, nbytes: int):
        self.addr = (len(registry) + 1) << 32
        self.data = np.zeros(nbytes, dtype=np.uint8)
        registry[self.addr] = self.data

    def __int__(self) -> int:
        return self.addr


class _FakeDriver:
    """Just enough of pycuda.driver for tvwsim.kernels.launch, with numpy models of the kernels."""

    def __init__(self, smem_limit: int = 232448):
        self.mem: dict[int, np.ndarray] = {}
        self.launches: list[tuple[str, tuple]] = []
        self.arguments: list[tuple[str, dict]] = []  # (function, parameter name -> value)
        self.log: list[str] = []  # device work in stream order, for the timing tests
        self.smem_limit = smem_limit
        drv = self

        class Error(Exception):
            pass

        class Device:
            def __init__(self, i):
                pass

            @staticmethod
            def count():
                return 1

            def name(self):
                return "Fake GPU"

            def compute_capability(self):
                return (9, 0)

            def get_attribute(self, attr):
                return {"optin": drv.smem_limit, "sms": 132}[attr]

            def retain_primary_context(self):
                return types.SimpleNamespace(push=lambda: None, pop=lambda: None)

        class Context:
            @staticmethod
            def synchronize():
                pass

        class Event:
            def record(self):
                self.at = len(drv.log)
                drv.log.append("event")

            def synchronize(self):
                pass

            def time_till(self, end):
                return float(end.at - self.at)  # "ms" = work items between the events

        self.module = types.ModuleType("pycuda.driver")
        self.module.Error = Error
        self.module.Device = Device
        self.module.Context = Context
        self.module.Event = Event
        self.module.init = lambda: None
        self.module.device_attribute = types.SimpleNamespace(
            MAX_SHARED_MEMORY_PER_BLOCK_OPTIN="optin",
            MAX_SHARED_MEMORY_PER_BLOCK="optin",
            MULTIPROCESSOR_COUNT="sms",
        )
        self.module.function_attribute = types.SimpleNamespace(MAX_DYNAMIC_SHARED_SIZE_BYTES="dyn")
        self.module.mem_alloc = lambda n: _FakeAlloc(self.mem, n)
        self.module.memcpy_htod = self.htod
        self.module.memcpy_dtoh = self.dtoh
        self.module.memset_d16 = lambda p, v, n: self.view(p, np.uint16, n).fill(v)
        self.module.memset_d32 = self.memset_d32
        self.module.module_from_file = lambda path: _FakeModule(self, Path(path))

    def memset_d32(self, ptr, value, count):
        self.log.append("memset_d32")
        self.view(ptr, np.uint32, count).fill(value)

    def view(self, ptr, dtype, count=None):
        data = self.mem[int(ptr)].view(dtype)
        return data if count is None else data[:count]

    def htod(self, dest, src):
        src = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.mem[int(dest)][: src.size] = src

    def dtoh(self, dest, src):
        flat = dest.reshape(-1).view(np.uint8)
        flat[:] = self.mem[int(src)][: flat.size]


class _FakeModule:
    def __init__(self, drv: _FakeDriver, path: Path):
        self.drv, self.path = drv, path
        if path.name.startswith("mma_sp_probe-"):
            self.pattern, self.config = "probe", None
            return
        pattern, name, _arch = path.stem.rsplit("-", 2)
        self.pattern = pattern
        mma = "sparse" if pattern in kbuild.SPARSE_PATTERNS else "dense"
        self.config = KernelConfig.from_name(name, mma=mma)

    def get_function(self, name):
        return _FakeFunction(self, name)


class _FakeFunction:
    def __init__(self, module: _FakeModule, name: str):
        self.module, self.name, self.attrs = module, name, {}
        src = kbuild.CUDA_DIR / f"{module.pattern}.cu"
        if module.pattern == "probe":
            src = kbuild.CUDA_DIR / kbuild.PROBE_SOURCE
        elif name == kbuild.FINALIZE_FUNCTION:
            src = kbuild.CUDA_DIR / "common.cuh"
        self.params = _kernel_params(src, name)

    def set_attribute(self, attr, value):
        self.attrs[attr] = value

    def prepare(self, sig):
        self.sig = sig

    def prepared_call(self, grid, block, *args, shared_size=0):
        drv, cfg = self.module.drv, self.module.config
        # The launcher's argument list must match the kernel's parameters one to one.
        assert self.sig == "".join(kind for _, kind in self.params), (self.name, self.sig)
        assert len(args) == len(self.params)
        a = {name: value for (name, _), value in zip(self.params, args, strict=True)}
        assert grid[0] >= 1, "CUDA rejects an empty grid"
        drv.launches.append((self.name, grid))
        drv.arguments.append((self.name, a))
        drv.log.append(self.name)
        if self.module.pattern == "probe":
            assert grid == (1, 1) and block == (32, 1, 1)
            _fake_probe(drv, self.name, a)
            return
        if self.name == kbuild.FINALIZE_FUNCTION:
            assert block == (256, 1, 1)
            _fake_finalize(drv, cfg, a, grid[0])
            return
        assert block == (cfg.threads, 1, 1)
        assert shared_size == kbuild.kernel_smem_bytes(cfg)
        if shared_size > 48 * 1024:
            assert self.attrs.get("dyn") == shared_size
        _fake_gemm(drv, self.module.pattern, cfg, a, grid[0])


def _fake_gemm(drv: _FakeDriver, pattern: str, cfg: KernelConfig, a: dict, n_tasks: int):
    """What each .cu kernel computes, restated in numpy from its raw arguments."""
    from tvwsim.kernels.reference import expand_sparse_block

    bm, bn = cfg.bm, cfg.bn
    m8 = a["m8"]
    tasks = drv.view(a["tasks"], np.int32, 4 * n_tasks).reshape(-1, 4)
    yt = drv.view(a["yt"], np.float16)
    rows_out = yt.size // m8
    yt = yt.reshape(rows_out, m8)
    xt_all = drv.view(a["xt"], np.float16)
    k_rows = xt_all.size // m8
    xt = xt_all[: k_rows * m8].reshape(k_rows, m8).astype(np.float32)
    ws = drv.view(a["ws"], np.float32).reshape(rows_out, m8) if a["ws"] else None

    def gather(rows):
        out = np.zeros((len(rows), m8), dtype=np.float32)
        ok = (rows >= 0) & (rows < k_rows)
        out[ok] = xt[rows[ok]]
        return out

    for tile, blk, kb, ke in tasks:
        ks = np.arange(kb, ke)
        if pattern == "dense":
            w = drv.view(a["w"], np.float16)[: a["n"] * a["ldw"]].reshape(a["n"], a["ldw"])
            weight = np.zeros((bm, ke - kb), np.float32)
            rows = w[tile * bm : (tile + 1) * bm, kb:ke]
            weight[: rows.shape[0]] = rows
            xrows, length = np.where(ks < a["K"], ks, -1), a["ldw"]
            out_rows = np.arange(tile * bm, tile * bm + bm)
            out_rows[out_rows >= a["n"]] = -1
        elif pattern == "vw":
            half = a["k_pad"] // 2
            vals = drv.view(a["values"], np.float16)[: a["n_pad"] * half].reshape(-1, half)
            meta = drv.view(a["meta"], np.uint32)
            meta = meta[: a["n_pad"] * a["k_pad"] // 32].reshape(a["n_pad"] // 16, -1, 32)
            weight = np.zeros((bm, ke - kb), np.float32)
            r0, r1 = tile * bm, min(tile * bm + bm, a["n_pad"])
            weight[: r1 - r0] = expand_sparse_block(
                vals[r0:r1, kb // 2 : ke // 2], meta[r0 // 16 : r1 // 16, kb // 64 : ke // 64]
            )
            xrows, length = np.where(ks < a["K"], ks, -1), a["k_pad"]
            out_rows = np.arange(r0, r0 + bm)
            out_rows[out_rows >= a["n"]] = -1
        elif pattern in ("tw", "tvw"):
            k_ptr = drv.view(a["k_ptr"], np.int32)
            kp, length = int(k_ptr[tile]), int(k_ptr[tile + 1] - k_ptr[tile])
            vals = drv.view(a["values"], np.float16)
            if pattern == "tw":
                block = vals[bm * kp : bm * (kp + length)].reshape(bm, length)
                weight = block[:, kb:ke].astype(np.float32)
            else:
                block = vals[bm * kp // 2 : bm * (kp + length) // 2].reshape(bm, length // 2)
                words = drv.view(a["meta"], np.uint32)[bm * kp // 32 : bm * (kp + length) // 32]
                words = words.reshape(bm // 16, length // 64, 32)
                weight = expand_sparse_block(
                    block[:, kb // 2 : ke // 2], words[:, kb // 64 : ke // 64]
                )
            xrows = drv.view(a["k_index"], np.int32)[kp + kb : kp + ke]
            out_rows = drv.view(a["row_map"], np.int32)[tile * bm : (tile + 1) * bm]
        else:  # bw
            b = a["b"]
            col_ptr = drv.view(a["tile_col_ptr"], np.int32)
            u0, nu = int(col_ptr[tile]), int(col_ptr[tile + 1] - col_ptr[tile])
            cols = drv.view(a["tile_col"], np.int32)
            table = drv.view(a["tile_block"], np.int32)
            values = drv.view(a["values"], np.float16)
            weight = np.zeros((bm, ke - kb), np.float32)
            xrows = np.full(ke - kb, -1)
            for j, p in enumerate(ks):
                u, o = divmod(int(p), b)
                if u >= nu:
                    continue
                xrows[j] = cols[u0 + u] * b + o if cols[u0 + u] * b + o < a["K"] else -1
                for br in range(bm // b):
                    if tile * (bm // b) + br >= a["n_block_rows"]:
                        continue
                    v = table[(u0 + u) * (bm // b) + br]
                    if v >= 0:
                        weight[br * b : (br + 1) * b, j] = values[
                            v * b * b + o : (v + 1) * b * b : b
                        ]
            length = nu * b
            out_rows = np.arange(tile * bm, tile * bm + bm)
            out_rows[out_rows >= a["n"]] = -1
        tok = slice(blk * bn, min(blk * bn + bn, m8))
        acc = weight @ gather(np.asarray(xrows))[:, tok]
        keep = out_rows >= 0
        if kb == 0 and ke == length:
            yt[out_rows[keep], tok] = acc[keep].astype(np.float16)
        else:
            ws[out_rows[keep], tok] += acc[keep]


def _fake_probe(drv: _FakeDriver, name: str, a: dict):
    from tvwsim.kernels import mma_sp

    regs = drv.view(a["a"], np.uint32, 128).reshape(32, 4)
    c = drv.view(a["c"], np.float32, 128).reshape(32, 4)
    if name == "mma_sp_probe":
        b = drv.view(a["b"], np.uint32, 128).reshape(32, 4)
        e = drv.view(a["e"], np.uint32, 32)
        d = mma_sp.mma_sp_m16n8k32(regs, b, c, e, a["selector"])
    else:
        d = mma_sp.mma_m16n8k16(regs, drv.view(a["b"], np.uint32, 64).reshape(32, 2), c)
    drv.view(a["d"], np.float32, 128)[:] = d.ravel()


def _fake_finalize(drv: _FakeDriver, cfg: KernelConfig, a: dict, n_regions: int):
    m8, n = a["m8"], a["n"]
    regions = drv.view(a["regions"], np.int32, 4 * n_regions).reshape(-1, 4)
    yt = drv.view(a["yt"], np.float16)[: n * m8].reshape(n, m8)
    ws = drv.view(a["ws"], np.float32)[: n * m8].reshape(n, m8) if a["ws"] else None
    row_map = drv.view(a["row_map"], np.int32) if a["row_map"] else None
    for kind, x, y, _ in regions:
        if kind == 2:
            yt[x] = 0
            continue
        rows = (
            row_map[x * cfg.bm : (x + 1) * cfg.bm]
            if row_map is not None
            else (np.arange(x * cfg.bm, x * cfg.bm + cfg.bm))
        )
        rows = rows[(rows >= 0) & (rows < n)]
        tok = slice(y * cfg.bn, min(y * cfg.bn + cfg.bn, m8))
        yt[rows, tok] = ws[rows, tok].astype(np.float16) if kind == 0 else 0


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """tvwsim.kernels.launch on the numpy stand-in driver, cubins from an empty build dir (the
    launcher then "compiles" - faked - into its cache)."""
    from tvwsim.kernels import launch

    drv = _FakeDriver()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv.module
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv.module)
    monkeypatch.setattr(launch, "_SESSION", None)

    def fake_find(pattern, config, arch, build_dir=None):
        name = (
            kbuild.probe_cubin_name(arch)
            if pattern == "probe"
            else kbuild.cubin_name(pattern, config, arch)
        )
        return tmp_path / name

    monkeypatch.setattr(launch, "find_cubin", fake_find)
    yield drv
    launch._SESSION = None


def _case_inputs(pattern: str, config: KernelConfig, m: int, n: int, k: int, policy: str):
    from tvwsim.kernels import launch

    case = launch.CheckCase(pattern, config, m, n, k, policy, seed=3)
    return launch.make_case_inputs(case)


@pytest.mark.parametrize("pattern", ["dense", "tw", "bw", "vw", "tvw"])
@pytest.mark.parametrize("policy", ["natural", "longest-first", "split"])
def test_launcher_host_side_matches_the_twin(fake_gpu, pattern, policy):
    from tvwsim.kernels import launch
    from tvwsim.kernels.reference import matmul

    config = kbuild.VARIANTS[pattern][2]  # the 128 x 64 tiles: several token blocks
    encoded, x, schedule = _case_inputs(pattern, config, 139, 290, 333, policy)
    y = launch.gemm(encoded, x, schedule)
    assert y.dtype == np.float16 and y.shape == (139, 290)
    assert np.isfinite(y).all()  # every element written over the NaN poison
    assert launch.relative_error(y, matmul(x, encoded)) < 2e-3
    names = [name for name, _ in fake_gpu.launches]
    assert names[0] == kbuild.KERNEL_FUNCTIONS[pattern]
    assert (kbuild.FINALIZE_FUNCTION in names) == (
        schedule.has_split_tasks or pattern in ("tw", "tvw")
    )


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_launcher_zero_fills_rows_no_tile_stores(fake_gpu, pattern):
    from tvwsim.kernels import launch
    from tvwsim.kernels.reference import matmul

    config = kbuild.VARIANTS[pattern][0]
    case = launch.CheckCase(pattern, config, 70, 300, 300, "split", seed=7, edge=True)
    encoded, x, schedule = launch.make_case_inputs(case)
    assert (encoded.tile_k_lengths() == 0).any()  # the edge layout has an empty tile
    stored = np.zeros(encoded.n, bool)
    stored[encoded.row_map[encoded.row_map >= 0]] = True
    assert not stored.all()
    y = launch.gemm(encoded, x, schedule)
    assert np.isfinite(y).all()
    assert (y[:, ~stored] == 0).all()
    assert launch.relative_error(y, matmul(x, encoded)) < 2e-3


def test_launcher_rejects_a_config_beyond_the_device_shared_memory(fake_gpu):
    from tvwsim.kernels import launch

    fake_gpu.smem_limit = 101376  # an RTX 3090's opt-in limit
    config = KernelConfig(bm=128, bn=128, bk=64, stages=4, mma="sparse")  # 102400 B
    encoded, x, schedule = _case_inputs("vw", config, 64, 128, 128, "natural")
    with pytest.raises(InputError) as err:
        launch.gemm(encoded, x, schedule)
    assert err.value.argument == "config"
    assert "102400" in str(err.value) and "101376" in str(err.value)
    assert fake_gpu.launches == []


def test_probe_launchers_pass_registers_through(fake_gpu):
    from tvwsim.kernels import launch, mma_sp

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, (32, 4), dtype=np.uint32) & 0x3BFF3BFF  # finite fp16 pairs
    b = rng.integers(0, 2**32, (32, 4), dtype=np.uint32) & 0x3BFF3BFF
    c = rng.standard_normal((32, 4)).astype(np.float32)
    e = np.full(32, 0x4E4E4E4E, dtype=np.uint32)  # legal ordered nibbles
    for selector in (0, 1):
        got = launch.mma_sp_probe(a, b, c, e, selector)
        assert np.array_equal(got, mma_sp.mma_sp_m16n8k32(a, b, c, e, selector))
    got = launch.mma_probe(a, b[:, :2], c)
    assert np.array_equal(got, mma_sp.mma_m16n8k16(a, b[:, :2], c))
    with pytest.raises(InputError) as err:
        launch.mma_sp_probe(a, b, c, e, 2)
    assert err.value.argument == "selector"
    with pytest.raises(InputError) as err:
        launch.mma_probe(a, b, c)
    assert err.value.argument == "b_regs"


@pytest.mark.parametrize("split", [False, True], ids=["whole-k", "split-k"])
@pytest.mark.parametrize("pattern", ["dense", "tw", "bw", "vw", "tvw"])
def test_every_kernel_parameter_receives_its_own_buffer_or_value(fake_gpu, pattern, split):
    """The argument list checked name by name against the kernel signature: every
    pointer parameter must point at the buffer of that name, every int must be its
    value. Two swapped arguments of one type fail here by name, even where the results
    would happen to survive the swap."""
    from tvwsim.kernels import launch

    from tvwsim.schedule import build_schedule

    config = kbuild.VARIANTS[pattern][2]
    m = 139
    encoded, x, _ = _case_inputs(pattern, config, m, 290, 333, "natural")
    tasks = build_schedule(tile_work(encoded), m, "natural").tasks
    if split:
        tasks = launch.force_split(tasks, config.bk)
    plan = launch.plan_launch(encoded, m, tasks)
    assert plan.needs_workspace == split
    y = launch.gemm(encoded, x, tasks)
    n, m8 = encoded.n, plan.m8

    def content(ptr: int, want: np.ndarray) -> np.ndarray:
        return fake_gpu.view(ptr, want.dtype, want.size).reshape(want.shape)

    xt = np.zeros((encoded.k, m8), np.float16)
    xt[:, :m] = x.astype(np.float16).T
    buffers = {"tasks": plan.tasks, "xt": xt}
    buffers["w" if pattern == "dense" else "values"] = encoded.values
    ints = {"m8": m8}
    if pattern in ("dense", "vw", "bw"):
        ints.update(n=n, K=encoded.k)
    if pattern == "dense":
        ints["ldw"] = encoded.k_pad
    if pattern == "vw":
        ints.update(n_pad=encoded.n_pad, k_pad=encoded.k_pad)
    if pattern in ("vw", "tvw"):
        buffers["meta"] = encoded.metadata
    if pattern in ("tw", "tvw"):
        buffers.update(row_map=encoded.row_map, k_ptr=encoded.k_ptr, k_index=encoded.k_index)
    if pattern == "bw":
        buffers.update(
            tile_col_ptr=encoded.tile_col_ptr,
            tile_col=encoded.tile_col,
            tile_block=encoded.tile_block,
        )
        ints.update(b=encoded.block, n_block_rows=encoded.n_pad // encoded.block)

    (gemm_args,) = [a for name, a in fake_gpu.arguments if name == f"{pattern}_gemm"]
    assert set(gemm_args) == set(buffers) | set(ints) | {"yt", "ws"}
    for name, want in buffers.items():
        assert np.array_equal(content(gemm_args[name], np.asarray(want)), want), name
    for name, want in ints.items():
        assert gemm_args[name] == want, name
    yt = fake_gpu.view(gemm_args["yt"], np.float16, n * m8).reshape(n, m8)
    assert np.array_equal(yt[:, :m].T, y)  # the buffer read back as Y is the kernel's yt
    if split:
        assert fake_gpu.mem[gemm_args["ws"]].size >= 4 * n * m8
    else:
        assert gemm_args["ws"] == 0

    finalize = [a for name, a in fake_gpu.arguments if name == kbuild.FINALIZE_FUNCTION]
    if not plan.regions.shape[0]:
        assert finalize == []
        return
    (fin,) = finalize
    assert np.array_equal(content(fin["regions"], plan.regions), plan.regions)
    assert (fin["n"], fin["m8"], fin["yt"], fin["ws"]) == (n, m8, gemm_args["yt"], gemm_args["ws"])
    if pattern in ("tw", "tvw"):
        assert fin["row_map"] == gemm_args["row_map"]
    else:
        assert fin["row_map"] == 0  # consecutive rows t * BM + r


@pytest.mark.parametrize("pattern", ["tw", "tvw"])
def test_a_weight_with_every_row_pruned_runs_only_the_zero_fill(fake_gpu, pattern):
    """No surviving row means no tile and no task: the GEMM grid would be empty (which
    CUDA rejects), and the finalize pass alone writes Y = 0."""
    from tvwsim.kernels import launch
    from tvwsim.kernels.formats import encode

    w = np.ones((40, 64), np.float32)
    encoded = encode(w, np.zeros(w.shape, bool), pattern, kbuild.VARIANTS[pattern][0])
    assert encoded.n_row_tiles == 0
    y = launch.gemm(encoded, np.ones((10, 64), np.float32))
    assert y.shape == (10, 40) and (y == 0).all()
    assert [name for name, _ in fake_gpu.launches] == [kbuild.FINALIZE_FUNCTION]


def test_timing_runs_the_hook_before_every_launch_outside_the_timed_interval(fake_gpu):
    from tvwsim.kernels import launch

    from tvwsim.schedule import build_schedule

    config = kbuild.VARIANTS["vw"][2]
    encoded, x, _ = _case_inputs("vw", config, 40, 100, 128, "natural")
    tasks = launch.force_split(build_schedule(tile_work(encoded), 40).tasks, config.bk)
    prepared = launch.prepare(encoded, 40, tasks)
    prepared.upload_x(x)
    fake_gpu.log.clear()
    times = prepared.time_ms(repeats=3, warmup=2, before_each=lambda: fake_gpu.log.append("flush"))
    # One launch is the whole operation: workspace zeroing, GEMM, finalize pass.
    whole = ["memset_d32", "vw_gemm", kbuild.FINALIZE_FUNCTION]
    assert fake_gpu.log == ["flush", *whole] * 2 + ["flush", "event", *whole, "event"] * 3
    assert times.tolist() == [4.0] * 3  # the events bracket exactly one launch
    fake_gpu.log.clear()
    prepared.launch()
    assert fake_gpu.log == whole
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError) as err:
            prepared.time_ms(repeats=bad)
        assert err.value.argument == "repeats"


# -- validation before anything reaches a device --------------------------------------
@pytest.fixture(scope="module")
def tw_case():
    from tvwsim.kernels import launch

    case = launch.CheckCase("tw", kbuild.VARIANTS["tw"][2], 100, 300, 260, "natural", seed=5)
    return launch.make_case_inputs(case)


def _plan(encoded, m, tasks):
    from tvwsim.kernels import launch

    return launch.plan_launch(encoded, m, np.asarray(tasks, dtype=np.int32))


def test_plan_accepts_every_policy(tw_case):
    from tvwsim.kernels import launch

    from tvwsim.schedule import build_schedule

    encoded, x, _ = tw_case
    for policy in ("natural", "longest-first", "split"):
        schedule = build_schedule(tile_work(encoded), 100, policy)
        plan = launch.plan_launch(encoded, 100, schedule)
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
    from tvwsim.kernels import launch

    encoded, _, schedule = tw_case
    tasks = edit(np.array(schedule.tasks))
    with pytest.raises(InputError, match=match) as err:
        launch.plan_launch(encoded, 100, tasks)
    assert err.value.argument == "schedule"


def _shift_end(tasks: np.ndarray, by: int) -> np.ndarray:
    tasks = tasks.copy()
    i = int(np.argmax(tasks[:, 3]))
    tasks[i, 3] += by
    return tasks


def test_plan_rejects_a_schedule_for_another_gemm(tw_case):
    from tvwsim.kernels import launch

    from tvwsim.schedule import build_schedule

    encoded, _, schedule = tw_case
    with pytest.raises(InputError, match="m = 100") as err:
        launch.plan_launch(encoded, 99, schedule)
    assert err.value.argument == "schedule"
    other = launch.make_case_inputs(
        launch.CheckCase("tw", kbuild.VARIANTS["tw"][3], 100, 300, 260, "natural")
    )[0]
    with pytest.raises(InputError, match="bm, bk and the mma kind"):
        launch.plan_launch(encoded, 100, build_schedule(tile_work(other), 100))


def test_gemm_rejects_bad_x_and_encodings(tw_case):
    from tvwsim.kernels import launch
    from tvwsim.kernels.formats import encode

    encoded, x, schedule = tw_case
    bad = [
        (x[:, :-1], "x", "K = 259"),
        (x.astype(np.int32), "x", "float"),
        (x[0], "x", "2-D"),
        (x * 1e6, "x", "fp16 range"),
    ]
    for arg, argument, match in bad:
        with pytest.raises(InputError, match=match) as err:
            launch.gemm(encoded, arg, schedule)
        assert err.value.argument == argument
    csr = encode(np.ones((4, 4), np.float32), None, "ew")
    with pytest.raises(InputError, match="ew has no tvwsim kernel") as err:
        launch.gemm(csr, x[:, :4])
    assert err.value.argument == "encoded"
    with pytest.raises(InputError, match="runs vw"):
        launch.gemm_vw(encoded, x, schedule)


def test_without_pycuda_or_a_gpu_the_check_command_says_what_to_do(capsys):
    from tvwsim.kernels import launch

    ok, _ = launch.gpu_status()
    if ok:
        pytest.skip("a GPU is present: tests/test_gpu_kernels.py runs the checks")
    assert main(["kernels", "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'pip install -e ".[gpu]"' in err or "device" in err
