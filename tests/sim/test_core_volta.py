"""The core model on Volta (tvwsim.sim.core.volta): our sm_80 loops rewritten with the
instructions V100 has - register-staged loads instead of cp.async, 16-byte shared loads
instead of ldmatrix, HMMA.884 steps instead of m16n8k16 / m16n8k32 - keep the work and
the bytes of the loop, reach V100's tensor peak when nothing else limits them, and run
for every shipped variant that fits on the GPU."""

from __future__ import annotations

import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels.sass_stream import SassInstruction
from tvwsim.sim.core.kernel import core_stage_cycles
from tvwsim.sim.core.model import HMMA_884_STEP_FLOPS, CoreParams, mma_flops, simulate_core
from tvwsim.sim.core.streams import Stream, load_stream, stream_arch
from tvwsim.sim.core.volta import volta_stream
from tvwsim.sim.occupancy import occupancy, resources_for
from tvwsim.sim.presets import load_preset

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

V100 = load_preset("v100")
PV = CoreParams.from_hardware(V100)


def _fits(pattern: str, config: KernelConfig) -> int | None:
    """CTAs per SM on V100, None where the tile does not fit (96 KB per CTA)."""
    try:
        return occupancy(V100, resources_for(V100, pattern, config)).ctas_per_sm
    except InputError:
        return None


def _variants():
    return [(p, c) for p, configs in kbuild.VARIANTS.items() for c in configs]


@pytest.mark.parametrize(("pattern", "config"), _variants(), ids=lambda v: str(v))
def test_the_translation_keeps_the_loops_work_and_bytes(pattern, config):
    sm80 = load_stream(pattern, config, "sm_80")
    volta = load_stream(pattern, config, "sm_70")
    assert volta.arch == "sm_70" and volta.config == sm80.config
    assert volta.count("ldgsts", "ldsm", "depbar", "hmma_sp") == 0
    flops = lambda s: sum(mma_flops(i.opcode, i.cls) for i in s.instructions)  # noqa: E731
    assert flops(volta) == flops(sm80)
    assert volta.count("hmma") == flops(sm80) // HMMA_884_STEP_FLOPS
    # Every cp.async is a 16-byte load into registers and a store of those registers.
    assert volta.count("ldg") - sm80.count("ldg") == volta.count("sts") == sm80.count("ldgsts")
    smem = lambda s, *c: sum(i.smem_bytes for i in s.instructions if i.cls in c)  # noqa: E731
    assert smem(volta, "sts") == smem(sm80, "ldgsts")
    assert smem(volta, "lds") == smem(sm80, "lds", "ldsm")
    # The stores close the iteration (after the stage's mma), before the back branch.
    kinds = [i.cls for i in volta.instructions]
    last_mma = max(j for j, k in enumerate(kinds) if k == "hmma")
    assert min(j for j, k in enumerate(kinds) if k == "sts") > last_mma
    staged = {r for i in volta.instructions if i.cls == "ldg" for r in i.dst}
    assert all(set(i.src) & staged for i in volta.instructions if i.cls == "sts")


def test_independent_mmas_reach_v100s_tensor_peak():
    """m16n8k16 as 8 HMMA.884 steps: 1024 FLOPs a clock per SM (whitepaper: 8 tensor
    cores x 64 FMA), with the steps taking half the issue slots."""
    regs = lambda base, n: tuple(f"R{base + i}" for i in range(n))  # noqa: E731
    accs = [regs(4 * (i % 32), 4) for i in range(64)]  # 32 accumulators, no chain
    body = [SassInstruction("HMMA.16816.F32", "hmma", a, regs(200, 6) + a, 0) for a in accs]
    body.append(SassInstruction("BRA", "branch", (), ("P0",), 0))
    config = KernelConfig(bm=128, bn=128, bk=32, stages=3, warps=4, mma="dense")
    stream = Stream("dense", config, 0, "sm_80", "synthetic", "none", tuple(body))
    result = simulate_core(volta_stream(stream), PV)
    assert PV.hmma_interval == pytest.approx(16.0)  # 4096 FLOPs / (1024 / 4) per scheduler
    assert result.mma_flops_per_clk == pytest.approx(V100.dense_flops_per_clk_per_sm, rel=0.02)
    assert result.bound == "tensor"
    assert result.utilisation["issue"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(("pattern", "config"), _variants(), ids=lambda v: str(v))
def test_every_shipped_variant_that_fits_runs_on_v100(pattern, config):
    """No loop is faster than its tensor work on V100's dense rate (the 2:4 kernels' too:
    no sparse tensor core) or than its shared-memory bytes through the port."""
    ctas = _fits(pattern, config)
    if ctas is None:
        pytest.skip("the tile's shared memory exceeds V100's 96 KB per CTA")
    stream = load_stream(pattern, config, V100.arch)
    result = simulate_core(stream, PV, ctas=ctas, warmup=1, iterations=1)
    warps = config.warps * ctas
    tensor = sum(mma_flops(i.opcode, i.cls) for i in stream.instructions) * warps
    port = sum(i.smem_bytes for i in stream.instructions) * warps
    floor = max(tensor / V100.dense_flops_per_clk_per_sm, port / V100.smem_bytes_per_clk_per_sm)
    assert result.cycles_per_stage >= 0.98 * floor
    assert result.cycles_per_stage < 4 * floor


def test_the_engine_takes_v100_stages_from_the_core_model():
    on = load_preset("v100", {"core_model": "true"})
    config = kbuild.VARIANTS["dense"][0]
    cycles = core_stage_cycles(on, "dense", config, 2)
    assert cycles is not None and cycles > 0
    assert stream_arch("sm_70") == "sm_80" and stream_arch("sm_72") == "sm_80"
    # Turing (sm_75: no cp.async, m16n8k8) has neither a loop nor a translation.
    t4 = load_preset("t4", {"core_model": "true"})
    assert core_stage_cycles(t4, "dense", config) is None
