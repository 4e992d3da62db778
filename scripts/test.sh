#!/usr/bin/env bash
# test.sh - set up everything the tests need (venv, npm tools, Debian packages, a local SLURM)
# and run the checks and every test tier. This is what CI runs (.ci/run).
# Usage: scripts/test.sh [pytest args...]    e.g. scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/setup.sh
apt_install nginx-light redis-server prometheus curl procps
scripts/start-slurm.sh start
export AIFB_REQUIRE_SLURM=1
log "static checks: ruff, mypy, buf lint, gen/ up to date"
.venv/bin/ruff check .
scripts/typecheck.sh
node_modules/.bin/buf lint
scripts/gen-protos.sh --check
log "tests"
exec .venv/bin/pytest "$@"
