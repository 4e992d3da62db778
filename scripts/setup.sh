#!/usr/bin/env bash
# setup.sh - create .venv with aifb (editable) and its dev tools; install the npm tools.
# Idempotent and quiet when nothing changed. Usage: scripts/setup.sh [--no-npm]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "aifb needs Python >= 3.11 ($PY is $("$PY" -V 2>&1))"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi
stamp=.venv/.aifb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing aifb and its dev tools into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev,gpu]'
  touch "$stamp"
fi
if [ "${1:-}" != "--no-npm" ]; then
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  if [ ! -x node_modules/.bin/buf ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing npm tools (buf, @grpc/grpc-js)"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
