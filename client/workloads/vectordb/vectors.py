"""The vectors a `vectordb` run inserts and queries, their exact neighbours, and recall@k.

Vectors are float32: seeded standard-normal draws, or a file (`.npy`: one 2-D array; `.jsonl`:
one vector per line, a list or `{"vector": [...]}`). From a file, the last `queries` rows are the
queries and the rows before them (at most `count`) are inserted; random queries are drawn apart.
The exact neighbours are a brute-force numpy scan over the same float32 values the database
receives (JSON carries float32 values exactly), so recall is measured against the truth and
not against another index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aifb.client.workloads.vectordb.base import Metric
from aifb.mesh.errors import InvalidArgument

__all__ = ["VectorSet", "exact_neighbours", "load_vectors", "random_vectors", "recall_hits"]

F32 = npt.NDArray[np.float32]
_FIELD = "params.dataset"


@dataclass(frozen=True, slots=True)
class VectorSet:
    base: F32  # (count, dim): inserted with ids 0..count-1
    queries: F32  # (queries, dim)


def random_vectors(count: int, queries: int, dim: int, seed: int) -> VectorSet:
    rng = np.random.default_rng(seed)
    return VectorSet(rng.standard_normal((count, dim), dtype=np.float32),
                     rng.standard_normal((queries, dim), dtype=np.float32))


def load_vectors(path: str | Path, count: int, queries: int) -> VectorSet:
    p = Path(path)
    if p.suffix == ".npy":
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"dataset {p}: cannot read: {exc}", field=_FIELD) from None
    elif p.suffix == ".jsonl":
        data = _jsonl(p)
    else:
        raise InvalidArgument(f"dataset {p}: expected a .npy or .jsonl file", field=_FIELD)
    if data.ndim != 2 or data.shape[1] < 1 or not np.issubdtype(data.dtype, np.number):
        raise InvalidArgument(f"dataset {p}: expected a 2-D array of numbers, got shape "
                              f"{data.shape} of {data.dtype}", field=_FIELD)
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise InvalidArgument(f"dataset {p}: holds NaN or infinite values", field=_FIELD)
    if len(data) <= queries:
        raise InvalidArgument(f"dataset {p}: {len(data)} rows cannot give {queries} queries and "
                              "something to insert", field=_FIELD)
    base = data[:-queries]
    return VectorSet(np.ascontiguousarray(base[:count] if count else base),
                     np.ascontiguousarray(data[-queries:]))


def _jsonl(p: Path) -> F32:
    rows: list[list[float]] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"dataset {p}: cannot read: {exc}", field=_FIELD) from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"dataset {p} line {lineno}: not JSON ({exc.msg})",
                                  field=_FIELD) from None
        vec = obj.get("vector") if isinstance(obj, dict) else obj
        if (not isinstance(vec, list) or not vec
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vec)):
            raise InvalidArgument(f"dataset {p} line {lineno}: expected a list of numbers or "
                                  "{\"vector\": [...]}", field=_FIELD)
        if rows and len(vec) != len(rows[0]):
            raise InvalidArgument(f"dataset {p} line {lineno}: {len(vec)} numbers, the first "
                                  f"line had {len(rows[0])}", field=_FIELD)
        rows.append(vec)
    if not rows:
        raise InvalidArgument(f"dataset {p}: no vectors in it", field=_FIELD)
    return np.asarray(rows, dtype=np.float32)


def exact_neighbours(base: F32, queries: F32, k: int, metric: Metric) -> npt.NDArray[np.int64]:
    """Ids (row numbers of `base`) of each query's k nearest, nearest first (brute force)."""
    k = min(k, len(base))
    out = np.empty((len(queries), k), dtype=np.int64)
    if metric == "cosine":
        b = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
    else:
        b, q = base, queries
    sq_norms = (base.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(queries), 256):  # bounded memory: 256 x count scores at a time
        qs = q[start:start + 256].astype(np.float64)
        sims = qs @ b.astype(np.float64).T
        # l2: smallest |q - x|^2 = |q|^2 - 2 q.x + |x|^2, the |q|^2 term is the same for all x
        score = sq_norms[None, :] - 2 * sims if metric == "l2" else -sims
        part = np.argpartition(score, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(score, part, axis=1).argsort(axis=1, kind="stable")
        out[start:start + len(qs)] = np.take_along_axis(part, order, axis=1)
    return out


def recall_hits(found: list[int], truth: npt.NDArray[np.int64], k: int) -> int:
    """How many of the true k nearest are among the first k ids found."""
    return len(set(found[:k]) & {int(t) for t in truth[:k]})
