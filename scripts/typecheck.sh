#!/usr/bin/env bash
# typecheck.sh - mypy --strict over our packages (not gen/). mypy does not follow setuptools'
# editable-install finder, so this lays out the `aifb` import root as links in .typecheck/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.typecheck/aifb
rm -rf .typecheck && mkdir -p "$root"
pkgs=()
for d in mesh job server client monitor logger collector experiment cli recipes; do
  ln -s "../../$d" "$root/$d"; pkgs+=(-p "aifb.$d")
done
ln -s ../../gen/python/aifb/v1 "$root/v1"
ln -s ../../gen/python/aifb/wire "$root/wire"
MYPYPATH=.typecheck exec .venv/bin/mypy "${pkgs[@]}" "$@"
