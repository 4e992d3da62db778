"""Node counters read straight from /proc on Linux, through descriptors kept open.

psutil opens, reads and parses each file in Python on every call, and reads some twice
(/proc/meminfo for memory and again for swap, /proc/vmstat for swap counters the monitor does
not report). Here each file is one `pread` at offset 0 (which re-renders it) and a split; the
values mean what psutil's do (cached = Cached + SReclaimable, sectors of 512 bytes, ...).
`available()` is False elsewhere, and the monitor then uses psutil.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["CpuTimes", "DiskCounters", "Memory", "NicCounters", "ProcFiles", "available"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SECTOR = 512
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def available() -> bool:
    return all(os.path.exists(f"/proc/{name}") for name in ("stat", "meminfo", "diskstats",
                                                            "net/dev"))


class CpuTimes(NamedTuple):
    """Seconds per mode, all CPUs summed (psutil.cpu_times' fields, guest time excluded)."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float


class Memory(NamedTuple):
    total: int
    available: int
    free: int
    buffers: int
    cached: int
    shared: int
    swap_total: int
    swap_used: int


class DiskCounters(NamedTuple):
    read_count: int
    write_count: int
    read_bytes: int
    write_bytes: int
    busy_time: int  # ms


class NicCounters(NamedTuple):
    bytes_recv: int
    packets_recv: int
    errin: int
    dropin: int
    bytes_sent: int
    packets_sent: int
    errout: int
    dropout: int


class ProcFiles:
    """Kept descriptors of /proc/stat, /proc/meminfo, /proc/diskstats and /proc/net/dev."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def _read(self, name: str) -> bytes:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(f"/proc/{name}", os.O_RDONLY)
        chunks = []
        offset = 0
        while True:  # files over one page come in several reads
            chunk = os.pread(fd, 65536, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def cpu_times(self) -> CpuTimes:
        data = self._read("stat")
        fields = data[:data.index(b"\n")].split()[1:9]
        values = [int(f) / _TICK for f in fields] + [0.0] * (8 - len(fields))
        return CpuTimes(*values)

    def memory(self) -> Memory:
        kb: dict[bytes, int] = {}
        for line in self._read("meminfo").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                kb[parts[0]] = int(parts[1]) * 1024
        total, free = kb.get(b"MemTotal:", 0), kb.get(b"MemFree:", 0)
        buffers = kb.get(b"Buffers:", 0)
        cached = kb.get(b"Cached:", 0) + kb.get(b"SReclaimable:", 0)
        available = kb.get(b"MemAvailable:")
        if available is None:  # kernels before 3.14: as psutil estimates it
            available = free + buffers + cached
        shared = kb.get(b"Shmem:", kb.get(b"MemShared:", 0))
        swap_total = kb.get(b"SwapTotal:", 0)
        return Memory(total, available, free, buffers, cached, shared, swap_total,
                      swap_total - kb.get(b"SwapFree:", 0))

    def disks(self) -> dict[str, DiskCounters]:
        out: dict[str, DiskCounters] = {}
        for line in self._read("diskstats").splitlines():
            f = line.split()
            if len(f) == 14 or len(f) >= 18:  # a disk (2.6+): name, then 11 or more counters
                out[f[2].decode()] = DiskCounters(int(f[3]), int(f[7]), int(f[5]) * _SECTOR,
                                                  int(f[9]) * _SECTOR, int(f[12]))
            elif len(f) == 7:  # a partition on old kernels: four counters
                out[f[2].decode()] = DiskCounters(int(f[3]), int(f[5]), int(f[4]) * _SECTOR,
                                                  int(f[6]) * _SECTOR, 0)
            elif len(f) == 15:  # Linux 2.4
                out[f[3].decode()] = DiskCounters(int(f[2]), int(f[7]), int(f[5]) * _SECTOR,
                                                  int(f[9]) * _SECTOR, int(f[12]))
        return out

    def nics(self) -> dict[str, NicCounters]:
        out: dict[str, NicCounters] = {}
        for line in self._read("net/dev").splitlines()[2:]:
            name, sep, rest = line.partition(b":")
            f = rest.split()
            if sep and len(f) >= 16:
                out[name.strip().decode()] = NicCounters(
                    int(f[0]), int(f[1]), int(f[2]), int(f[3]),
                    int(f[8]), int(f[9]), int(f[10]), int(f[11]))
        return out
