"""Where runs live: a SQLite table of records plus one directory per run for results and reports.

`<home>/benchmarks/benchmarks.db` holds each run's record as a JSON document with indexed owner,
request id and state columns; `<home>/benchmarks/<id>/` (mode 0700) holds `result.json` (the
engine's exact result, histograms included), `context.json` (target, recipe, batch script,
versions, node facts), `samples.parquet` when the run recorded per-request rows, and the
reports rendered from them. A restarted service reads them back;
`interrupted()` finds runs that were in flight when the process died.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from aifb.client.engine.results import RunState
from aifb.client.runs.record import BenchmarkRecord
from aifb.mesh.auth import write_private_file
from aifb.mesh.errors import AlreadyExists
from aifb.mesh.private import owned_records_schema, private_dir, private_sqlite_file

__all__ = ["RunStore"]

_SCHEMA = owned_records_schema("benchmarks")
_TERMINAL = tuple(s.value for s in RunState if s.terminal)


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)
        path = private_sqlite_file(root / "benchmarks.db")
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def run_dir(self, run_id: str) -> Path:
        path = self.root / run_id
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def insert(self, record: BenchmarkRecord) -> None:
        try:
            self._db.execute(
                "INSERT INTO benchmarks(id, owner, request_id, state, create_time, record) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.owner, record.request_id, record.state.value,
                 record.create_time, json.dumps(record.to_dict(), sort_keys=True)))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"benchmark {record.id} or request_id {record.request_id!r} "
                                "already exists") from exc

    def update(self, record: BenchmarkRecord) -> None:
        self._db.execute("UPDATE benchmarks SET state = ?, record = ? WHERE id = ?",
                         (record.state.value, json.dumps(record.to_dict(), sort_keys=True),
                          record.id))

    def get(self, run_id: str) -> BenchmarkRecord | None:
        row = self._db.execute("SELECT record FROM benchmarks WHERE id = ?",
                               (run_id,)).fetchone()
        return BenchmarkRecord.from_dict(json.loads(row[0])) if row else None

    def by_request_id(self, owner: str, request_id: str) -> BenchmarkRecord | None:
        row = self._db.execute("SELECT record FROM benchmarks WHERE owner = ? AND request_id = ?",
                               (owner, request_id)).fetchone()
        return BenchmarkRecord.from_dict(json.loads(row[0])) if row else None

    def owned_by(self, owner: str) -> list[BenchmarkRecord]:
        rows = self._db.execute(
            "SELECT record FROM benchmarks WHERE owner = ? ORDER BY create_time, id", (owner,))
        return [BenchmarkRecord.from_dict(json.loads(r[0])) for r in rows]

    def interrupted(self) -> list[BenchmarkRecord]:
        marks = ",".join("?" * len(_TERMINAL))
        rows = self._db.execute(
            f"SELECT record FROM benchmarks WHERE state NOT IN ({marks})",
            _TERMINAL)
        return [BenchmarkRecord.from_dict(json.loads(r[0])) for r in rows]

    # -- per-run files ---------------------------------------------------------------------
    def write_json(self, run_id: str, name: str, data: Any) -> Path:
        path = self.run_dir(run_id) / name
        write_private_file(path, json.dumps(data, indent=1, sort_keys=True))
        return path

    def write_bytes(self, run_id: str, name: str, data: bytes) -> Path:
        """`data` to the run's folder as `name`, created with mode 0600, replaced atomically."""
        path = self.run_dir(run_id) / name
        write_private_file(path, data)
        return path

    def read_json(self, run_id: str, name: str) -> Any:
        path = self.root / run_id / name
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
