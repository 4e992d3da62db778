"""What a configuration's service used during one trial, read from the collector.

The monitor agents (node daemons, or the job's own sidecar) report each service's processes
with a `service` label: CPU seconds (a counter), resident memory, and the GPU memory its
processes hold where NVML exists. While a trial runs, `UsageProbe` asks the collector for those
series every few seconds (CollectorService.QueryMetrics, the newest value of each); at the end
it turns them into figures for the window:

- `cpu_cores`: CPU seconds used / seconds elapsed, between the first and last samples the
  agent took inside the window (the counter's own timestamps, so the agent's interval does not
  skew it);
- `memory_rss_bytes`, `gpu_memory_bytes`: the highest value seen;
- `gpu_utilization`, `gpu_power_watts` (where NVML exists): the mean over the samples of the
  GPUs the service's processes use (NVML has no per-process figures: a GPU's own, as the
  monitor attributes it); with them, throughput per watt.

QueryMetrics is the operator's view: the probe calls with this service's own token (the one the
experiment service was started with), and reads only the series of the services it deployed.
Without a collector, or without the rights, a trial simply has no usage figures; the first
refusal is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aifb.experiment.expand import Configuration
from aifb.experiment.remote import Remote
from aifb.mesh.errors import AifbError
from aifb.v1 import collector_pb2 as L
from aifb.v1 import collector_pb2_grpc

__all__ = ["UsageProbe", "per_unit"]

log = logging.getLogger(__name__)

CPU = "aifb_service_cpu_seconds_total"
RSS = "aifb_service_memory_rss_bytes"
GPU_MEMORY = "aifb_gpu_service_memory_used_bytes"
GPU_UTIL = "aifb_gpu_service_utilization_ratio"
GPU_POWER = "aifb_gpu_service_power_watts"
_NAMES = (CPU, RSS, GPU_MEMORY, GPU_UTIL, GPU_POWER)
_warned = False


@dataclass
class UsageProbe:
    remote: Remote
    service: str  # services/<id>
    every_s: float = 2.0
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (time s, seconds), per job
    peaks: dict[str, float] = field(default_factory=dict)
    gpu_util: list[float] = field(default_factory=list)  # mean over the service's GPUs, each
    gpu_power: list[float] = field(default_factory=list)  # sum over the service's GPUs, each

    async def sample(self) -> None:
        global _warned
        try:
            stub = collector_pb2_grpc.CollectorServiceStub(self.remote.channel())
            resp: L.QueryMetricsResponse = await self.remote.call(
                stub.QueryMetrics, L.QueryMetricsRequest(labels={"service": self.service},
                                                         names=list(_NAMES)), "", timeout=5)
        except AifbError as exc:
            if not _warned:
                _warned = True
                log.warning("no resource use in experiment trials: the collector's "
                            "QueryMetrics answered: %s", exc)
            return
        cpu = [s for s in resp.samples if s.name == CPU]
        if cpu:  # one series per job (a service has one); summed over them
            stamp = max(s.time.seconds + s.time.nanos / 1e9 for s in cpu)
            total = sum(s.value for s in cpu)
            if not self.cpu or stamp > self.cpu[-1][0]:
                self.cpu.append((stamp, total))
        for name, key in ((RSS, "memory_rss_bytes"), (GPU_MEMORY, "gpu_memory_bytes")):
            values = [s.value for s in resp.samples if s.name == name]
            if values:
                self.peaks[key] = max(self.peaks.get(key, 0.0), sum(values))
        util = [s.value for s in resp.samples if s.name == GPU_UTIL]
        if util:
            self.gpu_util.append(sum(util) / len(util))
        power = [s.value for s in resp.samples if s.name == GPU_POWER]
        if power:
            self.gpu_power.append(sum(power))

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(self.every_s)

    def figures(self) -> dict[str, float]:
        out = dict(self.peaks)
        if self.gpu_util:
            out["gpu_utilization"] = sum(self.gpu_util) / len(self.gpu_util)
        if self.gpu_power:
            out["gpu_power_watts"] = sum(self.gpu_power) / len(self.gpu_power)
        if len(self.cpu) >= 2:
            (t0, c0), (t1, c1) = self.cpu[0], self.cpu[-1]
            if t1 > t0 and c1 >= c0:
                out["cpu_cores"] = (c1 - c0) / (t1 - t0)
        return out


def per_unit(usage: dict[str, float], figures: dict[str, float], config: Configuration
             ) -> dict[str, float]:
    """The usage figures, plus throughput per unit of what was used: requests/s and output
    tokens/s per CPU core used, and per GPU the configuration asked for."""
    out = dict(usage)
    gpus = float(config.resources.get("gpus", "0") or 0)
    for name in ("achieved_rate", "output_tokens_per_second"):
        if name not in figures:
            continue
        if usage.get("cpu_cores", 0.0) > 0:
            out[f"{name}_per_cpu_core"] = figures[name] / usage["cpu_cores"]
        if gpus > 0:
            out[f"{name}_per_gpu"] = figures[name] / gpus
        if usage.get("gpu_power_watts", 0.0) > 0:
            out[f"{name}_per_watt"] = figures[name] / usage["gpu_power_watts"]
    return out
