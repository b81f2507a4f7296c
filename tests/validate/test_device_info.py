"""Device information: NVML through a fake `pynvml`, nvidia-smi's text, and absence."""

from __future__ import annotations

import sys
import types

import pytest
from tvwsim.validate import device_info


class FakeNvml(types.ModuleType):
    """The slice of nvidia-ml-py the readers call, answering like an H100 would."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self, *, fail_init=False, missing=()):
        super().__init__("pynvml")
        self.fail_init, self.missing = fail_init, set(missing)
        self.initialised = 0
        self.calls: list[str] = []

    def _answer(self, name, value):
        self.calls.append(name)
        if name in self.missing:
            raise self.NVMLError("Not Supported")
        return value

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise self.NVMLError("Invalid Argument")
        return "gpu0"

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return self._answer(f"clock{kind}", {1: 1755, 2: 2619}[kind])

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):
        return self._answer(f"max{kind}", {1: 1980, 2: 2619}[kind])

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._answer("temperature", 41)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._answer("power", 312_500)  # milliwatts

    def nvmlDeviceGetPerformanceState(self, handle):
        return self._answer("pstate", 0)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"  # older bindings return bytes

    def nvmlSystemGetDriverVersion(self):
        return "580.65.06"

    def nvmlSystemGetCudaDriverVersion(self):
        return self._answer("cuda", 13000)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self._answer("capability", (9, 0))

    def nvmlDeviceGetMemoryInfo(self, handle):
        return self._answer("memory", types.SimpleNamespace(total=85_520_809_984))


@pytest.fixture
def no_runtime(monkeypatch, tmp_path):
    """No nvidia-smi, torch or PyCUDA: only what NVML says."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)


def test_clocks_and_device_from_nvml(monkeypatch, no_runtime):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    reading = device_info.read_clocks()
    assert (reading.sm_mhz, reading.mem_mhz, reading.max_sm_mhz) == (1755.0, 2619.0, 1980.0)
    assert reading.temperature_c == 41.0 and reading.power_w == pytest.approx(312.5)
    assert reading.pstate == "P0" and reading.error is None
    info = device_info.read_device_info()
    assert info.name == "NVIDIA H100 80GB HBM3" and info.driver_version == "580.65.06"
    assert info.cuda_driver_version == "13.0" and info.compute_capability == "9.0"
    assert info.memory_bytes == 85_520_809_984
    assert info.source == "nvml" and info.sm_count is None  # NVML has no SM count
    assert nvml.initialised == 0  # every reader shut NVML down again


def test_nvml_fields_a_gpu_does_not_report_are_none(monkeypatch, no_runtime):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(missing={"power", "temperature"}))
    reading = device_info.read_clocks()
    assert reading.power_w is None and reading.temperature_c is None
    assert reading.sm_mhz == 1755.0 and reading.error is None


def test_nvml_failure_falls_back_to_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=clocks*) echo "1410, 1593, 1410, 1593, 35, 60.5, P0" ;;\n'
        '  --query-gpu=name*) echo "NVIDIA A100-SXM4-80GB, 535.1" ;;\n'
        '  *) echo "| NVIDIA-SMI 535.1  Driver Version: 535.1  CUDA Version: 12.2 |" ;;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    reading = device_info.read_clocks()
    assert reading.sm_mhz == 1410.0 and reading.power_w == 60.5 and reading.error is None
    info = device_info.read_device_info()
    assert info.name == "NVIDIA A100-SXM4-80GB" and info.cuda_driver_version == "12.2"
    assert info.source == "nvidia-smi"
    assert any("Driver Not Loaded" in e for e in info.errors)


def test_clock_csv_parsing_tolerates_missing_values():
    text = "1980, 2619, 1980, 2619, 41, 72.31, P0\n1410, 1593, [N/A], 1593, N/A, 60.0, P2\n"
    first = device_info.parse_clock_csv(text, "t")
    assert (first.sm_mhz, first.mem_mhz, first.temperature_c, first.pstate) == (
        1980.0,
        2619.0,
        41.0,
        "P0",
    )
    assert first.error is None
    second = device_info.parse_clock_csv(text, "t", index=1)
    assert second.max_sm_mhz is None and second.temperature_c is None and second.power_w == 60
    missing = device_info.parse_clock_csv(text, "t", index=2)
    assert missing.sm_mhz is None and "2 GPU" in missing.error
    garbled = device_info.parse_clock_csv("not, csv\n", "t")
    assert garbled.sm_mhz is None and "unexpected" in garbled.error


def test_cuda_version_from_the_nvidia_smi_header():
    header = "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0     |"
    assert device_info.parse_cuda_version(header) == "13.0"
    assert device_info.parse_cuda_version("no version here") is None


def test_readers_without_nvml_or_nvidia_smi_report_instead_of_raising(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no nvidia-ml-py
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find there
    reading = device_info.read_clocks()
    assert reading.sm_mhz is None
    assert "nvidia-ml-py not installed" in reading.error
    assert reading.error.endswith("nvidia-smi not found")
    assert reading.read_at.endswith("Z")
    info = device_info.read_device_info()
    assert info.driver_version is None and "nvidia-smi not found" in info.errors
    assert any("nvidia-ml-py" in e for e in info.errors)
    assert isinstance(info.name, str)
    assert "unavailable" in device_info.nvidia_smi_report()
