#!/usr/bin/env bash
# Stop the Temporal dev server started by start_temporal.sh: kill exactly the pid in its pid file,
# wait for it to exit (SIGKILL after a bounded wait), then remove its data directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${TEMPORAL_RUN_DIR:-$HERE/.envs/run/temporal}"
DATA_DIR="$RUN_DIR/data"
PID_FILE="$RUN_DIR/temporal.pid"
WAIT_S="${TEMPORAL_STOP_TIMEOUT:-20}"

if [ -f "$PID_FILE" ]; then
    PID="$(cat "$PID_FILE")"
    if kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        deadline=$((SECONDS + WAIT_S))
        while kill -0 "$PID" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "stop_temporal.sh: pid $PID still alive after ${WAIT_S}s; sending SIGKILL" >&2
                kill -KILL "$PID" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.1
        done
        echo "temporal dev server stopped (pid $PID)"
    else
        echo "temporal dev server (pid $PID) was not running"
    fi
    rm -f "$PID_FILE"
else
    echo "no temporal pid file at $PID_FILE; nothing to stop"
fi
rm -rf "$DATA_DIR"
rm -f "$RUN_DIR/temporal.settings"
