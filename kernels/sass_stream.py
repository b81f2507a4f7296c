"""A compiled kernel's steady-state main loop as an instruction stream (no GPU needed).

`tvwsim.kernels.build.loop_mix` counts the K loop's instructions; the cycle-level SM core
(`tvwsim.sim.core`) needs more: every instruction of the loop in order, its class (which
pipe runs it), the registers it writes and reads (so a scoreboard can hold an instruction
until its operands exist) and the shared-memory bytes a warp moves with it. This module
reads that from `cuobjdump --dump-sass` of a cubin.

The loop is the same one `build.main_loop` picks: the backward branch whose body holds the
most HMMA (the K loop of `pipeline` in common.cuh). Its body is taken as straight-line code:
the steady state loads the next stage every iteration, so the forward branches that skip a
load (or the loop's exit) are taken as not taken, and `CALL.REL.NOINC` (on sm_80 the
compiler's loop exit, a call to the next instruction) is one branch instruction.

Register widths follow the instruction: an HMMA writes 4 accumulator registers and reads A
(4), B (2 dense, 4 sparse m16n8k32) and C (4); `LDSM .4/.2` write 4/2; `.64`/`.128` memory
ops move 2/4 registers; an operand written `R12.64` is a pair. Predicates (P0..P6 and the
uniform UP0..) are registers too: `ISETP` writes them and `@P0` guards read them. RZ, URZ,
PT and UPT are constants and carry no dependency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tvwsim.kernels.build import SassLine

CLASSES: tuple[str, ...] = (
    "hmma",
    "hmma_sp",
    "ldsm",
    "ldgsts",
    "lds",
    "sts",
    "ldg",
    "stg",
    "alu",
    "fp",
    "uniform",
    "branch",
    "bar",
    "depbar",
    "other",
)
"""Instruction classes, in the order reports list them: tensor-core mma (dense, 2:4),
ldmatrix, cp.async, shared loads and stores, global loads and stores, integer ALU, floating
point, the uniform datapath (U* instructions: warp-wide scalars), branches, the CTA
barrier, cp.async commit / wait, and everything else."""

_CONSTANT_REGS = frozenset({"RZ", "URZ", "PT", "UPT", "SRZ"})


@dataclass(frozen=True)
class SassInstruction:
    """One instruction of a loop body as the core model sees it."""

    opcode: str
    """Opcode with modifiers, e.g. 'HMMA.16816.F32'."""
    cls: str
    """One of CLASSES."""
    dst: tuple[str, ...]
    """Registers written ('R4', 'P0', 'UR6'), every register of a wide operand."""
    src: tuple[str, ...]
    """Registers read, the guard predicate included."""
    smem_bytes: int
    """Shared-memory bytes the warp moves (ldmatrix, LDS, STS, cp.async); 0 otherwise."""

    def to_json(self) -> list:
        return [self.opcode, self.cls, list(self.dst), list(self.src), self.smem_bytes]

    @classmethod
    def from_json(cls, row: list) -> SassInstruction:
        opcode, kind, dst, src, smem = row
        return cls(str(opcode), str(kind), tuple(dst), tuple(src), int(smem))


def classify(opcode: str) -> str:
    """The class (CLASSES) of a SASS opcode with modifiers."""
    base = opcode.split(".")[0]
    if base == "HMMA":
        return "hmma_sp" if opcode.startswith("HMMA.SP") else "hmma"
    table = {
        "LDSM": "ldsm",
        "LDGSTS": "ldgsts",
        "LDS": "lds",
        "STS": "sts",
        "LDG": "ldg",
        "STG": "stg",
        "BAR": "bar",
        "DEPBAR": "depbar",
        "LDGDEPBAR": "depbar",
    }
    if base in table:
        return table[base]
    if base in ("BRA", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "JMP", "BRX"):
        return "branch"
    if base.startswith("U") or base in ("S2UR", "VOTEU", "R2UR"):
        return "uniform"
    if base.startswith(("F", "H", "D")) and base not in ("FLO",):
        return "fp"
    if base in ("NOP", "S2R", "CS2R", "LDC", "SHFL", "LDL", "STL", "ATOM", "RED", "MEMBAR"):
        return "other"
    if base.startswith(("I", "LEA", "LOP", "SHF", "SEL", "MOV", "PLOP", "VIADD", "PRMT", "POPC")):
        return "alu"
    if base in ("FLO", "BREV", "P2R", "R2P", "VOTE", "BMSK", "SGXT"):
        return "alu"
    return "other"


def _width_suffix(opcode: str) -> int:
    """Registers per thread a memory op moves: .128 -> 4, .64 -> 2, else 1."""
    if ".128" in opcode:
        return 4
    if ".64" in opcode:
        return 2
    return 1


def _smem_bytes(opcode: str, cls: str) -> int:
    """Shared-memory bytes one warp moves with this instruction."""
    if cls == "ldsm":
        # ldmatrix .x4 / .x2 / .x1: that many 8 x 8 fp16 matrices, 128 bytes each.
        count = 4 if opcode.endswith(".4") else 2 if opcode.endswith(".2") else 1
        return 128 * count
    if cls in ("lds", "sts", "ldgsts"):
        if ".U16" in opcode or ".S16" in opcode:
            return 64
        if ".U8" in opcode or ".S8" in opcode:
            return 32
        return 128 * _width_suffix(opcode)
    return 0


_REG = re.compile(r"^(U?R)(\d+)(?:\.64)?$|^(U?P)(\d+)$")


def _regs(token: str, width: int = 1) -> list[str]:
    """The registers one operand names: 'R12.64' -> R12, R13; '[R3+UR4]' -> R3, UR4."""
    out: list[str] = []
    for part in re.findall(r"!?-?\|?~?(U?R\d+(?:\.64)?|U?P\d+|URZ|RZ|UPT|PT)", token):
        name = part
        if name in _CONSTANT_REGS:
            continue
        m = _REG.match(name)
        if not m:
            continue
        if m.group(1):
            prefix, num = m.group(1), int(m.group(2))
            n = 2 if name.endswith(".64") else width
            out.extend(f"{prefix}{num + i}" for i in range(n))
        else:
            out.append(f"{m.group(3)}{m.group(4)}")
    return out


def _split_operands(text: str) -> list[str]:
    return [t.strip().replace(".reuse", "") for t in text.split(",") if t.strip()]


_NO_DST = frozenset(
    "ST LDGSTS BRA BAR DEPBAR LDGDEPBAR CALL RET EXIT RED NOP BSSY BSYNC WARPSYNC MEMBAR "
    "STS STG STL JMP BRX".split()
)


def operands(opcode: str, text: str, guard: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(registers written, registers read) of one instruction."""
    ops = _split_operands(text)
    base = opcode.split(".")[0]
    src: list[str] = _regs(guard) if guard else []
    dst: list[str] = []
    if not ops:
        return (), tuple(src)
    if base == "HMMA":
        sparse = opcode.startswith("HMMA.SP")
        dst = _regs(ops[0], 4)
        src += _regs(ops[1], 4) + _regs(ops[2], 4 if sparse else 2) + _regs(ops[3], 4)
        for extra in ops[4:]:
            src += _regs(extra)
        return tuple(dst), tuple(dict.fromkeys(src))
    if base in _NO_DST or base.startswith("ST"):
        # Stores read their data register(s) at the memory op's width.
        width = _width_suffix(opcode)
        for op in ops:
            src += _regs(op, width if not op.startswith(("[", "desc")) else 1)
        return (), tuple(dict.fromkeys(src))
    # Destination: the first operand, and the predicate operands right after it (carry
    # outs of IADD3 / LEA, the second predicate of ISETP).
    width = 1
    if base == "LDSM":
        width = 4 if opcode.endswith(".4") else 2 if opcode.endswith(".2") else 1
    elif base in ("LDS", "LDG", "LDL", "LDC"):
        width = _width_suffix(opcode)
    elif ".WIDE" in opcode or base == "CS2R":
        width = 2
    dst = _regs(ops[0], width)
    rest = ops[1:]
    while rest and re.fullmatch(r"U?P(\d+|T)", rest[0]):
        dst += _regs(rest[0])
        rest = rest[1:]
    for i, op in enumerate(rest):
        # IMAD.WIDE's addend (the last source) is 64-bit.
        wide = ".WIDE" in opcode and i == len(rest) - 1
        src += _regs(op, 2 if wide else 1)
    return tuple(dict.fromkeys(dst)), tuple(dict.fromkeys(src))


Raw = SassLine
"""(address, guard predicate or None, opcode, operand text) of one SASS line
(`tvwsim.kernels.build.sass_listing`)."""


def stream_of(body: list[Raw]) -> list[SassInstruction]:
    """The loop body as `SassInstruction`s."""
    out = []
    for _addr, guard, op, args in body:
        cls = classify(op)
        dst, src = operands(op, args, guard)
        out.append(SassInstruction(op, cls, dst, src, _smem_bytes(op, cls)))
    return out


def extract(cubin: Path | str, function: str) -> list[SassInstruction]:
    """The main-loop stream of `function` in `cubin` (cuobjdump; no GPU)."""
    from tvwsim.kernels.build import BuildError, dump_sass, main_loop, sass_listing

    functions = sass_listing(dump_sass(cubin))
    if function not in functions:
        raise BuildError(f"{cubin} has no function {function!r} (has {sorted(functions)})")
    body = main_loop(functions[function])
    if not body:
        raise BuildError(f"{cubin}: {function} has no loop with HMMA")
    return stream_of(body)
