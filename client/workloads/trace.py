"""Request traces to replay: the mooncake JSONL format, its schedule, and prompts sharing prefixes.

    entries = read_trace("trace.jsonl")               # validated, in time order
    offsets = trace_offsets_ns(entries, time_scale=2)  # when each is due: twice as fast
    prompts = TracePrompts(entries, seed=0)           # prompts[i]: entry i's prompt, built lazily

One JSON object per line: `timestamp` (ms from the start of the trace), `input_length` and
`output_length` (the prompt's and the reply's lengths) and, optionally, `hash_ids`: each id
names one block of `BLOCK_TOKENS` of the prompt, in order, so two entries whose `hash_ids` begin
alike share that prefix of their prompts byte for byte (what a server's prefix cache can reuse).
Other keys are ignored. The load engine sends entry n as request n at its timestamp divided by
`time_scale` (`aifb.client.runs.options`, load mode `trace`); the LLM workloads take entry n's
prompt and `max_tokens` from it (their `trace` parameter).

A trace is untrusted input: its size, number of entries, lengths, ids and timestamps are
bounded, and every problem names the file, the line and the key. Prompts are built when a
request needs them, from blocks cached by id (a trace of long prompts does not fit in memory
all at once), through one function of a random generator and a length (`TextMaker`): lengths
count words today, and a tokenizer that makes text of an exact number of tokens plugs in there.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from aifb.client.workloads.datasets import Prompt, random_text
from aifb.mesh.errors import InvalidArgument

__all__ = ["BLOCK_TOKENS", "MAX_TRACE_BYTES", "MAX_TRACE_ENTRIES", "BuiltOnAccess", "TextMaker",
           "TraceEntry", "TracePrompts", "read_trace", "trace_offsets_ns"]

BLOCK_TOKENS = 512  # what one hash id covers (mooncake's block size)
MAX_TRACE_BYTES = 256 * 1024 * 1024
MAX_TRACE_ENTRIES = 1_000_000
MAX_LENGTH = 1_000_000  # input or output length of one entry
MAX_HASH_IDS = 10_000_000  # over the whole trace (each id is kept in memory)
MAX_TIMESTAMP_MS = 7 * 24 * 3600 * 1000.0  # a week, the longest run aifb accepts
_MAX_ID = 2 ** 63 - 1
_BLOCK_CACHE = 4096  # blocks kept built: ~10 MB of words

# (generator, length) -> text of that length. It must be prefix-stable: for the same generator
# state, the text for n units is a prefix of the text for m > n units (a partial block is then
# a prefix of the whole block, and prefixes stay shared).
TextMaker = Callable[[random.Random, int], str]
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class TraceEntry:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()
    line: int = 0  # where it came from, for messages


def _where(path: Path, lineno: int) -> str:
    return f"trace {path} line {lineno}"


def _int(obj: dict[str, Any], key: str, where: str, field: str, low: int, high: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{where}: {key} must be an integer in {low}..{high}, got "
                              f"{str(value)[:40]}", field=field)
    return value


def _entry(obj: Any, where: str, lineno: int, field: str) -> TraceEntry:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: expected an object with timestamp, input_length and "
                              "output_length", field=field)
    ts = obj.get("timestamp")
    if (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
            or not 0 <= ts <= MAX_TIMESTAMP_MS):
        raise InvalidArgument(f"{where}: timestamp must be a number of ms in "
                              f"0..{MAX_TIMESTAMP_MS:.0f}, got {str(ts)[:40]}", field=field)
    inp = _int(obj, "input_length", where, field, 1, MAX_LENGTH)
    out = _int(obj, "output_length", where, field, 1, MAX_LENGTH)
    raw_ids = obj.get("hash_ids", [])
    if not isinstance(raw_ids, list):
        raise InvalidArgument(f"{where}: hash_ids must be a list of integers", field=field)
    blocks = -(-inp // BLOCK_TOKENS)
    if len(raw_ids) > blocks:
        raise InvalidArgument(f"{where}: hash_ids has {len(raw_ids)} ids but input_length "
                              f"{inp} holds only {blocks} blocks of {BLOCK_TOKENS}", field=field)
    for i, h in enumerate(raw_ids):
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= _MAX_ID:
            raise InvalidArgument(f"{where}: hash_ids[{i}] must be an integer in 0..2^63-1",
                                  field=field)
    return TraceEntry(float(ts), inp, out, tuple(raw_ids), lineno)


def read_trace(path: str | Path, *, field: str = "params.trace") -> list[TraceEntry]:
    """The trace's entries in time order (a stable sort: equal times keep the file's order).
    An InvalidArgument with `field` names the file, the line and the key of any problem."""
    p = Path(path)
    try:
        size = os.stat(p).st_size
        if size > MAX_TRACE_BYTES:
            raise InvalidArgument(f"trace {p}: {size} bytes, more than the "
                                  f"{MAX_TRACE_BYTES} a trace may have", field=field)
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"trace {p}: cannot read: {exc}", field=field) from None
    entries: list[TraceEntry] = []
    ids = 0
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = _where(p, lineno)
        if len(entries) >= MAX_TRACE_ENTRIES:
            raise InvalidArgument(f"{where}: more than {MAX_TRACE_ENTRIES} entries",
                                  field=field)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{where}: not JSON ({exc.msg})", field=field) from None
        entry = _entry(obj, where, lineno, field)
        ids += len(entry.hash_ids)
        if ids > MAX_HASH_IDS:
            raise InvalidArgument(f"{where}: more than {MAX_HASH_IDS} hash ids in the trace",
                                  field=field)
        entries.append(entry)
    if not entries:
        raise InvalidArgument(f"trace {p}: no entries in it", field=field)
    entries.sort(key=lambda e: e.timestamp_ms)
    return entries


def trace_offsets_ns(entries: Sequence[TraceEntry], time_scale: float = 1.0) -> tuple[int, ...]:
    """Each entry's send time in ns from the run start: its timestamp / `time_scale`."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise InvalidArgument(f"time_scale must be > 0, got {time_scale}", field="time_scale")
    factor = 1e6 / time_scale
    return tuple(round(e.timestamp_ms * factor) for e in entries)


class TracePrompts(Sequence[Prompt]):
    """Entry i's prompt (`input_length` units, `output_length` as its output_tokens), built on
    each access. Block `h` is the same text wherever it appears (made from a generator seeded
    by the seed and h); the part of a prompt no id covers is the entry's own (seeded by the
    seed and its index), so only what the trace says is shared is shared."""

    def __init__(self, entries: Sequence[TraceEntry], seed: int = 0,
                 make_text: TextMaker = random_text,
                 count: Callable[[str], int] | None = None) -> None:
        self._entries = entries
        self._seed = seed
        self._make = make_text
        # With a tokenizer: the prompt's own count (blocks joined by a space can merge a token
        # or two at a join), so the server's usage and the client's agree exactly.
        self._count = count
        self._blocks: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Prompt]: ...

    def __getitem__(self, index: int | slice) -> Prompt | Sequence[Prompt]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = self._entries[index]
        text = self.text(index % len(self) if index < 0 else index, entry)
        return Prompt(text=text, input_tokens=(self._count(text) if self._count is not None
                                               else entry.input_length),
                      output_tokens=entry.output_length)

    def __iter__(self) -> Iterator[Prompt]:
        return (self[i] for i in range(len(self)))

    def text(self, index: int, entry: TraceEntry) -> str:
        parts: list[str] = []
        left = entry.input_length
        for h in entry.hash_ids:
            if left >= BLOCK_TOKENS:
                parts.append(self._block(h))
            else:  # the last, partial block: a prefix of the whole one
                parts.append(self._make(self._rng("block", h), left))
            left -= min(left, BLOCK_TOKENS)
        if left > 0:
            parts.append(self._make(self._rng("own", index), left))
        return " ".join(parts)

    def _rng(self, kind: str, key: int) -> random.Random:
        return random.Random(f"aifb-trace:{self._seed}:{kind}:{key}")

    def _block(self, h: int) -> str:
        blocks = self._blocks
        text = blocks.get(h)
        if text is None:
            text = blocks[h] = self._make(self._rng("block", h), BLOCK_TOKENS)
            if len(blocks) > _BLOCK_CACHE:
                blocks.popitem(last=False)
        else:
            blocks.move_to_end(h)
        return text


class BuiltOnAccess(Sequence[U]):
    """`build(items[i])` made on access: what a workload keeps instead of every request encoded
    ahead, for a trace whose requests would not all fit in memory.

    Building a long prompt takes a fraction of a millisecond, which would count in the
    request's latency and TTFT. So each access also asks the event loop (`call_soon`, which
    runs once the caller has sent its request and waits) to build the next item, which the
    next access in order then takes ready-made: a replay sends entry n, then n + 1. An item
    asked for out of order, or before it was built ahead, is built then."""

    def __init__(self, items: Sequence[T], build: Callable[[T], U]) -> None:
        self._items: Sequence[Any] = items
        self._build: Callable[[Any], U] = build
        self._next: tuple[int, U] | None = None  # the item built ahead
        self._last = -1
        self._pending = False

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> U: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[U]: ...

    def __getitem__(self, index: int | slice) -> U | Sequence[U]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self._items)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        ready = self._next
        if ready is not None and ready[0] == index:
            item = ready[1]
            self._next = None
        else:
            item = self._build(self._items[index])
        self._last = index
        self._ahead()
        return item

    def _ahead(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing to overlap with
            return
        self._pending = True
        loop.call_soon(self._fill)

    def _fill(self) -> None:
        self._pending = False
        index = (self._last + 1) % len(self._items)
        if self._next is None or self._next[0] != index:
            self._next = (index, self._build(self._items[index]))
