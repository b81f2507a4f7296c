"""Build the CUDA kernels with nvcc and record what each one costs the SM.

One cubin per (pattern, KernelConfig, arch), named `<pattern>-<config>-<arch>.cubin`
(`tvw-128x128x64s3w4-sm_90.cubin`); bw has one per block side as well,
`bw-<config>-b<block>-<arch>.cubin` (`BW_BLOCKS`). The config becomes compile-time constants
(`-DBM -DBN -DBK -DWARPS -DWARPS_M -DSTAGES`, and `-DTVWSIM_BW_BLOCK` for bw), the warp
split included, so the kernel that runs is exactly the `KernelConfig` the simulator models.
ptxas reports, per kernel, the registers, shared memory, stack frame and spill bytes
(`-Xptxas -v`); they go into the manifest (`tvwsim.manifest`, which documents the format
and where the kernel directory is), from which the simulator takes occupancy instead of
guessing.

The launch's dynamic shared memory is `KernelConfig.smem_bytes`; the build passes it as
`-DTVW_SMEM_BYTES` and the kernel sources `static_assert` that their own layout needs
exactly that, so the manifest cannot drift from the code.

Builds run nvcc jobs in parallel, write into a temporary directory inside the output
directory and move each finished cubin into place with `os.replace`, so an interrupted
build never leaves a half-written cubin; the manifest is written last, the same way.

The SASS helpers at the end (`find_cuda_tool`, `dump_sass`, `sass_opcodes`,
`sass_functions`, `main_loop` / `loop_mix` (the K loop's instruction mix),
`resource_usage`) read cubins with `cuobjdump` from the `nvidia-cuda-cuobjdump` PyPI
package, so the build can be checked on a machine without a GPU.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tvwsim.kernels.wgmma import check_wgmma_config

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import (
    MANIFEST_NAME,
    BuiltKernel,
    Manifest,
    arch_version,
    kernel_dir,
    read_manifest,
    write_manifest,
)
from tvwsim.pattern_spec import KERNEL_PATTERNS, mma_kind

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
"""Where the kernel sources live (package data)."""

ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
"""Architectures built by default: Ampere (A100, RTX 30xx) and Hopper (H100). An sm_80
cubin does not load on sm_90, so each GPU gets its own native build."""

PATTERNS: tuple[str, ...] = KERNEL_PATTERNS
"""Patterns with a tensor-core kernel (ew runs on cuSPARSE, not here): the registry's."""

KERNEL_FUNCTIONS: dict[str, str] = {p: f"{p}_gemm" for p in PATTERNS}
"""The extern "C" entry point of each pattern's cubin."""

FINALIZE_FUNCTION = "finalize_rows"
"""Second entry point of every pattern cubin: split-K conversion and zero rows."""

PROBE_SOURCE = "mma_sp_probe.cu"
PROBE_FUNCTIONS: tuple[str, ...] = ("mma_sp_probe", "mma_probe")
WGMMA_PROBE_SOURCE = "wgmma_probe.cu"
"""The one-warpgroup wgmma / wgmma.sp probes (sm_90a), compiled with the layout of the
shipped warpgroup-MMA variants."""


def _dense(bm: int, bn: int, bk: int, stages: int, warps: int = 4) -> KernelConfig:
    return KernelConfig(bm=bm, bn=bn, bk=bk, stages=stages, warps=warps, mma="dense")


def _sparse(bm: int, bn: int, bk: int, stages: int, warps: int = 4) -> KernelConfig:
    return KernelConfig(bm=bm, bn=bn, bk=bk, stages=stages, warps=warps, mma="sparse")


# The shipped variants. 128 x 128 tiles with 4 warps of 64 x 64 are the workhorse (the
# authors' CUTLASS tile); 4 stages hide more latency where shared memory allows; 128 x 64
# halves the token side for small M (fewer idle tokens in the last activation block);
# G = 64 tiles for tw/tvw are the finer tile width the pruning study also uses. Sparse
# stages are 64 logical K deep: one metadata word per lane covers 16 rows x 64 K.
# The 8-warp tiles (128 x 256: 2 x 4 warps; 256 x 128: 4 x 2 warps; both of 64 x 64, so
# the same registers per thread as 128 x 128) halve the shared-memory traffic per mma of
# one operand; they come last in each list (bw: 128 x 256 only) and are opt-in: the defaults
# (tvwsim.config.default_config) stay 128 x 128 with 4 warps.
_WIDE = ((128, 256), (256, 128))
VARIANTS: dict[str, list[KernelConfig]] = {
    "dense": [
        _dense(128, 128, 32, 3),
        _dense(128, 128, 32, 4),
        _dense(128, 64, 32, 3),
        *(_dense(bm, bn, 32, 3, warps=8) for bm, bn in _WIDE),
    ],
    "tw": [
        _dense(128, 128, 32, 3),
        _dense(128, 128, 32, 4),
        _dense(128, 64, 32, 3),
        _dense(64, 128, 32, 3),
        *(_dense(bm, bn, 32, 3, warps=8) for bm, bn in _WIDE),
    ],
    "bw": [
        _dense(128, 128, 32, 3),
        _dense(128, 128, 32, 4),
        _dense(128, 64, 32, 3),
        # Not 256 x 128: its block-table prefetch needs a few registers more than 255
        # (ptxas spills 16-24 bytes), and no kernel may touch local memory.
        _dense(128, 256, 32, 3, warps=8),
    ],
    "vw": [
        _sparse(128, 128, 64, 3),
        _sparse(128, 128, 64, 4),
        _sparse(128, 64, 64, 3),
        *(_sparse(bm, bn, 64, 3, warps=8) for bm, bn in _WIDE),
    ],
    "tvw": [
        _sparse(128, 128, 64, 3),
        _sparse(128, 128, 64, 4),
        _sparse(128, 64, 64, 3),
        _sparse(64, 128, 64, 3),
        *(_sparse(bm, bn, 64, 3, warps=8) for bm, bn in _WIDE),
    ],
}

WGMMA_ARCH = "sm_90a"
"""The target of the warpgroup-MMA kernels: wgmma and the bulk copy are arch-specific
features of sm_90 (the `a`), so these cubins load on H100 / H200 only."""


def _wgmma(
    bm: int, bn: int, bk: int, stages: int, warps: int, mma: str, producer_warps: int = 0
) -> KernelConfig:
    plain = (_dense if mma == "dense" else _sparse)(bm, bn, bk, stages, warps)
    return replace(plain, mma_class="wgmma", producer_warps=producer_warps)


# The Hopper-native variants (`<pattern>_wgmma.cu`), built beside the sm_80-style ones for
# WGMMA_ARCH only: a 128 x 256 tile (weight rows x tokens) of two warpgroups, each 64
# rows x 256 tokens (one m64n256 wgmma per K step, 128 fp32 accumulators a thread), four
# stages of 64 logical K (48 KiB dense, 41 KiB with a 2:4 weight). Opt-in: not in
# VARIANTS, so the default build, the checks and the simulator's streams are unchanged;
# `selected_variants(..., wgmma=True)` adds them.
# The second variant of each adds a producer warpgroup (`p4`, 384 threads): it loads
# while both warpgroups of the tile only compute (docs/kernels.md section 12).
WGMMA_VARIANTS: dict[str, list[KernelConfig]] = {
    pattern: [_wgmma(128, 256, 64, 4, 8, mma), _wgmma(128, 256, 64, 4, 8, mma, 4)]
    for pattern, mma in (("dense", "dense"), ("tw", "dense"), ("vw", "sparse"), ("tvw", "sparse"))
}


def kernel_source(pattern: str, config: KernelConfig) -> Path:
    """The CUDA source of a variant: `<pattern>_wgmma.cu` for a warpgroup-MMA config."""
    suffix = "_wgmma" if config.mma_class == "wgmma" else ""
    return CUDA_DIR / f"{pattern}{suffix}.cu"


def wgmma_arch(device_arch: str) -> str:
    """The target of warpgroup-MMA cubins for a GPU of `device_arch` (WGMMA_ARCH on sm_90),
    else InputError: wgmma exists on sm_90 only (sm_100 has another tensor-core ISA)."""
    if device_arch not in ("sm_90", WGMMA_ARCH):
        raise InputError(
            "device", f"warpgroup-MMA kernels run on sm_90 GPUs (H100, H200), not {device_arch}"
        )
    return WGMMA_ARCH


def builds_for(config: KernelConfig, arch: str) -> bool:
    """Whether a build for `arch` compiles `config`: warpgroup-MMA configs for WGMMA_ARCH
    only, and WGMMA_ARCH only them (an sm_90 GPU runs the sm_90 cubins of the others)."""
    return (config.mma_class == "wgmma") == (arch == WGMMA_ARCH)


BW_BLOCKS: tuple[int, ...] = (32, 64, 128)
"""The bw block sides compiled, one cubin each per (config, arch): the block is a
compile-time constant of bw.cu (-DTVWSIM_BW_BLOCK), so the loader's divisions by it are
shifts. They are every block `formats.bw_block_problem` allows for the shipped bw configs
(bm = 128, bk = 32: a multiple of bk dividing bm), so an encoding the spec and the encoder
accept always has a kernel; 32 is the sweeps' default. Any other block is refused before
launch (`check_block`)."""


def variant_blocks(pattern: str) -> tuple[int | None, ...]:
    """The compiled block sides of `pattern`: BW_BLOCKS for bw, (None,) for the others."""
    return BW_BLOCKS if pattern == "bw" else (None,)


def check_block(pattern: str, block: object, argument: str = "block") -> int | None:
    """`block` as the int a bw kernel is compiled for (None for other patterns), or
    InputError(`argument`) when no kernel is compiled for it."""
    if pattern != "bw":
        if block is not None:
            raise InputError(argument, f"only bw kernels take a block, got {block!r} for {pattern}")
        return None
    allowed = ", ".join(map(str, BW_BLOCKS))
    if isinstance(block, bool) or not isinstance(block, int) or block not in BW_BLOCKS:
        what = (
            "a bw kernel needs its block"
            if block is None
            else f"{block!r} has no compiled bw kernel"
        )
        raise InputError(
            argument,
            f"{what}; bw kernels are compiled for blocks {allowed} "
            "(kernels/build.py BW_BLOCKS): encode the weight with one of them",
        )
    return int(block)


NVCC_MISSING = (
    "not found: install the CUDA toolkit (nvcc 12.5+ for mma.sp::ordered_metadata) "
    "or put it on PATH"
)
MIN_NVCC = (12, 5)


class BuildError(RuntimeError):
    """nvcc or ptxas rejected a kernel; the message carries the compiler's output."""


@dataclass(frozen=True)
class PtxasReport:
    """What ptxas reported for one entry point (`-Xptxas -v`)."""

    registers: int
    """Registers per thread."""
    shared_static_bytes: int
    """Statically declared shared memory (ours is all dynamic, so 0)."""
    stack_frame_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


def cubin_name(pattern: str, config: KernelConfig, arch: str, block: int | None = None) -> str:
    """`<pattern>-<config>-<arch>.cubin`; bw: `bw-<config>-b<block>-<arch>.cubin`."""
    if check_block(pattern, block) is None:
        return f"{pattern}-{config.name}-{arch}.cubin"
    return f"{pattern}-{config.name}-b{block}-{arch}.cubin"


def probe_cubin_name(arch: str) -> str:
    return f"mma_sp_probe-{arch}.cubin"


def wgmma_probe_cubin_name(arch: str = "sm_90a") -> str:
    return f"wgmma_probe-{arch}.cubin"


def check_pattern_config(pattern: str, config: KernelConfig) -> None:
    """Raise InputError unless a `pattern` kernel can be built from `config`."""
    if pattern not in KERNEL_FUNCTIONS:
        raise InputError(
            "pattern", f"got {pattern!r}; kernels exist for: {', '.join(KERNEL_FUNCTIONS)}"
        )
    want = mma_kind(pattern)
    if config.mma != want:
        raise InputError(
            "config", f"{pattern} kernels need mma={want!r}, got {config.mma!r} ({config.name})"
        )
    if config.dtype != "fp16":
        raise InputError("config", f"kernels are fp16 only, got {config.dtype!r}")
    if config.mma_class == "wgmma":
        if pattern not in WGMMA_VARIANTS:
            raise InputError(
                "config",
                f"{config.name}: warpgroup-MMA kernels exist for {', '.join(WGMMA_VARIANTS)} only",
            )
        check_wgmma_config(config)
    # The warp grid needs no check here: KernelConfig refuses a config without one.
    # The shared-memory swizzle (swz in common.cuh) permutes the 16-byte chunks of a row
    # by XOR, which stays inside the row only for a power of two or a multiple of 8
    # chunks. The B row holds bn fp16, the A row bk (dense) or bk / 2 (compressed) fp16;
    # without this check such a config would fail later, inside nvcc, at launch time.
    chunks = config.bn // 8
    if chunks & (chunks - 1) and chunks % 8:
        raise InputError("config", f"{config.name}: bn/8 must be a power of two or a multiple of 8")
    a_elems = config.bk // 2 if config.mma == "sparse" else config.bk
    a_chunks = a_elems // 8
    if a_chunks & (a_chunks - 1) and a_chunks % 8:
        raise InputError(
            "config",
            f"{config.name}: a weight stage row of {a_elems} fp16 is {a_chunks} 16-byte "
            "chunks; it must be a power of two or a multiple of 8 (bk = 16, 32, 64, 128, "
            "192, 256 dense; 64, 128, 256 sparse)",
        )


def parse_arch_list(text: str) -> list[str]:
    """'sm_80,sm_90' -> ['sm_80', 'sm_90'] (validated)."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    if not archs:
        raise InputError("--arch", "empty; give e.g. sm_80,sm_90")
    for arch in archs:
        try:
            major, _ = arch_version(arch)
        except InputError:
            major = 0
        if major < 8:
            raise InputError(
                "--arch",
                f"got {arch!r}; kernels need sm_80 or newer (cp.async, mma.sp), e.g. sm_80,sm_90",
            )
    return archs


# -- nvcc -------------------------------------------------------------------------------
CUDA_ROOTS: tuple[str, ...] = ("/usr/local/cuda",)
"""Where nvcc is looked for after PATH, $CUDA_HOME and $CUDA_PATH."""


def find_nvcc() -> str:
    """Path of nvcc: PATH first, then $CUDA_HOME/bin, $CUDA_PATH/bin, CUDA_ROOTS."""
    found = shutil.which("nvcc")
    if found:
        return found
    roots = (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *CUDA_ROOTS)
    for root in roots:
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    raise InputError("nvcc", NVCC_MISSING)


def nvcc_version(nvcc: str | None = None) -> str:
    """The last line of `nvcc --version`, e.g. 'Build cuda_13.0.r13.0/compiler.36424714_0'."""
    nvcc = nvcc or find_nvcc()
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        raise BuildError(f"{nvcc} --version failed: {out.stderr.strip()}")
    release = re.search(r"release (\d+)\.(\d+)", out.stdout)
    if release and tuple(int(x) for x in release.groups()) < MIN_NVCC:
        raise InputError(
            "nvcc",
            f"release {release.group(1)}.{release.group(2)} is too old: "
            "mma.sp::ordered_metadata needs nvcc 12.5 or newer",
        )
    return lines[-1]


def config_defines(config: KernelConfig, block: int | None = None) -> list[str]:
    """The -D flags that make a kernel source into the `config` variant (and, for bw, the
    `block` one)."""
    block_define = [f"-DTVWSIM_BW_BLOCK={block}"] if block is not None else []
    return [
        f"-DBM={config.bm}",
        f"-DBN={config.bn}",
        f"-DBK={config.bk}",
        f"-DWARPS={config.warps}",
        f"-DWARPS_M={config.warp_grid[0]}",
        f"-DSTAGES={config.stages}",
        f"-DTVW_SMEM_BYTES={config.smem_bytes}",
        *block_define,
        *([f"-DPRODUCER_WARPS={config.producer_warps}"] if config.producer_warps else []),
    ]


def nvcc_command(
    nvcc: str, source: Path, arch: str, out: Path, defines: Iterable[str] = ()
) -> list[str]:
    return [
        nvcc,
        "-cubin",
        f"-arch={arch}",
        "-O3",
        "-std=c++17",
        "-Xptxas",
        "-v",
        *defines,
        f"-I{CUDA_DIR}",
        "-o",
        str(out),
        str(source),
    ]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict[str, PtxasReport]:
    """Per-function resources from `ptxas -v` output (the stderr of `nvcc -Xptxas -v`)."""
    result: dict[str, PtxasReport] = {}
    # Each entry function's report runs from its "Compiling entry function" line to the
    # next one; inside it, "N bytes stack frame ..." and "Used N registers ..." lines.
    starts = list(_ENTRY.finditer(text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[m.end() : end]
        frame = _FRAME.search(block)
        used = _USED.search(block)
        if not frame or not used:
            raise BuildError(f"could not read ptxas resources of {m.group(1)}:\n{block}")
        smem = _SMEM.search(block[used.start() :].splitlines()[0])
        result[m.group(1)] = PtxasReport(
            registers=int(used.group(1)),
            shared_static_bytes=int(smem.group(1)) if smem else 0,
            stack_frame_bytes=int(frame.group(1)),
            spill_store_bytes=int(frame.group(2)),
            spill_load_bytes=int(frame.group(3)),
        )
    return result


def _run_nvcc(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
        raise BuildError(f"nvcc failed ({' '.join(cmd[1:4])} ... {cmd[-1]}):\n{tail}")
    return proc.stderr + proc.stdout


def compile_kernel(
    pattern: str,
    config: KernelConfig,
    arch: str,
    out_dir: Path,
    nvcc: str | None = None,
    block: int | None = None,
) -> BuiltKernel:
    """Compile one variant (bw: for one of BW_BLOCKS) into `out_dir` and return its
    manifest entry.

    The cubin is written directly by nvcc; callers that need atomicity pass a temporary
    `out_dir` (as `build` does).
    """
    check_pattern_config(pattern, config)
    block = check_block(pattern, block)
    if config.mma_class == "wgmma" and arch != WGMMA_ARCH:
        raise InputError(
            "arch", f"{config.name} is a warpgroup-MMA kernel: build it for {WGMMA_ARCH}"
        )
    nvcc = nvcc or find_nvcc()
    name = cubin_name(pattern, config, arch, block)
    cmd = nvcc_command(
        nvcc,
        kernel_source(pattern, config),
        arch,
        Path(out_dir) / name,
        config_defines(config, block),
    )
    report = parse_ptxas(_run_nvcc(cmd))
    function = KERNEL_FUNCTIONS[pattern]
    if function not in report:
        raise BuildError(f"ptxas reported no entry {function!r} for {name}")
    res = report[function]
    return BuiltKernel(
        pattern=pattern,
        config=config.name,
        arch=arch,
        cubin=name,
        function=function,
        registers=res.registers,
        shared_static_bytes=res.shared_static_bytes,
        shared_dynamic_bytes=config.smem_bytes,
        stack_frame_bytes=res.stack_frame_bytes,
        spill_store_bytes=res.spill_store_bytes,
        spill_load_bytes=res.spill_load_bytes,
        block=block or 0,
    )


def compile_probe(arch: str, out_dir: Path, nvcc: str | None = None) -> dict[str, PtxasReport]:
    """Compile the one-warp mma / mma.sp probe kernels (no config)."""
    nvcc = nvcc or find_nvcc()
    cmd = nvcc_command(nvcc, CUDA_DIR / PROBE_SOURCE, arch, Path(out_dir) / probe_cubin_name(arch))
    return parse_ptxas(_run_nvcc(cmd))


def compile_wgmma_probe(out_dir: Path, nvcc: str | None = None) -> dict[str, PtxasReport]:
    """Compile the one-warpgroup wgmma / wgmma.sp probes for WGMMA_ARCH."""
    nvcc = nvcc or find_nvcc()
    out = Path(out_dir) / wgmma_probe_cubin_name(WGMMA_ARCH)
    defines = config_defines(WGMMA_VARIANTS["dense"][0])
    defines = [d for d in defines if not d.startswith("-DTVW_SMEM_BYTES")]
    cmd = nvcc_command(nvcc, CUDA_DIR / WGMMA_PROBE_SOURCE, WGMMA_ARCH, out, defines)
    return parse_ptxas(_run_nvcc(cmd))


# -- the whole build --------------------------------------------------------------------
def selected_variants(
    patterns: Iterable[str] | None = None,
    configs: Iterable[str] | None = None,
    *,
    wgmma: bool = False,
) -> list[tuple[str, KernelConfig]]:
    """(pattern, config) pairs of VARIANTS (and WGMMA_VARIANTS when `wgmma`), optionally
    filtered by pattern / config name."""
    pats = list(patterns) if patterns else list(VARIANTS)
    for p in pats:
        if p not in VARIANTS:
            raise InputError("--pattern", f"got {p!r}; kernels exist for: {', '.join(VARIANTS)}")
    names = set(configs) if configs else None
    shipped = {p: VARIANTS[p] + (WGMMA_VARIANTS.get(p, []) if wgmma else []) for p in pats}
    chosen = [(p, c) for p in pats for c in shipped[p] if names is None or c.name in names]
    if not chosen:
        raise InputError("--config", f"no shipped variant matches {sorted(names or [])}")
    return chosen


def build(
    archs: Iterable[str] = ARCHS,
    out_dir: Path | str | None = None,
    *,
    variants: list[tuple[str, KernelConfig]] | None = None,
    jobs: int | None = None,
    probe: bool = True,
    progress: Callable[[str], None] | None = print,
) -> Manifest:
    """Compile `variants` (default: every shipped variant; bw once per BW_BLOCKS) for each
    arch into `out_dir` (default: the kernel directory, `tvwsim.manifest.kernel_dir`).

    Returns the manifest that was written to `out_dir/manifest.json`. Entries from an
    earlier build with the same nvcc whose cubins are still present are kept, so building
    sm_80 and sm_90 in two calls yields one manifest.
    """
    archs = list(archs)
    for arch in archs:
        parse_arch_list(arch)
    variants = variants if variants is not None else selected_variants()
    out = Path(out_dir) if out_dir is not None else kernel_dir()
    out.mkdir(parents=True, exist_ok=True)
    nvcc = find_nvcc()
    version = nvcc_version(nvcc)
    jobs = max(1, jobs or os.cpu_count() or 1)

    jobs_list: list[tuple[str, KernelConfig | None, str, int | None]] = [
        (p, c, a, b)
        for a in archs
        for (p, c) in variants
        for b in variant_blocks(p)
        if builds_for(c, a)
    ]
    if probe:
        jobs_list += [("probe", None, a, None) for a in archs]
        if WGMMA_ARCH in archs:
            jobs_list.append(("wgmma_probe", None, WGMMA_ARCH, None))
    total = len(jobs_list)
    built: list[BuiltKernel] = []
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    try:

        def one(
            job: tuple[str, KernelConfig | None, str, int | None],
        ) -> tuple[str, BuiltKernel | None]:
            pattern, config, arch, block = job
            start = time.perf_counter()
            if config is None:
                if pattern == "wgmma_probe":
                    res, name = compile_wgmma_probe(tmp, nvcc), wgmma_probe_cubin_name(arch)
                else:
                    res, name = compile_probe(arch, tmp, nvcc), probe_cubin_name(arch)
                os.replace(tmp / name, out / name)
                regs = max(r.registers for r in res.values())
                took = time.perf_counter() - start
                return f"{pattern.replace('_', ' ')} {arch}: {regs} regs ({took:.1f} s)", None
            k = compile_kernel(pattern, config, arch, tmp, nvcc, block)
            os.replace(tmp / k.cubin, out / k.cubin)
            spill = k.spill_store_bytes + k.spill_load_bytes
            variant = f"{k.config} b{block}" if block is not None else k.config
            line = (
                f"{pattern} {variant} {arch}: {k.registers} regs, "
                f"{k.shared_dynamic_bytes} B smem, {spill} B spill "
                f"({time.perf_counter() - start:.1f} s)"
            )
            return line, k

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, job) for job in jobs_list]
            try:
                for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                    line, k = fut.result()
                    if k is not None:
                        built.append(k)
                    if progress:
                        progress(f"[{done:>{len(str(total))}}/{total}] {line}")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    keys = {k.key for k in built}
    kept: list[BuiltKernel] = []
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        try:
            old = read_manifest(manifest_path)
        except InputError:
            old = None
        if old is not None and old.nvcc == version:
            # An entry of a block-less bw build (before BW_BLOCKS) is dropped: no
            # launcher loads its cubin any more.
            kept = [
                k
                for k in old.kernels
                if k.key not in keys
                and (out / k.cubin).exists()
                and (k.pattern == "bw") == (k.block != 0)
            ]
    entries = sorted(kept + built, key=lambda k: k.key)
    manifest = Manifest(nvcc=version, kernels=tuple(entries))
    write_manifest(manifest, out)
    return manifest


# -- reading cubins without a GPU ----------------------------------------------------------
_TOOL_PACKAGES = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}


def find_cuda_tool(name: str) -> str:
    """Path of `cuobjdump` or `nvdisasm`: from its PyPI package if installed, else PATH."""
    dist = _TOOL_PACKAGES.get(name)
    if dist:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        for f in files:
            if f.name == name and f.parent.name == "bin":
                path = Path(str(f.locate()))
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise InputError(
        name, f"not found: pip install {dist or name} (part of the test extra) or install CUDA"
    )


def dump_sass(cubin: Path | str) -> str:
    """`cuobjdump --dump-sass` of a cubin."""
    proc = subprocess.run(
        [find_cuda_tool("cuobjdump"), "--dump-sass", str(cubin)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"cuobjdump failed on {cubin}: {proc.stderr.strip()}")
    return proc.stdout


_FUNC_HDR = re.compile(r"Function\s*:\s*(\S+)")
# Opcodes are upper case, except the shape of a warpgroup MMA: HGMMA.64x256x16.F32.
_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)")


def sass_opcodes(cubin: Path | str) -> dict[str, Counter]:
    """Per function, how often each SASS opcode (with modifiers) occurs."""
    result: dict[str, Counter] = {}
    current: Counter | None = None
    for line in dump_sass(cubin).splitlines():
        hdr = _FUNC_HDR.search(line)
        if hdr:
            current = result.setdefault(hdr.group(1), Counter())
            continue
        m = _OPCODE.search(line)
        if m and current is not None:
            current[m.group(1)] += 1
    return result


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")

SassLine = tuple[int, str | None, str, str]
"""(address, guard predicate or None, opcode with modifiers, operand text) of one line."""


def sass_listing(text: str) -> dict[str, list[SassLine]]:
    """Per function of a `cuobjdump --dump-sass` listing, its instructions in order: the
    one reader of SASS text (`sass_functions`, `tvwsim.kernels.sass_stream`)."""
    result: dict[str, list[SassLine]] = {}
    current: list[SassLine] | None = None
    for line in text.splitlines():
        hdr = _FUNC_HDR.search(line)
        if hdr:
            current = result.setdefault(hdr.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            guard = m.group(2).strip()[1:] if m.group(2) else None
            current.append((int(m.group(1), 16), guard, m.group(3), m.group(4).strip()))
    return result


def sass_functions(cubin: Path | str) -> dict[str, list[tuple[int, str, str]]]:
    """Per function: (address, opcode with modifiers, operands) of every instruction."""
    return {
        name: [(addr, op, args) for addr, _guard, op, args in lines]
        for name, lines in sass_listing(dump_sass(cubin)).items()
    }


def main_loop(instrs: Sequence[tuple]) -> list[tuple]:
    """The instructions of the backward-branch loop holding the most HMMA ([] if none):
    the K loop of `pipeline` in common.cuh, every stage body inside it unrolled.

    `instrs` are `sass_functions` or `sass_listing` tuples: the address first, the opcode
    and its operand text last."""
    best: list[tuple] = []
    best_mma = 0
    for instr in instrs:
        addr, op, args = instr[0], instr[-2], instr[-1]
        if op.split(".")[0] != "BRA":
            continue
        target = _BRANCH_TARGET.search(args)
        if not target or int(target.group(1), 16) >= addr:
            continue
        start = int(target.group(1), 16)
        body = [i for i in instrs if start <= i[0] <= addr]
        mma = sum(1 for i in body if i[-2].startswith("HMMA"))
        if mma > best_mma:
            best, best_mma = body, mma
    return best


@dataclass(frozen=True)
class LoopMix:
    """The SASS instruction mix of one kernel's main loop (`main_loop`)."""

    instructions: int
    hmma: int
    """Tensor-core mma (HMMA, sparse or dense)."""
    ldsm: int
    """ldmatrix (LDSM)."""
    ldgsts: int
    """cp.async (LDGSTS)."""
    lead: int
    """Instructions from the stage's barrier (BAR; the loop head if none) to the first HMMA."""
    ldsm_between_hmma: int
    """LDSM issued between the first and the last HMMA of the loop."""
    gap: int
    """The longest run of other instructions between two HMMA."""

    @property
    def other(self) -> int:
        return self.instructions - self.hmma - self.ldsm - self.ldgsts


def loop_mix(cubin: Path | str, function: str) -> LoopMix:
    """The main-loop instruction mix of `function` in `cubin` (cuobjdump; no GPU)."""
    functions = sass_functions(cubin)
    if function not in functions:
        raise BuildError(f"{cubin} has no function {function!r} (has {sorted(functions)})")
    body = main_loop(functions[function])
    kinds = [op.split(".")[0] for _, op, _ in body]
    hmma_at = [i for i, k in enumerate(kinds) if k == "HMMA"]
    first, last = (hmma_at[0], hmma_at[-1]) if hmma_at else (0, -1)
    bars = [i for i, k in enumerate(kinds[:first]) if k == "BAR"]
    start = bars[-1] + 1 if bars else 0
    return LoopMix(
        instructions=len(body),
        hmma=len(hmma_at),
        ldsm=kinds.count("LDSM"),
        ldgsts=kinds.count("LDGSTS"),
        lead=first - start,
        ldsm_between_hmma=kinds[first : last + 1].count("LDSM"),
        gap=max((b - a - 1 for a, b in zip(hmma_at, hmma_at[1:], strict=False)), default=0),
    )


_RES_LINE = re.compile(r"Function\s+([^:\s]+)\s*:\s*\n\s*(.*)")


def resource_usage(cubin: Path | str) -> dict[str, dict[str, int]]:
    """`cuobjdump --dump-resource-usage`: per function REG, STACK, SHARED, LOCAL, ..."""
    proc = subprocess.run(
        [find_cuda_tool("cuobjdump"), "--dump-resource-usage", str(cubin)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"cuobjdump failed on {cubin}: {proc.stderr.strip()}")
    result: dict[str, dict[str, int]] = {}
    for m in _RES_LINE.finditer(proc.stdout):
        fields = dict(re.findall(r"([A-Z_\[\]0-9]+):(\d+)", m.group(2)))
        result[m.group(1)] = {k: int(v) for k, v in fields.items()}
    return result
