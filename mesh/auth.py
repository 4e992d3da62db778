"""Bearer-token auth: token files (mode 0600), the token store, and who is calling."""

from __future__ import annotations

import contextvars
import getpass
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aifb.mesh.errors import InvalidArgument
from aifb.mesh.private import private_dir

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "Principal",
    "TokenStore",
    "current_principal",
    "hash_token",
    "read_token_file",
    "write_private_file",
]


@dataclass(frozen=True)
class Principal:
    """Who is calling. `service` is set for in-job report tokens, which may only report events
    for that one service; `user` owns what it creates."""

    user: str
    service: str = ""
    # The bearer token the call came with; never printed or compared. A service that calls
    # another on the caller's behalf forwards it, so that one's ownership checks apply.
    token: str = field(default="", repr=False, compare=False)

    @property
    def is_job(self) -> bool:
        return bool(self.service)


ANONYMOUS = Principal(user="anonymous")

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "aifb_principal", default=ANONYMOUS
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def write_private_file(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` created with mode 0600 (never briefly
    world-readable), replacing it atomically."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_token_file(path: Path) -> str:
    """Read a token file, refusing one that other users can read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InvalidArgument(
            f"token file {path} has mode {mode:o}; it must be readable by its owner only "
            f"(chmod 600 {path})",
            field="token_file",
        )
    return path.read_text(encoding="utf-8").strip()


class TokenStore:
    """Users' tokens, stored as SHA-256 hashes in `<home>/tokens.json` (mode 0600).

    The file is re-read when it changes, so `aifb tokens create` needs no server restart."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "tokens.json"
        self._hashes: dict[str, str] = {}
        self._mtime = 0.0
        self._load()

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._hashes = dict(json.loads(self.path.read_text(encoding="utf-8")))
            self._mtime = mtime

    def _save(self) -> None:
        write_private_file(self.path, json.dumps(self._hashes, indent=1, sort_keys=True))
        self._mtime = self.path.stat().st_mtime

    def issue(self, user: str) -> str:
        """Create a new token for `user` and return it (only its hash is kept)."""
        self._load()
        if not user or not user.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InvalidArgument(f"bad user name {user!r}", field="user")
        token = "aifb_" + secrets.token_urlsafe(32)
        self._hashes[hash_token(token)] = user
        self._save()
        return token

    def ensure_owner_token(self) -> Path:
        """At first start: a token for the user running the server, in `<home>/token` (0600)."""
        token_path = self.home / "token"
        if token_path.exists():
            token = read_token_file(token_path)
            if hash_token(token) in self._hashes:
                return token_path
        write_private_file(token_path, self.issue(getpass.getuser()) + "\n")
        return token_path

    def user_for(self, token: str) -> str | None:
        """The user owning `token`; tokens issued by another process are seen at once."""
        self._load()
        digest = hash_token(token)
        # Keyed by SHA-256 of a 256-bit random token: a lookup leaks nothing usable by timing.
        return self._hashes.get(digest)


class Authenticator:
    """Resolves a bearer token to a Principal: users' tokens first, then extra resolvers
    (the server adds one for per-service report tokens)."""

    def __init__(self, store: TokenStore | None, *, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled
        self._resolvers: list[Callable[[str], Principal | None]] = []

    def add_resolver(self, resolver: Callable[[str], Principal | None]) -> None:
        self._resolvers.append(resolver)

    def authenticate(self, token: str | None) -> Principal | None:
        if not self.enabled:
            return Principal(user=getpass.getuser()) if not token else self._resolve(token) or (
                Principal(user=getpass.getuser())
            )
        if not token:
            return None
        return self._resolve(token)

    def _resolve(self, token: str) -> Principal | None:
        if self.store is not None:
            user = self.store.user_for(token)
            if user:
                return Principal(user=user, token=token)
        for resolver in self._resolvers:
            found = resolver(token)
            if found is not None:
                return found
        return None
