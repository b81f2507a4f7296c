"""Finding, compiling and loading cubins (kernels/cubins.py), with the stand-in driver:
"compiling" writes an empty cubin (tests/fakes/pycuda_driver.py), so the lookup, the
freshness rule and the cache are the launcher's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tvwsim.kernels import build as kbuild
from tvwsim.kernels import checks, cubins, launch

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import KERNEL_DIR_ENV

CONFIG = kbuild.VARIANTS["vw"][0]


def test_a_missing_cubin_is_compiled_once_then_taken_from_the_cache(fake_gpu):
    first = cubins.load_kernel("vw", CONFIG)
    name = kbuild.cubin_name("vw", CONFIG, "sm_90")
    assert fake_gpu.compiled == [name] and first.cubin.name == name
    assert first.cubin.parent.name == cubins._source_digest("vw")  # keyed by the sources
    again = cubins.find_cubin("vw", CONFIG, "sm_90")
    assert again == first.cubin and fake_gpu.compiled == [name]
    assert [p.name for p in first.cubin.parent.iterdir()] == [name]  # no temp dir left


def test_a_built_cubin_is_used_only_while_newer_than_its_sources(fake_gpu):
    build_dir = os.environ[KERNEL_DIR_ENV]
    built = Path(build_dir) / kbuild.cubin_name("vw", CONFIG, "sm_90")
    built.write_bytes(b"")
    newest_source = max(p.stat().st_mtime for p in cubins._sources("vw"))
    os.utime(built, (newest_source + 10, newest_source + 10))
    assert cubins.find_cubin("vw", CONFIG, "sm_90") == built
    assert fake_gpu.compiled == []
    os.utime(built, (newest_source - 10, newest_source - 10))  # a source edited since
    stale = cubins.find_cubin("vw", CONFIG, "sm_90")
    assert stale != built and fake_gpu.compiled == [built.name]


def test_a_config_beyond_the_device_shared_memory_is_refused_before_any_launch(fake_gpu):
    fake_gpu.smem_limit = 101376  # an RTX 3090's opt-in limit
    config = KernelConfig(bm=128, bn=128, bk=64, stages=4, mma="sparse")  # 102400 B
    case = checks.CheckCase("vw", config, 64, 128, 128, "natural", seed=3)
    encoded, x, schedule = checks.make_case_inputs(case)
    with pytest.raises(InputError) as err:
        launch.gemm(encoded, x, schedule)
    assert err.value.argument == "config"
    assert "102400" in str(err.value) and "101376" in str(err.value)
    assert fake_gpu.launches == [] and fake_gpu.compiled == []


def test_above_48_kib_the_kernel_opts_in_to_its_shared_memory(fake_gpu):
    config = next(c for c in kbuild.VARIANTS["tvw"] if c.smem_bytes > 48 * 1024)
    kernel = cubins.load_kernel("tvw", config)
    assert kernel.smem_bytes == config.smem_bytes
    assert kernel.gemm.attrs == {"dyn": kernel.smem_bytes}
