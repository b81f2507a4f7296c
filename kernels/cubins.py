"""Finding or compiling a cubin, and loading a kernel from it onto the device.

Cubins come from `tvwsim kernels build`: the `build_dir` given, else the kernel directory
(`tvwsim.manifest.kernel_dir`: `$TVWSIM_KERNEL_DIR` or a per-user cache directory, never
the working directory). A variant that is not there, or whose cubin is older than its
sources, is compiled on the spot for the device's arch into a per-source-version cache in
the temp directory, so an edited `.cu` never runs from a stale cubin and an unchanged one
is compiled once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvwsim.kernels import build as kbuild
from tvwsim.kernels.device import KernelError, session

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import kernel_dir


@dataclass(frozen=True)
class LoadedKernel:
    """A GEMM entry point and its finalize pass, ready to launch."""

    pattern: str
    config: KernelConfig
    cubin: Path
    gemm: Any
    finalize: Any
    smem_bytes: int
    block: int | None = None
    """bw: the block side compiled into the cubin (None for the other patterns)."""


def _sources(pattern: str, config: KernelConfig | None = None) -> list[Path]:
    common = [kbuild.CUDA_DIR / "common.cuh"]
    if pattern == "probe":
        return [*common, kbuild.CUDA_DIR / kbuild.PROBE_SOURCE]
    hopper = [*common, kbuild.CUDA_DIR / "wgmma.cuh"]
    if pattern == "wgmma_probe":
        return [*hopper, kbuild.CUDA_DIR / kbuild.WGMMA_PROBE_SOURCE]
    source = kbuild.kernel_source(pattern, config) if config is not None else None
    if config is not None and config.mma_class == "wgmma":
        return [*hopper, source]
    return [*common, source or kbuild.CUDA_DIR / f"{pattern}.cu"]


def _source_digest(pattern: str, config: KernelConfig | None = None) -> str:
    h = hashlib.sha256()
    for path in _sources(pattern, config):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _fresh(cubin: Path, pattern: str, config: KernelConfig | None = None) -> bool:
    """A built cubin is used only if it is newer than every source it was built from."""
    if not cubin.is_file():
        return False
    built = cubin.stat().st_mtime
    return all(src.stat().st_mtime <= built for src in _sources(pattern, config))


def _jit_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "tvwsim-kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_cubin(
    pattern: str,
    config: KernelConfig | None,
    arch: str,
    build_dir: Path | str | None = None,
    block: int | None = None,
) -> Path:
    """The cubin for (pattern, config, arch) - and for bw, the encoding's `block`, one of
    `build.BW_BLOCKS` (else InputError('block')): from the build directory if present and
    up to date, else compiled now into a per-source-version cache (pattern 'probe' for the
    one-warp probes, config None)."""
    directory = Path(build_dir) if build_dir else kernel_dir()
    if pattern == "wgmma_probe" or (config is not None and config.mma_class == "wgmma"):
        arch = kbuild.wgmma_arch(arch)  # an H100 / H200 runs the sm_90a cubins
    if pattern == "probe":
        name = kbuild.probe_cubin_name(arch)
    elif pattern == "wgmma_probe":
        name = kbuild.wgmma_probe_cubin_name(arch)
    else:
        kbuild.check_pattern_config(pattern, config)
        block = kbuild.check_block(pattern, block)
        name = kbuild.cubin_name(pattern, config, arch, block)
    candidate = directory / name
    if _fresh(candidate, pattern, config):
        return candidate
    cache = _jit_dir() / _source_digest(pattern, config)
    cached = cache / name
    if cached.is_file():
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    # Compile into a private temp dir, then rename: concurrent processes never see a
    # half-written cubin.
    tmp = Path(tempfile.mkdtemp(prefix=".jit-", dir=cache))
    try:
        if pattern == "probe":
            kbuild.compile_probe(arch, tmp)
        elif pattern == "wgmma_probe":
            kbuild.compile_wgmma_probe(tmp)
        else:
            kbuild.compile_kernel(pattern, config, arch, tmp, block=block)
        os.replace(tmp / name, cached)
    finally:
        for leftover in tmp.glob("*"):
            leftover.unlink(missing_ok=True)
        tmp.rmdir()
    return cached


def load_kernel(
    pattern: str,
    config: KernelConfig,
    build_dir: Path | str | None = None,
    block: int | None = None,
) -> LoadedKernel:
    """Load (building if needed) the `pattern` kernel for `config` (bw: and `block`) on
    the current device, after checking that its shared memory fits the device."""
    kbuild.check_pattern_config(pattern, config)
    block = kbuild.check_block(pattern, block)
    s = session()
    smem = config.smem_bytes
    limit = s.info.smem_per_block_optin_bytes
    if smem > limit:
        raise InputError(
            "config",
            f"{pattern} {config.name} needs {smem} bytes of shared memory per CTA; "
            f"{s.info.name} allows {limit}. Use fewer stages or a smaller tile "
            f"(shipped: {', '.join(c.name for c in kbuild.VARIANTS.get(pattern, []))})",
        )
    cubin = find_cubin(pattern, config, s.info.arch, build_dir, block)
    module = s.module(cubin)
    gemm = s.call(
        f"finding {kbuild.KERNEL_FUNCTIONS[pattern]}",
        module.get_function,
        kbuild.KERNEL_FUNCTIONS[pattern],
    )
    finalize = s.call("finding finalize_rows", module.get_function, kbuild.FINALIZE_FUNCTION)
    attr = getattr(s.cuda.function_attribute, "MAX_DYNAMIC_SHARED_SIZE_BYTES", None)
    if smem > 48 * 1024:
        if attr is None:
            raise KernelError("this pycuda cannot opt in to more than 48 KiB of shared memory")
        # Above 48 KiB a kernel must opt in explicitly (cuFuncSetAttribute).
        s.call("setting the shared memory size", gemm.set_attribute, attr, smem)
    return LoadedKernel(pattern, config, cubin, gemm, finalize, smem, block)
