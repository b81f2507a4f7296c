"""The kernel manifest: what each compiled kernel costs the SM, written by the build, read
by the simulator.

*Covers:* `KernelResources` (what one CTA holds on its SM: registers, shared memory,
threads), `BuiltKernel` (one manifest entry: a cubin and what ptxas reported for it),
`Manifest` with its one reader (`read_manifest`) and writer (`write_manifest`), and where
the kernel directory is (`kernel_dir`).

*Where:* one kernel directory per user, never the working directory, so a result does not
depend on where a command runs:

1. `$TVWSIM_KERNEL_DIR` when it is set;
2. else `$XDG_CACHE_HOME/tvwsim/kernels` (`~/.cache/tvwsim/kernels` when XDG_CACHE_HOME is
   unset).

`tvwsim kernels build` writes its cubins and `manifest.json` there unless `--build-dir` says
otherwise, the launcher looks for cubins there, and the simulator reads the manifest from
there unless `--manifest FILE` names another. A kernel the manifest does not list (or no
manifest at all) gets estimated resources, and every result says which it used.

*Format* (schema 1):

    {"schema": 1, "nvcc": "<last line of nvcc --version>",
     "kernels": [{"pattern": "tvw", "config": "128x128x64s3w4", "arch": "sm_90",
                  "cubin": "tvw-128x128x64s3w4-sm_90.cubin", "function": "tvw_gemm",
                  "registers": 248, "shared_static_bytes": 0,
                  "shared_dynamic_bytes": 76800, "stack_frame_bytes": 0,
                  "spill_store_bytes": 0, "spill_load_bytes": 0, "block": 0}, ...]}

`block` is the bw block side a bw cubin was compiled for (one entry per block,
`tvwsim.kernels.build.BW_BLOCKS`), 0 for the other patterns; an entry without it (a
manifest written before bw had per-block cubins) reads as 0.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.io import write_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
KERNEL_DIR_ENV = "TVWSIM_KERNEL_DIR"
"""Environment variable naming the kernel directory (cubins and manifest)."""

_ARCH = re.compile(r"^sm_(\d{1,2})(\d)(a?)$")
"""sm_ + major version + one-digit minor version, optionally `a` (arch-specific features)."""


@dataclass(frozen=True)
class KernelResources:
    """What one CTA of a kernel holds on its SM while it runs (occupancy's input)."""

    registers_per_thread: int
    """32-bit registers per thread (ptxas -v, or the estimate)."""
    smem_bytes: int
    """Shared memory per CTA, static + dynamic, in bytes."""
    threads: int
    """Threads per CTA (32 x warps)."""
    source: str = "estimate"
    """'estimate' (from the KernelConfig) or 'manifest' (from the compiled kernel)."""


@dataclass(frozen=True)
class BuiltKernel:
    """One manifest entry: a compiled GEMM kernel and what ptxas reported for it."""

    pattern: str
    config: str
    """`KernelConfig.name`, e.g. '128x128x64s3w4'."""
    arch: str
    """The arch it was compiled for, e.g. 'sm_90'."""
    cubin: str
    """File name inside the kernel directory."""
    function: str
    """The extern "C" entry point."""
    registers: int
    """Registers per thread."""
    shared_static_bytes: int
    """Statically declared shared memory (the kernels declare none, so 0)."""
    shared_dynamic_bytes: int
    """Dynamic shared memory the launch requests (`KernelConfig.smem_bytes`)."""
    stack_frame_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    block: int = 0
    """bw: the block side compiled in (-DTVWSIM_BW_BLOCK); 0 for the other patterns."""

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(pattern, config, arch, block): what one cubin is built for."""
        return (self.pattern, self.config, self.arch, self.block)

    def to_json(self) -> dict:
        return asdict(self)

    def resources(self) -> KernelResources:
        """What one CTA of this kernel holds on its SM."""
        threads = KernelConfig.from_name(self.config).threads
        return KernelResources(
            registers_per_thread=self.registers,
            smem_bytes=self.shared_static_bytes + self.shared_dynamic_bytes,
            threads=threads,
            source="manifest",
        )


@dataclass(frozen=True)
class Manifest:
    """The build's record: the nvcc that compiled and one `BuiltKernel` per cubin."""

    nvcc: str
    kernels: tuple[BuiltKernel, ...]

    def to_json(self) -> dict:
        return {
            "schema": MANIFEST_SCHEMA,
            "nvcc": self.nvcc,
            "kernels": [k.to_json() for k in self.kernels],
        }

    def find(
        self, pattern: str, config: str, arch: str, block: int | None = None
    ) -> BuiltKernel | None:
        """The entry compiled for exactly this arch (and bw `block`), or None. Without a
        block, a bw config's entry of the smallest block (32, the sweeps' default)."""
        found = [
            k
            for k in self.kernels
            if (k.pattern, k.config, k.arch) == (pattern, config, arch)
            and (block is None or k.block == block)
        ]
        return min(found, key=lambda k: k.block) if found else None

    def find_for_device(
        self, pattern: str, config: str, arch: str, block: int | None = None
    ) -> BuiltKernel | None:
        """The entry a GPU of `arch` would run: its own arch first, then a cubin of the same
        major version and a lower minor (an sm_80 cubin runs on sm_86), nearest first."""
        for candidate in compatible_archs(arch):
            found = self.find(pattern, config, candidate, block)
            if found is not None:
                return found
        return None


def check_arch(arch: str, argument: str = "arch") -> str:
    """`arch` if it is a compute target like 'sm_80' or 'sm_90a', else InputError."""
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise InputError(argument, f"must be sm_NN or sm_NNa (e.g. sm_80, sm_90a), got {arch!r}")
    return arch


def arch_version(arch: str, argument: str = "arch") -> tuple[int, int]:
    """(major, minor) compute capability of a target: 'sm_86' -> (8, 6)."""
    major, minor, _ = _ARCH.match(check_arch(arch, argument)).groups()
    return int(major), int(minor)


def compatible_archs(arch: str) -> list[str]:
    """Archs whose cubins run on a GPU of `arch`, best first: 'sm_86' -> sm_86, sm_85, ...,
    sm_80. An arch-specific 'sm_90a' also takes plain sm_90 cubins."""
    major, minor, specific = _ARCH.match(check_arch(arch)).groups()
    found = [arch] if specific else []
    found += [f"sm_{major}{m}" for m in range(int(minor), -1, -1)]
    return found


# -- where -----------------------------------------------------------------------------
def kernel_dir() -> Path:
    """The kernel directory: $TVWSIM_KERNEL_DIR, else the per-user cache directory."""
    chosen = os.environ.get(KERNEL_DIR_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    # XDG: a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "tvwsim" / "kernels"


def default_manifest_path() -> Path:
    """`manifest.json` in the kernel directory."""
    return kernel_dir() / MANIFEST_NAME


# -- reading and writing -------------------------------------------------------------
_INT_FIELDS = {f.name for f in fields(BuiltKernel) if f.type in ("int", int)}
_ENTRY_FIELDS = {f.name for f in fields(BuiltKernel)}
_OPTIONAL_FIELDS = {"block"}
"""Keys an entry may lack (a manifest from before they existed): their default applies."""


def read_manifest(path: Path | str, *, argument: str = "--manifest") -> Manifest:
    """Read a manifest file (or the `manifest.json` in a directory).

    InputError(`argument`) when it does not exist or is not a schema-1 manifest: every
    entry must have exactly the documented keys, counts as non-negative integers.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(
            argument, f"{path} does not exist; run `tvwsim kernels build` first"
        ) from None
    return _read(str(path), stat.st_mtime_ns, stat.st_size, argument)


@lru_cache(maxsize=8)
def _read(path: str, _mtime_ns: int, _size: int, argument: str) -> Manifest:
    # Keyed by modification time and size as well: a rebuilt manifest is read afresh,
    # an unchanged one is parsed once however many launches a model simulates.
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(argument, f"{path} cannot be read: {err}") from None
    except json.JSONDecodeError as err:
        raise InputError(argument, f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise InputError(argument, f"{path} is not a schema-{MANIFEST_SCHEMA} kernel manifest")
    entries = data.get("kernels")
    if not isinstance(entries, list):
        raise InputError(argument, f"{path}: 'kernels' must be a list")
    kernels = []
    for entry in entries:
        if not isinstance(entry, dict) or not (
            _ENTRY_FIELDS - _OPTIONAL_FIELDS <= set(entry) <= _ENTRY_FIELDS
        ):
            raise InputError(argument, f"{path}: malformed kernel entry {entry!r}")
        for key, value in entry.items():
            if key in _INT_FIELDS:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, str) and bool(value)
            if not ok:
                raise InputError(argument, f"{path}: kernel entry has {key} = {value!r}")
        kernels.append(BuiltKernel(**entry))
    return Manifest(nvcc=str(data.get("nvcc", "")), kernels=tuple(kernels))


def write_manifest(manifest: Manifest, directory: Path | str) -> Path:
    """Write `manifest` as `directory/manifest.json`, whole or not at all; returns the path."""
    path = Path(directory) / MANIFEST_NAME
    write_atomic(path, json.dumps(manifest.to_json(), indent=1) + "\n")
    return path


def load_resources(
    path: Path | str,
    pattern: str,
    config: KernelConfig,
    arch: str | None,
    block: int | None = None,
) -> KernelResources | None:
    """The compiled kernel's resources from the manifest at `path`, if it lists one a GPU
    of `arch` runs (`Manifest.find_for_device`; bw: of `block`, else the smallest block's);
    None when `path` does not exist or `arch` is None (a hypothetical GPU). A file that is
    not a manifest raises InputError."""
    if arch is None or not Path(path).is_file():
        return None
    entry = read_manifest(path).find_for_device(pattern, config.name, arch, block)
    return entry.resources() if entry is not None else None
