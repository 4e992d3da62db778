#!/usr/bin/env bash
# gen-protos.sh - regenerate gen/ from protos/ (protobuf + grpcio stubs + .pyi, and the
# betterproto2 dataclass client) with the generators pinned in uv.lock, and record their versions
# in gen/GENERATORS. Deterministic: `scripts/gen-protos.sh --check` fails when the committed gen/
# differs from what the protos produce, naming the generator versions of gen/ and of this
# environment when those differ, and when gen/ needs a newer grpcio or protobuf at import time
# than pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}; PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
export PATH="$(dirname "$PY"):$PATH"   # protoc-gen-python_betterproto2 lives beside the interpreter
GENERATORS=(grpcio-tools betterproto2-compiler)
generators_here() {  # "name==version" of each generator installed for $PY, one a line
  "$PY" - "${GENERATORS[@]}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"{name}==(not installed)")
PYEOF
}
generators_of_gen() { grep -v '^#' gen/GENERATORS 2>/dev/null || echo "(no gen/GENERATORS)"; }

if [ "${1:-}" = "--check" ]; then
  here=$(generators_here); there=$(generators_of_gen)
  if [ "$here" != "$there" ]; then
    echo "gen/ is stale for this environment: gen/ was made by $(echo $there | sed 's/ /, /g');" \
         "$PY has $(echo $here | sed 's/ /, /g'). Run scripts/setup.sh to install the locked" \
         "generators, or scripts/upgrade-deps.sh to move to new ones on purpose." >&2
    exit 1
  fi
fi

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
  # The generated code checks the runtime at import (_pb2_grpc: grpcio >= GRPC_GENERATED_VERSION;
  # _pb2: protobuf >= the protoc it came from): the floors users get from pip must cover that.
  "$PY" - <<'PYEOF' || exit 1
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

gen = Path("gen/python/aifb/v1")
need = {
    "grpcio": max(Version(m) for f in gen.glob("*_pb2_grpc.py")
                  for m in re.findall(r"GRPC_GENERATED_VERSION = '([^']+)'", f.read_text())),
    "protobuf": max(Version(".".join(m)) for f in gen.glob("*_pb2.py")
                    for m in re.findall(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version"
                                        r"\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)",
                                        f.read_text())),
}
bad = []
for project in ("pyproject.toml", "gen/python/pyproject.toml"):
    deps = [Requirement(d) for d in tomllib.loads(Path(project).read_text())["project"]["dependencies"]]
    for name, version in need.items():
        for req in (r for r in deps if r.name == name):
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
            if not floors or max(floors) < version:
                bad.append(f"{project} allows {req} but gen/ needs {name}>={version} at import")
if bad:
    print("gen/ needs a newer runtime than the library asks for: " + "; ".join(bad)
          + ". Raise those floors.", file=sys.stderr)
    sys.exit(1)
PYEOF
  echo "gen/ is up to date ($(echo $(generators_here) | sed 's/ /, /g'))"
  exit 0
fi
rm -rf gen/python/aifb gen/betterproto
mkdir -p gen/python gen/betterproto/aifb
cp -r "$out/python/aifb" gen/python/aifb
cp -r "$out/betterproto" gen/betterproto/aifb/dataclasses
{ echo "# The generators that made gen/ (scripts/gen-protos.sh writes this; --check compares it)."
  generators_here; } > gen/GENERATORS
echo "generated gen/python/aifb/v1 and gen/betterproto/aifb/dataclasses ($(echo $(generators_here) | sed 's/ /, /g'))"
