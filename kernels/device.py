"""The device session: one CUDA context on one GPU, shared by every launch in the process.

This is the only module that imports pycuda, and only inside a function (`session()`
on first use), so importing it - or anything else in tvwsim - never needs a GPU or
pycuda. Everything that touches the device goes through the session: `call` turns a
driver error into a `KernelError` naming what was being done, `to_device` and `alloc`
hand out device buffers, `module` loads a cubin once per path.

Missing pycuda, a missing driver, no device or a device older than sm_80 are
`InputError`s naming `pycuda` or `device` and saying what to do; `gpu_status()` turns
them into a (usable, why) pair for commands that only want to know.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvwsim.errors import InputError

GPU_EXTRA_HINT = 'pip install -e ".[gpu]"'
DEVICE_ENV = "TVWSIM_DEVICE"
"""Environment variable naming the CUDA device index the session opens (default 0)."""


class KernelError(RuntimeError):
    """A CUDA call failed (the message names the call and carries the driver's error)."""


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU a session runs on."""

    name: str
    arch: str
    """'sm_80', 'sm_90', ...: which cubins load on it."""
    sm_count: int
    smem_per_block_optin_bytes: int
    """The most dynamic shared memory one CTA may request (after opting in)."""


def _import_pycuda():
    try:
        import pycuda.driver as cuda
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("pycuda"):
            raise InputError("pycuda", f"not installed: {GPU_EXTRA_HINT}") from None
        raise
    except ImportError as err:  # pycuda present but libcuda (the driver) is not
        raise InputError(
            "device",
            f"the CUDA driver could not be loaded ({err}); run on a machine with an "
            "NVIDIA GPU and its driver",
        ) from None
    return cuda


class DeviceSession:
    """A pushed primary context on one device, plus loaded modules (cached by path)."""

    def __init__(self, device: int = 0):
        cuda = _import_pycuda()
        self.cuda = cuda
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as err:
            raise InputError(
                "device", f"CUDA could not start ({err}); check the driver with nvidia-smi"
            ) from None
        if count == 0:
            raise InputError(
                "device",
                "no CUDA device found: run on a machine with an NVIDIA GPU (sm_80 or newer)",
            )
        if not 0 <= device < count:
            raise InputError("device", f"device {device} does not exist ({count} present)")
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        if major < 8:
            raise InputError(
                "device",
                f"{dev.name()} is sm_{major}{minor}; the kernels need sm_80 or newer "
                "(cp.async, mma.sp)",
            )
        attr = cuda.device_attribute
        optin = getattr(attr, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", None)
        smem = dev.get_attribute(optin if optin is not None else attr.MAX_SHARED_MEMORY_PER_BLOCK)
        self.info = DeviceInfo(
            name=dev.name(),
            arch=f"sm_{major}{minor}",
            sm_count=int(dev.get_attribute(attr.MULTIPROCESSOR_COUNT)),
            smem_per_block_optin_bytes=int(smem),
        )
        self.context = dev.retain_primary_context()
        self.context.push()
        self.modules: dict[str, Any] = {}
        atexit.register(self.close)

    def close(self) -> None:
        if self.context is not None:
            try:
                self.context.pop()
            except Exception:  # noqa: BLE001 - at exit the context may already be gone
                pass
            self.context = None

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """Run one CUDA call; a driver error becomes a KernelError naming `what`."""
        try:
            return fn(*args, **kwargs)
        except self.cuda.Error as err:
            raise KernelError(f"CUDA error in {what}: {err}") from err

    def module(self, cubin: Path):
        key = str(cubin)
        if key not in self.modules:
            self.modules[key] = self.call(f"loading {cubin.name}", self.cuda.module_from_file, key)
        return self.modules[key]

    def to_device(self, array: np.ndarray, what: str):
        array = np.ascontiguousarray(array)
        # cuMemAlloc(0) fails; an empty buffer is never read, but the kernel still wants
        # a valid pointer.
        nbytes = max(array.nbytes, 16)
        ptr = self.call(f"allocating {what}", self.cuda.mem_alloc, nbytes)
        if array.nbytes:
            self.call(f"copying {what}", self.cuda.memcpy_htod, ptr, array)
        return ptr

    def alloc(self, nbytes: int, what: str):
        return self.call(f"allocating {what}", self.cuda.mem_alloc, max(int(nbytes), 16))

    def synchronize(self, what: str) -> None:
        self.call(what, self.cuda.Context.synchronize)


_SESSION: DeviceSession | None = None


def session() -> DeviceSession:
    """The process-wide device session (created on first use)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = DeviceSession(int(os.environ.get(DEVICE_ENV, "0")))
    return _SESSION


def gpu_status() -> tuple[bool, str]:
    """(True, device description) when kernels can run here, else (False, why not)."""
    try:
        info = session().info
    except InputError as err:
        return False, str(err)
    return True, f"{info.name} ({info.arch}, {info.sm_count} SMs)"


def device_info() -> DeviceInfo:
    return session().info
