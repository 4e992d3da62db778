"""SQLite registry of services and their state history; a restarted server reloads it."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aifb.mesh.errors import AlreadyExists
from aifb.mesh.private import private_sqlite_file
from aifb.server.jobs import TERMINAL_RAW_STATES, ResourceSpec, RestartSpec
from aifb.server.model import ServiceRecord, StateChange
from aifb.server.states import ServiceState

__all__ = ["Registry"]

_JOB_DONE = TERMINAL_RAW_STATES | {"LOST"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  request_id TEXT NOT NULL DEFAULT '',
  state INTEGER NOT NULL,
  polled INTEGER NOT NULL DEFAULT 1,
  create_time REAL NOT NULL,
  record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS services_request
  ON services(owner, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS services_polled ON services(polled);
CREATE INDEX IF NOT EXISTS services_owner ON services(owner, create_time, id);
CREATE TABLE IF NOT EXISTS state_history (
  service_id TEXT NOT NULL,
  revision INTEGER NOT NULL,
  state INTEGER NOT NULL,
  message TEXT NOT NULL,
  time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_service ON state_history(service_id, revision);
"""


def _needs_polling(record: ServiceRecord) -> int:
    """1 while the job may still change: not terminal, or the scheduler has not said it ended."""
    job_done = (record.raw_state.split() or [""])[0] in _JOB_DONE
    return int(not record.terminal or (bool(record.job_id) and not job_done))


def _encode(record: ServiceRecord) -> str:
    data = dataclasses.asdict(record)
    data["state"] = int(record.state)
    return json.dumps(data, sort_keys=True)


def _decode(text: str) -> ServiceRecord:
    data: dict[str, Any] = json.loads(text)
    data["state"] = ServiceState(data["state"])
    data["resources"] = ResourceSpec(**data["resources"])
    if "restart" in data:  # absent in records written before restart policies existed
        data["restart"] = RestartSpec(**data["restart"])
    data["workers"] = tuple(data.get("workers", ()))
    return ServiceRecord(**data)


class Registry:
    """Services keyed by id, stored as JSON documents with indexed columns for queries."""

    def __init__(self, path: Path) -> None:
        self.path = private_sqlite_file(path)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def insert(self, record: ServiceRecord) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT INTO services(id, owner, request_id, state, polled, create_time, "
                    "record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.owner, record.request_id, int(record.state),
                     _needs_polling(record), record.create_time, _encode(record)),
                )
                self._history(record)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"service {record.id} or request_id {record.request_id!r} "
                                "already exists") from exc

    def update(self, record: ServiceRecord, *, history: bool) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE services SET state = ?, polled = ?, record = ? WHERE id = ?",
                (int(record.state), _needs_polling(record), _encode(record), record.id))
            if history:
                self._history(record)

    def _history(self, record: ServiceRecord) -> None:
        self._db.execute(
            "INSERT INTO state_history(service_id, revision, state, message, time) "
            "VALUES (?, ?, ?, ?, ?)",
            (record.id, record.revision, int(record.state), record.state_message,
             record.update_time),
        )

    def get(self, service_id: str) -> ServiceRecord | None:
        row = self._db.execute("SELECT record FROM services WHERE id = ?", (service_id,)).fetchone()
        return _decode(row[0]) if row else None

    def by_request_id(self, owner: str, request_id: str) -> ServiceRecord | None:
        row = self._db.execute(
            "SELECT record FROM services WHERE owner = ? AND request_id = ?", (owner, request_id)
        ).fetchone()
        return _decode(row[0]) if row else None

    def all(self) -> list[ServiceRecord]:
        rows = self._db.execute("SELECT record FROM services ORDER BY create_time, id")
        return [_decode(r[0]) for r in rows]

    def active(self) -> list[ServiceRecord]:
        terminal = tuple(int(s) for s in (ServiceState.STOPPED, ServiceState.FAILED))
        rows = self._db.execute(
            "SELECT record FROM services WHERE state NOT IN (?, ?) ORDER BY create_time, id",
            terminal,
        )
        return [_decode(r[0]) for r in rows]

    def polled(self) -> list[ServiceRecord]:
        """Services whose job may still change: not terminal, or whose job has not ended."""
        rows = self._db.execute(
            "SELECT record FROM services WHERE polled = 1 ORDER BY create_time, id")
        return [_decode(r[0]) for r in rows]

    def replicas_of(self, set_id: str) -> list[ServiceRecord]:
        """The replica records of a replicated service (ids `<set id>-<index>`)."""
        rows = self._db.execute(
            "SELECT record FROM services WHERE id LIKE ? ORDER BY create_time, id",
            (set_id + "-%",))
        return [r for r in (_decode(row[0]) for row in rows) if r.parent == set_id]

    def owned_by(self, owner: str) -> Iterable[ServiceRecord]:
        rows = self._db.execute(
            "SELECT record FROM services WHERE owner = ? ORDER BY create_time, id", (owner,))
        return [_decode(r[0]) for r in rows]

    def history(self, service_id: str) -> list[StateChange]:
        rows = self._db.execute(
            "SELECT service_id, revision, state, message, time FROM state_history "
            "WHERE service_id = ? ORDER BY revision", (service_id,))
        return [StateChange(r[0], r[1], ServiceState(r[2]), r[3], r[4]) for r in rows]
