"""The core model of one shipped kernel on one GPU, next to the efficiency model's figure.

`analyse_kernel` is what `tvwsim core` prints: the kernel's stored loop
(`tvwsim.sim.core.streams`) run by `simulate_core` with as many co-resident CTAs as the
occupancy model allows (docs/model.md 4), and the stage time the engine's
`TensorCoreMma` charges for the same full stage (`efficiency_stage_cycles`), so the two
can be read side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tvwsim.kernels.build import VARIANTS, check_block
from tvwsim.sim.core.cache import core_cycles_per_stage
from tvwsim.sim.core.model import CoreParams, CoreResult, simulate_core
from tvwsim.sim.core.streams import load_stream
from tvwsim.sim.hardware import Hardware
from tvwsim.sim.occupancy import occupancy, resources_for
from tvwsim.sim.sm import efficiency_stage_cycles as stage_rule

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.pattern_spec import mma_kind


def parse_kernel(text: str, argument: str = "--kernel") -> tuple[str, KernelConfig, int | None]:
    """'tvw-128x128x64s3w4' (bw: 'bw-128x128x32s3w4' or '...-b64') -> (pattern, config,
    block); InputError(`argument`) unless it is a shipped variant."""
    parts = text.strip().split("-")
    block = None
    if len(parts) == 3 and parts[2].startswith("b") and parts[2][1:].isdigit():
        block = int(parts[2][1:])
        parts = parts[:2]
    shipped = ", ".join(f"{p}-{c.name}" for p, cs in VARIANTS.items() for c in cs[:1])
    if len(parts) != 2 or parts[0] not in VARIANTS:
        raise InputError(argument, f"got {text!r}; give PATTERN-CONFIG, e.g. {shipped}")
    pattern, name = parts
    try:
        config = KernelConfig.from_name(name, mma=mma_kind(pattern))
    except InputError as err:
        raise InputError(argument, f"{text!r}: {err}") from None
    if config not in VARIANTS[pattern]:
        names = ", ".join(c.name for c in VARIANTS[pattern])
        raise InputError(argument, f"{text!r} is not a shipped {pattern} variant ({names})")
    if pattern == "bw":
        block = check_block("bw", block if block is not None else 32, argument)
    elif block is not None:
        raise InputError(argument, f"{text!r}: only bw kernels take a block")
    return pattern, config, block


def efficiency_stage_cycles(hw: Hardware, config: KernelConfig) -> float:
    """Cycles a full stage holds the engine's `TensorCoreMma` pipe by its efficiency rule
    (docs/model.md 5.3), for reading beside the core model's figure."""
    return float(stage_rule(config, hw, 2.0 * config.bm * config.bn * config.bk))


@dataclass
class KernelCore:
    """`analyse_kernel`'s answer."""

    pattern: str
    config: KernelConfig
    block: int | None
    hw: Hardware
    result: CoreResult
    limited_by: str
    """What limits the CTAs per SM (occupancy), or 'given' when --ctas set it."""
    swizzle: bool = True
    """False: the loop was run with its tiles stored row-major (bank conflicts)."""

    @property
    def sm_cycles_per_stage(self) -> float:
        """SM time per CTA-stage in steady state: a CTA's stage period over the CTAs that
        share the SM (the figure comparable with the engine's stage hold)."""
        return self.result.cycles_per_stage / self.result.ctas

    @property
    def efficiency_cycles(self) -> float:
        return efficiency_stage_cycles(self.hw, self.config)


def analyse_kernel(
    hw: Hardware,
    pattern: str,
    config: KernelConfig,
    block: int | None = None,
    *,
    ctas: int | None = None,
    picture_cycles: int = 0,
    arch_argument: str = "arch",
    swizzle: bool = True,
) -> KernelCore:
    """Run the core model on a shipped kernel; `ctas` None takes the occupancy's CTAs per
    SM (the compiled kernel's registers where a manifest lists them, else the estimate).
    `swizzle` False: its tiles stored row-major instead (`simulate_core`)."""
    stream = load_stream(pattern, config, hw.arch, block, arch_argument=arch_argument)
    limited_by = "given"
    if ctas is None:
        occ = occupancy(hw, resources_for(hw, pattern, config, block=block))
        ctas, limited_by = occ.ctas_per_sm, occ.limited_by
    result = simulate_core(stream, CoreParams.from_hardware(hw), ctas=ctas,
                           picture_cycles=picture_cycles, swizzle=swizzle)  # fmt: skip
    return KernelCore(pattern, config, block, hw, result, limited_by, swizzle)


@lru_cache(maxsize=256)
def core_stage_cycles(
    hw: Hardware, pattern: str, config: KernelConfig, ctas: int | None = None
) -> float | None:
    """SM cycles per CTA-stage of a shipped kernel on `hw` by the core model, with `ctas`
    co-resident CTAs (None: the occupancy's) - what the engine's TensorCoreMma charges a
    full stage when `hw.core_model` is set. None where no loop is stored (not a shipped
    variant, or no kernel of ours is compiled for the GPU's arch): the caller keeps the
    efficiency rule. bw runs the loop of its smallest block. Cached in memory and on disk
    (`tvwsim.sim.core.cache`): one core run takes 0.1-1 s, and a whole model asks for the
    same few variants again and again, process after process."""
    if config not in VARIANTS.get(pattern, ()):
        return None
    try:
        stream = load_stream(pattern, config, hw.arch)
    except InputError:
        return None
    if ctas is None:
        ctas = occupancy(hw, resources_for(hw, pattern, config)).ctas_per_sm
    return core_cycles_per_stage(stream, CoreParams.from_hardware(hw), ctas) / ctas
