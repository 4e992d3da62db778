"""Helpers shared by the contract tests: finding and running buf and node, reading their output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

__all__ = [
    "BUF",
    "NODE_MODULES",
    "REPO",
    "BufCurl",
    "CurlResult",
    "buf_exit_code",
    "copy_tree",
    "isolated_import_check",
    "json_documents",
    "node",
    "popen",
    "require_buf",
    "run",
    "stop",
]

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"


def _buf_binary() -> Path:
    """npm's `.bin/buf` is a node shim that spawns the platform binary and does not forward
    signals: killing the shim would orphan a streaming `buf curl` that still holds our pipes.
    So use the platform package's binary (@bufbuild/buf-linux-x64, ...) when it is there."""
    for candidate in sorted((NODE_MODULES / "@bufbuild").glob("buf-*/bin/buf")):
        if os.access(candidate, os.X_OK):
            return candidate
    return NODE_MODULES / ".bin" / "buf"


BUF = _buf_binary()

# What never belongs in a copy of the source tree that we build from (caches, local tools, VCS).
_NOT_SOURCE = (".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
               ".ruff_cache", "build", "dist", "*.egg-info", ".aifb", ".whl", ".gl", ".tools",
               ".typecheck")


def require_buf() -> Path:
    """The repository's buf (npm @bufbuild/buf); skip when scripts/setup.sh has not installed it."""
    if not os.access(BUF, os.X_OK):
        pytest.skip(f"{BUF} is missing: run scripts/setup.sh (npm install)")
    return BUF


def node() -> str:
    """The node binary, with @grpc/grpc-js and @grpc/proto-loader installed beside the repo."""
    path = shutil.which("node")
    if path is None or not (NODE_MODULES / "@grpc" / "grpc-js").is_dir():
        pytest.skip("node or node_modules/@grpc/grpc-js is missing: run scripts/setup.sh")
    return path


def run(args: Sequence[str | Path], *, cwd: Path = REPO, timeout: float = 120.0,
        env: Mapping[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell) and capture its text output."""
    # S603: the argument lists are built here from fixed tool paths, never by a shell.
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else dict(env),
                          input=stdin, check=False)


def popen(args: Sequence[str | Path], *, cwd: Path = REPO,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a command whose line-buffered stdout the caller reads as it arrives.

    It gets its own process group, so `stop()` also ends anything it spawned (which would
    otherwise keep the pipes open and block the reader)."""
    return subprocess.Popen([str(a) for a in args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env=None if env is None else dict(env), start_new_session=True)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a process started by `popen` and its process group (by its id), if still running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a source folder without caches, VCS data, build leftovers or local tools."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*_NOT_SOURCE), symlinks=True)
    return dst


def json_documents(text: str) -> list[Any]:
    """Split concatenated JSON documents (buf curl prints one, often multi-line, per message)."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def buf_exit_code(code: grpc.StatusCode) -> int:
    """buf curl exits with 8 x the numeric gRPC status code of a failed call."""
    return 8 * int(code.value[0])


@dataclass
class CurlResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def documents(self) -> list[Any]:
        return json_documents(self.stdout)


@dataclass
class BufCurl:
    """buf curl against a plaintext HTTP/2 gRPC server, schema from server reflection."""

    address: str

    def command(self, *args: str) -> list[str]:
        return [str(require_buf()), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                *args]

    def url(self, method: str = "") -> str:
        return f"http://{self.address}/{method}"

    def call(self, method: str, *, data: str | None = None, headers: Sequence[str] = (),
             timeout: float = 60.0) -> CurlResult:
        """One RPC (`method` is "aifb.v1.ServerService/ListRecipes"); headers as for -H."""
        args: list[str] = []
        for header in headers:
            args += ["-H", header]
        if data is not None:
            args += ["-d", data]
        proc = run([*self.command(*args), self.url(method)], timeout=timeout)
        return CurlResult(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, method: str, *, data: str, headers: Sequence[str] = ()
              ) -> subprocess.Popen[str]:
        """Start a (streaming) call whose stdout the caller reads as it arrives."""
        args: list[str] = []
        for header in headers:
            args += ["-H", header]
        return popen([*self.command(*args, "-d", data), self.url(method)])


def isolated_import_check(target: Path, code: str, *, cwd: Path
                          ) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python that sees `target` and the venv's dependencies, and nothing else.

    `-I` drops PYTHON* variables, the user site and the script/current folder from sys.path;
    `-S` skips `site`, so no `.pth` file runs: in particular not the venv's
    `__editable__.aifb-*.pth`, whose import hook is what maps `aifb.*` onto this repository.
    The child then puts exactly two folders on sys.path: the install target, and the venv's
    site-packages appended *as a plain path* (appending does not process `.pth` files, unlike
    `site.addsitedir`), so third-party dependencies resolve while every `aifb` module can only
    come from `target`. The code also runs from a scratch `cwd`, never the repository.
    """
    import sysconfig

    site_dirs = list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
    prelude = (
        "import sys\n"
        f"sys.path[:0] = [{str(target)!r}]\n"
        f"sys.path.extend({site_dirs!r})\n"
    )
    return run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd, timeout=120.0)
