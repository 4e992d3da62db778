#!/usr/bin/env bash
# gen-protos.sh - regenerate gen/ from protos/ (protobuf + grpcio stubs + .pyi, and the
# betterproto2 dataclass client). Deterministic: `scripts/gen-protos.sh --check` fails when the
# committed gen/ differs from what the protos produce.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}; PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
export PATH="$(dirname "$PY"):$PATH"   # protoc-gen-python_betterproto2 lives beside the interpreter

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/python" "$out/betterproto"
protos=$(cd protos && find aifb -name '*.proto' | sort)
(cd protos && "$PY" -m grpc_tools.protoc -I . \
  --python_out="$out/python" --pyi_out="$out/python" --grpc_python_out="$out/python" $protos)
(cd protos && "$PY" -m grpc_tools.protoc -I . \
  --python_betterproto2_out="$out/betterproto" \
  --python_betterproto2_opt=client_generation=sync $protos) 2> >(grep -v "^Writing" >&2)
# Third-party wire formats (Prometheus remote write, Loki push), outside the buf module.
wire=$(cd protos-wire && find aifb -name '*.proto' | sort)
(cd protos-wire && "$PY" -m grpc_tools.protoc -I . --python_out="$out/python" --pyi_out="$out/python" $wire)
touch "$out/python/aifb/wire/__init__.py" "$out/python/aifb/wire/py.typed"
# aifb is a namespace package: the stubs own aifb/v1 only.
rm -f "$out/python/aifb/__init__.py"
touch "$out/python/aifb/v1/__init__.py" "$out/python/aifb/v1/py.typed"

if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x __pycache__ -x pyproject.toml -x README.md "$out/python/aifb" gen/python/aifb >/dev/null \
     || ! diff -r -x __pycache__ "$out/betterproto" gen/betterproto/aifb/dataclasses >/dev/null; then
    echo "gen/ is stale: run scripts/gen-protos.sh and commit the result" >&2
    diff -r -x __pycache__ -x pyproject.toml -x README.md "$out/python/aifb" gen/python/aifb | head -20 >&2 || true
    exit 1
  fi
  echo "gen/ is up to date"
  exit 0
fi
rm -rf gen/python/aifb gen/betterproto
mkdir -p gen/python gen/betterproto/aifb
cp -r "$out/python/aifb" gen/python/aifb
cp -r "$out/betterproto" gen/betterproto/aifb/dataclasses
echo "generated gen/python/aifb/v1 and gen/betterproto/aifb/dataclasses"
