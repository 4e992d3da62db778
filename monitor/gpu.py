"""GPU metrics from NVML (pynvml), initialised once per process; "no GPU" is a status, not an error.

Each value is read on its own: one the GPU does not support is absent, never -1. With no NVML
library, no driver or no device, `collect` adds nothing and `status` says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifb.monitor.model import COUNTER, MetricSet

__all__ = ["GpuCollector", "GpuReading", "load_nvml"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_init_status: dict[int, str] = {}  # id(nvml module) -> "" (ready) or why not


def load_nvml() -> Any:
    """The pynvml module, or None when it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _init_once(nvml: Any) -> str:
    """nvmlInit() at most once per process (per module object); "" when NVML is ready."""
    with _lock:
        key = id(nvml)
        if key not in _init_status:
            try:
                nvml.nvmlInit()
                _init_status[key] = ""
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
                _init_status[key] = f"no GPU: NVML unavailable ({exc})"
                log.info("%s", _init_status[key])
        return _init_status[key]


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    temperature_celsius: float | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """Reads every GPU NVML sees; `nvml` is injectable (tests pass a fake module)."""

    def __init__(self, nvml: Any | None = None, *, enabled: bool = True) -> None:
        self._nvml: Any = nvml if nvml is not None else (load_nvml() if enabled else None)
        self.status = "no GPU: disabled" if not enabled else (
            "no GPU: pynvml is not installed" if self._nvml is None else "")
        self.readings: list[GpuReading] = []
        self.job_memory: dict[tuple[str, str], int] = {}

    def _get(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, fn)(*args)
        except Exception:
            return None

    def collect(self, out: MetricSet, pid_owner: Mapping[int, tuple[str, str]]) -> None:
        self.readings = []
        self.job_memory = {}
        if self._nvml is None:
            return
        self.status = _init_once(self._nvml)
        if self.status:
            return
        count = self._get("nvmlDeviceGetCount")
        if not count:
            self.status = "no GPU: NVML found no devices"
            return
        for index in range(count):
            handle = self._get("nvmlDeviceGetHandleByIndex", index)
            if handle is not None:
                self._device(out, index, handle, pid_owner)

    def _device(self, out: MetricSet, index: int, handle: Any,
                pid_owner: Mapping[int, tuple[str, str]]) -> None:
        nv = self._nvml
        name = _text(self._get("nvmlDeviceGetName", handle) or "")
        uuid = _text(self._get("nvmlDeviceGetUUID", handle) or "")
        lab = {"gpu": str(index), "uuid": uuid, "model": name}
        util = self._get("nvmlDeviceGetUtilizationRates", handle)
        mem = self._get("nvmlDeviceGetMemoryInfo", handle)
        power_mw = self._get("nvmlDeviceGetPowerUsage", handle)
        temp = self._get("nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU)
        reading = GpuReading(
            index, name, uuid,
            None if util is None else util.gpu / 100.0,
            None if mem is None else int(mem.used), None if mem is None else int(mem.total),
            None if power_mw is None else power_mw / 1000.0,
            None if temp is None else float(temp))
        self.readings.append(reading)
        out.add("aifb_gpu_utilization_ratio", reading.utilization_ratio, lab,
                help="Fraction of time a kernel was running.")
        out.add("aifb_gpu_memory_utilization_ratio", None if util is None else util.memory / 100,
                lab, help="Fraction of time device memory was read or written.")
        out.add("aifb_gpu_memory_used_bytes", reading.memory_used_bytes, lab,
                help="Device memory in use.")
        out.add("aifb_gpu_memory_total_bytes", reading.memory_total_bytes, lab,
                help="Device memory.")
        out.add("aifb_gpu_power_watts", reading.power_watts, lab, help="Power draw.")
        out.add("aifb_gpu_temperature_celsius", reading.temperature_celsius, lab,
                help="GPU core temperature.")
        for clock, const in (("sm", "NVML_CLOCK_SM"), ("memory", "NVML_CLOCK_MEM")):
            mhz = self._get("nvmlDeviceGetClockInfo", handle, getattr(nv, const))
            out.add(f"aifb_gpu_{clock}_clock_hertz", None if mhz is None else mhz * 1e6, lab,
                    help=f"Current {clock} clock.")
        for direction, const in (("transmit", "NVML_PCIE_UTIL_TX_BYTES"),
                                 ("receive", "NVML_PCIE_UTIL_RX_BYTES")):
            kbs = self._get("nvmlDeviceGetPcieThroughput", handle, getattr(nv, const))
            out.add(f"aifb_gpu_pcie_{direction}_bytes_per_second",
                    None if kbs is None else kbs * 1024.0, lab,
                    help=f"PCIe {direction} throughput (NVML's 20 ms sample).")
        for kind, const in (("corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
                            ("uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED")):
            errors = self._get("nvmlDeviceGetTotalEccErrors", handle, getattr(nv, const),
                               nv.NVML_VOLATILE_ECC)
            out.add("aifb_gpu_ecc_errors_total", errors, {**lab, "type": kind}, type=COUNTER,
                    help="ECC errors since the driver loaded.")
        procs = self._get("nvmlDeviceGetComputeRunningProcesses", handle) or []
        per_job: dict[tuple[str, str], int] = {}
        for proc in procs:
            owner = pid_owner.get(int(proc.pid))
            used = getattr(proc, "usedGpuMemory", None)
            if owner is not None and isinstance(used, int):
                per_job[owner] = per_job.get(owner, 0) + used
        for (service, job_id), used in per_job.items():
            job_lab = {**lab, "service": service, "job_id": job_id}
            out.add("aifb_gpu_service_memory_used_bytes", used, job_lab,
                    help="Device memory used by the service's processes.")
            # NVML has no per-process power or utilisation: the GPU's own figures, on each GPU
            # the service's processes use (a GPU two services share counts for both).
            out.add("aifb_gpu_service_utilization_ratio", reading.utilization_ratio, job_lab,
                    help="Utilisation of a GPU the service's processes use.")
            out.add("aifb_gpu_service_power_watts", reading.power_watts, job_lab,
                    help="Power draw of a GPU the service's processes use.")
            self.job_memory[(service, job_id)] = self.job_memory.get((service, job_id), 0) + used
