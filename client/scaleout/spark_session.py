"""The SparkSession the engine runs on: master URL checks, one cached session, quiet settings.

Starting a JVM costs ~10 s, so the session is created once per process and reused while the
master stays the same; asking for another master stops the old session first (Spark allows one
SparkContext per process). A master URL is checked before any JVM starts: `local`, `local[N]`,
`local[*]`, `local[N,F]` or `spark://host:port[,host:port...]` (a standalone master, or several
for ZooKeeper HA); for `spark://` the first reachable master is probed by TCP, so a wrong host
or port is one clear error instead of Spark's minute of reconnect attempts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from typing import TYPE_CHECKING

from aifb.mesh.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["check_master", "get_session", "local_slots", "stop_session"]

log = logging.getLogger(__name__)
_LOCAL = re.compile(r"local(?:\[(?P<n>\*|[1-9][0-9]{0,4})(?:,(?P<f>[1-9][0-9]{0,3}))?\])?")
_HOSTPORT = re.compile(r"(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
_lock = threading.Lock()
_session: SparkSession | None = None
_session_master = ""

# Settings every aifb session gets (a caller's `conf` overrides them).
BASE_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Workers must run this interpreter: it has aifb and its dependencies installed.
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    # A barrier stage that cannot get all its slots fails after ~10 s, not Spark's 10 min.
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "2s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "5",
    # A partition that died before the start barrier must not hang the others for a year.
    "spark.barrier.sync.timeout": "300s",
}
_LOCAL_CONF = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


def local_slots(master: str) -> int | None:
    """Task slots of a local master (None for a cluster master)."""
    m = _LOCAL.fullmatch(master)
    if m is None:
        return None
    n = m.group("n")
    if n is None:
        return 1
    return os.cpu_count() or 1 if n == "*" else int(n)


def check_master(master: str, *, probe_timeout_s: float = 3.0) -> None:
    """InvalidArgument for a malformed master, Unavailable for an unreachable standalone one."""
    if not isinstance(master, str) or not master:
        raise InvalidArgument("spark master must be local[N] or spark://host:port",
                              field="spark_master")
    if _LOCAL.fullmatch(master):
        return
    if not master.startswith("spark://"):
        raise InvalidArgument(f"unsupported spark master {master!r}: use local, local[N], "
                              "local[*] or spark://host:port", field="spark_master")
    targets = []
    for item in master.removeprefix("spark://").split(","):
        m = _HOSTPORT.fullmatch(item)
        if m is None or not 0 < int(m.group("port")) < 65536:
            raise InvalidArgument(f"bad spark master {master!r}: {item!r} is not host:port",
                                  field="spark_master")
        targets.append((m.group("host").strip("[]"), int(m.group("port"))))
    errors = []
    for host, port in targets:
        try:
            with socket.create_connection((host, port), timeout=probe_timeout_s):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise Unavailable(f"spark master {master} is unreachable ({'; '.join(errors)})")


def get_session(master: str, app_name: str = "aifb-bench",
                conf: dict[str, str] | None = None) -> SparkSession:
    """The process's session on `master`, created (and an old one on another master stopped)."""
    global _session, _session_master
    check_master(master)
    with _lock:
        if _session is not None and _session_master == master:
            return _session
        if _session is not None:
            log.info("stopping the Spark session on %s to start one on %s", _session_master,
                     master)
            _session.stop()
            _session = None
        from pyspark.sql import SparkSession

        # PySpark picks the workers' interpreter from this variable, not from the conf.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master(master).appName(app_name)
        settings = {**BASE_CONF, **(_LOCAL_CONF if local_slots(master) else {}), **(conf or {})}
        for key, value in settings.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        _session, _session_master = session, master
        return session


def stop_session() -> None:
    """Stop the cached session (and its JVM's SparkContext), if any."""
    global _session, _session_master
    with _lock:
        if _session is not None:
            _session.stop()
        _session, _session_master = None, ""
