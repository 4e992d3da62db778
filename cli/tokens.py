"""`aifb tokens create`: issue a bearer token for another user of this server (local admin)."""

from __future__ import annotations

import typer

from aifb.cli.context import handle_errors, state_of
from aifb.mesh.auth import TokenStore

app = typer.Typer(help="Manage bearer tokens (run on the server's host, as its owner).",
                  no_args_is_help=True)


@app.command()
def create(ctx: typer.Context,
           user: str = typer.Option(..., "--user", "-u", help="The user the token belongs to.")
           ) -> None:
    """Issue a token for USER and print it once (only its hash is stored).

    The running server sees the new token at once (it re-reads the store when it changes):
    no restart is needed. Give the token to USER; they put it in their ~/.aifb/token (mode 0600)
    or send it as `authorization: Bearer <token>`.
    """
    state = state_of(ctx)
    with handle_errors(state):
        token = TokenStore(state.config.mesh.home_path).issue(user)
        state.emit({"user": user, "token": token}, lambda: print(token))
