"""The one-warp probe launchers (kernels/probes.py) on the numpy stand-in driver: the
registers each lane is handed reach the probe kernel unchanged, and D comes back as the
emulation computes it."""

from __future__ import annotations

import numpy as np
import pytest
from tvwsim.kernels import probes

from tvwsim.errors import InputError


def test_probe_launchers_pass_registers_through(fake_gpu):
    from tvwsim.kernels import mma_sp

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, (32, 4), dtype=np.uint32) & 0x3BFF3BFF  # finite fp16 pairs
    b = rng.integers(0, 2**32, (32, 4), dtype=np.uint32) & 0x3BFF3BFF
    c = rng.standard_normal((32, 4)).astype(np.float32)
    e = np.full(32, 0x4E4E4E4E, dtype=np.uint32)  # legal ordered nibbles
    for selector in (0, 1):
        got = probes.mma_sp_probe(a, b, c, e, selector)
        assert np.array_equal(got, mma_sp.mma_sp_m16n8k32(a, b, c, e, selector))
    got = probes.mma_probe(a, b[:, :2], c)
    assert np.array_equal(got, mma_sp.mma_m16n8k16(a, b[:, :2], c))
    with pytest.raises(InputError) as err:
        probes.mma_sp_probe(a, b, c, e, 2)
    assert err.value.argument == "selector"
    with pytest.raises(InputError) as err:
        probes.mma_probe(a, b, c)
    assert err.value.argument == "b_regs"
