"""`KernelConfig`: the one description of a GEMM kernel variant.

The same object sets the CUDA build's compile-time constants, the simulator's tile and
pipeline shapes, and is recorded with every measurement, so "simulated vs measured" always
names the same kernel. `tvwsim.kernels.formats` re-exports it.

Conventions (docs/formats.md): the kernel computes Y.T = W @ X.T. The weight W (N x K) is
the sparse operand and sits on the mma's M side, so `bm` counts weight rows (output
features) per CTA tile - for tw/tvw it is the tile width G - and `bn` counts activation
columns (tokens). `bk` is the *logical* K per pipeline stage, before 2:4 compression: a
sparse stage of bk=64 holds 32 stored values per weight row.

The config also owns what follows from it on the device: the warp grid (`warp_grid`, which
the build passes to nvcc as `-DWARPS_M`, so host and device cannot disagree) and the
shared-memory footprint (`smem_bytes`, checked against the kernel's own layout by a
`static_assert`). docs/kernels.md draws both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvwsim.errors import InputError
from tvwsim.pattern_spec import pattern_spec

MMA_KINDS = ("dense", "sparse")
DTYPES = ("fp16",)
MMA_CLASSES = ("mma.sync", "wgmma")
"""How the kernel drives the tensor cores. 'mma.sync': per-warp mma.sync / mma.sp with
operands in registers (loaded by ldmatrix), the class of this project's kernels and of
every library on Volta, Turing and Ampere. 'wgmma': Hopper's warpgroup MMA
(wgmma.mma_async / wgmma.sp), operands read from shared memory by the tensor core itself,
the class vendor libraries use on sm_90. The model gives each class its own pipe and
efficiency (docs/model.md 5.3)."""

# Instruction shapes (PTX ISA): dense mma.sync m16n8k16, sparse mma.sp m16n8k32.
MMA_M, MMA_N = 16, 8
DENSE_MMA_K, SPARSE_MMA_K = 16, 32
# One 32-bit metadata register per lane covers 16 rows x 64 logical K (two mma.sp, both
# selectors), so sparse stages step K in multiples of 64 (docs/formats.md, "metadata").
SPARSE_K_GRANULE = 64

EPILOGUE_ROW_PAD = 8
"""fp16 elements of padding per row of the epilogue's staging tile (common.cuh)."""

AUTO = "auto"
"""Said where a config name is asked for: the kernel a vendor library would pick on the
GPU at hand (`tvwsim.sim.library`: `--config auto`, an explore spec's `auto`)."""

_NAME = re.compile(r"^(\d+)x(\d+)x(\d+)s(\d+)w(\d+)(?:p(\d+))?(-wgmma)?$")
WGMMA_SUFFIX = "-wgmma"
"""Appended to the name of a warpgroup-MMA config: '128x256x64s4w8-wgmma'."""


@dataclass(frozen=True)
class KernelConfig:
    """A CTA tile shape, pipeline depth and mma kind. All sizes in elements."""

    bm: int = 128
    """Weight rows (output features) per CTA tile; the tile width G of tw/tvw."""
    bn: int = 128
    """Activation columns (tokens, M) per CTA tile."""
    bk: int = 32
    """Logical K per pipeline stage (before 2:4 compression)."""
    warps: int = 4
    """Warps per CTA."""
    stages: int = 3
    """Shared-memory pipeline stages (cp.async multi-buffering)."""
    mma: str = "dense"
    """'dense' (mma.sync m16n8k16) or 'sparse' (mma.sp m16n8k32, 2:4 weight)."""
    dtype: str = "fp16"
    """Input and output element type; accumulation is always fp32."""
    mma_class: str = "mma.sync"
    """'mma.sync' (this project's kernels) or 'wgmma' (Hopper warpgroup MMA, what vendor
    libraries run on sm_90; MMA_CLASSES)."""
    producer_warps: int = 0
    """Warps that only load (a producer warpgroup beside the `warps` that compute; wgmma
    class only, 0 or 4). They add to `threads`, not to the math: 'p4' in the name."""

    def __post_init__(self) -> None:
        if self.mma not in MMA_KINDS:
            raise InputError("mma", f"got {self.mma!r}; allowed: {', '.join(MMA_KINDS)}")
        if self.mma_class not in MMA_CLASSES:
            raise InputError(
                "mma_class", f"got {self.mma_class!r}; allowed: {', '.join(MMA_CLASSES)}"
            )
        if self.dtype not in DTYPES:
            raise InputError("dtype", f"got {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        for field in ("bm", "bn", "bk", "warps", "stages"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(field, f"must be a positive integer, got {value!r}")
        if self.bm % MMA_M or self.bm > 256:
            raise InputError("bm", f"must be a multiple of {MMA_M} up to 256, got {self.bm}")
        if self.bn % (2 * MMA_N) or self.bn > 256:
            raise InputError("bn", f"must be a multiple of {2 * MMA_N} up to 256, got {self.bn}")
        if self.bk % self.k_granule or self.bk > 256:
            raise InputError(
                "bk",
                f"must be a multiple of {self.k_granule} up to 256 for mma={self.mma}, "
                f"got {self.bk}",
            )
        if self.warps not in (1, 2, 4, 8, 16):
            raise InputError("warps", f"must be one of 1, 2, 4, 8, 16, got {self.warps}")
        if _warp_grid(self.bm, self.bn, self.warps) is None:
            raise InputError(
                "warps",
                f"no split of {self.warps} warps over a {self.bm} x {self.bn} tile gives warp "
                f"tiles whose sides are multiples of {MMA_M}; use fewer warps or a larger tile",
            )
        if self.mma_class == "wgmma" and (self.warps % 4 or self.bm % 64):
            # A warpgroup is 4 warps, and one wgmma covers 64 rows of the mma's M side
            # (the weight rows, bm).
            raise InputError(
                "mma_class",
                f"wgmma needs whole warpgroups (warps a multiple of 4) and bm a multiple of "
                f"64, got {self.warps} warps and bm={self.bm}",
            )
        if not 2 <= self.stages <= 8:
            raise InputError("stages", f"must be between 2 and 8, got {self.stages}")
        if self.producer_warps not in (0, 4) or (self.producer_warps and self.mma_class != "wgmma"):
            raise InputError(
                "producer_warps",
                f"must be 0, or 4 (one producer warpgroup) with mma_class='wgmma', got "
                f"{self.producer_warps!r} with {self.mma_class}",
            )

    # -- names -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name used in cubin file names and measurements: '128x128x32s3w4'
        ('128x256x64s4w8-wgmma' for a warpgroup-MMA config, '128x256x64s4w8p4-wgmma' with a
        producer warpgroup)."""
        suffix = WGMMA_SUFFIX if self.mma_class == "wgmma" else ""
        producers = f"p{self.producer_warps}" if self.producer_warps else ""
        return f"{self.bm}x{self.bn}x{self.bk}s{self.stages}w{self.warps}{producers}{suffix}"

    @classmethod
    def from_name(cls, name: str, *, mma: str = "dense", dtype: str = "fp16") -> KernelConfig:
        """Parse '128x128x32s3w4' (stages and warps optional: '128x128x32'; a '-wgmma'
        suffix names the warpgroup-MMA class, 'p4' after the warps a producer warpgroup)."""
        text = name.strip()
        if re.fullmatch(r"\d+x\d+x\d+", text):
            text += "s3w4"
        m = _NAME.match(text)
        if not m:
            raise InputError(
                "tile",
                f"got {name!r}; expected BMxBNxBK[sSTAGESwWARPS[pPRODUCERS]][-wgmma], "
                "e.g. 128x128x32s3w4",
            )
        bm, bn, bk, stages, warps = (int(g) for g in m.groups()[:5])
        producer_warps = int(m.group(6) or 0)
        mma_class = "wgmma" if m.group(7) else "mma.sync"
        return cls(
            bm=bm,
            bn=bn,
            bk=bk,
            stages=stages,
            warps=warps,
            mma=mma,
            dtype=dtype,
            mma_class=mma_class,
            producer_warps=producer_warps,
        )

    # -- derived sizes -----------------------------------------------------------------
    @property
    def threads(self) -> int:
        """Threads per CTA: the computing warps and any producer warps."""
        return 32 * (self.warps + self.producer_warps)

    @property
    def warp_grid(self) -> tuple[int, int]:
        """How the warps tile the bm x bn output: (warps along bm, warps along bn).

        The split whose warp tile is closest to square (smallest |bm/wm - bn/wn|), among
        power-of-two splits whose warp tiles are multiples of 16 on both sides; a tie keeps
        fewer warps along bm. A square warp tile loads the fewest fragments per mma. 4 warps
        on 128 x 128 -> 2 x 2 warps of 64 x 64; on 128 x 64 -> 2 x 2 of 64 x 32; on
        64 x 128 -> 1 x 4 of 64 x 32. The kernel is compiled with this split (-DWARPS_M).
        """
        grid = _warp_grid(self.bm, self.bn, self.warps)
        assert grid is not None  # __post_init__ refused configs without one
        return grid

    @property
    def warp_tile(self) -> tuple[int, int]:
        """One warp's piece of the CTA tile: (weight rows, tokens)."""
        warps_m, warps_n = self.warp_grid
        return self.bm // warps_m, self.bn // warps_n

    @property
    def k_granule(self) -> int:
        """Granule of K padding and of stage size: 16 (dense) or 64 (sparse)."""
        return DENSE_MMA_K if self.mma == "dense" else SPARSE_K_GRANULE

    @property
    def element_bytes(self) -> int:
        return 2

    @property
    def weight_stage_bytes(self) -> int:
        """Weight bytes one stage holds: values (compressed 2:1 when sparse) + metadata."""
        if self.mma == "dense":
            return self.bm * self.bk * self.element_bytes
        values = self.bm * (self.bk // 2) * self.element_bytes
        metadata = self.bm * (self.bk // 16) * 2  # one uint16 per row per 16 logical K
        return values + metadata

    @property
    def activation_stage_bytes(self) -> int:
        """Activation bytes one stage holds: bk K-major rows of bn tokens."""
        return self.bk * self.bn * self.element_bytes

    @property
    def pipeline_smem_bytes(self) -> int:
        """The cp.async pipeline's buffers: `stages` x (weight stage + activation stage)."""
        return self.stages * (self.weight_stage_bytes + self.activation_stage_bytes)

    @property
    def epilogue_smem_bytes(self) -> int:
        """The epilogue's fp16 staging tile, bm rows of bn + 8 tokens (the 8 halves of
        padding per row keep a fragment store free of bank conflicts)."""
        return self.bm * (self.bn + EPILOGUE_ROW_PAD) * self.element_bytes

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory per CTA: the launch requests it, the simulator's occupancy
        charges it. The epilogue reuses the pipeline's buffers, so it is the larger of the
        two; for every shipped variant that is the pipeline."""
        return max(self.pipeline_smem_bytes, self.epilogue_smem_bytes)

    def flops_per_stage(self) -> int:
        """Useful (logical, dense-equivalent) FLOPs of one full stage: 2 * bm * bn * bk."""
        return 2 * self.bm * self.bn * self.bk


def _warp_grid(bm: int, bn: int, warps: int) -> tuple[int, int] | None:
    """The rule of `KernelConfig.warp_grid`, or None when no split fits."""
    best: tuple[int, int] | None = None
    best_cost = 0
    warps_m = 1
    while warps_m <= warps:
        warps_n = warps // warps_m
        # Warp tiles must hold whole 16-row A fragments and pairs of n8 B fragments.
        if warps % warps_m == 0 and bm % (MMA_M * warps_m) == 0 and bn % (2 * MMA_N * warps_n) == 0:
            cost = abs(bm // warps_m - bn // warps_n)
            if best is None or cost < best_cost:  # strict: a tie keeps the smaller warps_m
                best, best_cost = (warps_m, warps_n), cost
        warps_m *= 2
    return best


def default_config(pattern: str) -> KernelConfig:
    """The shipped default variant for a pattern (sparse mma for vw and tvw)."""
    if pattern_spec(pattern).sparse_mma:
        return KernelConfig(bm=128, bn=128, bk=64, warps=4, stages=3, mma="sparse")
    if pattern == "bw":
        return KernelConfig(bm=128, bn=128, bk=32, warps=4, stages=3, mma="dense")
    return KernelConfig()
