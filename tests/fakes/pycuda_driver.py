"""A numpy stand-in for `pycuda.driver`, so the launcher's host side runs without a GPU.

`FakeDriver().module` has just enough of pycuda.driver for `tvwsim.kernels.device` and
the modules above it: a device (sm_90, 132 SMs, an adjustable shared-memory limit),
allocations backed by numpy byte arrays, copies, memsets, events that count the device
work between them, and modules whose "kernels" re-implement in numpy what each `.cu`
kernel does with its raw arguments. Arguments are mapped to the parameter names parsed
from the kernel's own source (`kernel_params`), so a launcher that passes them in the
wrong order or with the wrong size fails by name.

`install(monkeypatch, tmp_path)` puts the stand-in in `sys.modules`, starts a fresh
device session, and makes "compiling" a cubin write an empty file: the launcher's own
cubin lookup and cache then run unchanged. Whether the CUDA code itself computes the
right thing is tests/kernels/test_gpu_kernels.py's job, on a real GPU.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
from tvwsim.kernels import build as kbuild

from tvwsim.config import WGMMA_SUFFIX, KernelConfig
from tvwsim.pattern_spec import mma_kind

# C scalar type -> the PyCUDA `prepare` code that passes it with the right size: an
# `int64_t` parameter handed 'i' would read 4 garbage bytes on the GPU.
SCALAR_CODES = {
    "int": "i",
    "int32_t": "i",
    "unsigned": "I",
    "unsigned int": "I",
    "uint32_t": "I",
    "long long": "q",
    "int64_t": "q",
    "float": "f",
}


def kernel_params(source: Path, function: str) -> list[tuple[str, str]]:
    """(name, PyCUDA type code) of each parameter of an extern "C" kernel in a .cu file:
    'P' for a pointer, else the code of its C type (SCALAR_CODES)."""
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
        assert ctype in SCALAR_CODES, f"{function}({raw.strip()}): no PyCUDA code for {ctype!r}"
        params.append((name, SCALAR_CODES[ctype]))
    return params


class FakeAlloc:
    def __init__(self, registry: dict, nbytes: int):
        self.addr = (len(registry) + 1) << 32
        self.data = np.zeros(nbytes, dtype=np.uint8)
        registry[self.addr] = self.data

    def __int__(self) -> int:
        return self.addr


class FakeDriver:
    """Just enough of pycuda.driver for the launcher, with numpy models of the kernels.

    The device is an H100-like sm_90 part; `smem_limit` (bytes of opt-in shared memory
    per CTA) and `capability` may be changed before the session starts.
    """

    def __init__(self, smem_limit: int = 232448, capability: tuple[int, int] = (9, 0)):
        self.mem: dict[int, np.ndarray] = {}
        self.launches: list[tuple[str, tuple]] = []
        self.arguments: list[tuple[str, dict]] = []  # (function, parameter name -> value)
        self.log: list[str] = []  # device work in stream order, for the timing tests
        self.smem_limit = smem_limit
        self.capability = capability
        self.compiled: list[str] = []  # cubin names "compiled" (see `install`)
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
                return drv.capability

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
        self.module.mem_alloc = lambda n: FakeAlloc(self.mem, n)
        self.module.memcpy_htod = self.htod
        self.module.memcpy_dtoh = self.dtoh
        self.module.memset_d16 = lambda p, v, n: self.view(p, np.uint16, n).fill(v)
        self.module.memset_d32 = self.memset_d32
        self.module.module_from_file = lambda path: FakeModule(self, Path(path))

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


class FakeModule:
    def __init__(self, drv: FakeDriver, path: Path):
        self.drv, self.path = drv, path
        if path.name.startswith("mma_sp_probe-"):
            self.pattern, self.config = "probe", None
            return
        stem = path.stem.replace(WGMMA_SUFFIX, "")  # the sm_90a kernels' configs
        pattern, name, *block, _arch = stem.split("-")
        name += WGMMA_SUFFIX if WGMMA_SUFFIX in path.stem else ""
        self.pattern = pattern
        # bw cubins are per block side (bw-<config>-b<block>-<arch>): the kernel has it
        # compiled in, not as an argument.
        self.block = int(block[0].removeprefix("b")) if block else None
        assert (pattern == "bw") == (self.block is not None), path.name
        mma = mma_kind(pattern)
        self.config = KernelConfig.from_name(name, mma=mma)

    def get_function(self, name):
        return FakeFunction(self, name)


class FakeFunction:
    def __init__(self, module: FakeModule, name: str):
        self.module, self.name, self.attrs = module, name, {}
        src = kbuild.CUDA_DIR / f"{module.pattern}.cu"
        if module.config is not None:
            src = kbuild.kernel_source(module.pattern, module.config)
        if module.pattern == "probe":
            src = kbuild.CUDA_DIR / kbuild.PROBE_SOURCE
        elif name == kbuild.FINALIZE_FUNCTION:
            src = kbuild.CUDA_DIR / "common.cuh"
        self.params = kernel_params(src, name)

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
        assert shared_size == cfg.smem_bytes
        if shared_size > 48 * 1024:
            assert self.attrs.get("dyn") == shared_size
        _fake_gemm(drv, self.module.pattern, cfg, a, grid[0], self.module.block)


def _fake_gemm(
    drv: FakeDriver, pattern: str, cfg: KernelConfig, a: dict, n_tasks: int, block: int | None
):
    """What each .cu kernel computes, restated in numpy from its raw arguments."""
    from tvwsim.kernels.reference import expand_sparse_block

    if cfg.mma_class == "wgmma":
        a = _plain_weight(drv, pattern, cfg, a)
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
            b = block
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


def _plain_weight(drv: FakeDriver, pattern: str, cfg: KernelConfig, a: dict) -> dict:
    """The arguments of an sm_90a kernel with its K-blocked weight image (kernels/wgmma.py
    `weight_image`: per tile and 64-K stage, swizzled rows, then 2:4 metadata words) read
    back into the sm_80 kernels' buffers, so one numpy kernel serves both classes."""
    from tvwsim.kernels.wgmma import WgmmaLayout, swizzle_rows

    layout = WgmmaLayout(cfg)
    first = "w_blocked" if pattern == "dense" else "values"
    image = drv.view(a[first], np.uint8)
    if pattern in ("dense", "vw"):
        rows, k_len = (a["n"], a["ldw"]) if pattern == "dense" else (a["n_pad"], a["k_pad"])
        lengths = [k_len] * -(-rows // cfg.bm)
    else:
        # The allocation may hold more than tiles + 1 offsets: walk tiles while they stay
        # inside the image (the blocks are the tiles' stages in order).
        k_ptr = drv.view(a["k_ptr"], np.int32).astype(np.int64)
        total = image.size // layout.weight_bytes * cfg.bk
        lengths = []
        for lo, hi in zip(k_ptr[:-1], k_ptr[1:], strict=True):
            if hi < lo or hi > total:
                break
            lengths.append(int(hi - lo))
    stored = layout.a_row_bytes // 2  # fp16 of one row per stage
    values, words, at = [], [], 0
    for length in lengths:
        tile_values, tile_words = [], []
        for _ in range(length // cfg.bk):
            block = image[at : at + layout.weight_bytes]
            at += layout.weight_bytes
            raw = block[: layout.a_bytes].view(np.float16).reshape(cfg.bm, stored)
            tile_values.append(swizzle_rows(raw))
            if layout.sparse:  # this stage's words of the tile's 16-row blocks
                words_of_stage = block[layout.a_bytes :].view(np.uint32)
                tile_words.append(words_of_stage.reshape(cfg.bm // 16, 1, 32))
        values.append(np.concatenate(tile_values, axis=1) if tile_values else None)
        words.append(np.concatenate(tile_words, axis=1) if tile_words else None)
    plain = dict(a)

    def put(name: str, arrays: list) -> None:
        data = np.concatenate([x.ravel() for x in arrays if x is not None] or [np.zeros(0)])
        alloc = FakeAlloc(drv.mem, max(data.nbytes, 16))
        drv.htod(alloc, data)
        plain[name] = int(alloc)

    if pattern == "dense":
        put("w", [np.concatenate(values)[: a["n"]]])
    elif pattern == "vw":
        put("values", [np.concatenate(values)[: a["n_pad"]]])
        put("meta", [np.concatenate(words)[: a["n_pad"] // 16]])
    else:
        put("values", values)
        if pattern == "tvw":
            put("meta", words)
    return plain


def _fake_probe(drv: FakeDriver, name: str, a: dict):
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


def _fake_finalize(drv: FakeDriver, cfg: KernelConfig, a: dict, n_regions: int):
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


def install(monkeypatch, tmp_path: Path, driver: FakeDriver | None = None) -> FakeDriver:
    """Run the launcher on `driver` (a new FakeDriver by default) until the test ends.

    The stand-in replaces pycuda in `sys.modules`, the device session starts afresh,
    `$TVWSIM_KERNEL_DIR` names an empty build directory and the temp directory (where
    the launcher caches what it compiles) lies under `tmp_path`. Compiling writes an
    empty cubin and records its name in `driver.compiled`: no nvcc is needed, and the
    launcher's own lookup, freshness check and cache run as they would on a GPU machine.
    """
    import tempfile

    from tvwsim.kernels import device

    from tvwsim.manifest import KERNEL_DIR_ENV

    drv = driver or FakeDriver()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv.module
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv.module)
    monkeypatch.setattr(device, "_SESSION", None)
    build_dir, temp = tmp_path / "build", tmp_path / "tmp"
    build_dir.mkdir()
    temp.mkdir()
    monkeypatch.setenv(KERNEL_DIR_ENV, str(build_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def fake_compile(out_dir: Path, name: str) -> None:
        drv.compiled.append(name)
        (Path(out_dir) / name).write_bytes(b"")

    monkeypatch.setattr(
        kbuild,
        "compile_kernel",
        lambda pattern, config, arch, out_dir, nvcc=None, block=None: fake_compile(
            out_dir, kbuild.cubin_name(pattern, config, arch, block)
        ),
    )
    monkeypatch.setattr(
        kbuild,
        "compile_probe",
        lambda arch, out_dir, nvcc=None: fake_compile(out_dir, kbuild.probe_cubin_name(arch)),
    )
    return drv
