"""Node metrics read from psutil at export time: CPU, load, memory, swap, disks, network, mounts."""

from __future__ import annotations

import logging
import re
import time

import psutil  # type: ignore[import-untyped]

from aifb.monitor import procfs
from aifb.monitor.model import MetricSet

__all__ = ["HostCollector", "is_pseudo_filesystem"]

log = logging.getLogger(__name__)

# The file systems and mount points node_exporter leaves out by default.
_PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "proc", "procfs",
    "pstore", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tracefs",
})
_PSEUDO_MOUNTS = re.compile(r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+"
                            r"|var/lib/containers/storage/.+)($|/)")
_CPU_MODES = procfs.CPU_MODES


def is_pseudo_filesystem(fstype: str, mountpoint: str) -> bool:
    return fstype in _PSEUDO_FSTYPES or bool(_PSEUDO_MOUNTS.match(mountpoint))


class HostCollector:
    """Reads the node's counters; `cpu_ratio` is the busy fraction since the previous read."""

    def __init__(self, *, use_procfs: bool | None = None) -> None:
        """`use_procfs`: read /proc directly (None: on Linux), else through psutil."""
        self._proc = procfs.ProcFiles() if (procfs.available() if use_procfs is None
                                             else use_procfs) else None
        self._last_cpu: tuple[float, float] | None = None
        self.cpu_ratio = 0.0
        self.load1 = 0.0
        self.memory_used_bytes = 0
        self.memory_total_bytes = 0
        self._cpus = psutil.cpu_count() or None
        self._mounts: list[tuple[str, str, str]] = []
        self._mounts_read = -1e9

    def _mountpoints(self) -> list[tuple[str, str, str]]:
        """(device, mountpoint, fstype) of real file systems, re-read once a minute."""
        now = time.monotonic()
        if now - self._mounts_read >= 60.0:
            seen: set[str] = set()
            mounts = []
            for part in psutil.disk_partitions(all=False):
                if part.mountpoint in seen or is_pseudo_filesystem(part.fstype, part.mountpoint):
                    continue
                seen.add(part.mountpoint)
                mounts.append((part.device, part.mountpoint, part.fstype))
            self._mounts, self._mounts_read = mounts, now
        return self._mounts

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()

    def collect(self, out: MetricSet) -> None:
        self._cpu(out)
        self._memory(out)
        self._disks(out)
        self._network(out)
        self._filesystems(out)

    def _cpu(self, out: MetricSet) -> None:
        times = self._proc.cpu_times() if self._proc is not None else psutil.cpu_times()
        help_ = "Seconds the CPUs spent in each mode (all CPUs summed)."
        for mode in _CPU_MODES:
            value = getattr(times, mode, None)
            out.counter("aifb_node_cpu_seconds_total", help_, value, mode=mode)
        out.gauge("aifb_node_cpus", "Logical CPUs.", self._cpus)
        total = sum(getattr(times, m, 0.0) for m in _CPU_MODES)
        idle = times.idle + getattr(times, "iowait", 0.0)
        if self._last_cpu is not None and total > self._last_cpu[0]:
            busy = (total - self._last_cpu[0]) - (idle - self._last_cpu[1])
            self.cpu_ratio = max(0.0, min(1.0, busy / (total - self._last_cpu[0])))
        self._last_cpu = (total, idle)
        load1, load5, load15 = psutil.getloadavg()
        self.load1 = load1
        out.gauge("aifb_node_load1", "1-minute load average.", load1)
        out.gauge("aifb_node_load5", "5-minute load average.", load5)
        out.gauge("aifb_node_load15", "15-minute load average.", load15)

    def _memory(self, out: MetricSet) -> None:
        if self._proc is not None:
            vm = sw = self._proc.memory()
            swap_total, swap_used = sw.swap_total, sw.swap_used
        else:
            vm, sw = psutil.virtual_memory(), psutil.swap_memory()
            swap_total, swap_used = sw.total, sw.used
        self.memory_total_bytes = int(vm.total)
        self.memory_used_bytes = int(vm.total - vm.available)
        out.gauge("aifb_node_memory_total_bytes", "Physical memory.", vm.total)
        out.gauge("aifb_node_memory_available_bytes", "Memory available without swapping.",
                  vm.available)
        out.gauge("aifb_node_memory_free_bytes", "Unused memory.", vm.free)
        for field in ("buffers", "cached", "shared"):
            out.gauge(f"aifb_node_memory_{field}_bytes", f"Memory in {field}.",
                      getattr(vm, field, None))
        out.gauge("aifb_node_swap_total_bytes", "Swap space.", swap_total)
        out.gauge("aifb_node_swap_used_bytes", "Swap space in use.", swap_used)

    def _disks(self, out: MetricSet) -> None:
        try:
            disks = self._proc.disks() if self._proc is not None else (
                psutil.disk_io_counters(perdisk=True, nowrap=True) or {})
        except (OSError, RuntimeError, ValueError):
            return
        for dev, io in disks.items():
            out.counter("aifb_node_disk_read_bytes_total", "Bytes read.", io.read_bytes,
                        device=dev)
            out.counter("aifb_node_disk_written_bytes_total", "Bytes written.", io.write_bytes,
                        device=dev)
            out.counter("aifb_node_disk_reads_completed_total", "Reads completed.",
                        io.read_count, device=dev)
            out.counter("aifb_node_disk_writes_completed_total", "Writes completed.",
                        io.write_count, device=dev)
            busy = getattr(io, "busy_time", None)
            out.counter("aifb_node_disk_io_time_seconds_total", "Seconds spent doing I/O.",
                        None if busy is None else busy / 1000.0, device=dev)

    def _network(self, out: MetricSet) -> None:
        nics = self._proc.nics() if self._proc is not None else (
            psutil.net_io_counters(pernic=True, nowrap=True) or {})
        for dev, io in nics.items():
            values = {
                "receive_bytes_total": io.bytes_recv, "transmit_bytes_total": io.bytes_sent,
                "receive_packets_total": io.packets_recv,
                "transmit_packets_total": io.packets_sent,
                "receive_errs_total": io.errin, "transmit_errs_total": io.errout,
                "receive_drop_total": io.dropin, "transmit_drop_total": io.dropout,
            }
            for suffix, value in values.items():
                out.counter(f"aifb_node_network_{suffix}",
                            f"Network {suffix.removesuffix('_total').replace('_', ' ')}.",
                            value, device=dev)

    def _filesystems(self, out: MetricSet) -> None:
        for device, mountpoint, fstype in self._mountpoints():
            try:
                usage = psutil.disk_usage(mountpoint)
            except OSError:
                continue
            labels = {"device": device, "mountpoint": mountpoint, "fstype": fstype}
            out.add("aifb_node_filesystem_size_bytes", usage.total, labels,
                    help="File system size.")
            out.add("aifb_node_filesystem_free_bytes", usage.total - usage.used, labels,
                    help="Free bytes, including those reserved for root.")
            out.add("aifb_node_filesystem_avail_bytes", usage.free, labels,
                    help="Bytes available to non-root users.")
