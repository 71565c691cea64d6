#!/usr/bin/env bash
# Stop the Restate peer started by start_restate.sh: signal exactly the two pids in its pid files
# (restate-server first, then the hypercorn service; SIGKILL after a bounded wait), then remove
# the server's data directory.
#
# The service gets SIGINT, not SIGTERM: on its first request the Restate SDK's ASGI app installs
# its own asyncio SIGTERM handler (restate/server.py install_shutdown_hook), which replaces
# hypercorn's, so after any request hypercorn never hears a SIGTERM and would only die by SIGKILL.
# hypercorn's SIGINT handler is left in place and shuts it down cleanly.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${BENCH_RESTATE_RUN_DIR:-$HERE/.envs/run/restate}"
WAIT_S="${BENCH_RESTATE_STOP_TIMEOUT:-20}"

stop_pid_file() {  # stop_pid_file <name> <signal>
    local name="$1" sig="$2" pf="$RUN_DIR/$1.pid" pid
    if [ ! -f "$pf" ]; then
        echo "no restate $name pid file at $pf; nothing to stop"
        return
    fi
    pid="$(cat "$pf")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + WAIT_S))
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "stop_restate.sh: $name pid $pid still alive after ${WAIT_S}s; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.1
        done
        echo "restate $name stopped (pid $pid)"
    else
        echo "restate $name (pid $pid) was not running"
    fi
    rm -f "$pf"
}

stop_pid_file server TERM
stop_pid_file service INT

if [ -f "$RUN_DIR/basedir" ]; then
    BASE_DIR="$(cat "$RUN_DIR/basedir")"
    # Only ever remove a directory that start_restate.sh made.
    case "$(basename "$BASE_DIR")" in
        duro-bench-restate.*) rm -rf "$BASE_DIR" ;;
        *) echo "stop_restate.sh: not removing unexpected data directory '$BASE_DIR'" >&2 ;;
    esac
    rm -f "$RUN_DIR/basedir"
fi
