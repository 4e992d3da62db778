#!/usr/bin/env bash
# test.sh - set up everything the tests need (venv, npm tools, Debian packages, a local SLURM)
# and run the checks and every test tier. This is what CI runs (.ci/run).
# Usage: scripts/test.sh [pytest args...]    e.g. scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/setup.sh
apt_install nginx-light redis-server prometheus curl procps openssl
scripts/start-slurm.sh start
export AIFB_REQUIRE_SLURM=1
# Spark (the `spark` extra: pyspark, pyarrow) runs on Java 17.
command -v java >/dev/null || apt_install default-jre-headless
.venv/bin/python -c 'import pyspark, pyarrow' 2>/dev/null || .venv/bin/python -m pip install -q -e '.[spark]'
export AIFB_REQUIRE_SPARK=1
# Chroma (the `vectordb` extra: pip chromadb, ~400 MB) for the vectordb workload tests.
[ -x .venv/bin/chroma ] || .venv/bin/python -m pip install -q -e '.[vectordb]'
export AIFB_REQUIRE_CHROMA=1
log "static checks: ruff, mypy, buf lint, gen/ up to date"
.venv/bin/ruff check .
scripts/typecheck.sh
node_modules/.bin/buf lint
scripts/gen-protos.sh --check
log "tests"
exec .venv/bin/pytest "$@"
