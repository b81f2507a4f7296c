"""The cycle-level SM core (tvwsim.sim.core): its physics on hand-made loops, and the
stored instruction streams of the real kernels.

The physics tests build small loops whose answer is known on paper (independent HMMAs
run at the tensor rate, a dependent chain at one per latency, ...) and check the model
gets it. The stream tests check every stored stream against the kernel config it was
compiled from (always), and against a fresh extraction from nvcc's output when nvcc is
on this machine (as tests/kernels/test_cuda_build.py decides it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels.sass_stream import CLASSES, SassInstruction, classify, operands
from tvwsim.sim.core import banks
from tvwsim.sim.core.banks import replay_factors, wavefronts
from tvwsim.sim.core.model import CoreParams, simulate_core
from tvwsim.sim.core.streams import (
    STREAM_ARCHS,
    Stream,
    extract_streams,
    load_stream,
    stored_streams,
    stream_arch,
)
from tvwsim.sim.presets import load_preset

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError

DENSE = KernelConfig(bm=128, bn=128, bk=32, stages=3, warps=4, mma="dense")
SPARSE = KernelConfig(bm=128, bn=128, bk=64, stages=3, warps=4, mma="sparse")
P = CoreParams()  # A100-like: HMMA every 8 cycles per scheduler, latency 33


def hmma(acc: int, a: int = 200, b: int = 210, sparse: bool = False) -> SassInstruction:
    """An HMMA writing R<acc>..+3 from A at R<a>, B at R<b> and C = its own accumulator."""
    regs = lambda base, n: tuple(f"R{base + i}" for i in range(n))  # noqa: E731
    acc_regs = regs(acc, 4)
    op = "HMMA.SP.16832.F32" if sparse else "HMMA.16816.F32"
    src = regs(a, 4) + regs(b, 4 if sparse else 2) + acc_regs
    return SassInstruction(op, "hmma_sp" if sparse else "hmma", acc_regs, src, 0)


def ldsm(dst: int) -> SassInstruction:
    return SassInstruction("LDSM.16.MT88.4", "ldsm", tuple(f"R{dst + i}" for i in range(4)),
                           ("R250",), 512)  # fmt: skip


def alu(i: int) -> SassInstruction:
    """Independent integer work, a third each on the ALU, FMA and uniform pipes: each
    writes its own register from one that is never written."""
    if i % 3 == 2:
        return SassInstruction("UIADD3", "uniform", (f"UR{i % 60}",), ("UR63",), 0)
    op = "IMAD.MOV.U32" if i % 3 == 1 else "IADD3"
    return SassInstruction(op, "alu", (f"R{100 + i % 90}",), ("R251",), 0)


BRA = SassInstruction("BRA", "branch", (), ("P0",), 0)
BAR_SYNC = SassInstruction("BAR.SYNC.DEFER_BLOCKING", "bar", (), (), 0)


def loop(instrs, config=DENSE) -> Stream:
    return Stream("dense" if config.mma == "dense" else "vw", config, 0, "sm_80", "synthetic",
                  "none", tuple(instrs) + (BRA,))  # fmt: skip


# -- physics ---------------------------------------------------------------------------
def test_independent_hmmas_reach_the_tensor_peak():
    stream = loop(hmma(4 * (i % 32)) for i in range(64))  # 32 accumulators, no chain
    result = simulate_core(stream, P)
    peak = 4 * 4096 / P.hmma_interval  # 4 schedulers x m16n8k16 FLOPs per interval
    assert result.mma_flops_per_clk == pytest.approx(peak, rel=0.01)
    assert result.cycles_per_stage == pytest.approx(64 * P.hmma_interval, rel=0.01)
    assert result.bound == "tensor"
    assert result.utilisation["tensor"] > 0.98


def test_a_dependent_hmma_chain_runs_at_one_per_latency():
    stream = loop(hmma(0) for _ in range(64))  # every HMMA accumulates into R0..R3
    result = simulate_core(stream, P)
    assert result.cycles_per_stage == pytest.approx(64 * P.hmma_latency, rel=0.02)
    assert result.bound == "latency"
    assert result.stalls["dependency:hmma"] > 0.7
    # Doubling the latency doubles the time: it is the chain, not the pipe.
    slow = simulate_core(stream, P.replace(hmma_latency=2 * P.hmma_latency))
    assert slow.cycles_per_stage == pytest.approx(2 * result.cycles_per_stage, rel=0.02)


def test_one_b_fragment_serialises_ldmatrix_and_mma_two_overlap():
    """vw/tvw keep a single B fragment: each ldmatrix -> mma.sp group waits for its load.
    With two fragments the next group's load is issued before this group's mma."""
    single, double = [], []
    for g in range(16):
        single += [ldsm(120)] + [hmma(4 * (4 * g % 16 + i), b=120, sparse=True) for i in range(4)]
    double = [ldsm(120)]
    for g in range(16):
        cur, nxt = (120, 124) if g % 2 == 0 else (124, 120)
        double += [ldsm(nxt)] + [hmma(4 * (4 * g % 16 + i), b=cur, sparse=True) for i in range(4)]
    one = simulate_core(loop(single, SPARSE), P)
    two = simulate_core(loop(double, SPARSE), P)
    assert one.cycles_per_stage > 1.3 * two.cycles_per_stage
    assert one.stalls.get("dependency:ldsm", 0) > 2 * two.stalls.get("dependency:ldsm", 0)
    assert two.utilisation["tensor"] > 0.9


def issue_bound_loop() -> Stream:
    """64 HMMA and 600 independent integer instructions, a third on each of three pipes:
    665 issue slots a warp against 512 tensor cycles and 400 cycles on the busiest pipe."""
    work = [alu(i) for i in range(600)]
    body = []
    for i in range(64):
        body += [hmma(4 * (i % 16))] + work[i * 600 // 64 : (i + 1) * 600 // 64]
    return loop(body)


def test_extra_integer_work_makes_a_loop_issue_bound():
    result = simulate_core(issue_bound_loop(), P)
    assert result.bound == "issue"
    assert result.cycles_per_stage >= 665 * 0.98  # one issue slot per instruction
    assert result.utilisation["tensor"] < 0.8


def test_the_stored_bw_loop_issues_more_integer_work_than_dense():
    dense = load_stream("dense", DENSE, "sm_90")
    bw = load_stream("bw", DENSE, "sm_90", block=32)
    assert bw.count("alu", "uniform") > 1.3 * dense.count("alu", "uniform")
    assert bw.count("hmma") == dense.count("hmma")
    # The extra slots cost time on a single-issue scheduler.
    hw = CoreParams.from_hardware(load_preset("h200"))
    assert simulate_core(bw, hw).cycles_per_stage > simulate_core(dense, hw).cycles_per_stage


def test_issue_width_two_speeds_up_issue_bound_loops_only():
    """A scheduler issues one instruction per warp per clock, `issue_width` warps at once:
    with two CTAs (two warps per scheduler) the issue-bound loop needs 2 x 665 slots per
    two stages at width 1 and turns tensor-bound (2 x 512 cycles) at width 2."""
    wide = P.replace(issue_width=2)
    issue = issue_bound_loop()
    narrow_run, wide_run = (simulate_core(issue, p, ctas=2) for p in (P, wide))
    assert narrow_run.bound == "issue" and wide_run.bound == "tensor"
    assert wide_run.cycles_per_stage == pytest.approx(2 * 512, rel=0.03)
    assert wide_run.cycles_per_stage < 0.85 * narrow_run.cycles_per_stage
    tensor = loop(hmma(4 * (i % 32)) for i in range(64))
    for ctas in (1, 2):
        assert simulate_core(tensor, wide, ctas=ctas).cycles_per_stage == pytest.approx(
            simulate_core(tensor, P, ctas=ctas).cycles_per_stage, rel=0.01
        )


def test_more_resident_ctas_hide_latency():
    chain = loop(hmma(0) for _ in range(64))
    rates = [simulate_core(chain, P, ctas=n).mma_flops_per_clk for n in (1, 2, 4)]
    assert rates[1] == pytest.approx(2 * rates[0], rel=0.05)
    assert rates[2] == pytest.approx(4 * rates[0], rel=0.05)
    # A real kernel: two tvw CTAs keep the tensor core busier than one.
    tvw = load_stream("tvw", SPARSE, "sm_80")
    one, two = (simulate_core(tvw, P, ctas=n) for n in (1, 2))
    assert two.mma_flops_per_clk > 1.15 * one.mma_flops_per_clk
    assert one.stalls["dependency:ldsm"] > two.stalls["dependency:ldsm"]


def test_barrier_waits_for_every_warp_of_the_cta():
    body = [BAR_SYNC] + [hmma(4 * i) for i in range(8)]
    result = simulate_core(loop(body), P, picture_cycles=100)
    assert result.stalls["barrier"] > 0
    assert len(result.picture) == 4 and all(len(row) == 100 for row in result.picture)
    assert "|" in "".join(result.picture) and "M" in "".join(result.picture)


def test_bank_passes_of_one_warp_access():
    # 8 lanes x 16 bytes per pass: 32 consecutive chunks take 4 passes, conflict-free.
    assert wavefronts([16 * i for i in range(32)], 16) == 4
    # ldmatrix rows 128 bytes apart all start in bank 0: 8 passes per matrix.
    assert wavefronts([128 * i for i in range(8)], 16) == 8
    # Lanes reading one word share a pass (broadcast); 4-byte words 8 bytes apart: 2-way.
    assert wavefronts([0] * 32, 4) == 1
    assert wavefronts([8 * i for i in range(32)], 4) == 2


@pytest.mark.parametrize("pattern", list(kbuild.VARIANTS))
def test_the_shipped_swizzle_is_conflict_free_and_row_major_is_not(pattern):
    """Every kind of shared-memory access of every shipped loop takes the passes its bytes
    need; stored row-major the ldmatrix rows collide: the weight rows (bk = 32 dense or 64
    compressed to 32: 64 bytes) fall in 2 of the 8 bank groups (4-way), the activation rows
    (bn >= 64 tokens: >= 128 bytes) all in one (8-way). The cp.async chunks of a warp are
    contiguous either way."""
    for config in kbuild.VARIANTS[pattern]:
        assert set(replay_factors(config).values()) == {1.0}
        plain = replay_factors(config, swizzle=False)
        assert plain == {"ldsm_a": 4.0, "ldsm_b": 8.0, "fill": 1.0, "lds": 1.0}, config.name


@pytest.mark.parametrize("pattern", list(kbuild.VARIANTS))
def test_the_layout_twin_is_the_kernels_stage(pattern):
    """The twin's stage is the config's (common.cuh asserts the same against
    KernelConfig.smem_bytes): its cp.async chunks write every byte of the stage exactly
    once, and its ldmatrix rows stay inside the tiles they read."""
    for config in kbuild.VARIANTS[pattern]:
        for swizzle in (True, False):
            written = [a for access in banks._fill_accesses(config, swizzle) for a in access]
            stage = config.weight_stage_bytes + config.activation_stage_bytes
            assert sorted(written) == list(range(0, stage, 16)), config.name
            _a_chunks, _b_chunks, a_bytes, e_bytes = banks._layout(config)
            reads = banks._ldsm_accesses(config, swizzle)
            assert all(0 <= a < a_bytes for access in reads["ldsm_a"] for a in access)
            assert all(a_bytes + e_bytes <= a < stage for acc in reads["ldsm_b"] for a in acc)


def test_an_unswizzled_layout_costs_the_expected_replays():
    """16 ldmatrix.x4 of the weight tile per warp, 4 warps: 4 passes each through the SM's
    128-byte port, 256 cycles a stage; row-major, 4-way conflicts make it 1024. (The
    barrier, as in every real loop, keeps the warps in step.)"""
    body = [ldsm(100 + 4 * (i % 16)) for i in range(16)]
    body = [BAR_SYNC] + [SassInstruction("LDSM.16.M88.4", "ldsm", i.dst, i.src, 512) for i in body]
    swizzled = simulate_core(loop(body), P)
    plain = simulate_core(loop(body), P, swizzle=False)
    assert swizzled.cycles_per_stage == pytest.approx(16 * 4 * 4, rel=0.03)
    assert plain.cycles_per_stage == pytest.approx(4 * 16 * 4 * 4, rel=0.03)
    assert plain.bound == "smem" and plain.utilisation["smem"] > 0.97
    # The real dense loop turns shared-memory-bound with its tiles stored row-major.
    dense = load_stream("dense", DENSE, "sm_80")
    fast, slow = (simulate_core(dense, P, ctas=2, swizzle=s) for s in (True, False))
    assert fast.bound != "smem" and slow.bound == "smem"
    assert slow.cycles_per_stage > 2 * fast.cycles_per_stage


LDGSTS = SassInstruction("LDGSTS.E.BYPASS.128", "ldgsts", (), ("R250",), 512)
COMMIT = SassInstruction("LDGDEPBAR", "depbar", (), (), 0)
WAIT = SassInstruction("DEPBAR.LE", "depbar", (), (), 0)


@pytest.mark.parametrize("stages", [3, 4])
def test_cp_async_wait_groups_hold_a_loop_to_its_copies(stages):
    """The kernel waits (DEPBAR) until at most STAGES - 2 copy groups are in flight, so a
    loop whose copies take L cycles to land runs STAGES - 1 stages per L at most."""
    config = KernelConfig(bm=128, bn=128, bk=32, stages=stages, warps=4, mma="dense")
    body = [WAIT, LDGSTS, COMMIT] + [hmma(4 * i) for i in range(8)]
    latency = 3000.0
    slow = simulate_core(loop(body, config), P.replace(global_latency=latency), iterations=6)
    assert slow.cycles_per_stage == pytest.approx(latency / (stages - 1), rel=0.03)
    assert slow.stalls["cp.async"] > 0.9
    # Without the wait the same loop runs at its tensor time: nothing else held it.
    free = simulate_core(loop([LDGSTS, COMMIT] + body[3:], config),
                         P.replace(global_latency=latency))  # fmt: skip
    assert free.cycles_per_stage < 0.1 * slow.cycles_per_stage


def test_bad_arguments_name_themselves():
    stream = loop([hmma(0)])
    bad = {"ctas": 0, "iterations": 0, "warmup": 1.5, "picture_cycles": -1}
    for name, value in bad.items():
        kwargs = {name: value}
        with pytest.raises(InputError, match=name):
            simulate_core(stream, P, **kwargs)
    with pytest.raises(InputError, match="issue_width"):
        P.replace(issue_width=0)
    with pytest.raises(InputError, match="sub_partitions"):
        P.replace(sub_partitions=2.5)


def test_params_come_from_the_preset():
    a100 = CoreParams.from_hardware(load_preset("a100"))
    assert a100.hmma_interval == pytest.approx(4096 / (2048 / 4))  # 8 cycles
    assert a100.hmma_sp_interval == pytest.approx(8192 / (4096 / 4))  # 2:4 at twice the rate
    h200 = CoreParams.from_hardware(load_preset("h200"))
    assert h200.hmma_interval == pytest.approx(4096 / (4096 * 0.625 / 4))
    with pytest.raises(InputError, match="core_mma_sync_peak_fraction"):
        load_preset("a100").with_overrides({"core_mma_sync_peak_fraction": "1.5"})


def test_stream_arch_maps_gpus_to_the_compiled_code():
    assert stream_arch("sm_86") == "sm_80" and stream_arch("sm_90a") == "sm_90"
    assert stream_arch("sm_70") == "sm_80"  # translated: tests/sim/test_core_volta.py
    for arch in ("sm_75", ""):
        with pytest.raises(InputError, match="arch"):
            stream_arch(arch)


# -- the stored streams ----------------------------------------------------------------
def _variants():
    return [(p, c, a, b) for p, configs in kbuild.VARIANTS.items() for c in configs
            for a in STREAM_ARCHS for b in kbuild.variant_blocks(p)]  # fmt: skip


def test_every_shipped_variant_has_a_stream_and_nothing_else_does():
    want = {f"{p}-{c.name}{f'-b{b}' if b else ''}-{a}.json" for p, c, a, b in _variants()}
    assert {path.name for path in stored_streams()} == want


@pytest.mark.parametrize("path", stored_streams(), ids=lambda p: p.stem)
def test_stored_stream_matches_its_config(path: Path):
    s = Stream.from_json_text(path.read_text(encoding="utf-8"))
    c = s.config
    assert path.stem == s.name and s.arch in STREAM_ARCHS
    assert s.function == kbuild.KERNEL_FUNCTIONS[s.pattern]
    assert {i.cls for i in s.instructions} <= set(CLASSES)
    assert all(i.cls == classify(i.opcode) for i in s.instructions)
    # One iteration is one K stage: (warp tile / 16 x 8) x (bk / mma k) HMMA per warp.
    wm, wn = c.warp_grid
    k = 32 if c.mma == "sparse" else 16
    per_stage = (c.bm // wm // 16) * (c.bn // wn // 8) * (c.bk // k)
    kind = "hmma_sp" if c.mma == "sparse" else "hmma"
    assert s.count(kind) == per_stage
    assert s.count("hmma" if kind == "hmma_sp" else "hmma_sp") == 0
    assert s.count("bar") == 1 and s.count("ldsm") > 0 and s.count("ldgsts") > 0
    if s.pattern == "dense":
        # Every byte of the stage is one warp's 16-byte cp.async, 32 lanes at a time.
        assert s.count("ldgsts") * 512 * c.warps == c.weight_stage_bytes + c.activation_stage_bytes
    if (s.pattern, c.name) == ("dense", "128x128x32s3w4"):
        assert s.count("hmma") == 64  # 64 x 64 warp tile / (16 x 8) x 32 / 16


def test_operand_parsing():
    dst, src = operands("HMMA.16816.F32", "R4, R8, R12, R4", None)
    assert dst == ("R4", "R5", "R6", "R7")
    assert src == ("R8", "R9", "R10", "R11", "R12", "R13", "R4", "R5", "R6", "R7")
    dst, src = operands("IADD3", "R12, P5, R228, UR14, RZ", "!P2")
    assert dst == ("R12", "P5") and src == ("P2", "R228", "UR14")
    dst, src = operands("LDGSTS.E.BYPASS.128", "[R15+-0x2000], desc[UR12][R12.64], !P3", None)
    assert dst == () and src == ("R15", "UR12", "R12", "R13", "P3")
    dst, _ = operands("LDSM.16.M88.4", "R16, [R16]", None)
    assert dst == ("R16", "R17", "R18", "R19")


HAVE_NVCC = shutil.which("nvcc") is not None or any(
    (Path(r) / "bin" / "nvcc").is_file()
    for r in (os.environ.get("CUDA_HOME"), *kbuild.CUDA_ROOTS)
    if r
)


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found: the stored streams are checked "
                    "against their configs only")  # fmt: skip
def test_stored_streams_equal_a_fresh_extraction(tmp_path):
    """One variant per pattern (bw: block 32), both archs: compiled now, read now, equal to
    the stored file (`python -m tvwsim.sim.core.streams --check` compares all of them)."""
    version = kbuild.nvcc_version()
    stored = load_stream("dense", DENSE, "sm_80")
    if stored.nvcc != version:
        pytest.skip(f"streams were extracted with {stored.nvcc!r}, this nvcc is {version!r}")
    variants = [(p, kbuild.VARIANTS[p][0]) for p in kbuild.VARIANTS]
    fresh = [s for s in extract_streams(tmp_path, variants) if s.block in (0, 32)]
    assert len(fresh) == 2 * len(variants)
    for s in fresh:
        path = next(p for p in stored_streams() if p.stem == s.name)
        assert path.read_text(encoding="utf-8") == s.to_json_text(), s.name
