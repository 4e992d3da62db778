"""Agent identity: default ids that differ between `aifb up`'s embedded monitor and a node daemon
on the same host, and a daemon reusing another's id refused and saying why (the collector's
refusal itself: tests/unit/test_collector_ingest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.integration.cli_procs import Daemon, free_port, until
from tests.integration.test_cli_telemetry import cli_env, start_up

pytestmark = pytest.mark.integration


def test_a_node_daemon_beside_aifb_up_pushes_as_its_own_agent(tmp_path: Path) -> None:
    up = start_up(tmp_path, None, "--scheduler", "local")
    env = cli_env(tmp_path)
    node = socket.gethostname().split(".", 1)[0]
    up_port = up.address.rsplit(":", 1)[1]
    daemons: list[Daemon] = []
    try:
        port = free_port()
        daemons.append(Daemon.start(
            ["--server", up.address, "monitor", "serve", "--listen", f"127.0.0.1:{port}",
             "--collector", up.address, "--all-nodes", "--interval", "1"],
            env=env, cwd=tmp_path, ready_text="monitor@"))

        def agents() -> set[str]:
            stats = up.json("collector", "stats")
            return set(stats.get("agents_last_sequence", {}))

        seen = until(lambda: {f"monitor@{node}:{up_port}", f"monitor@{node}:{port}"}
                     <= (a := agents()) and a, "both monitors at the collector")
        assert f"monitor@{node}" not in seen
        # A daemon told to use the embedded monitor's id is refused, and says why.
        clash = free_port()
        daemons.append(Daemon.start(
            ["--server", up.address, "monitor", "serve", "--listen", f"127.0.0.1:{clash}",
             "--collector", up.address, "--all-nodes", "--interval", "1"],
            env={**env, "AIFB_MONITOR__AGENT_ID": f"monitor@{node}:{up_port}"}, cwd=tmp_path,
            ready_text="monitor@"))
        until(lambda: "is already pushing metrics from another process" in daemons[-1].log(200),
              "the refusal in the clashing daemon's log")
        assert "ALREADY_EXISTS" in daemons[-1].log(200)
    finally:
        codes = [d.stop() for d in daemons]
        code = up.daemon.stop()
    assert codes == [0, 0] and code == 0, json.dumps([d.log() for d in daemons])
