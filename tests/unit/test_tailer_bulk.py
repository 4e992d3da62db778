"""The tailer's bulk path (plain lines split at once) yields exactly what line by line does."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from aifb.logger.tailer import Chunk, FileTailer, Record

pytestmark = pytest.mark.unit


class _LineByLine(FileTailer):
    def _split_plain(self, out: list[Chunk], buf: bytes) -> int:
        return 0


def _mixed_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    kinds = ["plain", "plain", "plain", "traceback", "blank", "indented", "crlf", "unicode",
             "warn"]
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        if kind == "traceback":
            out += ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                    "ValueError: bad"]
        elif kind == "blank":
            out.append("")
        elif kind == "indented":
            out.append("    continued")
        elif kind == "crlf":
            out.append(f"dos line {i}\r")
        elif kind == "unicode":
            out.append(f"é starts non-ascii {i}")
        elif kind == "warn":
            out.append(f"2026-11-28 WARNING disk {i} [info] x")
        else:  # runs of plain lines, so that whole appends take the bulk path
            out += [f"2026-11-28T12:00:00Z INFO request {i}.{j} done"
                    for j in range(rng.randint(1, 200))]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_and_line_by_line_reading_give_the_same_records(tmp_path: Path, seed: int) -> None:
    text = _mixed_text(seed, 300).encode()
    bulk_hits = 0

    class _Counting(FileTailer):
        def _split_plain(self, out: list[Chunk], buf: bytes) -> int:
            nonlocal bulk_hits
            done = super()._split_plain(out, buf)
            bulk_hits += done > 0
            return done

    got: dict[str, list[tuple[str, str, int]]] = {}
    for name, cls in (("bulk", _Counting), ("lines", _LineByLine)):
        path = tmp_path / f"{name}.log"
        path.write_bytes(b"")
        clock = [0.0]
        tailer = cls(path, clock=lambda c=clock: c[0])  # type: ignore[misc]
        records: list[Record] = []
        cut = 0
        pieces = random.Random(seed)
        while cut < len(text):  # the same irregular appends for both
            step = pieces.randint(1, 4000)
            with path.open("ab") as fh:
                fh.write(text[cut:cut + step])
            cut += step
            records += tailer.poll(max_bytes=pieces.randint(100, 1 << 16))
        clock[0] = 10.0  # idle: the last record is finished
        records += tailer.poll()
        tailer.close()
        got[name] = [(r.text, r.level, r.position.offset) for r in records]
    assert got["bulk"] == got["lines"]
    assert got["bulk"][-1][2] == len(text)
    assert sum(t.count("\n") + 1 for t, _, _ in got["bulk"]) > 3000
    assert bulk_hits > 10
