#!/usr/bin/env bash
# upgrade-deps.sh - move the locked versions forward on purpose, as one reviewed commit:
# re-resolve uv.lock within pyproject.toml's ranges (every package, or only those named), install
# the result into .venv, regenerate gen/ with the new generators, run the static checks, and print
# what moved. Then run scripts/test.sh and commit uv.lock, gen/ and any floors you raised together.
#
# Usage: scripts/upgrade-deps.sh [PACKAGE[==VERSION]...] [--uv VERSION] [--npm]
#   (none)            upgrade every Python package to the newest release the ranges allow
#   PACKAGE           upgrade only these (e.g. grpcio-tools), or set one (grpcio-tools==1.85.4)
#   --uv VERSION      move the bootstrap uv too (scripts/uv-requirements.txt and pyproject.toml)
#   --npm             also re-resolve package-lock.json within package.json's ranges
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

packages=(); new_uv=""; npm=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uv) [ $# -ge 2 ] || { log "upgrade-deps.sh: --uv needs a version"; exit 2; }; new_uv=$2; shift ;;
    --npm) npm=1 ;;
    -h|--help) sed -n "2,11p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) log "upgrade-deps.sh: unknown option '$1' (see --help)"; exit 2 ;;
    *) packages+=("$1") ;;
  esac
  shift
done

PY=$(base_python)
ensure_uv "$PY"
old=$(mktemp); trap 'rm -f "$old"' EXIT
cp uv.lock "$old"

if [ -n "$new_uv" ]; then
  log "moving uv to $new_uv"
  in=$(mktemp)
  echo "uv==$new_uv" > "$in"
  hashes=$("$UV" pip compile -q --generate-hashes --universal --no-header --no-annotate "$in")
  rm -f "$in"
  { sed -n '/^#/p' scripts/uv-requirements.txt; echo "$hashes"; } > scripts/uv-requirements.txt.new
  mv scripts/uv-requirements.txt.new scripts/uv-requirements.txt
  sed -i "s/^required-version = \"==[^\"]*\"/required-version = \"==$new_uv\"/" pyproject.toml
  ensure_uv "$PY"
fi

if [ ${#packages[@]} -eq 0 ]; then
  log "re-resolving uv.lock: every package"
  "$UV" lock -q --upgrade
else
  log "re-resolving uv.lock: ${packages[*]}"
  args=(); for p in "${packages[@]}"; do args+=(--upgrade-package "$p"); done
  "$UV" lock -q "${args[@]}"
fi
if [ "$npm" = 1 ]; then
  log "re-resolving package-lock.json"
  npm update --no-audit --no-fund --loglevel=error >/dev/null
fi

scripts/setup.sh --extra spark --extra vectordb   # what the static checks and the tests import
scripts/gen-protos.sh

log "what moved in uv.lock"
"$PY" - "$old" uv.lock <<'PYEOF'
import sys
import tomllib

def versions(path):
    out = {}
    for p in tomllib.load(open(path, "rb")).get("package", []):
        out.setdefault(p["name"], set()).add(p.get("version", "?"))
    return {k: ", ".join(sorted(v)) for k, v in out.items()}

old, new = versions(sys.argv[1]), versions(sys.argv[2])
moved = [f"  {n}: {old.get(n, '(new)')} -> {new.get(n, '(removed)')}"
         for n in sorted(old.keys() | new.keys()) if old.get(n) != new.get(n)]
print("\n".join(moved) if moved else "  nothing: every package was already the newest allowed")
PYEOF

log "static checks"
scripts/check-lock.sh
.venv/bin/ruff check .
scripts/typecheck.sh
[ -x node_modules/.bin/buf ] && node_modules/.bin/buf lint
scripts/gen-protos.sh --check
log "done: now scripts/test.sh, then review and commit uv.lock, gen/ (and the floors, if --check asked) together"
