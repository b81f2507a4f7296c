"""The GPU executor's own code without a GPU (PyCUDA stood in by the CPU twin) and the
vendor-baseline closures on torch's CPU device where torch is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from tvwsim.validate.dataset import read_measurements
from tvwsim.validate.points import BASELINES, PointSkipped
from tvwsim.validate.rows import REL_TOLERANCE
from tvwsim.validate.runner import run_sweep
from tvwsim.validate.spec import parse_spec
from tvwsim.validate.timing import check_baseline_output


def test_vendor_baselines_compute_the_same_product_where_torch_exists():
    """Runs where torch is installed (the GPU machine has it; the CI image need not): the
    baseline closures on the CPU device compute YT = W @ XT, fall back to fp32 where a
    library lacks fp16, and turn a missing library into a skipped point."""
    torch = pytest.importorskip("torch")
    from tvwsim.validate.baselines import TorchBaselines

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 128)).astype(np.float16)
    w = rng.standard_normal((64, 128)).astype(np.float16)
    w[:, 1::2] = 0  # 2:4 along K, and whole zero 32 x 32 blocks below
    w[:32, :32] = 0
    baselines = TorchBaselines(torch, device="cpu")
    ran = 0
    for implementation in BASELINES:
        try:
            prepared = baselines.prepare(implementation, x, w, block=32)
        except PointSkipped as why:
            assert implementation == "cusparselt", why  # the CPU build has no cuSPARSELt
            continue
        err, checked = check_baseline_output(prepared.run(), x, w)
        assert err < REL_TOLERANCE and checked == 40
        assert prepared.info["dtype"] in ("fp16", "fp32")
        ran += 1
    assert ran >= 3


def test_gpu_executor_end_to_end_with_a_cpu_stand_in(tmp_path, monkeypatch):
    """The GPU executor's own code, driven with a stand-in for PyCUDA whose "kernel" is
    the CPU twin: the row it writes is checked, timed, tagged with the schedule digest
    the model rebuilds, and vendor points are skipped when torch is absent."""
    import types

    from tvwsim.kernels import launch
    from tvwsim.kernels.reference import matmul
    from tvwsim.validate import baselines
    from tvwsim.validate.gpu_executor import GpuExecutor
    from tvwsim.validate.replay import row_case

    clock = {"t": 0.0}

    class Event:
        def record(self):
            self.at = clock["t"]

        def synchronize(self):
            pass

        def time_till(self, end):
            return end.at - self.at

    calls = {"flush": 0, "launch": 0}
    cuda = types.SimpleNamespace(
        Event=Event,
        mem_alloc=lambda n: object(),
        memset_d32=lambda ptr, value, count: calls.__setitem__("flush", calls["flush"] + 1),
        Context=types.SimpleNamespace(synchronize=lambda: None),
        Device=lambda i: types.SimpleNamespace(get_attribute=lambda a: 50 * 2**20),
        device_attribute=types.SimpleNamespace(L2_CACHE_SIZE="L2"),
        function_attribute=types.SimpleNamespace(
            NUM_REGS="regs", SHARED_SIZE_BYTES="shared", LOCAL_SIZE_BYTES="local"
        ),
    )
    session = types.SimpleNamespace(cuda=cuda, info=types.SimpleNamespace(arch="sm_90"))

    class Prepared:
        def __init__(self, encoded, m, schedule, build_dir=None):
            self.encoded, self.m = encoded, m
            self.regions = np.zeros((0, 4), np.int32)
            attrs = {"regs": 168, "shared": 0, "local": 0}
            self.kernel = types.SimpleNamespace(
                gemm=types.SimpleNamespace(get_attribute=attrs.__getitem__),
                cubin=Path(f"{encoded.pattern}-x-sm_90.cubin"),
                smem_bytes=49152,
            )

        def run(self, x, poison=True):
            return matmul(x, self.encoded).astype(np.float16)

        def launch(self):
            calls["launch"] += 1
            clock["t"] += 0.025  # 25 us per launch

    monkeypatch.setattr(launch, "session", lambda: session)
    monkeypatch.setattr(launch, "prepare", Prepared)
    monkeypatch.setattr(baselines, "import_torch", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nor NVML

    spec = parse_spec(
        {
            "shapes": [[96, 200, 160]],
            "patterns": ["tw"],
            "sparsities": [0.75],
            "policies": ["split"],
            "baselines": ["cublas"],
            "warmup": 2,
        }
    )
    executor = GpuExecutor()
    out = tmp_path / "m.jsonl"
    summary = run_sweep(spec.points(), executor, out, timing=spec.timing, progress=False)
    assert summary.measured == 1 and summary.skipped[0][0].startswith("cublas/")
    (row,) = read_measurements(out)
    assert row["correct"] is True and row["max_rel_error"] < 1e-3
    assert row["times_us"] == pytest.approx([25.0] * spec.timing.repeats)
    assert calls["launch"] == spec.timing.warmup + spec.timing.repeats
    assert calls["flush"] == spec.timing.warmup + spec.timing.repeats
    assert row["timing"]["flush_bytes"] == 2 * 50 * 2**20 and row["timing"]["cushion"] is None
    assert row["resources"]["registers"] == 168 and row["resources"]["smem_bytes"] == 49152
    assert row["device"]["arch"] == "sm_90" and row["device"]["clocks_before"]["error"]
    assert row["extra"]["checked_tokens"] == 96
    assert row_case(row).digest_matches is True
