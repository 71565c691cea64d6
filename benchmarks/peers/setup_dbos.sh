#!/usr/bin/env bash
# Creates benchmarks/peers/.envs/dbos with DBOS Transact (pinned), numpy and the
# PostgreSQL driver DBOS uses (psycopg 3, via the dbos dependency set). Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV="$HERE/.envs/dbos"
DBOS_VERSION="${DBOS_VERSION:-3.4.0}"
PY="${PYTHON:-python3}"

if [ ! -x "$ENV/bin/python" ]; then
    mkdir -p "$HERE/.envs"
    "$PY" -m venv "$ENV"
fi
if "$ENV/bin/python" - "$DBOS_VERSION" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version
import numpy, psycopg  # noqa: F401
sys.exit(0 if version("dbos") == sys.argv[1] else 1)
PYEOF
    echo "dbos $DBOS_VERSION already installed in $ENV"
    exit 0
fi
"$ENV/bin/python" -m pip install --quiet --upgrade pip
"$ENV/bin/python" -m pip install --quiet "dbos==$DBOS_VERSION" numpy "psycopg[binary]"
"$ENV/bin/python" -c "import dbos, numpy, psycopg; from importlib.metadata import version; print('dbos', version('dbos'), 'installed in $ENV')"
