"""Run the CUDA kernels from Python with PyCUDA: encoded weight + X + schedule -> Y.

This is the only module that imports pycuda, and only inside functions, so importing it
(or anything else in tvwsim) never needs a GPU. One launcher per pattern
(`gemm_dense`, `gemm_tw`, `gemm_bw`, `gemm_vw`, `gemm_tvw`, or `gemm` to dispatch on
`encoded.pattern`) takes exactly what the CPU twin (`tvwsim.kernels.reference.matmul`) takes plus
the tile schedule (`tvwsim.schedule.Schedule`, or its raw `tasks` array), and returns
Y = X @ W.T as fp16 M x N.

What a launch does (docs/kernels.md has the picture):

1. Validate everything on the host first - X against the encoding, the schedule against
   the tiles (every task names an existing tile and token block, its K range lies inside
   the tile in whole stages, and together the tasks cover every (tile, block) exactly
   once), the config's shared memory against the device limit - so that a mistake is an
   `InputError` naming the argument, never a crash inside the driver.
2. Copy the buffers. X is transposed to the K-major `XT` (K x m8) and its token count is
   padded to m8 = roundup(M, 8) with zeros, so every 16-byte cp.async of a row is whole;
   YT is allocated as N x m8 and sliced back to M tokens at the end.
3. Poison YT with NaN (on by default): every element must then be written by a kernel.
4. If some task covers only part of its tile's K (policy `split`), zero an fp32
   workspace; those tasks `red.global.add.f32` into it.
5. Launch the pattern's GEMM, one CTA per task (`blockIdx.x` = task index), then the
   small `finalize_rows` pass: it converts the rows of split tiles from the workspace to
   fp16 and writes zeros where no tile stores (tw/tvw rows pruned away).
6. Synchronise and check for errors after every CUDA call.

Cubins come from `tvwsim kernels build` (its manifest in `build/kernels`, or the
directory named by `build_dir` / `$TVWSIM_KERNEL_DIR`); a variant that is not there, or
whose cubin is older than its sources, is compiled on the spot for the device's arch.

The end of the module holds the correctness checks that `tvwsim kernels check` and
`tests/test_gpu_kernels.py` share: a one-warp mma.sp probe against the numpy emulation
(`tvwsim.kernels.mma_sp`) and every kernel variant against its CPU twin.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tvwsim.kernels import build as kbuild
from tvwsim.kernels.tile_work import tile_work

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

GPU_EXTRA_HINT = 'pip install -e ".[gpu]"'
KERNEL_DIR_ENV = "TVWSIM_KERNEL_DIR"
POISON_FP16 = 0x7E00
"""fp16 quiet NaN: YT is filled with it before a launch when `poison=True`."""


class KernelError(RuntimeError):
    """A CUDA call failed (the message names the call and carries the driver's error)."""


# =====================================================================================
# The device session
# =====================================================================================
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


class _Session:
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


_SESSION: _Session | None = None


def session() -> _Session:
    """The process-wide device session (created on first use)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = _Session(int(os.environ.get("TVWSIM_DEVICE", "0")))
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


# =====================================================================================
# Finding or compiling a cubin
# =====================================================================================
@dataclass(frozen=True)
class LoadedKernel:
    """A GEMM entry point and its finalize pass, ready to launch."""

    pattern: str
    config: KernelConfig
    cubin: Path
    gemm: Any
    finalize: Any
    smem_bytes: int


def _sources(pattern: str) -> list[Path]:
    name = kbuild.PROBE_SOURCE if pattern == "probe" else f"{pattern}.cu"
    return [kbuild.CUDA_DIR / "common.cuh", kbuild.CUDA_DIR / name]


def _source_digest(pattern: str) -> str:
    h = hashlib.sha256()
    for path in _sources(pattern):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _fresh(cubin: Path, pattern: str) -> bool:
    """A built cubin is used only if it is newer than every source it was built from."""
    if not cubin.is_file():
        return False
    built = cubin.stat().st_mtime
    return all(src.stat().st_mtime <= built for src in _sources(pattern))


def _jit_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "tvwsim-kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_cubin(
    pattern: str, config: KernelConfig | None, arch: str, build_dir: Path | str | None = None
) -> Path:
    """The cubin for (pattern, config, arch): from the build directory if present and up
    to date, else compiled now into a per-source-version cache (pattern 'probe' for the
    one-warp probes, config None)."""
    directory = Path(build_dir or os.environ.get(KERNEL_DIR_ENV) or kbuild.DEFAULT_OUT)
    if pattern == "probe":
        name = kbuild.probe_cubin_name(arch)
    else:
        kbuild.check_pattern_config(pattern, config)
        name = kbuild.cubin_name(pattern, config, arch)
    candidate = directory / name
    if _fresh(candidate, pattern):
        return candidate
    cache = _jit_dir() / _source_digest(pattern)
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
        else:
            kbuild.compile_kernel(pattern, config, arch, tmp)
        os.replace(tmp / name, cached)
    finally:
        for leftover in tmp.glob("*"):
            leftover.unlink(missing_ok=True)
        tmp.rmdir()
    return cached


def load_kernel(
    pattern: str, config: KernelConfig, build_dir: Path | str | None = None
) -> LoadedKernel:
    """Load (building if needed) the `pattern` kernel for `config` on the current device,
    after checking that its shared memory fits the device."""
    s = session()
    kbuild.check_pattern_config(pattern, config)
    smem = kbuild.kernel_smem_bytes(config)
    limit = s.info.smem_per_block_optin_bytes
    if smem > limit:
        raise InputError(
            "config",
            f"{pattern} {config.name} needs {smem} bytes of shared memory per CTA; "
            f"{s.info.name} allows {limit}. Use fewer stages or a smaller tile "
            f"(shipped: {', '.join(c.name for c in kbuild.VARIANTS.get(pattern, []))})",
        )
    cubin = find_cubin(pattern, config, s.info.arch, build_dir)
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
    return LoadedKernel(pattern, config, cubin, gemm, finalize, smem)


# =====================================================================================
# Validation (host side, before anything touches the device)
# =====================================================================================
_ENCODED_TYPES = {
    "dense": "DenseWeight",
    "bw": "BsrWeight",
    "vw": "VwWeight",
    "tw": "TileWeight",
    "tvw": "TileWeight",
}


def _check_encoded(encoded: Any, pattern: str | None = None) -> str:
    got = getattr(encoded, "pattern", None)
    if got not in _ENCODED_TYPES or type(encoded).__name__ != _ENCODED_TYPES[got]:
        raise InputError(
            "encoded",
            f"must be a dense, bw, vw, tw or tvw encoding from tvwsim.kernels.formats.encode, got "
            f"{type(encoded).__name__} (pattern {got!r}; ew has no tvwsim kernel)",
        )
    if pattern is not None and got != pattern:
        raise InputError("encoded", f"this launcher runs {pattern}, the encoding is {got}")
    return got


def _check_x(x: Any, k: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InputError("x", f"must be a 2-D M x K array with M >= 1, got shape {x.shape}")
    if x.shape[1] != k:
        raise InputError("x", f"has K = {x.shape[1]} features per token; the weight has K = {k}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError("x", f"must be a float array, got dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        x16 = x.astype(np.float16)
    if not np.isfinite(x16).all():
        raise InputError("x", "values must be finite and within fp16 range (|x| <= 65504)")
    return x16


def tile_lengths(encoded: Any) -> np.ndarray:
    """int64 [tiles]: the logical K each row tile's CTA walks (what a task may cover)."""
    return np.asarray(encoded.tile_k_lengths(), dtype=np.int64)


def _kernel_config(encoded: Any, schedule: Any) -> KernelConfig:
    enc = encoded.config
    sched = getattr(schedule, "config", None)
    if sched is None:
        return enc
    if not isinstance(sched, KernelConfig):
        raise InputError("schedule", "its config is not a KernelConfig")
    if (sched.bm, sched.bk, sched.mma) != (enc.bm, enc.bk, enc.mma):
        raise InputError(
            "schedule",
            f"was made for config {sched.name} ({sched.mma}), the encoding for {enc.name} "
            f"({enc.mma}); bm, bk and the mma kind must agree",
        )
    return sched


def _check_tasks(schedule: Any, encoded: Any, m: int, config: KernelConfig) -> np.ndarray:
    if hasattr(schedule, "tasks"):
        for attr, want in (
            ("pattern", encoded.pattern),
            ("m", m),
            ("n", encoded.n),
            ("k", encoded.k),
        ):
            got = getattr(schedule, attr, want)
            if got != want:
                raise InputError(
                    "schedule", f"was built for {attr} = {got!r}, but the launch has {want!r}"
                )
        tasks = schedule.tasks
    else:
        tasks = schedule
    tasks = np.asarray(tasks)
    # No tasks is legal only when no tile has work (a tw/tvw weight with every row
    # pruned); the coverage check below says which (tile, block) is missing otherwise.
    if tasks.ndim != 2 or tasks.shape[1] != 4:
        raise InputError(
            "schedule", f"tasks must be an int array [n_tasks, 4], got shape {tasks.shape}"
        )
    if not np.issubdtype(tasks.dtype, np.integer):
        raise InputError("schedule", f"tasks must be integers, got dtype {tasks.dtype}")
    if tasks.shape[0] > 2**31 - 1:
        raise InputError("schedule", "more tasks than a grid can hold (2^31 - 1)")
    t = tasks.astype(np.int64)
    lengths = tile_lengths(encoded)
    tiles, blocks, bk = lengths.size, -(-m // config.bn), config.bk

    def bad(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise InputError("schedule", f"task {i} {tuple(int(v) for v in t[i])}: {problem}")

    bad((t[:, 0] < 0) | (t[:, 0] >= tiles), f"weight tile does not exist (tiles 0..{tiles - 1})")
    bad(
        (t[:, 1] < 0) | (t[:, 1] >= blocks),
        f"token block does not exist (blocks of {config.bn}: 0..{blocks - 1} for M = {m})",
    )
    bad((t[:, 2] % bk != 0) | (t[:, 3] % bk != 0), f"k range must be in whole stages of {bk}")
    bad(
        (t[:, 2] < 0) | (t[:, 2] > t[:, 3]) | (t[:, 3] > lengths[t[:, 0]]),
        "k range is outside the tile (0 <= k_begin <= k_end <= tile K length)",
    )
    # Coverage: per (tile, block), the K ranges must tile [0, length) exactly once.
    order = np.lexsort((t[:, 2], t[:, 1], t[:, 0]))
    s = t[order]
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = (s[1:, 0] != s[:-1, 0]) | (s[1:, 1] != s[:-1, 1])
    last = np.ones(len(s), dtype=bool)
    last[:-1] = new_group[1:]
    gap = np.zeros(len(s), dtype=bool)
    gap[1:] = ~new_group[1:] & (s[1:, 2] != s[:-1, 3])
    starts_late = new_group & (s[:, 2] != 0)
    ends_early = last & (s[:, 3] != lengths[s[:, 0]])
    empty_piece = (s[:, 2] == s[:, 3]) & ~(new_group & last)
    broken = gap | starts_late | ends_early | empty_piece
    if broken.any():
        i = int(np.flatnonzero(broken)[0])
        raise InputError(
            "schedule",
            f"tile {int(s[i, 0])}, token block {int(s[i, 1])}: its tasks' K ranges must "
            "cover 0 .. tile K length exactly once, in whole stages",
        )
    covered = np.zeros((tiles, blocks), dtype=bool)
    covered[t[:, 0], t[:, 1]] = True
    missing = ~covered & (lengths[:, None] > 0)
    if missing.any():
        tile, blk = (int(v) for v in np.argwhere(missing)[0])
        raise InputError(
            "schedule",
            f"no task computes tile {tile}, token block {blk} (K length {int(lengths[tile])})",
        )
    return np.ascontiguousarray(t, dtype=np.int32)


def _finalize_regions(
    tasks: np.ndarray, encoded: Any, m: int, config: KernelConfig
) -> tuple[np.ndarray, bool]:
    """int32 [R, 4] regions for `finalize_rows`, and whether a workspace is needed."""
    lengths = tile_lengths(encoded)
    blocks = -(-m // config.bn)
    t = tasks.astype(np.int64)
    # The kernel's rule (same expression in every .cu): a task is split unless it covers
    # its tile's whole K.
    split = ~((t[:, 2] == 0) & (t[:, 3] == lengths[t[:, 0]]))
    split_pairs = np.unique(t[split][:, :2], axis=0) if split.any() else np.zeros((0, 2), int)
    covered = np.zeros((lengths.size, blocks), dtype=bool)
    covered[t[:, 0], t[:, 1]] = True
    empty_pairs = np.argwhere(~covered)
    regions = [
        np.column_stack([np.zeros(len(split_pairs)), split_pairs, np.zeros(len(split_pairs))]),
        np.column_stack([np.ones(len(empty_pairs)), empty_pairs, np.zeros(len(empty_pairs))]),
    ]
    if encoded.pattern in ("tw", "tvw"):
        stored = np.zeros(encoded.n, dtype=bool)
        rm = np.asarray(encoded.row_map)
        stored[rm[rm >= 0]] = True
        free = np.flatnonzero(~stored)
        regions.append(np.column_stack([np.full(free.size, 2), free, np.zeros((free.size, 2))]))
    out = np.concatenate(regions).astype(np.int32).reshape(-1, 4)
    return np.ascontiguousarray(out), bool(split.any())


def _check_buffers(encoded: Any, config: KernelConfig) -> None:
    """Cheap consistency checks that keep a malformed encoding out of the kernel."""
    p = encoded.pattern
    if p in ("tw", "tvw"):
        g = config.bm
        k_ptr = np.asarray(encoded.k_ptr)
        total = int(k_ptr[-1])
        if np.asarray(encoded.row_map).size != g * (k_ptr.size - 1):
            raise InputError("encoded", f"row_map must hold {g} rows per tile")
        if (np.diff(k_ptr) % config.bk).any():
            raise InputError("encoded", f"tile K lengths must be multiples of bk={config.bk}")
        idx = np.asarray(encoded.k_index)
        if idx.size != total or (idx.size and (idx.max() >= encoded.k or idx.min() < -1)):
            raise InputError("encoded", f"k_index must hold {total} entries in -1 .. k-1")
        want = g * total // (2 if p == "tvw" else 1)
        if np.asarray(encoded.values).size != want:
            raise InputError("encoded", f"values must hold {want} fp16 (G x k_ptr[-1])")
        if p == "tvw" and np.asarray(encoded.metadata).size != g * total // 32:
            raise InputError("encoded", "metadata must hold G * k_ptr[-1] / 32 words")
    elif p == "bw":
        b = int(encoded.block)
        if b % 8 or config.bm % b:
            raise InputError("encoded", f"block {b} must be a multiple of 8 dividing bm")
        if np.asarray(encoded.values).size >= 2**31:
            raise InputError("encoded", "bw values beyond 2^31 elements are not supported")
    elif p == "vw":
        if encoded.k_pad % config.bk:
            raise InputError("encoded", f"k_pad must be a multiple of bk={config.bk}")
        # The kernel copies whole 128-byte metadata blocks per (16 rows, 64 K): a short
        # buffer would be read past its end.
        want = encoded.n_pad // 16 * (encoded.k_pad // 64) * 32
        if encoded.n_pad % 16 or np.asarray(encoded.metadata).size != want:
            raise InputError(
                "encoded", f"vw metadata must hold n_pad/16 x k_pad/64 x 32 = {want} words"
            )
    elif p == "dense":
        if encoded.k_pad % config.bk:
            raise InputError("encoded", f"k_pad must be a multiple of bk={config.bk}")


# =====================================================================================
# Launching
# =====================================================================================
@dataclass
class PreparedGemm:
    """A GEMM with its weight, schedule and buffers on the device, for one token count.

    `run(x)` copies X in, launches and returns Y. `launch()` enqueues the whole operation
    once more on the resident buffers (workspace zeroing, GEMM and finalize pass: they are
    all part of the operation) without waiting for it; `time_ms` times repeated launches
    with CUDA events and can run a callable before each one (an L2 flush, say).
    """

    kernel: LoadedKernel
    encoded: Any
    m: int
    tasks: np.ndarray
    regions: np.ndarray
    needs_workspace: bool
    _args: list = field(default_factory=list)
    _buffers: dict = field(default_factory=dict)

    @property
    def m8(self) -> int:
        return -(-self.m // 8) * 8

    def launch(self) -> None:
        """Enqueue one complete launch on the resident X (asynchronous: synchronise or
        record an event to wait for it). Call `run` or `upload_x` first."""
        s = session()
        n, m8 = self.encoded.n, self.m8
        if self.needs_workspace:
            s.call(
                "zeroing the split-K workspace",
                s.cuda.memset_d32,
                int(self._buffers["ws"]),
                0,
                n * m8,
            )
        # A tw/tvw weight whose every row was pruned has no tile and so no task: CUDA
        # rejects an empty grid, and the finalize pass alone writes its (zero) output.
        if self.tasks.shape[0]:
            s.call(
                f"launching {self.kernel.pattern} {self.kernel.config.name}",
                self.kernel.gemm.prepared_call,
                (int(self.tasks.shape[0]), 1),
                (self.kernel.config.threads, 1, 1),
                *self._args,
                shared_size=self.kernel.smem_bytes,
            )
        if self.regions.shape[0]:
            row_map = int(self._buffers["row_map"]) if "row_map" in self._buffers else 0
            ws = int(self._buffers["ws"]) if self.needs_workspace else 0
            s.call(
                "launching finalize_rows",
                self.kernel.finalize.prepared_call,
                (int(self.regions.shape[0]), 1),
                (256, 1, 1),
                int(self._buffers["regions"]),
                row_map,
                int(n),
                int(m8),
                ws,
                int(self._buffers["yt"]),
            )

    def upload_x(self, x: np.ndarray) -> None:
        s = session()
        x16 = _check_x(x, self.encoded.k)
        if x16.shape[0] != self.m:
            raise InputError(
                "x", f"has M = {x16.shape[0]} tokens; this GEMM was prepared for {self.m}"
            )
        xt = np.zeros((self.encoded.k, self.m8), dtype=np.float16)
        xt[:, : self.m] = x16.T
        s.call("copying XT", s.cuda.memcpy_htod, self._buffers["xt"], xt)

    def run(self, x: np.ndarray, *, poison: bool = True) -> np.ndarray:
        """Y = X @ W.T (fp16, M x N). With `poison`, YT is NaN-filled first."""
        s = session()
        self.upload_x(x)
        n, m8 = self.encoded.n, self.m8
        if poison:
            s.call("poisoning YT", s.cuda.memset_d16, int(self._buffers["yt"]), POISON_FP16, n * m8)
        self.launch()
        s.synchronize(f"running {self.kernel.pattern} {self.kernel.config.name}")
        yt = np.empty((n, m8), dtype=np.float16)
        s.call("copying YT back", s.cuda.memcpy_dtoh, yt, self._buffers["yt"])
        return np.ascontiguousarray(yt[:, : self.m].T)

    def time_ms(
        self,
        repeats: int = 20,
        warmup: int = 3,
        *,
        before_each: Callable[[], Any] | None = None,
    ) -> np.ndarray:
        """Milliseconds of each of `repeats` launches (after `warmup` untimed ones) on the
        resident X (call `run` or `upload_x` first).

        `before_each`, if given, runs before every launch, warm-up included, outside the
        timed interval: pass an L2 flush (a write to a buffer larger than the L2) to time
        cold-cache launches, as a layer in a network would see them. It must enqueue its
        work on the default stream so that it is ordered before the launch.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise InputError("repeats", f"must be a positive integer, got {repeats!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise InputError("warmup", f"must be a non-negative integer, got {warmup!r}")
        s = session()
        for _ in range(warmup):
            if before_each is not None:
                before_each()
            self.launch()
        s.synchronize("warm-up")
        times = np.empty(repeats, dtype=np.float64)
        for i in range(repeats):
            if before_each is not None:
                before_each()
            start, end = s.cuda.Event(), s.cuda.Event()
            start.record()
            self.launch()
            end.record()
            s.call("timing", end.synchronize)
            times[i] = start.time_till(end)
        return times


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the host decides before a launch (no device needed to compute it)."""

    pattern: str
    config: KernelConfig
    """The kernel variant: the schedule's config (its bm, bk and mma kind agree with the
    encoding's)."""
    m: int
    tasks: np.ndarray
    """int32 [n_tasks, 4], validated: grid x = n_tasks, CTA i runs tasks[i]."""
    regions: np.ndarray
    """int32 [R, 4] regions of the finalize pass (kind, a, b, 0); see common.cuh."""
    needs_workspace: bool
    """Some task covers part of its tile's K: zero an fp32 N x m8 workspace first."""

    @property
    def m8(self) -> int:
        """Tokens padded to a multiple of 8: whole 16-byte copies of XT and YT rows."""
        return -(-self.m // 8) * 8


def plan_launch(encoded: Any, m: int, schedule: Any, *, pattern: str | None = None) -> LaunchPlan:
    """Validate an encoding, a token count and a schedule against each other.

    Raises InputError naming `encoded`, `x` or `schedule` for: an encoding with no kernel
    or malformed buffers, M < 1, a schedule built for another pattern, shape or config, a
    task whose tile or token block does not exist, a K range outside its tile or not in
    whole stages, or tasks that do not cover every (tile, block) exactly once.
    """
    pattern = _check_encoded(encoded, pattern)
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise InputError("x", f"needs at least one token, got M = {m!r}")
    m = int(m)
    config = _kernel_config(encoded, schedule)
    _check_buffers(encoded, config)
    tasks = _check_tasks(schedule, encoded, m, config)
    regions, needs_ws = _finalize_regions(tasks, encoded, m, config)
    return LaunchPlan(pattern, config, m, tasks, regions, needs_ws)


def prepare(
    encoded: Any,
    m: int,
    schedule: Any,
    *,
    build_dir: Path | str | None = None,
    pattern: str | None = None,
) -> PreparedGemm:
    """Validate (`plan_launch`), load the kernel, put the weight and schedule on the
    device."""
    plan = plan_launch(encoded, m, schedule, pattern=pattern)
    pattern, config, m = plan.pattern, plan.config, plan.m
    tasks, regions, needs_ws = plan.tasks, plan.regions, plan.needs_workspace
    kernel = load_kernel(pattern, config, build_dir)  # after host checks: no device work yet
    s = session()
    g = PreparedGemm(kernel, encoded, m, tasks, regions, needs_ws)
    m8, n, k = g.m8, encoded.n, encoded.k
    buf = g._buffers
    buf["tasks"] = s.to_device(tasks, "the schedule")
    buf["xt"] = s.alloc(k * m8 * 2, "XT")
    buf["yt"] = s.alloc(n * m8 * 2, "YT")
    if needs_ws:
        buf["ws"] = s.alloc(n * m8 * 4, "the split-K workspace")
    if regions.shape[0]:
        buf["regions"] = s.to_device(regions, "finalize regions")
    ws = int(buf["ws"]) if needs_ws else 0
    i32 = np.int32

    def dev(name: str, array: Any, dtype: Any) -> int:
        buf[name] = s.to_device(np.asarray(array, dtype=dtype), name)
        return int(buf[name])

    tasks_p, xt_p, yt_p = int(buf["tasks"]), int(buf["xt"]), int(buf["yt"])
    if pattern == "dense":
        sig = "PPiiPiiPP"
        args = [tasks_p, dev("values", encoded.values, np.float16), n, encoded.k_pad]
        args += [xt_p, k, m8, yt_p, ws]
    elif pattern == "vw":
        sig = "PPPiiiPiiPP"
        args = [tasks_p, dev("values", encoded.values, np.float16)]
        args += [dev("metadata", encoded.metadata, np.uint32), n, encoded.n_pad, encoded.k_pad]
        args += [xt_p, k, m8, yt_p, ws]
    elif pattern == "tw":
        sig = "PPPPPPiPP"
        args = [tasks_p, dev("values", encoded.values, np.float16)]
        args += [dev("row_map", encoded.row_map, i32), dev("k_ptr", encoded.k_ptr, i32)]
        args += [dev("k_index", encoded.k_index, i32), xt_p, m8, yt_p, ws]
    elif pattern == "tvw":
        sig = "PPPPPPPiPP"
        args = [tasks_p, dev("values", encoded.values, np.float16)]
        args += [dev("metadata", encoded.metadata, np.uint32)]
        args += [dev("row_map", encoded.row_map, i32), dev("k_ptr", encoded.k_ptr, i32)]
        args += [dev("k_index", encoded.k_index, i32), xt_p, m8, yt_p, ws]
    else:  # bw
        sig = "PPPPPiiiPiiPP"
        args = [tasks_p, dev("values", encoded.values, np.float16)]
        args += [dev("tile_col_ptr", encoded.tile_col_ptr, i32)]
        args += [dev("tile_col", encoded.tile_col, i32), dev("tile_block", encoded.tile_block, i32)]
        args += [int(encoded.block), encoded.n_pad // int(encoded.block), n]
        args += [xt_p, k, m8, yt_p, ws]
    kernel.gemm.prepare(sig)
    kernel.finalize.prepare("PPiiPP")
    g._args = [int(a) for a in args]
    return g


def gemm(
    encoded: Any,
    x: np.ndarray,
    schedule: Any = None,
    *,
    policy: str = "natural",
    build_dir: Path | str | None = None,
    poison: bool = True,
    pattern: str | None = None,
) -> np.ndarray:
    """Y (fp16, M x N) = X @ W.T on the GPU, W read from `encoded`'s buffers.

    `schedule` is a `tvwsim.schedule.Schedule` or its int32 `[n_tasks, 4]` tasks; None builds
    one with `policy` (natural, longest-first, split).
    """
    pattern = _check_encoded(encoded, pattern)
    x16 = _check_x(x, encoded.k)
    if schedule is None:
        from tvwsim.schedule import build_schedule

        schedule = build_schedule(tile_work(encoded), x16.shape[0], policy)
    prepared = prepare(encoded, x16.shape[0], schedule, build_dir=build_dir, pattern=pattern)
    return prepared.run(x16, poison=poison)


def gemm_dense(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Dense weight (`DenseWeight`) on mma.sync m16n8k16."""
    return gemm(encoded, x, schedule, pattern="dense", **kw)


def gemm_tw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Tile-wise weight (`TileWeight`, sparse=False): gathered kept-K rows."""
    return gemm(encoded, x, schedule, pattern="tw", **kw)


def gemm_bw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Block-sparse weight (`BsrWeight`): union block columns, absent blocks zero-filled."""
    return gemm(encoded, x, schedule, pattern="bw", **kw)


def gemm_vw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """2:4 weight (`VwWeight`) on the sparse tensor core (mma.sp m16n8k32)."""
    return gemm(encoded, x, schedule, pattern="vw", **kw)


def gemm_tvw(encoded: Any, x: np.ndarray, schedule: Any = None, **kw: Any) -> np.ndarray:
    """Tile-wise + 2:4 weight (`TileWeight`, sparse=True): gather + mma.sp."""
    return gemm(encoded, x, schedule, pattern="tvw", **kw)


# =====================================================================================
# One-warp probes
# =====================================================================================
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


# =====================================================================================
# Correctness checks (shared by `tvwsim kernels check` and tests/test_gpu_kernels.py)
# =====================================================================================
REL_TOLERANCE = 1e-2
"""max |Y_gpu - Y_twin| / max |Y_twin| allowed. fp16 output rounding alone gives up to
2^-11 relative to an element, so a layout or indexing bug shows up orders of magnitude
above this while honest rounding stays far below."""

SPARSITY = {"dense": 0.0, "vw": 0.5, "tw": 0.75, "bw": 0.75, "tvw": 0.75}
"""Sparsity each pattern is checked at (vw is 2:4 by definition)."""


@dataclass(frozen=True)
class CheckCase:
    """One kernel correctness check: a variant, a GEMM shape and a scheduling policy."""

    pattern: str
    config: KernelConfig
    m: int
    n: int
    k: int
    policy: str
    seed: int = 0
    edge: bool = False
    """tw/tvw only: a hand-made layout with an empty tile and pruned rows."""

    @property
    def shape(self) -> str:
        return f"{self.m}x{self.n}x{self.k}" + (" edge" if self.edge else "")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: the largest relative error and whether it passed."""

    name: str
    """'pattern config' or 'mma.sp probe selector s'."""
    shape: str
    policy: str
    max_rel_error: float
    passed: bool
    note: str = ""


# Shapes: a regular one, a ragged one (M, N, K not multiples of anything) and a small
# one with M < 8 (one partial 16-byte token chunk).
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((256, 512, 512), (200, 333, 457), (5, 300, 200))


def check_cases(quick: bool = False) -> list[CheckCase]:
    """Every shipped variant x (shape, policy) pairs that use each policy at least once.

    Full: each variant runs the regular shape with `natural`, the ragged shape with
    `longest-first`, `split` and `forced-split`, and the small shape with `split`; tw/tvw
    add a hand-made edge layout. `split` cuts only tiles longer than the median, which a
    pattern with equal tiles (dense, vw) never has; `forced-split` (natural order, every
    task cut into up to three K pieces) makes every variant run its split-K path.
    Quick: the first variant of each pattern only.
    """
    cases = []
    for pattern, configs in kbuild.VARIANTS.items():
        for i, config in enumerate(configs[:1] if quick else configs):
            plan = [
                (CHECK_SHAPES[0], "natural"),
                (CHECK_SHAPES[1], "longest-first"),
                (CHECK_SHAPES[1], "split"),
                (CHECK_SHAPES[1], "forced-split"),
                (CHECK_SHAPES[2], "split"),
            ]
            for j, ((m, n, k), policy) in enumerate(plan):
                cases.append(CheckCase(pattern, config, m, n, k, policy, seed=100 * i + j))
            if pattern in ("tw", "tvw"):
                cases.append(CheckCase(pattern, config, 70, 300, 300, "split", seed=7, edge=True))
    return cases


def _skewed_weight(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Gaussian scaled by log-normal row and column factors: uneven kept-K per tile."""
    rows = np.exp(rng.normal(0.0, 0.5, (n, 1)))
    cols = np.exp(rng.normal(0.0, 0.5, (1, k)))
    return (rng.standard_normal((n, k)) * rows * cols).astype(np.float32)


@dataclass(frozen=True)
class _EdgeLayout:
    """A hand-made TileLayout (duck-typed for tvwsim.kernels.formats.encode)."""

    tile_width: int
    rows: np.ndarray
    kept_k: tuple[np.ndarray, ...]


def _edge_encoding(case: CheckCase, weight: np.ndarray):
    """tw/tvw encoding with: rows pruned away (zero rows of YT), a tile with no kept K,
    a ragged last tile, and kept-K lists of uneven length (-1 padding)."""
    from tvwsim.kernels.formats import encode

    rng = np.random.default_rng(case.seed)
    g = case.config.bm
    rows = np.sort(rng.choice(case.n, size=min(3 * case.n // 4, 2 * g + g // 2), replace=False))
    tiles = -(-rows.size // g)
    kept = []
    for t in range(tiles):
        count = 0 if t == 1 else int(rng.integers(1, case.k))
        if case.pattern == "tvw":
            count -= count % 4  # whole 2:4 groups of the pruner's list
        kept.append(np.sort(rng.choice(case.k, size=count, replace=False)).astype(np.int32))
    mask = np.zeros((case.n, case.k), dtype=bool)
    for t, cols in enumerate(kept):
        tile_rows = rows[t * g : (t + 1) * g]
        if case.pattern == "tvw":
            # 2 of every aligned 4 of the tile's list, per row.
            for r in tile_rows:
                groups = cols.reshape(-1, 4)
                pick = np.argsort(rng.random(groups.shape), axis=1)[:, :2]
                mask[r, np.take_along_axis(groups, pick, 1).ravel()] = True
        else:
            mask[np.ix_(tile_rows, cols)] = True
    layout = _EdgeLayout(g, rows.astype(np.int32), tuple(kept))
    return encode(weight, mask, case.pattern, case.config, layout=layout), mask


def make_case_inputs(case: CheckCase):
    """(encoded weight, X, schedule) of a check case (seeded: the same case, same data)."""
    from tvwsim.kernels.formats import encode
    from tvwsim.kernels.patterns import prune_with_layout

    from tvwsim.schedule import build_schedule

    rng = np.random.default_rng(case.seed)
    weight = _skewed_weight(rng, case.n, case.k)
    if case.edge:
        encoded, _ = _edge_encoding(case, weight)
    else:
        pruned = prune_with_layout(
            weight, case.pattern, SPARSITY[case.pattern], tile=case.config.bm, block=32
        )
        encoded = encode(
            weight, pruned.mask, case.pattern, case.config, layout=pruned.layout, block=32
        )
    x = rng.standard_normal((case.m, case.k)).astype(np.float32)
    if case.policy == "forced-split":
        natural = build_schedule(tile_work(encoded), case.m, "natural")
        return encoded, x, force_split(natural.tasks, case.config.bk)
    schedule = build_schedule(tile_work(encoded), case.m, case.policy)
    return encoded, x, schedule


def force_split(tasks: np.ndarray, bk: int, pieces: int = 3) -> np.ndarray:
    """Cut every task into up to `pieces` K ranges of whole stages (a raw tasks array).

    The pieces of one output tile then all add into the fp32 workspace: the split-K path
    of a kernel runs even when no policy would split its (equal) tiles.
    """
    rows = []
    for tile, block, lo, hi in np.asarray(tasks, dtype=np.int64):
        stages = (hi - lo) // bk
        cuts = np.unique(np.linspace(0, stages, min(pieces, max(stages, 1)) + 1).astype(int))
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            rows.append((tile, block, lo + a * bk, lo + b * bk))
        if stages == 0:
            rows.append((tile, block, lo, hi))
    return np.array(rows, dtype=np.int32).reshape(-1, 4)


def relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref| over every element; inf if y has a non-finite element
    (an element no kernel wrote keeps the NaN poison)."""
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise InputError("y", f"shape {y.shape} differs from the reference's {ref.shape}")
    if not np.isfinite(y).all():
        return float("inf")
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-6)
    return float(np.abs(y - ref).max(initial=0.0) / scale)


def run_check(case: CheckCase, build_dir: Path | str | None = None) -> CheckResult:
    """Run one case on the GPU and compare every element with the CPU twin."""
    from tvwsim.kernels.reference import matmul

    encoded, x, schedule = make_case_inputs(case)
    y = gemm(encoded, x, schedule, build_dir=build_dir, poison=True)
    ref = matmul(x, encoded)
    err = relative_error(y, ref)
    note = "" if np.isfinite(err) else "non-finite output (unwritten or overflow)"
    tasks = np.asarray(getattr(schedule, "tasks", schedule), dtype=np.int64)
    whole = tile_lengths(encoded)[tasks[:, 0]]
    split = " (split tasks)" if ((tasks[:, 2] != 0) | (tasks[:, 3] != whole)).any() else ""
    return CheckResult(
        f"{case.pattern} {case.config.name}",
        case.shape,
        case.policy + split,
        err,
        bool(err <= REL_TOLERANCE),
        note,
    )


def probe_cases(seed: int = 0, trials: int = 8) -> list[tuple[str, Callable[[], float]]]:
    """One-warp layout checks: (name, function returning the max relative error).

    Each sparse trial draws random fp16 values, a random legal 2:4 pattern per group
    (so every ordered nibble appears), random C, and garbage in the metadata lanes the
    selector does not read; silicon must equal `tvwsim.kernels.mma_sp` for both selectors.
    """
    from tvwsim.kernels import mma_sp

    rng = np.random.default_rng(seed)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]

    def sparse_trial(selector: int) -> float:
        worst = 0.0
        for _ in range(trials):
            a = np.zeros((16, 32), dtype=np.float16)
            mask = np.zeros((16, 32), dtype=bool)
            for r in range(16):
                for grp in range(8):
                    p, q = pairs[rng.integers(len(pairs))]
                    mask[r, 4 * grp + p] = mask[r, 4 * grp + q] = True
            a[mask] = rng.standard_normal(int(mask.sum())).astype(np.float16)
            a_regs, e_regs = mma_sp.pack_a_sparse(a, selector, mask=mask)
            unread = (np.arange(32) & 3) // 2 != selector
            e_regs = e_regs.copy()
            e_regs[unread] = rng.integers(0, 2**32, unread.sum(), dtype=np.uint32)
            b = rng.standard_normal((32, 8)).astype(np.float16)
            c = rng.standard_normal((16, 8)).astype(np.float32)
            b_regs, c_regs = mma_sp.pack_b(b), mma_sp.pack_c(c)
            want = mma_sp.mma_sp_m16n8k32(a_regs, b_regs, c_regs, e_regs, selector)
            got = mma_sp_probe(a_regs, b_regs, c_regs, e_regs, selector)
            # Check the emulation itself against a plain matmul: the probe pins silicon to
            # the emulation, and this pins the emulation to the math.
            plain = a.astype(np.float64) @ b.astype(np.float64) + c
            worst = max(
                worst,
                relative_error(mma_sp.unpack_d(got), mma_sp.unpack_d(want)),
                relative_error(mma_sp.unpack_d(want), plain),
            )
        return worst

    def dense_trial() -> float:
        worst = 0.0
        for _ in range(trials):
            a = rng.standard_normal((16, 16)).astype(np.float16)
            b = rng.standard_normal((16, 8)).astype(np.float16)
            c = rng.standard_normal((16, 8)).astype(np.float32)
            regs = (mma_sp.pack_a(a), mma_sp.pack_b(b), mma_sp.pack_c(c))
            got = mma_probe(*regs)
            want = mma_sp.mma_m16n8k16(*regs)
            worst = max(worst, relative_error(mma_sp.unpack_d(got), mma_sp.unpack_d(want)))
        return worst

    return [
        ("mma.sp probe selector 0", lambda: sparse_trial(0)),
        ("mma.sp probe selector 1", lambda: sparse_trial(1)),
        ("mma probe (dense)", dense_trial),
    ]


PROBE_TOLERANCE = 1e-5
"""Probe D vs emulation: one instruction, fp32 accumulation of exact fp16 products; only
the order of the fp32 adds may differ."""


def run_probe(name: str, fn: Callable[[], float]) -> CheckResult:
    err = fn()
    return CheckResult(
        name, "16x8x32" if "sp" in name else "16x8x16", "-", err, err <= PROBE_TOLERANCE
    )


def run_all_checks(
    quick: bool = False,
    build_dir: Path | str | None = None,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Probes first (a layout mistake there explains everything after), then kernels."""
    results = []
    for name, fn in probe_cases():
        results.append(run_probe(name, fn))
        if progress:
            progress(results[-1])
    for case in check_cases(quick):
        try:
            result = run_check(case, build_dir)
        except KernelError as err:  # a crashed kernel is a failed check, with its reason
            result = CheckResult(
                f"{case.pattern} {case.config.name}",
                case.shape,
                case.policy,
                float("inf"),
                False,
                str(err)[:120],
            )
        if progress:
            progress(result)
        results.append(result)
    return results
