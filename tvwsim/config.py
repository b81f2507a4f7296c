"""`KernelConfig`: the one description of a GEMM kernel variant.

The same object sets the CUDA build's compile-time constants, the simulator's tile and
pipeline shapes, and is recorded with every measurement, so "simulated vs measured" always
names the same kernel. `tvwsim.kernels.formats` re-exports it.

Conventions (docs/formats.md): the kernel computes Y.T = W @ X.T. The weight W (N x K) is
the sparse operand and sits on the mma's M side, so `bm` counts weight rows (output
features) per CTA tile - for tw/tvw it is the tile width G - and `bn` counts activation
columns (tokens). `bk` is the *logical* K per pipeline stage, before 2:4 compression: a
sparse stage of bk=64 holds 32 stored values per weight row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvwsim.errors import InputError

MMA_KINDS = ("dense", "sparse")
DTYPES = ("fp16",)

# Instruction shapes (PTX ISA): dense mma.sync m16n8k16, sparse mma.sp m16n8k32.
MMA_M, MMA_N = 16, 8
DENSE_MMA_K, SPARSE_MMA_K = 16, 32
# One 32-bit metadata register per lane covers 16 rows x 64 logical K (two mma.sp, both
# selectors), so sparse stages step K in multiples of 64 (docs/formats.md, "metadata").
SPARSE_K_GRANULE = 64

_NAME = re.compile(r"^(\d+)x(\d+)x(\d+)s(\d+)w(\d+)$")


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

    def __post_init__(self) -> None:
        if self.mma not in MMA_KINDS:
            raise InputError("mma", f"got {self.mma!r}; allowed: {', '.join(MMA_KINDS)}")
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
        if not 2 <= self.stages <= 8:
            raise InputError("stages", f"must be between 2 and 8, got {self.stages}")

    # -- names -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name used in cubin file names and measurements: '128x128x32s3w4'."""
        return f"{self.bm}x{self.bn}x{self.bk}s{self.stages}w{self.warps}"

    @classmethod
    def from_name(cls, name: str, *, mma: str = "dense", dtype: str = "fp16") -> KernelConfig:
        """Parse '128x128x32s3w4' (stages and warps optional: '128x128x32')."""
        text = name.strip()
        if re.fullmatch(r"\d+x\d+x\d+", text):
            text += "s3w4"
        m = _NAME.match(text)
        if not m:
            raise InputError(
                "tile", f"got {name!r}; expected BMxBNxBK[sSTAGESwWARPS], e.g. 128x128x32s3w4"
            )
        bm, bn, bk, stages, warps = (int(g) for g in m.groups())
        return cls(bm=bm, bn=bn, bk=bk, stages=stages, warps=warps, mma=mma, dtype=dtype)

    # -- derived sizes -----------------------------------------------------------------
    @property
    def threads(self) -> int:
        return 32 * self.warps

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
    def smem_bytes(self) -> int:
        """Shared memory the pipeline needs (the compiled kernel's report wins when known)."""
        return self.stages * (self.weight_stage_bytes + self.activation_stage_bytes)

    def flops_per_stage(self) -> int:
        """Useful (logical, dense-equivalent) FLOPs of one full stage: 2 * bm * bn * bk."""
        return 2 * self.bm * self.bn * self.bk


def default_config(pattern: str) -> KernelConfig:
    """The shipped default variant for a pattern (sparse mma for vw and tvw)."""
    if pattern in ("vw", "tvw"):
        return KernelConfig(bm=128, bn=128, bk=64, warps=4, stages=3, mma="sparse")
    if pattern == "bw":
        return KernelConfig(bm=128, bn=128, bk=32, warps=4, stages=3, mma="dense")
    return KernelConfig()
