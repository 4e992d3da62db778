#!/usr/bin/env bash
# check-lock.sh - what is installed is what is locked: uv.lock matches pyproject.toml
# (`uv lock --check`), the bootstrap uv is the one pyproject requires, and .venv holds exactly the
# packages uv.lock gives for its extras (`uv sync --check`). No network, well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
pinned=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv-requirements.txt)
required=$(sed -n 's/^required-version = "==\([^"]*\)".*/\1/p' pyproject.toml)
if [ "$pinned" != "$required" ]; then
  log "scripts/uv-requirements.txt pins uv $pinned but pyproject.toml requires uv $required: make them equal (scripts/upgrade-deps.sh --uv VERSION)"
  exit 1
fi
if ! out=$("$UV" lock --check 2>&1); then
  echo "$out" >&2
  log "uv.lock does not match pyproject.toml: run scripts/upgrade-deps.sh (or '$UV lock' for a dependency you added) and commit uv.lock"
  exit 1
fi
args=()
while read -r e; do args+=(--extra "$e"); done < .venv/.aifb-extras
if ! out=$("$UV" sync --frozen --check "${args[@]}" 2>&1); then
  echo "$out" >&2
  log ".venv differs from uv.lock: run scripts/setup.sh"
  exit 1
fi
echo "uv.lock matches pyproject.toml; .venv matches uv.lock (uv $pinned; extras: $(echo $(cat .venv/.aifb-extras)))"
