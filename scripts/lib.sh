# lib.sh - shell helpers shared by the project's scripts (sourced, not run).
log() { echo "[aifb] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {  # apt_install PKG... : install the Debian packages that are missing
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# uv installs .venv from uv.lock; it lives in the checkout (.tools/uv), at the version and hashes
# of scripts/uv-requirements.txt. Paths are relative to the repository root, where every script runs.
UV=.tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS=never   # the machine's Python, never one fetched by uv
base_python() {  # the interpreter .venv is made from ($PYTHON or python3), absolute, >= 3.11
  local py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "aifb needs Python >= 3.11 ($py is $("$py" -V 2>&1 || echo 'not found'))"; return 1
  fi
  "$py" -c 'import sys; print(sys.executable)'
}
ensure_uv() {  # ensure_uv PYTHON : install the pinned uv into .tools/uv unless it is there already
  local want have out
  want=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv-requirements.txt)
  have=$("$UV" --version 2>/dev/null | cut -d' ' -f2) || true
  [ "$have" = "$want" ] && return 0
  log "installing uv $want into .tools/uv (scripts/uv-requirements.txt, hash-checked)"
  "$1" -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  rm -rf .tools/uv
  # --target installs beside the checkout, never into the system's Python.
  if ! out=$("$1" -m pip install --disable-pip-version-check --no-deps --only-binary=:all: \
        --require-hashes --target .tools/uv -r scripts/uv-requirements.txt 2>&1); then
    echo "$out" >&2; log "could not install uv $want"; return 1
  fi
}
