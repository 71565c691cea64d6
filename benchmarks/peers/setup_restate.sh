#!/usr/bin/env bash
# Create the Restate peer's environments:
#   - benchmarks/peers/.envs/restate-npm: the real Restate server from the npm registry
#     (@restatedev/restate-server-linux-x64, or -linux-arm64 on aarch64: one static binary,
#     node_modules/@restatedev/restate-server-linux-<arch>/bin/restate-server);
#   - benchmarks/peers/.envs/restate: a venv with the pinned Python SDK (restate-sdk), the ASGI
#     server that serves it (hypercorn), the benchmark client's HTTP library (httpx) and numpy.
# Idempotent: does nothing when both already hold the pinned versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENVS="$HERE/.envs"
VENV="$ENVS/restate"
NPM_PREFIX="$ENVS/restate-npm"
RESTATE_SERVER_VERSION="1.7.12"
RESTATE_SDK_VERSION="1.3.0"
HYPERCORN_VERSION="0.18.0"
HTTPX_VERSION="0.28.1"
NUMPY_VERSION="2.4.6"

case "$(uname -m)" in
    x86_64 | amd64) ARCH="x64" ;;
    aarch64 | arm64) ARCH="arm64" ;;
    *) echo "setup_restate.sh: no restate-server npm package for $(uname -m)" >&2; exit 1 ;;
esac
NPM_PKG="@restatedev/restate-server-linux-$ARCH"
SERVER="$NPM_PREFIX/node_modules/$NPM_PKG/bin/restate-server"

mkdir -p "$ENVS"
# The environments and run state are machine-local: keep them out of git.
[ -f "$ENVS/.gitignore" ] || printf '*\n' > "$ENVS/.gitignore"

have_server() {
    [ -x "$SERVER" ] && [ "$("$SERVER" --version 2>/dev/null)" = "restate-server $RESTATE_SERVER_VERSION" ]
}

have_venv() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/hypercorn" ] || return 1
    "$VENV/bin/python" - "$RESTATE_SDK_VERSION" "$HYPERCORN_VERSION" "$HTTPX_VERSION" "$NUMPY_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["restate-sdk", "hypercorn", "httpx", "numpy"], sys.argv[1:]))
sys.exit(0 if all(version(name) == v for name, v in want.items()) else 1)
EOF
}

if ! have_server; then
    command -v npm >/dev/null || { echo "setup_restate.sh: npm is required (apt-get install npm)" >&2; exit 1; }
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error \
        "$NPM_PKG@$RESTATE_SERVER_VERSION" >/dev/null
    if ! have_server; then
        echo "setup_restate.sh: npm install finished but $SERVER is missing or is not $RESTATE_SERVER_VERSION" >&2
        ls -R "$NPM_PREFIX/node_modules/@restatedev" >&2 || true
        exit 1
    fi
fi

if ! have_venv; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "restate-sdk==$RESTATE_SDK_VERSION" "hypercorn==$HYPERCORN_VERSION" \
        "httpx==$HTTPX_VERSION" "numpy==$NUMPY_VERSION"
    if ! have_venv; then
        echo "setup_restate.sh: pip install finished but the pins are not all in $VENV" >&2
        exit 1
    fi
fi

echo "restate env ready: $("$SERVER" --version) at $SERVER; venv $VENV" \
     "(restate-sdk==$RESTATE_SDK_VERSION, hypercorn==$HYPERCORN_VERSION, httpx==$HTTPX_VERSION, numpy==$NUMPY_VERSION)"
