"""Options every `serve`-like command (`up`, `bench serve`, the agents and the collector) shares,
declared once so that their flags and help read the same everywhere."""

from __future__ import annotations

import typer

INSECURE = typer.Option(None, "--insecure", help="Allow a non-loopback listen address without "
                        "TLS (trusted networks only).")
TLS_CERT = typer.Option(None, help="Server certificate (PEM).")
TLS_KEY = typer.Option(None, help="Server key (PEM).")
TLS_CLIENT_CA = typer.Option(None, help="CA for client certificates (enables mTLS; needs "
                             "--tls-cert and --tls-key).")
TLS_CA = typer.Option(None, help="CA (PEM) that signed --tls-cert, handed to jobs and agents to "
                      "verify this server (default: --tls-cert itself, right for a self-signed "
                      "certificate).")
TLS_MESH_CERT = typer.Option(None, help="Client certificate (PEM) that jobs, their sidecars and "
                             "the embedded agents present under mTLS (signed by "
                             "--tls-client-ca).")
TLS_MESH_KEY = typer.Option(None, help="Key of --tls-mesh-cert (PEM).")
NO_AUTH = typer.Option(False, "--no-auth", help="Disable bearer-token auth (single-user machines "
                       "only).")
