#!/usr/bin/env bash
# setup.sh - install exactly what the lock files say: .venv from uv.lock (aifb editable, its dev
# tools and the extras asked for: versions and hashes, nothing resolved anew) and the npm tools
# from package-lock.json (`npm ci`). Quiet and fast when nothing changed; scripts/upgrade-deps.sh
# is how the locks move.
#
# Usage: scripts/setup.sh [--no-npm] [--extra NAME]...
#   --extra NAME   also install an extra of pyproject.toml: spark, vectordb, llm, bench (dev and gpu
#                  always). .venv keeps the extras of earlier runs, so a later plain setup does
#                  not uninstall what scripts/test.sh added.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

npm=1; extras=(dev gpu)
while [ $# -gt 0 ]; do
  case "$1" in
    --no-npm) npm=0 ;;
    --extra) [ $# -ge 2 ] || { log "setup.sh: --extra needs a name"; exit 2; }; extras+=("$2"); shift ;;
    *) log "setup.sh: unknown option '$1' (usage: scripts/setup.sh [--no-npm] [--extra NAME]...)"; exit 2 ;;
  esac
  shift
done

PY=$(base_python)
ensure_uv "$PY"
kept=.venv/.aifb-extras
if [ -f "$kept" ]; then mapfile -t -O "${#extras[@]}" extras < "$kept"; fi
mapfile -t extras < <(printf '%s\n' "${extras[@]}" | sort -u)
# The llm extra's llama-cpp-python is an sdist: it compiles llama.cpp with the system's compiler,
# cmake and ninja (Debian's; otherwise its build would fetch unpinned ones from the index).
if printf '%s\n' "${extras[@]}" | grep -qx llm; then apt_install build-essential cmake ninja-build; fi
args=(--frozen --python "$PY")
for e in "${extras[@]}"; do args+=(--extra "$e"); done
if [ ! -x .venv/bin/python ]; then
  log "creating .venv from uv.lock (extras: ${extras[*]})"
  "$UV" sync -q "${args[@]}"
elif ! out=$("$UV" sync "${args[@]}" 2>&1); then
  echo "$out" >&2; exit 1
else
  # Say what changed (nothing, on a second run); uv's own lines otherwise.
  grep -E '^ *(Installed|Uninstalled|Removed virtual environment)' <<<"$out" | sed 's/^ */[aifb] .venv: /' >&2 || true
fi
printf '%s\n' "${extras[@]}" > "$kept"

if [ "$npm" = 1 ]; then
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  if [ ! -x node_modules/.bin/buf ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing npm tools (buf, @grpc/grpc-js) from package-lock.json"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
