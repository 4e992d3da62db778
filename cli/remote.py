"""Channels from the CLI to components other than the server (collector, monitor, logger).

In embedded mode every component answers on the server's address; in cluster mode each has
its own. The token and TLS settings are the CLI's (a shared home holds the one token).
"""

from __future__ import annotations

import grpc

from aifb.cli.context import CliState
from aifb.mesh.channel import load_token, open_sync_channel

__all__ = ["channel_to"]

_channels: dict[str, grpc.Channel] = {}


def channel_to(state: CliState, address: str | None) -> grpc.Channel:
    """A channel to `address`, or to the server's when it is None or empty."""
    if not address or address == state.address:
        return state.channel()
    if address not in _channels:
        mesh = state.config.mesh
        _channels[address] = open_sync_channel(
            address, token=load_token(mesh.home_path),
            ca_file=mesh.tls_client_ca if mesh.tls else "")
    return _channels[address]
