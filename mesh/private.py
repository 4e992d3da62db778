"""Owner-only state on disk: folders 0700 (every one this creates, not only the last) and SQLite
databases 0600 from their first byte, so their -wal and -shm files are 0600 too."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["owned_records_schema", "private_dir", "private_sqlite_file"]


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parents with mode 0700 (Path.mkdir(parents=True) gives the
    parents the umask's mode, e.g. 0755), and tighten `path` itself to 0700 if we own it."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            folder.mkdir(mode=0o700)
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o700)
    return path


def private_sqlite_file(path: Path) -> Path:
    """Create the database file 0600 before SQLite opens it: SQLite gives its -wal and -shm
    files the database file's mode, and a file created by sqlite3.connect() follows the umask."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    path.chmod(0o600)
    return path


def owned_records_schema(table: str) -> str:
    """The SQLite table the components keep their owned resources in (benchmark runs,
    experiments): one JSON document per row, with the columns the queries need indexed:
    an owner's list in creation order, and an owner's idempotency key (unique when given)."""
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  request_id TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  create_time REAL NOT NULL,
  record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {table}_request
  ON {table}(owner, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS {table}_owner ON {table}(owner, create_time, id);
"""
