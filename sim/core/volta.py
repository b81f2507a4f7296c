"""Our kernels' loops as a Volta (sm_70) GPU would have to run them.

Covers
------
`volta_stream`: the sm_80 main loop of a shipped kernel rewritten with the instructions
Volta has, so that the core model runs on the v100 preset.

Scenario
--------
No kernel of ours is compiled for sm_70, and none can be as written: cp.async, ldmatrix,
mma.sync m16n8k16 and mma.sp need sm_75 or sm_80. So the v100 figures are not those of a
compiled kernel but of the same loop translated the way a Volta GEMM (CUTLASS's sm70
mainloop) does each job; docs/model.md 5.7 says so next to them:

- a cp.async (LDGSTS, 16 bytes a lane) becomes a global load into four fresh registers
  (`LDG.E.128`) where the copy was, and a shared store from those registers (`STS.128`)
  at the end of the iteration: the loads of the next stage fly while this stage's mma
  runs, the register-staged double buffering of Volta GEMMs; the cp.async group commits
  and waits (LDGDEPBAR, DEPBAR) go, since the barrier now orders the stores;
- an ldmatrix.x4 (no ldmatrix before sm_75) becomes one 16-byte shared load a lane
  (`LDS.128`) of the same bytes and registers, into a layout taken as conflict-free (a
  Volta kernel would swizzle for its own fragment layout);
- an m16n8k16 HMMA (4096 FLOPs) becomes the 8 HMMA.884 steps of the same FLOPs (512
  each, `model.HMMA_884_STEP_FLOPS`); the steps chain inside the tensor core, so the
  first seven read the operands and the last writes the accumulator. V100 has no sparse
  tensor core, so an m16n8k32 HMMA.SP runs its logical work densely: 16 steps (the
  efficiency rule does the same, docs/model.md 5.3). The 2:4 operand is not decompressed
  on the way: that work is not counted.
"""

from __future__ import annotations

import dataclasses

from tvwsim.kernels.sass_stream import SassInstruction
from tvwsim.sim.core.model import HMMA_884_STEP_FLOPS, MMA_FLOPS
from tvwsim.sim.core.streams import Stream

VOLTA_ARCH = "sm_70"


def _steps(ins: SassInstruction) -> list[SassInstruction]:
    """An sm_80 HMMA as Volta HMMA.884 steps of the same FLOPs."""
    count = MMA_FLOPS[ins.cls] // HMMA_884_STEP_FLOPS
    step = [SassInstruction(f"HMMA.884.F32.F32.STEP{i % 4}", "hmma", (), ins.src, 0)
            for i in range(count - 1)]  # fmt: skip
    return step + [SassInstruction(f"HMMA.884.F32.F32.STEP{(count - 1) % 4}", "hmma",
                                   ins.dst, ins.src, 0)]  # fmt: skip


def volta_stream(stream: Stream) -> Stream:
    """`stream` (an sm_80 loop) with Volta's instructions (module docstring)."""
    body: list[SassInstruction] = []
    stores: list[SassInstruction] = []
    for ins in stream.instructions:
        if ins.cls == "ldgsts":
            staged = tuple(f"RV{4 * len(stores) + i}" for i in range(4))
            body.append(SassInstruction("LDG.E.128", "ldg", staged, ins.src, 0))
            # The shared address is the copy's first R register ([R15+...] is its first
            # operand; only a guard predicate may stand before it).
            address = tuple(r for r in ins.src if r.startswith("R"))[:1]
            stores.append(SassInstruction("STS.128", "sts", (), staged + address,
                                          ins.smem_bytes))  # fmt: skip
        elif ins.cls == "depbar":
            continue
        elif ins.cls == "ldsm":
            body.append(SassInstruction("LDS.128", "lds", ins.dst, ins.src, ins.smem_bytes))
        elif ins.cls in MMA_FLOPS:
            body += _steps(ins)
        else:
            body.append(ins)
    # The stores go last, before the loop's closing branch(es).
    tail = len(body)
    while tail and body[tail - 1].cls == "branch":
        tail -= 1
    body[tail:tail] = stores
    return dataclasses.replace(stream, arch=VOLTA_ARCH, instructions=tuple(body))
