"""One-warp probes: exactly one mma.sp m16n8k32 or mma.sync m16n8k16 on silicon.

Each lane's A, B, C (and for mma.sp, E metadata) registers are handed in from global
memory and D comes back register by register, so the result can be compared with the
numpy emulation in `tvwsim.kernels.mma_sp` taking the same arguments. This pins the
fragment and metadata layout that the encoder, the CPU twin and the kernels share; the
probes' kernels live in `cuda/` beside the GEMMs and compile through the same cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tvwsim.kernels.cubins import find_cubin
from tvwsim.kernels.device import session

from tvwsim.errors import InputError


def _probe_function(name: str, build_dir: Path | str | None = None):
    s = session()
    cubin = find_cubin("probe", None, s.info.arch, build_dir)
    return s.call(f"finding {name}", s.module(cubin).get_function, name)


def _regs(name: str, array: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise InputError(name, f"must have shape {shape}, got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def mma_sp_probe(
    a_regs: np.ndarray,
    b_regs: np.ndarray,
    c_regs: np.ndarray,
    e_regs: np.ndarray,
    selector: int,
    *,
    build_dir: Path | str | None = None,
) -> np.ndarray:
    """Execute exactly one mma.sp m16n8k32 on silicon with the given per-lane registers
    (same arguments as `tvwsim.kernels.mma_sp.mma_sp_m16n8k32`); returns D (32, 4) float32."""
    if selector not in (0, 1):
        raise InputError("selector", f"must be 0 or 1, got {selector!r}")
    a = _regs("a_regs", a_regs, (32, 4), np.uint32)
    b = _regs("b_regs", b_regs, (32, 4), np.uint32)
    c = _regs("c_regs", c_regs, (32, 4), np.float32)
    e = _regs("e_regs", e_regs, (32,), np.uint32)
    s = session()
    fn = _probe_function("mma_sp_probe", build_dir)
    bufs = [s.to_device(v, n) for v, n in ((a, "A"), (b, "B"), (c, "C"), (e, "E"))]
    d_buf = s.alloc(32 * 4 * 4, "D")
    fn.prepare("PPPPiP")
    s.call(
        "launching mma_sp_probe",
        fn.prepared_call,
        (1, 1),
        (32, 1, 1),
        *(int(p) for p in bufs),
        int(selector),
        int(d_buf),
    )
    s.synchronize("running mma_sp_probe")
    d = np.empty((32, 4), dtype=np.float32)
    s.call("copying D back", s.cuda.memcpy_dtoh, d, d_buf)
    return d


def mma_probe(
    a_regs: np.ndarray,
    b_regs: np.ndarray,
    c_regs: np.ndarray,
    *,
    build_dir: Path | str | None = None,
) -> np.ndarray:
    """Execute exactly one dense mma.sync m16n8k16; returns D (32, 4) float32."""
    a = _regs("a_regs", a_regs, (32, 4), np.uint32)
    b = _regs("b_regs", b_regs, (32, 2), np.uint32)
    c = _regs("c_regs", c_regs, (32, 4), np.float32)
    s = session()
    fn = _probe_function("mma_probe", build_dir)
    bufs = [s.to_device(v, n) for v, n in ((a, "A"), (b, "B"), (c, "C"))]
    d_buf = s.alloc(32 * 4 * 4, "D")
    fn.prepare("PPPP")
    s.call(
        "launching mma_probe",
        fn.prepared_call,
        (1, 1),
        (32, 1, 1),
        *(int(p) for p in bufs),
        int(d_buf),
    )
    s.synchronize("running mma_probe")
    d = np.empty((32, 4), dtype=np.float32)
    s.call("copying D back", s.cuda.memcpy_dtoh, d, d_buf)
    return d


def wgmma_probe(case: Any, *, build_dir: Path | str | None = None) -> np.ndarray:
    """Execute exactly one wgmma m64n256k16 (or, for a 2:4 case, wgmma.sp m64n256k32) on
    one warpgroup of an sm_90 GPU with `case` (a `tvwsim.kernels.wgmma.ProbeCase`: the
    stage's shared-memory bytes, descriptor fields, C and metadata registers); returns
    every thread's D (128, 128) float32, to compare with `case.expected()`."""
    from tvwsim.kernels.wgmma import ProbeCase

    if not isinstance(case, ProbeCase):
        raise InputError("case", f"must be a wgmma ProbeCase, got {type(case).__name__}")
    image = np.ascontiguousarray(case.image, dtype=np.uint8)
    c = _regs("c", case.c, (128, 128), np.float32)
    s = session()
    if not s.info.arch.startswith("sm_90"):
        raise InputError("device", f"wgmma needs an sm_90 GPU (H100, H200), got {s.info.arch}")
    name = "wgmma_sp_probe" if case.sparse else "wgmma_probe"
    cubin = find_cubin("wgmma_probe", None, s.info.arch, build_dir)
    fn = s.call(f"finding {name}", s.module(cubin).get_function, name)
    image_p = s.to_device(image, "the stage image")
    c_p = s.to_device(c, "C")
    d_p = s.alloc(128 * 128 * 4, "D")
    fields = [image.size, case.a_offset, case.a_sbo, case.a_swizzle]
    fields += [case.b_offset, case.b_lbo, case.b_sbo]
    smem = image.size
    attr = s.cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES
    s.call(f"allowing {name} {smem} bytes of shared memory", fn.set_attribute, attr, smem)
    if case.sparse:
        e_p = s.to_device(_regs("e", case.e, (128,), np.uint32), "E")
        fn.prepare("Piiiiiii" + "PPiP")
        args = [int(image_p), *fields, int(c_p), int(e_p), int(case.selector), int(d_p)]
    else:
        fn.prepare("Piiiiiii" + "PP")
        args = [int(image_p), *fields, int(c_p), int(d_p)]
    s.call(
        f"launching {name}",
        fn.prepared_call,
        (1, 1),
        (128, 1, 1),
        *args,
        shared_size=smem,
    )
    s.synchronize(f"running {name}")
    d = np.empty((128, 128), dtype=np.float32)
    s.call("copying D back", s.cuda.memcpy_dtoh, d, d_p)
    return d
