"""The logger's checkpoint: each file's acknowledged position, written atomically to a JSON file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from aifb.logger.tailer import Position
from aifb.mesh.private import private_dir

__all__ = ["CheckpointStore"]

log = logging.getLogger(__name__)


class CheckpointStore:
    """`path -> Position` of the last record the collector acknowledged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.positions: dict[str, Position] = {}
        self.writes = 0
        try:
            data = json.loads(path.read_text())
            self.positions = {k: Position.from_json(v) for k, v in data["sources"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)

    def update(self, positions: dict[str, Position]) -> None:
        self.positions.update(positions)
        self.save()

    def save(self) -> None:
        """Write to a temporary file, fsync, rename over the old one, fsync the directory."""
        private_dir(self.path.parent)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"version": 1, "sources": {
            k: v.to_json() for k, v in sorted(self.positions.items())}})
        with tmp.open("w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.writes += 1
