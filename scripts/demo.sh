#!/usr/bin/env bash
# demo.sh - set up aifb and run the embedded demo (`aifb demo`): one command on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-npm
source scripts/lib.sh
apt_install nginx-light
exec .venv/bin/aifb demo "$@"
