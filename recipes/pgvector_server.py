"""PostgreSQL with pgvector for the `pgvector` recipe: initialise on first start, then serve.

    python -m aifb.recipes.pgvector_server --host 0.0.0.0 --port 5432 --data DIR

Why a launcher and not `postgres` itself in the recipe:

- The binaries come from the `pgserver` wheel (PostgreSQL 16 with pgvector, built for
  manylinux), so no system package is needed; they are not on PATH. They are found through the
  package's location without importing it (its import sets up machinery of its own).
- A fresh cluster needs setting up: `initdb`, then, in single-user mode (no socket is open yet),
  `CREATE EXTENSION vector` in template1, a login role `aifb` that is not a superuser, and a
  database `aifb` it owns (which inherits the extension). `pg_hba.conf` lets only `aifb` in over
  TCP, without a password as Chroma and Qdrant have none; the superuser cannot log in over the
  network at all, because a superuser can run programs as the service's user
  (`COPY ... TO PROGRAM`). Unix-domain sockets are off. A restart in the same job keeps the data.
- PostgreSQL refuses to run as root. Run as root (a root server's local executor, CI), the
  launcher runs `initdb` and `postgres` as `nobody`, with the data and a copy of the binaries in
  a private 0700 directory of the temp dir (the job's workdir usually lies under a directory other
  users cannot enter), removed at exit.
- SIGTERM/SIGINT become a fast shutdown (postgres's SIGINT: sessions are ended, not waited
  for); the launcher exits with postgres's code (128 + N for a signal).

Nothing here passes through a shell; every value reaches postgres as one `-c name=value`
argument, and the recipe bounds each by its pattern.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["DATABASE", "ROLE", "Account", "find_install", "main", "private_copy", "setup_sql"]

ROLE = "aifb"
DATABASE = "aifb"
_SIZE = re.compile(r"[1-9][0-9]{0,6}(kB|MB|GB)")
_HBA = f"""\
# Written by aifb.recipes.pgvector_server: the benchmark role over TCP, nobody else.
host  all  {ROLE}  0.0.0.0/0  trust
host  all  {ROLE}  ::/0       trust
"""


@dataclass(frozen=True, slots=True)
class Account:
    """Who runs initdb and postgres: this process's user, or `nobody` when that is root."""

    uid: int
    gid: int
    name: str


def find_install() -> Path:
    """The `pginstall` tree of the pgserver package (bin/, lib/postgresql/, share/postgresql/)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pgvector: the pgserver package (PostgreSQL with pgvector) is not "
                         "installed here: pip install 'aifb[vectordb]'")
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    for needed in ("bin/postgres", "bin/initdb", "lib/postgresql/vector.so",
                   "share/postgresql/extension/vector.control"):
        if not (root / needed).exists():
            raise SystemExit(f"pgvector: {root / needed} is missing from the pgserver package")
    return root


def private_copy(install: Path, site: Path) -> Path:
    """What postgres needs of `install`, copied under `site` in the wheel's layout, so that an
    account that cannot enter the install's directories can still run it: postgres finds lib/
    and share/ relative to its own binary, and initdb finds the wheel's bundled libpq through
    its rpath (`$ORIGIN/../../../pgserver.libs`)."""
    dest = site / "pgserver" / "pginstall"
    (dest / "bin").mkdir(parents=True)
    for name in ("postgres", "initdb"):
        shutil.copy2(install / "bin" / name, dest / "bin" / name)
    shutil.copytree(install / "lib" / "postgresql", dest / "lib" / "postgresql",
                    ignore=shutil.ignore_patterns("pgxs"))
    shutil.copytree(install / "share" / "postgresql", dest / "share" / "postgresql")
    libs = install.parent.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "pgserver.libs")
    return dest


def setup_sql() -> str:
    """The first start's statements for `postgres --single -j` (each ends in ';' + blank line)."""
    return (f"CREATE EXTENSION IF NOT EXISTS vector;\n\n"
            f"CREATE ROLE {ROLE} LOGIN;\n\n"
            f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n\n")


class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.scratch: Path | None = None  # the private directory when run as root
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.account = Account(nobody.pw_uid, nobody.pw_gid, "nobody")
        else:
            self.account = Account(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)

    def _run(self, argv: list[str], *, stdin: bytes | None = None) -> None:
        if self.stopping:
            raise SystemExit(0)
        proc = self._spawn(argv, stdin=subprocess.PIPE if stdin is not None else None)
        proc.communicate(stdin)
        if proc.returncode != 0:
            raise SystemExit(f"pgvector: {Path(argv[0]).name} failed with exit code "
                             f"{proc.returncode} (its output is above)")

    def _spawn(self, argv: list[str], stdin: int | None = None) -> subprocess.Popen[bytes]:
        """The package's binaries (argv[0]) with checked arguments, as the account."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", TZ="UTC")
        cwd = self.scratch or Path(self.args.data).parent
        as_account: dict[str, Any] = ({"user": self.account.uid, "group": self.account.gid,
                                       "extra_groups": []} if os.geteuid() == 0 else {})
        return subprocess.Popen(argv, stdin=stdin, cwd=cwd, env=env,  # noqa: S603 - no shell
                                **as_account)

    def serve(self) -> int:
        install = find_install()
        data = Path(self.args.data).resolve()
        if os.geteuid() == 0:
            self.scratch = Path(tempfile.mkdtemp(prefix="aifb-pgvector-", dir=_open_temp_dir()))
            install = private_copy(install, self.scratch / "site")
            data = self.scratch / "data"
            data.mkdir(mode=0o700)
            for path in (self.scratch, data):  # 0700 both, the account's own
                os.chown(path, self.account.uid, self.account.gid)
            print(f"pgvector: running as {self.account.name} (postgres refuses root), data in "
                  f"{data}", file=sys.stderr, flush=True)
        bin_dir = install / "bin"
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                       "--locale=C", "--auth=reject", "--no-sync"])
            (data / "pg_hba.conf").write_text(_HBA)
            self._run([str(bin_dir / "postgres"), "--single", "-D", str(data), "-j",
                       "-c", "exit_on_error=on", "template1"], stdin=setup_sql().encode())
        a = self.args
        self.proc = self._spawn([
            str(bin_dir / "postgres"), "-D", str(data), "-c", f"listen_addresses={a.host}",
            "-c", f"port={a.port}", "-c", "unix_socket_directories=",
            "-c", f"max_connections={a.max_connections}",
            "-c", f"shared_buffers={a.shared_buffers}",
            "-c", f"maintenance_work_mem={a.maintenance_work_mem}"])
        if self.stopping:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait()
        return 128 - code if code < 0 else code

    def stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: a fast shutdown of postgres, or no start at all if it has none yet."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def clean(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _open_temp_dir() -> str:
    """A temp dir `nobody` can enter: the job's $TMPDIR may be private to its user."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if all(os.stat(p).st_mode & 0o001 for p in (Path(candidate), *Path(candidate).parents)):
            return candidate
    raise SystemExit("pgvector: no temp dir that the unprivileged account can enter")


def _size(text: str) -> str:
    if not _SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 128MB, 1GB or 512kB")
    return text


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m aifb.recipes.pgvector_server",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="0.0.0.0", help="listen_addresses (one address or '*')")
    ap.add_argument("--port", type=int, default=5432)
    ap.add_argument("--data", required=True, help="data directory (initialised when empty)")
    ap.add_argument("--max-connections", type=int, default=100)
    ap.add_argument("--shared-buffers", type=_size, default="128MB")
    ap.add_argument("--maintenance-work-mem", type=_size, default="64MB",
                    help="memory for building an index (HNSW builds are faster in memory)")
    a = ap.parse_args(argv)
    if not 1 <= a.port <= 65535:
        ap.error("--port must be in 1..65535")
    if not 1 <= a.max_connections <= 10_000:
        ap.error("--max-connections must be in 1..10000")
    if not re.fullmatch(r"[0-9A-Za-z.:*-]{1,255}", a.host):
        ap.error("--host must be one address, a host name or '*'")
    return a


def main(argv: list[str] | None = None) -> None:
    launcher = Launcher(_parse(argv))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, launcher.stop)
    try:
        code = launcher.serve()
    finally:
        launcher.clean()
    sys.exit(code)


if __name__ == "__main__":
    main()
