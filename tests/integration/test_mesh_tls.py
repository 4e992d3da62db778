"""TLS and mTLS on the mesh: real certificates (made with openssl), real channels, the real CLI.

Proves: a TLS server answers TLS clients and refuses plaintext; with a client CA (mTLS) a
client without a certificate, or with one from another CA, is refused and one with a proper
certificate is accepted; a non-loopback listen address without TLS is refused unless
`insecure`; and `aifb --ca-file/--cert/--key services list` works against such a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aifb.mesh.auth import Authenticator
from aifb.mesh.channel import open_sync_channel
from aifb.mesh.config import MeshConfig
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.server import create_server
from aifb.server.embedded import ThreadedServer
from aifb.v1 import server_pb2, server_pb2_grpc
from tests.fixtures.server import server_config

pytestmark = pytest.mark.integration  # openssl: scripts/test.sh installs it

AIFB = Path(sys.executable).with_name("aifb")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _issue(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem",
                               d / f"{name}.ext")
    extfile.write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", extfile)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "aifb-test-ca")
    server = _issue(d, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth\n")
    client = _issue(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    other_ca = _make_ca(d, "other-ca")
    other = _issue(d, "other-client", other_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1], other_ca=other_ca[0], other_cert=other[0],
               other_key=other[1])


def _tls_server(home: Path, pki: Pki, *, mtls: bool) -> Iterator[ThreadedServer]:
    config = server_config(home)
    config.mesh.tls_cert = str(pki.server_cert)
    config.mesh.tls_key = str(pki.server_key)
    config.mesh.tls_client_ca = str(pki.ca) if mtls else ""
    config.mesh.tls_ca = str(pki.ca)
    if mtls:  # what the server's own jobs present
        config.mesh.tls_mesh_cert = str(pki.client_cert)
        config.mesh.tls_mesh_key = str(pki.client_key)
    srv = ThreadedServer(config).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tls_server(aifb_home: Path, pki: Pki) -> Iterator[ThreadedServer]:
    yield from _tls_server(aifb_home, pki, mtls=False)


@pytest.fixture
def mtls_server(aifb_home: Path, pki: Pki) -> Iterator[ThreadedServer]:
    yield from _tls_server(aifb_home, pki, mtls=True)


def _list_recipes(channel: grpc.Channel) -> list[str]:
    stub = server_pb2_grpc.ServerServiceStub(channel)
    with channel:
        reply = stub.ListRecipes(server_pb2.ListRecipesRequest(), timeout=10)
    return [r.name for r in reply.recipes]


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _list_recipes(channel)
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


def test_tls_server_answers_a_tls_client_and_refuses_plaintext(tls_server: ThreadedServer,
                                                               pki: Pki) -> None:
    tls = open_sync_channel(tls_server.address, token=tls_server.token, ca_file=str(pki.ca))
    assert "sleeper" in _list_recipes(tls)
    plain = open_sync_channel(tls_server.address, token=tls_server.token)
    assert _refused(plain) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA refuses the server's certificate.
    wrong_ca = open_sync_channel(tls_server.address, token=tls_server.token,
                                 ca_file=str(pki.other_ca))
    assert _refused(wrong_ca) == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_accepts_only_clients_with_a_certificate_from_its_ca(
        mtls_server: ThreadedServer, pki: Pki) -> None:
    addr, token = mtls_server.address, mtls_server.token
    no_cert = open_sync_channel(addr, token=token, ca_file=str(pki.ca))
    assert _refused(no_cert) == grpc.StatusCode.UNAVAILABLE
    foreign = open_sync_channel(addr, token=token, ca_file=str(pki.ca),
                                cert_file=str(pki.other_cert), key_file=str(pki.other_key))
    assert _refused(foreign) == grpc.StatusCode.UNAVAILABLE
    plain = open_sync_channel(addr, token=token)
    assert _refused(plain) == grpc.StatusCode.UNAVAILABLE
    good = open_sync_channel(addr, token=token, ca_file=str(pki.ca),
                             cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert "sleeper" in _list_recipes(good)
    # mTLS is on top of the bearer token, not instead of it.
    no_token = open_sync_channel(addr, token="", ca_file=str(pki.ca),
                                 cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert _refused(no_token) == grpc.StatusCode.UNAUTHENTICATED


def test_non_loopback_listen_needs_tls_unless_insecure(pki: Pki) -> None:
    auth = Authenticator(None, enabled=False)

    async def check() -> None:
        with pytest.raises(InvalidArgument, match=r"non-loopback.*without TLS") as info:
            await create_server(MeshConfig(listen="0.0.0.0:0"), (), authenticator=auth)
        assert info.value.field == "mesh.listen"
        for config in (MeshConfig(listen="0.0.0.0:0", insecure=True),
                       MeshConfig(listen="0.0.0.0:0", tls_cert=str(pki.server_cert),
                                  tls_key=str(pki.server_key))):
            mesh = await create_server(config, (), authenticator=auth)
            try:
                assert mesh.port > 0
            finally:
                await mesh.stop(0)

    asyncio.run(check())


def _cli(srv: ThreadedServer, *args: str | Path) -> subprocess.CompletedProcess[str]:
    config = Path(srv.config.mesh.home) / "cli-config.yaml"  # not the user's own config
    config.write_text("mesh: {}\n")
    env = {**os.environ, "AIFB_CONFIG": str(config)}
    for var in ("AIFB_CA_FILE", "AIFB_CLIENT_CERT", "AIFB_CLIENT_KEY", "AIFB_SERVER_ADDRESS"):
        env.pop(var, None)
    return subprocess.run(
        [str(AIFB), "--home", srv.config.mesh.home, "--server", srv.address, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=60, check=False)


def test_cli_talks_mtls_with_ca_cert_and_key_options(mtls_server: ThreadedServer,
                                                     pki: Pki) -> None:
    ok = _cli(mtls_server, "--ca-file", pki.ca, "--cert", pki.client_cert,
              "--key", pki.client_key, "--output", "json", "services", "list")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []
    no_cert = _cli(mtls_server, "--ca-file", pki.ca, "services", "list")
    assert no_cert.returncode == 1
    assert "error:" in no_cert.stderr and "Traceback" not in no_cert.stderr
    missing = _cli(mtls_server, "--ca-file", pki.ca, "--cert", "/nonexistent/c.pem",
                   "--key", pki.client_key, "services", "list")
    assert missing.returncode == 1
    assert "--cert /nonexistent/c.pem: no such file" in missing.stderr


# ---- the whole flow under TLS and mTLS, through `aifb up` (issue 11, item 4) ---------------

def _up_tls_args(pki: Pki, mtls: bool) -> list[str]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-ca", str(pki.ca)]
    if mtls:
        args += ["--tls-client-ca", str(pki.ca), "--tls-mesh-cert", str(pki.client_cert),
                 "--tls-mesh-key", str(pki.client_key)]
    return args


def _cli_tls_args(pki: Pki, mtls: bool) -> list[str]:
    args = ["--ca-file", str(pki.ca)]
    if mtls:
        args += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    return args


@pytest.mark.parametrize("scheduler", ["local", "slurm"])
@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_create_ready_logs_metrics_delete_under_tls(
        tmp_path: Path, pki: Pki, mtls: bool, scheduler: str) -> None:
    """Jobs report over TLS (they stayed STARTING: no CA, no client certificate), the embedded
    agents and, on SLURM, the jobs' sidecars push over TLS (the log had hundreds of handshake
    errors), so a service goes READY, its lines reach `aifb logs` and its metrics /metrics."""
    import httpx

    from tests.integration.cli_procs import until
    from tests.integration.test_cli_telemetry import TALKER_LINES, start_up

    if scheduler == "slurm" and os.environ.get("AIFB_REQUIRE_SLURM") != "1" \
            and subprocess.run(["which", "sbatch"], capture_output=True).returncode != 0:
        pytest.skip("no SLURM here (scripts/test.sh starts one)")
    up = start_up(tmp_path, None, "--scheduler", scheduler, *_up_tls_args(pki, mtls))
    tls = _cli_tls_args(pki, mtls)
    try:
        svc = up.json(*tls, "services", "create", "talker", "--param",
                      f"lines={TALKER_LINES}", "--wait", "--wait-timeout", "90")
        assert svc["state"] == "SERVICE_STATE_READY", svc
        sid = svc["name"].removeprefix("services/")
        until(lambda: up.cli(*tls, "logs", sid, "--stream", "stdout").stdout.count(
            "talker stdout line") == TALKER_LINES, "the talker's lines through the collector")
        text = until(lambda: (t := httpx.get(up.metrics, timeout=5).text)
                     and f'service="services/{sid}"' in t and "aifb_node_" in t and t,
                     "the job's and the node's metrics on /metrics")
        assert "talker_requests_total" in text or "aifb_service_memory_rss_bytes" in text
        deleted = up.cli(*tls, "services", "delete", sid)
        assert deleted.returncode == 0, deleted.stderr
        final = until(lambda: (s := up.json(*tls, "services", "get", sid))["state"] in (
            "SERVICE_STATE_STOPPED", "SERVICE_STATE_FAILED") and s, "the service stopped")
        assert final["state"] == "SERVICE_STATE_STOPPED", final
    finally:
        code = up.daemon.stop()
    log = up.daemon.log(10_000)
    assert code == 0, log
    assert "Traceback" not in log and "handshake" not in log.lower(), log[-4000:]


@pytest.mark.parametrize(("args", "flag"), [
    (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "{cert}"], "--tls-key is missing"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{ca}"],
     "--tls-mesh-cert and --tls-mesh-key"),
    (["--tls-cert", "{cert}", "--tls-key", "/nonexistent/k.pem"],
     "--tls-key /nonexistent/k.pem: cannot read it"),
], ids=["client-ca-alone", "half-pair", "mtls-without-mesh-cert", "unreadable"])
def test_inconsistent_tls_flags_are_refused_before_listening(
        tmp_path: Path, pki: Pki, args: list[str], flag: str) -> None:
    """`--tls-client-ca` without a certificate used to serve plaintext, silently."""
    from tests.integration.test_cli_telemetry import cli_env

    argv = [a.format(ca=pki.ca, cert=pki.server_cert, key=pki.server_key) for a in args]
    proc = subprocess.run([str(AIFB), "up", "--listen", "127.0.0.1:0", "--no-telemetry",
                           "--scheduler", "local", *argv], env=cli_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
