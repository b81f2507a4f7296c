"""What GPU a measurement ran on, and at what clocks: read from NVML and the runtime.

A kernel time means little without the card and the clocks it ran at. A GPU boosts and
throttles on its own (temperature, power), so a sweep reads the clocks before and after
every point and writes both into the row: a reader can then drop points that ran
throttled instead of trusting a median that mixes two clock speeds.

Everything here is tolerant of absence. On a machine without NVML, nvidia-smi or a GPU
each reader returns what it could find and says what it could not, in an `error` field,
instead of raising: describing the device must never be the reason a sweep dies.

Sources, in order of preference:

- name, driver version, the CUDA version the driver supports, memory size, compute
  capability, clocks, temperature, power, performance state: NVML, the library behind
  nvidia-smi, through nvidia-ml-py (`pynvml`, the `gpu` extra; imported lazily). Where
  it is absent or fails, nvidia-smi itself: `--query-gpu=... --format=csv,noheader`
  and the "CUDA Version: X.Y" of its header (parsers below, pure functions of its text);
- SM count and L2 size (NVML has neither): the CUDA runtime through torch, else PyCUDA.

The tests run the NVML path with a fake `pynvml` module and the nvidia-smi parsers on
recorded text, so neither needs a GPU.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

NVIDIA_SMI_TIMEOUT_S = 20.0
"""nvidia-smi can hang on a wedged driver; never wait longer than this."""

CLOCK_FIELDS = (
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "clocks.max.mem",
    "temperature.gpu",
    "power.draw",
    "pstate",
)
"""nvidia-smi query fields of one clock reading, in the order `parse_clock_csv` expects."""

STATIC_FIELDS = ("name", "driver_version")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a 'Z', to the second."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ClockReading:
    """One look at the GPU's clocks and thermal state (None where not reported)."""

    sm_mhz: float | None
    """Current SM (graphics) clock."""
    mem_mhz: float | None
    """Current memory clock."""
    max_sm_mhz: float | None
    """Highest SM clock the card may boost to."""
    max_mem_mhz: float | None
    temperature_c: float | None
    power_w: float | None
    pstate: str | None
    """Performance state, 'P0' = full speed."""
    read_at: str
    """When it was read (ISO 8601 UTC)."""
    error: str | None = None
    """Why nothing (or not everything) could be read; None when all went well."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU and software stack a sweep runs on (None where unknown)."""

    name: str
    """Marketing name as the driver reports it, e.g. 'NVIDIA H100 80GB HBM3'."""
    sm_count: int | None
    compute_capability: str | None
    """'9.0' for Hopper."""
    l2_bytes: int | None
    memory_bytes: int | None
    driver_version: str | None
    cuda_driver_version: str | None
    """The CUDA version the driver supports (nvidia-smi's header)."""
    cuda_runtime_version: str | None
    """The CUDA runtime the measuring libraries were built for (torch.version.cuda)."""
    source: str
    """Which tools answered, e.g. 'nvidia-smi+torch'."""
    errors: tuple[str, ...] = ()
    """What could not be read, one line each."""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["errors"] = list(self.errors)
        return data


# -- parsers (pure) ------------------------------------------------------------------------
def _number(text: str) -> float | None:
    text = text.strip()
    if not text or text.startswith("[") or text.upper() in ("N/A", "NOT SUPPORTED"):
        return None
    match = re.match(r"^[-+]?\d+(\.\d+)?", text)
    return float(match.group(0)) if match else None


def parse_csv_line(line: str, count: int) -> list[str] | None:
    """Split one `--format=csv,noheader` line into `count` fields (None if it does not fit).

    nvidia-smi does not quote fields; names never contain commas, so a plain split works.
    """
    parts = [p.strip() for p in line.split(",")]
    return parts if len(parts) == count else None


def parse_clock_csv(text: str, read_at: str, index: int = 0) -> ClockReading:
    """A `ClockReading` from the output of a CLOCK_FIELDS query (one line per GPU)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if index >= len(lines):
        return _no_clocks(read_at, f"nvidia-smi listed {len(lines)} GPU(s), wanted #{index}")
    parts = parse_csv_line(lines[index], len(CLOCK_FIELDS))
    if parts is None:
        return _no_clocks(read_at, f"unexpected nvidia-smi line {lines[index]!r}")
    sm, mem, max_sm, max_mem, temp, power, pstate = parts
    return ClockReading(
        sm_mhz=_number(sm),
        mem_mhz=_number(mem),
        max_sm_mhz=_number(max_sm),
        max_mem_mhz=_number(max_mem),
        temperature_c=_number(temp),
        power_w=_number(power),
        pstate=pstate if pstate and not pstate.startswith("[") else None,
        read_at=read_at,
    )


def parse_cuda_version(header: str) -> str | None:
    """'13.0' from plain nvidia-smi output ('... CUDA Version: 13.0 |'), else None."""
    match = re.search(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)*)", header)
    return match.group(1) if match else None


def _no_clocks(read_at: str, error: str) -> ClockReading:
    return ClockReading(None, None, None, None, None, None, None, read_at, error)


# -- nvidia-smi ---------------------------------------------------------------------------
def run_nvidia_smi(args: list[str]) -> tuple[str | None, str | None]:
    """(stdout, None) on success, (None, why) when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi not found"
    try:
        done = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s"
    except OSError as err:
        return None, f"nvidia-smi could not run: {err}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return None, f"nvidia-smi exit {done.returncode}: {why[0] if why else 'no output'}"
    return done.stdout, None


# -- NVML (nvidia-ml-py) -------------------------------------------------------------------
NVML_UNKNOWN_PSTATE = 32
"""NVML_PSTATE_UNKNOWN: the driver does not know the performance state."""


def with_nvml(index: int, query: Callable[[Any, Any], T]) -> tuple[T | None, str | None]:
    """(query(pynvml, handle of GPU `index`), None), or (None, why) when NVML cannot answer.

    NVML is initialised for the query and shut down after it (it counts its users, so
    this is cheap and leaves no state behind).
    """
    try:
        import pynvml
    except ImportError:
        return None, "NVML: nvidia-ml-py not installed (pip install tvwsim[gpu])"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - NVMLError: no driver, no GPU, no library
        return None, f"NVML: {err}"
    try:
        return query(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)), None
    except Exception as err:  # noqa: BLE001 - e.g. no GPU #index
        return None, f"NVML: {err}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _optional(nvml: Any, call: Callable[..., T], *args: Any) -> T | None:
    """One NVML value, or None where this GPU or driver does not report it."""
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_clocks(nvml: Any, handle: Any, read_at: str) -> ClockReading:
    def clock(call: Callable[..., int], kind: int) -> float | None:
        value = _optional(nvml, call, handle, kind)
        return None if value is None else float(value)

    temperature = _optional(nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
    power_mw = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
    pstate = _optional(nvml, nvml.nvmlDeviceGetPerformanceState, handle)
    return ClockReading(
        sm_mhz=clock(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
        mem_mhz=clock(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
        max_sm_mhz=clock(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM),
        max_mem_mhz=clock(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_MEM),
        temperature_c=None if temperature is None else float(temperature),
        power_w=None if power_mw is None else power_mw / 1000.0,
        pstate=None if pstate in (None, NVML_UNKNOWN_PSTATE) else f"P{int(pstate)}",
        read_at=read_at,
    )


def _nvml_static(nvml: Any, handle: Any) -> dict:
    cuda = _optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    capability = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    memory = _optional(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    return {
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
        # NVML encodes CUDA 12.4 as 12040.
        "cuda_driver_version": None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
        "compute_capability": None if capability is None else "{}.{}".format(*capability),
        "memory_bytes": None if memory is None else int(memory.total),
    }


# -- readers (tolerant) --------------------------------------------------------------------
def read_clocks(index: int = 0) -> ClockReading:
    """The clocks of GPU `index` now (NVML, else nvidia-smi); `error` says why not."""
    read_at = utc_now()
    reading, nvml_error = with_nvml(index, lambda nvml, h: _nvml_clocks(nvml, h, read_at))
    if reading is not None:
        return reading
    text, error = run_nvidia_smi(
        [f"--query-gpu={','.join(CLOCK_FIELDS)}", "--format=csv,noheader,nounits"]
    )
    if text is None:
        return _no_clocks(read_at, f"{nvml_error}; {error or 'nvidia-smi failed'}")
    return parse_clock_csv(text, read_at, index)


def _runtime_attributes(index: int) -> tuple[dict, str | None, list[str]]:
    """SM count, capability, L2 and memory size from torch or PyCUDA, whichever works."""
    errors = []
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            return (
                {
                    "name": props.name,
                    "sm_count": int(props.multi_processor_count),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "l2_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
                    "memory_bytes": int(props.total_memory),
                    "cuda_runtime_version": torch.version.cuda,
                },
                "torch",
                errors,
            )
        errors.append("torch sees no CUDA device")
    except ImportError:
        errors.append("torch not installed")
    except Exception as err:  # a broken driver raises RuntimeError and friends
        errors.append(f"torch: {err}")
    try:
        import pycuda.driver as drv

        drv.init()
        dev = drv.Device(index)
        attr = drv.device_attribute
        major, minor = dev.compute_capability()
        version = drv.get_driver_version()
        return (
            {
                "name": dev.name(),
                "sm_count": int(dev.get_attribute(attr.MULTIPROCESSOR_COUNT)),
                "compute_capability": f"{major}.{minor}",
                "l2_bytes": int(dev.get_attribute(attr.L2_CACHE_SIZE)),
                "memory_bytes": int(dev.total_memory()),
                "cuda_runtime_version": f"{version // 1000}.{version % 1000 // 10}",
            },
            "pycuda",
            errors,
        )
    except ImportError:
        errors.append("pycuda not installed")
    except Exception as err:
        errors.append(f"pycuda: {err}")
    return {}, None, errors


def _nvidia_smi_static(index: int, errors: list[str]) -> dict:
    """Name, driver and CUDA version from nvidia-smi (what NVML would have said)."""
    text, error = run_nvidia_smi(
        [f"--query-gpu={','.join(STATIC_FIELDS)}", "--format=csv,noheader,nounits"]
    )
    if text is None:
        errors.append(error or "nvidia-smi failed")
        return {}
    lines = [line for line in text.splitlines() if line.strip()]
    parts = parse_csv_line(lines[index], 2) if index < len(lines) else None
    if not parts:
        errors.append(f"nvidia-smi: no GPU #{index} in {text.strip()!r}")
        return {}
    header, error = run_nvidia_smi([])
    cuda_driver = parse_cuda_version(header) if header else None
    if cuda_driver is None:
        errors.append(f"CUDA version not in nvidia-smi's header ({error or 'absent'})")
    return {"name": parts[0], "driver_version": parts[1], "cuda_driver_version": cuda_driver}


def read_device_info(index: int = 0) -> DeviceInfo:
    """Describe GPU `index` from NVML (else nvidia-smi) and the CUDA runtime; never raises."""
    errors: list[str] = []
    sources: list[str] = []
    static, nvml_error = with_nvml(index, _nvml_static)
    if static is not None:
        sources.append("nvml")
    else:
        errors.append(nvml_error or "NVML failed")
        static = _nvidia_smi_static(index, errors)
        if static:
            sources.append("nvidia-smi")
    runtime, runtime_source, runtime_errors = _runtime_attributes(index)
    if runtime_source:
        sources.append(runtime_source)
    else:
        errors.extend(runtime_errors)

    def first(key: str) -> Any:
        value = static.get(key)
        return value if value is not None else runtime.get(key)

    return DeviceInfo(
        name=first("name") or "unknown",
        sm_count=runtime.get("sm_count"),
        compute_capability=first("compute_capability"),
        l2_bytes=runtime.get("l2_bytes"),
        memory_bytes=first("memory_bytes"),
        driver_version=static.get("driver_version"),
        cuda_driver_version=static.get("cuda_driver_version"),
        cuda_runtime_version=runtime.get("cuda_runtime_version"),
        source="+".join(sources) or "none",
        errors=tuple(errors),
    )


def nvidia_smi_report() -> str:
    """The full `nvidia-smi -q` text (clocks, throttle reasons, ECC ...), or why not."""
    text, error = run_nvidia_smi(["-q"])
    return text if text is not None else f"nvidia-smi -q unavailable: {error}\n"
