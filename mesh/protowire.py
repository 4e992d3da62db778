"""Protobuf wire-format pieces for the hand-built fast paths (agents' batches, remote write).

Pure Python and import-free, so the agents can use it without loading anything else.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["field", "string_pairs", "varint"]


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte (field number << 3 | 2), length and payload."""
    return bytes((tag,)) + varint(len(payload)) + payload


def string_pairs(pairs: Iterable[tuple[str, str]], tag: int = 0x0A) -> bytes:
    """Repeated `tag` messages of two strings (fields 1 and 2): a `map<string, string>` entry
    or a prompb `Label`."""
    return b"".join(field(tag, field(0x0A, k.encode()) + field(0x12, v.encode()))
                    for k, v in pairs)
