"""The device session (kernels/device.py): pycuda only when a kernel runs, and every
reason a GPU cannot be used is an InputError saying what to do."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from tvwsim.kernels import device

from tests.fakes.pycuda_driver import FakeDriver, install
from tvwsim.cli import main
from tvwsim.errors import InputError

REPO = Path(__file__).resolve().parents[2]

# Imports every module of every package pyproject installs, with pycuda made
# unimportable, and prints how many it imported.
_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil, sys, tomllib

    class NoPycuda:
        def find_spec(self, name, path=None, target=None):
            if name == "pycuda" or name.startswith("pycuda."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPycuda())
    with open(sys.argv[1], "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    names = set(packages)
    for package in packages:
        path = importlib.import_module(package).__path__
        names.update(m.name for m in pkgutil.iter_modules(path, package + "."))
    names = sorted(n for n in names if not n.endswith(".__main__"))
    for name in names:
        importlib.import_module(name)
    assert not [m for m in sys.modules if m.split(".")[0] == "pycuda"]
    print("\\n".join(names))
    """
)


def test_every_tvwsim_module_imports_without_pycuda(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, str(REPO / "pyproject.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    imported = set(run.stdout.split())
    launcher = {"device", "cubins", "launch_plan", "launch", "probes", "checks"}
    assert {f"tvwsim.kernels.{m}" for m in launcher} <= imported
    with open(REPO / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert set(packages) | {"tvwsim.cli.kernels"} <= imported


def test_without_pycuda_the_session_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)  # import pycuda -> ModuleNotFoundError
    monkeypatch.setattr(device, "_SESSION", None)
    with pytest.raises(InputError) as err:
        device.session()
    assert err.value.argument == "pycuda"
    assert device.GPU_EXTRA_HINT in str(err.value)
    usable, why = device.gpu_status()
    assert not usable and device.GPU_EXTRA_HINT in why


def test_a_device_older_than_sm_80_is_refused_by_name(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, FakeDriver(capability=(7, 5)))
    with pytest.raises(InputError, match="sm_75; the kernels need sm_80") as err:
        device.session()
    assert err.value.argument == "device"


def test_a_failed_cuda_call_names_what_was_being_done(fake_gpu):
    s = device.session()
    assert device.device_info() == device.DeviceInfo("Fake GPU", "sm_90", 132, 232448)

    def fail() -> None:
        raise fake_gpu.module.Error("an illegal memory access was encountered")

    with pytest.raises(device.KernelError, match="CUDA error in copying YT back: an illegal"):
        s.call("copying YT back", fail)


def test_without_pycuda_or_a_gpu_the_check_command_says_what_to_do(capsys):
    ok, _ = device.gpu_status()
    if ok:
        pytest.skip("a GPU is present: tests/kernels/test_gpu_kernels.py runs the checks")
    assert main(["kernels", "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert device.GPU_EXTRA_HINT in err or "device" in err
