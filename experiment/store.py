"""Where experiments live: `<home>/experiments/experiments.db` (SQLite, mode 0600, WAL).

One row per experiment (its record without the trials, with indexed owner, request id and
state) and one row per trial, so a trial's change writes one small row, not the whole
experiment. Every change is committed before the orchestrator acts on it: after a crash the
store says which trials ended (never run again), which benchmark each running trial had (picked
up again, not restarted) and which services were deployed (reused or deleted, never orphaned).

`credentials` holds the bearer token each unfinished experiment acts with (the owner's, given
at create time), so a restarted service can resume it on the owner's behalf; the row is deleted
as soon as the experiment is terminal. The file is the owner's alone (0600), like the token
file the CLI reads.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from aifb.experiment.model import ExperimentRecord, ExperimentState, Trial
from aifb.mesh.errors import AlreadyExists
from aifb.mesh.private import owned_records_schema, private_dir, private_sqlite_file

__all__ = ["ExperimentStore"]

_SCHEMA = owned_records_schema("experiments") + """
CREATE TABLE IF NOT EXISTS trials (
  experiment TEXT NOT NULL,
  n INTEGER NOT NULL,
  trial TEXT NOT NULL,
  PRIMARY KEY (experiment, n)
);
CREATE TABLE IF NOT EXISTS credentials (
  experiment TEXT PRIMARY KEY,
  token TEXT NOT NULL
);
"""
_TERMINAL = tuple(s.value for s in ExperimentState if s.terminal)


def _head(record: ExperimentRecord) -> str:
    """The record without its trials (not even serialized: a change of one trial of 10,000
    would cost them all, 0.4 s a commit). Not sorted: the study's axes are kept in the order they
    were written, which is what numbers its configurations."""
    return json.dumps(dataclasses.replace(record, trials=()).to_dict())


class ExperimentStore:
    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)
        path = private_sqlite_file(root / "experiments.db")
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A deleted credential is overwritten, not left in a free page (see `update`).
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def insert(self, record: ExperimentRecord, token: str) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT INTO experiments(id, owner, request_id, state, create_time, record) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, record.owner, record.request_id, record.state.value,
                     record.create_time, _head(record)))
                self._db.executemany(
                    "INSERT INTO trials(experiment, n, trial) VALUES (?, ?, ?)",
                    [(record.id, t.n, json.dumps(t.to_dict(), sort_keys=True))
                     for t in record.trials])
                if token:
                    self._db.execute("INSERT INTO credentials(experiment, token) VALUES (?, ?)",
                                     (record.id, token))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"experiment {record.id} or request_id {record.request_id!r} "
                                "already exists") from exc

    def update(self, record: ExperimentRecord, *trials: Trial) -> None:
        """The experiment's head and the given trials (new or changed), in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE experiments SET state = ?, record = ? WHERE id = ?",
                             (record.state.value, _head(record), record.id))
            self._db.executemany(
                "INSERT OR REPLACE INTO trials(experiment, n, trial) VALUES (?, ?, ?)",
                [(record.id, t.n, json.dumps(t.to_dict(), sort_keys=True)) for t in trials])
            ended = record.terminal and self._db.execute(
                "DELETE FROM credentials WHERE experiment = ?", (record.id,)).rowcount
        if ended:  # and out of the write-ahead log too
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _load(self, head: str) -> ExperimentRecord:
        data = json.loads(head)
        rows = self._db.execute("SELECT trial FROM trials WHERE experiment = ? ORDER BY n",
                                (data["id"],))
        data["trials"] = [json.loads(r[0]) for r in rows]
        return ExperimentRecord.from_dict(data)

    def get(self, experiment_id: str) -> ExperimentRecord | None:
        row = self._db.execute("SELECT record FROM experiments WHERE id = ?",
                               (experiment_id,)).fetchone()
        return self._load(row[0]) if row else None

    def by_request_id(self, owner: str, request_id: str) -> ExperimentRecord | None:
        row = self._db.execute(
            "SELECT record FROM experiments WHERE owner = ? AND request_id = ?",
            (owner, request_id)).fetchone()
        return self._load(row[0]) if row else None

    def owned_by(self, owner: str) -> list[ExperimentRecord]:
        rows = self._db.execute(
            "SELECT record FROM experiments WHERE owner = ? ORDER BY create_time, id", (owner,))
        return [self._load(r[0]) for r in rows.fetchall()]

    def unfinished(self) -> list[ExperimentRecord]:
        marks = ",".join("?" * len(_TERMINAL))
        rows = self._db.execute(
            f"SELECT record FROM experiments WHERE state NOT IN ({marks}) "
            "ORDER BY create_time, id", _TERMINAL)
        return [self._load(r[0]) for r in rows.fetchall()]

    def token(self, experiment_id: str) -> str:
        row = self._db.execute("SELECT token FROM credentials WHERE experiment = ?",
                               (experiment_id,)).fetchone()
        return str(row[0]) if row else ""

    def run_dir(self, experiment_id: str) -> Path:
        path = self.root / experiment_id
        path.mkdir(mode=0o700, exist_ok=True)
        return path
