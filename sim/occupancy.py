"""Occupancy: how many CTAs of a kernel fit on one SM at the same time.

An SM runs several CTAs at once when it has room for all of them. Each resident CTA
holds, for its whole life,

- its threads (warps) - an SM schedules at most `max_threads_per_sm` / `max_warps_per_sm`;
- its registers - `registers_per_thread x threads`, allocated per warp in chunks of 256;
- its shared memory - the pipeline buffers (`stages x (weight + activation stage)`), plus
  1 KB the CUDA runtime reserves per CTA on sm_80 and later;
- one of `max_ctas_per_sm` CTA slots.

The smallest of the four quotients is the occupancy, and the resource that gives it is
the *limiter*: the first thing to change if more CTAs per SM are wanted. More resident
CTAs means more loads in flight (latency hiding) and a smaller last wave, but the CTAs on
one SM still share its tensor cores, so occupancy beyond "enough to hide latency" buys
nothing for a compute-bound GEMM.

Registers and shared memory come from the compiled kernel when it is known: `tvwsim
kernels build` writes a manifest with what ptxas reported for every kernel, in the kernel
directory (`tvwsim.manifest`: never the working directory), and `load_resources` finds
the entry for the GPU's `Hardware.arch`. Without one, `estimate_resources` derives them
from the `KernelConfig` (shared memory exactly, registers by a documented estimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tvwsim.sim.hardware import Hardware

from tvwsim.config import MMA_M, MMA_N, KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import KernelResources, default_manifest_path, load_resources

__all__ = [
    "KernelResources",
    "Occupancy",
    "estimate_resources",
    "load_resources",
    "occupancy",
    "resources_for",
]

REGISTER_ALLOCATION_UNIT = 256
"""Registers are allocated per warp in units of 256 (CUDA occupancy calculator, cc 7.x-9.x)."""

SYSTEM_SMEM_PER_CTA_BYTES = 1024
"""Shared memory the CUDA runtime reserves per CTA on sm_80 and later (CUDA guide, cc 8.x)."""

REGISTER_OVERHEAD = 32
"""Registers a GEMM main loop needs besides accumulators and fragments: addresses, loop
counters, predicates, the tile's index pointers. An estimate; compiled kernels report
the real figure."""


@dataclass(frozen=True)
class Occupancy:
    """Resident CTAs per SM and which resource sets that number."""

    ctas_per_sm: int
    """CTAs one SM holds at once (at least 1)."""
    limited_by: str
    """'threads', 'warps', 'registers', 'shared memory' or 'CTA slots'."""
    per_resource: tuple[tuple[str, int], ...]
    """Every resource's own quotient, in the order above (for reports and teaching)."""


def estimate_resources(config: KernelConfig) -> KernelResources:
    """Registers and shared memory of a kernel built from `config`, without compiling it.

    Shared memory is exact: `config.smem_bytes` (the kernel's footprint). Registers per
    thread are estimated as

        accumulators  bm * bn / threads            (fp32, one per output element)
      + A fragments   (warp_m / 16) x 4            (one mma-K slice of the warp's rows)
      + metadata      (warp_m / 16)                (sparse only: one word per 16 rows)
      + B fragments   (warp_n / 8) x (2 dense | 4 sparse, whose mma has k32)
      + overhead      32                           (addresses, counters, predicates)

    with warp_m x warp_n the warp tile of `config.warp_grid` (the split the kernel is
    compiled with), rounded up to a multiple of 8; a warpgroup-MMA config has no A or B
    fragments (its operands stay in shared memory). For 128x128x32 with 4 warps (2 x 2
    warps of 64 x 64) that is 128 + 16 + 16 + 32 = 192; the sparse 128x128x64 variant
    216. Real kernels land within a few tens of registers of this depending on how far
    the compiler double-buffers fragments, which is why a compiled kernel's report wins.
    """
    warp_m, warp_n = config.warp_tile
    accumulators = config.bm * config.bn // config.threads
    sparse = config.mma == "sparse"
    a_fragments = (warp_m // MMA_M) * (5 if sparse else 4)
    b_fragments = (warp_n // MMA_N) * (4 if sparse else 2)
    if config.mma_class == "wgmma":
        # Warpgroup MMA reads both operands from shared memory: no fragment registers
        # (the sparse metadata word stays in a register).
        a_fragments = (warp_m // MMA_M) if sparse else 0
        b_fragments = 0
    registers = accumulators + a_fragments + b_fragments + REGISTER_OVERHEAD
    registers = -(-registers // 8) * 8
    return KernelResources(
        registers_per_thread=registers,
        smem_bytes=config.smem_bytes,
        threads=config.threads,
        source="estimate",
    )


def resources_for(
    hw: Hardware,
    pattern: str,
    config: KernelConfig,
    manifest_path: str | Path | None = None,
    block: int | None = None,
) -> KernelResources:
    """The compiled kernel's resources when a manifest lists it for `hw.arch` (bw: of
    `block`, else of the smallest compiled block), else the estimate. `manifest_path` None
    means the kernel directory's manifest, which may be absent; a path that is given must
    exist."""
    if manifest_path is None:
        path = default_manifest_path()
    else:
        path = Path(manifest_path)
        if not path.is_file():
            raise InputError("--manifest", f"{path}: no such file")
    found = load_resources(path, pattern, config, hw.arch or None, block)
    return found if found is not None else estimate_resources(config)


def check_mma_class(hw: Hardware, config: KernelConfig, argument: str = "config") -> None:
    """InputError(`argument`) when `config`'s MMA class cannot run on `hw`: a
    warpgroup-MMA kernel on a GPU without warpgroup MMA."""
    if config.mma_class == "wgmma" and not hw.has_warpgroup_mma:
        raise InputError(
            argument,
            f"{config.name} is a warpgroup-MMA (wgmma) kernel and {hw.label} has no "
            "warpgroup MMA (has_warpgroup_mma = false); use an mma.sync config",
        )


def occupancy(hw: Hardware, resources: KernelResources) -> Occupancy:
    """Resident CTAs per SM for a kernel with `resources` on `hw`, and what limits it.

    Raises InputError('tile') when one CTA does not fit at all, naming the limit and by
    how much it is exceeded.
    """
    smem, regs, threads = resources.smem_bytes, resources.registers_per_thread, resources.threads
    where = "compiled kernel" if resources.source == "manifest" else "estimate"
    if smem > hw.smem_per_cta_bytes:
        raise InputError(
            "tile",
            f"needs {smem} B shared memory per CTA, {hw.name} allows {hw.smem_per_cta_bytes} "
            f"(over by {smem - hw.smem_per_cta_bytes} B); use fewer stages or a smaller tile",
        )
    if regs > hw.max_regs_per_thread:
        raise InputError(
            "tile",
            f"needs {regs} registers per thread ({where}), {hw.name} allows "
            f"{hw.max_regs_per_thread} (over by {regs - hw.max_regs_per_thread}); use more "
            f"warps or a smaller tile",
        )
    warps = -(-threads // 32)
    regs_per_warp = -(-regs * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    regs_per_cta = regs_per_warp * warps
    if regs_per_cta > hw.regs_per_sm:
        raise InputError(
            "tile",
            f"needs {regs_per_cta} registers per CTA ({where}), {hw.name} has {hw.regs_per_sm} "
            f"per SM (over by {regs_per_cta - hw.regs_per_sm}); use a smaller tile",
        )
    if threads > hw.max_threads_per_sm or warps > hw.max_warps_per_sm:
        raise InputError(
            "warps",
            f"a CTA of {threads} threads exceeds {hw.name}'s {hw.max_threads_per_sm} "
            f"threads / {hw.max_warps_per_sm} warps per SM",
        )
    reserved = SYSTEM_SMEM_PER_CTA_BYTES if hw.has_cp_async else 0
    per_resource = (
        ("threads", hw.max_threads_per_sm // threads),
        ("warps", hw.max_warps_per_sm // warps),
        ("registers", hw.regs_per_sm // regs_per_cta),
        ("shared memory", hw.smem_per_sm_bytes // (smem + reserved) if smem else 10**9),
        ("CTA slots", hw.max_ctas_per_sm),
    )
    # The first minimum wins, so the reported limiter is stable when two resources tie.
    limited_by, ctas = min(per_resource, key=lambda item: item[1])
    if ctas < 1:
        raise InputError(
            "tile",
            f"needs {smem + reserved} B shared memory per CTA including the runtime's "
            f"reserve, {hw.name} has {hw.smem_per_sm_bytes} per SM",
        )
    return Occupancy(ctas_per_sm=int(ctas), limited_by=limited_by, per_resource=per_resource)
