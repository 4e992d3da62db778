"""The pgvector backend's checks and settings, and the launcher's pure parts (no server needed).

pgvector's own limits are checked when the workload is built, each naming its field, so a run
fails before it sends anything; what each session sets decides which plan answers a query; the
launcher's first-start SQL and its private copy of the binaries keep the wheel's layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.vectordb.base import IndexSettings
from aifb.client.workloads.vectordb.pgvector import session_settings
from aifb.client.workloads.vectordb.workload import VectorDbWorkload
from aifb.mesh.errors import InvalidArgument
from aifb.recipes import pgvector_server
from aifb.server.recipes.catalog import RecipeCatalog
from aifb.server.recipes.resolve import build_job_spec, resolve

pytestmark = pytest.mark.unit

PG = "postgresql://127.0.0.1:5432"


def _build(url: str = PG, **params: Any) -> VectorDbWorkload:
    wl = build_workload("vectordb", url, {"backend": "pgvector", **params})
    assert isinstance(wl, VectorDbWorkload)
    return wl


@pytest.mark.parametrize(("url", "params", "field", "words"), [
    (PG, {"collection": "c" * 64}, "params.collection", "63 bytes"),
    (PG, {"hnsw_ef": 1001}, "params.hnsw_ef", "1..1000"),
    (PG, {"m": 1}, "params.m", "2..100"),
    (PG, {"m": 101}, "params.m", "2..100"),
    (PG, {"ef_construction": 2}, "params.ef_construction", "4..1000"),
    (PG, {"m": 16, "ef_construction": 20}, "params.ef_construction", r">= 2 \* m"),
    (PG, {"dim": 2001}, "params.dim", "2000 dimensions"),
    (PG, {"pg_user": "bad name"}, "params.pg_user", "1-63"),
    (PG, {"pg_database": "9db"}, "params.pg_database", "1-63"),
    (PG + "/aifb", {}, "target.base_url", "host and port only"),
    ("postgresql://me@127.0.0.1:5432", {}, "target.base_url", "host and port only"),
    ("https://127.0.0.1:5432", {}, "target.base_url", "postgresql://host"),
])
def test_pgvector_limits_are_refused_before_anything_is_sent_and_name_the_field(
        url: str, params: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words) as err:
        _build(url, **params)
    assert err.value.field == field


def test_a_postgresql_url_and_a_deployed_services_http_url_reach_the_same_address() -> None:
    assert _build()._address[:2] == ("127.0.0.1", 5432)
    assert _build("postgresql://db.example:6543")._address[:2] == ("db.example", 6543)
    assert _build("http://10.0.0.7:5432/")._address[:2] == ("10.0.0.7", 5432)
    assert _build(m=16, ef_construction=32, hnsw_ef=1000, exact=True).params.exact
    with pytest.raises(InvalidArgument, match="http://host") as err:  # other backends: http only
        build_workload("vectordb", PG, {"backend": "chroma"})
    assert err.value.field == "target.base_url"


def test_each_session_makes_the_index_answer_or_with_exact_a_full_scan() -> None:
    assert session_settings(IndexSettings(8, "l2")) == {"enable_seqscan": "off"}
    assert session_settings(IndexSettings(8, "l2", ef_search=64)) == {
        "enable_seqscan": "off", "hnsw.ef_search": "64"}
    assert session_settings(IndexSettings(8, "ip", exact=True)) == {"enable_indexscan": "off"}


def test_the_first_start_creates_the_extension_a_plain_role_and_its_database() -> None:
    statements = [s for s in pgvector_server.setup_sql().split(";\n\n") if s]
    assert statements == ["CREATE EXTENSION IF NOT EXISTS vector", "CREATE ROLE aifb LOGIN",
                          "CREATE DATABASE aifb OWNER aifb"]  # no SUPERUSER anywhere


def test_the_private_copy_keeps_the_wheels_layout_for_rpath_and_share(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = site / "pgserver" / "pginstall"
    for rel in ("bin/postgres", "bin/initdb", "bin/psql", "lib/postgresql/vector.so",
                "lib/postgresql/pgxs/Makefile", "lib/libpq.a",
                "share/postgresql/extension/vector.control", "include/postgres.h"):
        (install / rel).parent.mkdir(parents=True, exist_ok=True)
        (install / rel).write_text(rel)
    (install / "bin" / "postgres").chmod(0o755)
    (site / "pgserver.libs").mkdir()
    (site / "pgserver.libs" / "libpq-x.so.5").write_text("libpq")
    dest = pgvector_server.private_copy(install, tmp_path / "copy")
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*")
                    if p.is_file())
    assert copied == ["pgserver.libs/libpq-x.so.5", "pgserver/pginstall/bin/initdb",
                      "pgserver/pginstall/bin/postgres",
                      "pgserver/pginstall/lib/postgresql/vector.so",
                      "pgserver/pginstall/share/postgresql/extension/vector.control"]
    assert dest == tmp_path / "copy" / "pgserver" / "pginstall"
    assert os.access(dest / "bin" / "postgres", os.X_OK)


@pytest.mark.parametrize("argv", [
    ["--data", "d", "--port", "0"], ["--data", "d", "--shared-buffers", "1TB"],
    ["--data", "d", "--host", "a b"], ["--data", "d", "--max-connections", "0"], ["--port", "1"]])
def test_the_launcher_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        pgvector_server.main(argv)
    assert exit_.value.code == 2


def test_the_recipe_runs_the_launcher_with_its_data_in_the_workdir() -> None:
    resolved = resolve(RecipeCatalog().get("pgvector"), {"port": "0", "shared_buffers": "1GB"},
                       None)
    spec = build_job_spec(resolved, service_id="s1", job_name="aifb-pgvector-s1",
                          workdir="/w/s1", python="/py", environment={})
    argv = list(spec.command)
    assert argv[:3] == ["python", "-m", "aifb.recipes.pgvector_server"]
    assert argv[argv.index("--data") + 1] == "/w/s1/pgdata"
    assert argv[argv.index("--shared-buffers") + 1] == "1GB"
    assert spec.auto_ports == ("port",) and spec.readiness.kind == "tcp"
    with pytest.raises(InvalidArgument, match="shared_buffers"):
        resolve(RecipeCatalog().get("pgvector"), {"shared_buffers": "1GB; rm -rf /"}, None)
