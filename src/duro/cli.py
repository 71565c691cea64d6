r"""The ``duro`` command: look at and drive workflows in a store from a shell.

::

    duro [--store URL] list [--status S] [--type T] [--attr NAME=JSON ...] [--after T] [--before T]
                            [--limit N] [--page TOKEN] [--json]
    duro [--store URL] count [filters of list] [--json]
    duro [--store URL] describe WORKFLOW_ID [--run RUN_ID] [--json]
    duro [--store URL] history WORKFLOW_ID [--run RUN_ID] [--state QUERY [--state-arg JSON ...]] [--json]
    duro [--store URL] result WORKFLOW_ID [--timeout SECONDS] [--json]
    duro [--store URL] query WORKFLOW_ID NAME [JSON_ARG ...] [--run RUN_ID] [--at-event N] [--json]
    duro [--store URL] signal WORKFLOW_ID NAME [JSON_ARG ...]
    duro [--store URL] cancel WORKFLOW_ID
    duro [--store URL] terminate WORKFLOW_ID [--reason TEXT]
    duro [--store URL] batch cancel|terminate|signal [filters of list] [--signal NAME] [JSON_ARG ...] [--json]
    duro [--store URL] delete WORKFLOW_ID [--run RUN_ID]
    duro [--store URL] purge --before TIME [--json]
    duro [--store URL] reset WORKFLOW_ID --event-id N [--run-id RUN_ID] [--reason TEXT] [--json]
    duro [--store URL] start TYPE --id ID --task-queue Q [JSON_ARG ...] [--json]
    duro [--store URL] activity complete|fail|heartbeat TOKEN [JSON_OR_MESSAGE]
    duro [--store URL] check [--json]
    duro [--store URL] replay --module MODULE [--module ...] [--type T] [--since TIME] [--limit N]
                              [--determinism raise|warn|off] [--json]
    duro [--store URL] compact DEST
    duro copy SRC_URL DST_URL [--merge] [--force]
    duro ui [URL] [--host 127.0.0.1] [--port 8233] [--token TOKEN]
    duro [--store URL] schedule list|describe|create|pause|unpause|trigger|backfill|delete ...  (duro._schedule_cli)
    duro [--store URL] build set-current QUEUE BUILD [--json] | unset-current QUEUE [--json] | show QUEUE [--json]

The store is ``--store``, else the environment variable ``DURO_STORE``, else
``lmdb://./duro-data``. Arguments of workflows, signals and queries are JSON, one per word
(``'{"by": "alice"}'``, ``42``, ``'"text"'``). The exit status is one of ``ExitCode`` (``EXIT_CODES``
says what each means; docs/cli.md has the page). ``--json`` prints one JSON object on stdout.

Output is plain, stable text when stdout is not a terminal and ``rich`` tables and colours on one
(``--color auto|always|never``; duro._cli_output). Everything printed from the store (ids, names,
payloads, error messages) has its control characters escaped (``\x1b``), so a workflow id cannot
drive the terminal; JSON output escapes them as JSON does (``\u001b``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import enum
import importlib
import inspect
import json
import os
import sys
import textwrap
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from duro._cli_output import (
    COLOR_CHOICES,
    HISTORY_HEADERS,
    Output,
    check_lines,
    clean,
    copy_lines,
    execution_dict,
    failure_dict,
    failure_text,
    history_rows,
    history_title,
    json_safe,
    pending_text,
    replay_dict,
    replay_lines,
    state_cells,
    state_dict,
    time_text,
    to_json,
    versioning_dict,
    versioning_lines,
)
from duro._core import mdb
from duro._query import task_states
from duro._schedule_cli import add_schedule_parser, run_schedule
from duro._validate import MAX_DURATION_S, check_name
from duro.client import Client
from duro.errors import (
    ApplicationError,
    CancelledError,
    CorruptHistoryError,
    DuroError,
    PayloadTooLargeError,
    StoreCorruptedError,
    StoreLimitError,
    StoreURLError,
    TerminatedError,
    WorkflowFailedError,
)
from duro.stores import missing_store
from duro.stores.check import check_store
from duro.stores.copy import CopyReport, copy_store
from duro.stores.lmdb import open_lmdb_store
from duro.stores.urls import display_url
from duro.testing import DEFAULT_REPLAY_LIMIT, Replayer, WorkflowReplayResults
from duro.workflow import WorkflowDefinition

__all__ = ["DEFAULT_STORE", "EXIT_CODES", "STORE_ENV", "ExitCode", "clean", "main"]

DEFAULT_STORE = "lmdb://./duro-data"
STORE_ENV = "DURO_STORE"
UI_TOKEN_ENV = "DURO_UI_TOKEN"
STATUSES = ("running", "completed", "failed", "terminated", "canceled", "continued_as_new", "timed_out")


class ExitCode(enum.IntEnum):
    """The exit statuses of the ``duro`` command; ``EXIT_CODES`` describes each."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


# The one table of exit statuses: main returns them, `duro --help` and docs/cli.md show them.
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success (for check: no problem found)",
    ExitCode.FAILED: "the operation failed: an unknown workflow or schedule id, a closed run, a run that did not "
    "complete (result), problems found (check), workflows passed over (batch), runs that do not replay (replay), "
    "a store that is missing, damaged or unreachable, a missing optional extra (ui)",
    ExitCode.USAGE: "bad input: options, JSON arguments, the store URL, a value past a limit of the store",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class UsageError(Exception):
    """Bad input on the command line (ExitCode.USAGE)."""


class OperationError(Exception):
    """The operation could not be done (ExitCode.FAILED)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, reported in one line by ``main``."""

    def error(self, message: str) -> NoReturn:
        """Raise a UsageError instead of printing the usage and exiting."""
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------- parsing


def _name(what: str) -> Callable[[str], str]:
    """An argparse type for an id or a name: what the client accepts (non-empty, no NUL, not too long)."""

    def parse(text: str) -> str:
        try:
            return check_name(what, text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 (any free port) to 65535, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, at most {MAX_DURATION_S:.0f} (100 years), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``duro`` command.

    Returns:
        The parser; its namespaces carry ``command`` (the subcommand) and its options.
    """
    from duro import __version__

    # --store and --color are accepted before the subcommand and after it (a subcommand's value wins).
    store_help = f"the store URL (default: ${STORE_ENV}, else {DEFAULT_STORE})"
    color_help = ("tables and colours: auto (on a terminal; plain text into a pipe), always, never "
                  "(default auto)")
    common = _Parser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--color", choices=COLOR_CHOICES, default=argparse.SUPPRESS, help=color_help)

    parser = _Parser(
        prog="duro",
        description="Look at and drive duro workflows in a store.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", metavar="URL", default=None, help=store_help)
    parser.add_argument("--color", choices=COLOR_CHOICES, default="auto", help=color_help)
    parser.add_argument("--version", action="version", version=f"duro {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an unexpected error, print the Python traceback (to report a bug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list workflows (the latest run of each id)",
                       description="List workflows: the latest run of each workflow id.")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")
    p.add_argument("--type", dest="workflow_type", metavar="TYPE", help="only workflows of this registered type")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N", help="at most N workflows (default 100)")
    _filter_options(p)
    p.add_argument("--page", metavar="TOKEN", help="the next page (its token is printed after a full page)")
    p.add_argument("--json", action="store_true", help='print {"items": [...], "next_page_token": TOKEN or null}')

    p = sub.add_parser("count", parents=[common], help="count workflows (the latest run of each id) by filters",
                       description="Count the workflow ids whose latest run matches the filters of `list`.")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")
    p.add_argument("--type", dest="workflow_type", metavar="TYPE", help="only workflows of this registered type")
    _filter_options(p)
    p.add_argument("--json", action="store_true", help='print {"count": N}')

    p = sub.add_parser("describe", parents=[common], help="status, type, times and length of a run",
                       description="Describe a workflow run (the latest run unless --run is given).")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = sub.add_parser("history", parents=[common], help="the recorded events of a run",
                       description="Print the event history of a run (the latest run unless --run is given).")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--state", dest="state_query", metavar="QUERY", type=_name("query name"),
                   help="at each WorkflowTaskCompleted, show the answer of query QUERY as of that event (replayed "
                   "once by a worker of the run's task queue)")
    p.add_argument("--state-arg", dest="state_args", action="append", default=[], metavar="JSON",
                   help="an argument of the --state query, as JSON; repeat for several")
    p.add_argument("--json", action="store_true",
                   help="print the exact history as JSON (readable back with duro.History.from_json); with --state, "
                   'plus a "state" key')

    p = sub.add_parser("result", parents=[common], help="wait for a workflow and print its result",
                       description="Wait for the workflow to close and print its result as JSON. If it did not "
                       "complete (failed, cancelled, terminated, timed out), print the error and exit with 1.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up after this many seconds")
    p.add_argument("--json", action="store_true",
                   help='print {"workflow_id", "status", "result", "error"} (also when the run did not complete)')

    p = sub.add_parser("signal", parents=[common], help="send a signal",
                       description="Send signal NAME to the workflow, with each JSON_ARG as an argument.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("name", metavar="NAME", type=_name("name"))
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG")

    p = sub.add_parser("query", parents=[common], help="ask a workflow's query handler",
                       description="Ask query NAME of the workflow and print the answer as JSON. A worker of the "
                       "run's task queue (in any process) answers. With --at-event N, the answer as the run stood "
                       "right after event N of its history (after the workflow tasks completed by then), found by "
                       "replay.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("name", metavar="NAME", type=_name("name"))
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG")
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--at-event", type=_positive_int, metavar="N",
                   help="a time-travel query: as the run stood right after event N (see duro history)")
    p.add_argument("--json", action="store_true",
                   help='print {"workflow_id", "query", "args", "result"} (and "at_event" with --at-event)')

    p = sub.add_parser("cancel", parents=[common], help="request cancellation of a workflow",
                       description="Request cancellation: the workflow code sees asyncio.CancelledError.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))

    p = sub.add_parser("terminate", parents=[common], help="close a workflow at once",
                       description="Terminate the workflow: its run closes at once and its code does not run again.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--reason", default="", metavar="TEXT", help="why (recorded in the history)")

    p = sub.add_parser("batch", parents=[common], help="cancel, terminate or signal every workflow a filter matches",
                       description="Apply ACTION to the latest run of every workflow id that the filters match "
                       "(those of `list`; --status defaults to running) and print how many it reached. "
                       "signal takes --signal NAME and the signal's JSON arguments.")
    p.add_argument("action", choices=("cancel", "terminate", "signal"), metavar="ACTION",
                   help="cancel, terminate or signal")
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG", help="for signal: its arguments, as JSON")
    p.add_argument("--signal", dest="signal_name", metavar="NAME", type=_name("signal name"),
                   help="for signal: the signal's name")
    p.add_argument("--status", choices=STATUSES, default="running", help="runs with this status (default running)")
    p.add_argument("--type", dest="workflow_type", metavar="TYPE", help="only workflows of this registered type")
    _filter_options(p)
    p.add_argument("--reason", default="", metavar="TEXT", help="for terminate: why")
    p.add_argument("--json", action="store_true", help='print {"action", "done", "passed_over": [...]}')

    p = sub.add_parser("delete", parents=[common], help="delete a closed workflow run and its history",
                       description="Delete a closed run (the latest of the id unless --run is given) with its history. "
                       "A running run is refused: cancel or terminate it first.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")

    p = sub.add_parser("purge", parents=[common], help="delete every run closed before a time",
                       description="Delete every run closed before TIME, with its history (the store's retention, "
                       "?retention_days=, does this in the background). Prints how many.")
    p.add_argument("--before", type=_when, required=True, metavar="TIME",
                   help="ISO 8601 (UTC when no offset is given)")
    p.add_argument("--json", action="store_true", help='print {"deleted": N, "before": TIME}')

    p = sub.add_parser("reset", parents=[common], help="rerun a workflow from one of its workflow tasks",
                       description="Start a new run of the workflow from its WorkflowTaskCompleted event N, with the "
                       "workers' current code, and print the new run id. The new run keeps the history before N and "
                       "the signals and updates that arrived after it; an open run is terminated. `duro history` "
                       "shows the event ids.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--event-id", required=True, type=_positive_int, metavar="N",
                   help="the id of a WorkflowTaskCompleted event of the run")
    p.add_argument("--run-id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--reason", default="", metavar="TEXT", help="why (recorded in both runs' histories)")
    p.add_argument("--json", action="store_true", help='print {"workflow_id", "run_id"} (the new run)')

    p = sub.add_parser("start", parents=[common], help="start a workflow by its registered name",
                       description="Start a workflow of registered type TYPE with each JSON_ARG as an argument, "
                       "and print its run id. A worker of the task queue runs it.")
    p.add_argument("workflow_type", metavar="TYPE", type=_name("workflow type"))
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG")
    p.add_argument("--id", dest="workflow_id", required=True, metavar="ID", type=_name("workflow id"),
                   help="the workflow id")
    p.add_argument("--task-queue", required=True, metavar="Q", type=_name("task queue"),
                   help="the task queue whose workers run it")
    p.add_argument("--id-reuse-policy", default="allow_duplicate",
                   choices=("allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate"),
                   help="whether the id of a closed run may be used again (default allow_duplicate)")
    p.add_argument("--execution-timeout", type=_seconds, metavar="SECONDS", help="limit for the whole workflow")
    p.add_argument("--run-timeout", type=_seconds, metavar="SECONDS", help="limit for each run")
    p.add_argument("--id-conflict-policy", choices=("fail", "use_existing", "terminate_existing"),
                   help="when a run with the id is open: fail (default), use_existing (print its run id; "
                   "the default with --start-signal) or terminate_existing")
    p.add_argument("--start-signal", metavar="NAME", type=_name("signal name"),
                   help="signal-with-start: record this signal with the start (or on the open run)")
    p.add_argument("--start-signal-arg", dest="start_signal_args", action="append", default=[], metavar="JSON",
                   help="an argument of the start signal, as JSON (repeat for several)")
    p.add_argument("--json", action="store_true", help='print {"workflow_id", "run_id"}')

    p = sub.add_parser("activity", parents=[common], help="complete, fail or heartbeat an activity from outside",
                       description="Act on the activity attempt a task token names (ActivityInfo.task_token as "
                       "hex, typically of an activity that raised duro.CompleteAsync): complete it with the JSON "
                       "result, fail it with MESSAGE (the retry policy applies), or heartbeat it with JSON details.")
    p.add_argument("action", choices=("complete", "fail", "heartbeat"), metavar="ACTION",
                   help="complete, fail or heartbeat")
    p.add_argument("task_token", metavar="TOKEN", help="the task token, as hex")
    p.add_argument("value", nargs="?", metavar="JSON_OR_MESSAGE",
                   help="complete: the result (JSON, default null); fail: the error message; heartbeat: the "
                   "details (JSON, default none)")
    p.add_argument("--type", dest="error_type", metavar="TYPE", help="fail: the error's type (ApplicationError.type)")
    p.add_argument("--non-retryable", action="store_true", help="fail: do not retry, whatever the retry policy says")

    p = sub.add_parser("compact", parents=[common], help="write a compacted copy of an LMDB store",
                       description="Write a compacted copy of the LMDB store (free pages left out) into DEST, a new or "
                       "empty directory, while workers go on; then stop the workers and point them at DEST. "
                       "PostgreSQL reclaims space itself (autovacuum; VACUUM FULL to shrink files).")
    p.add_argument("destination", metavar="DEST", help="a new or empty directory")

    p = sub.add_parser("check", parents=[common], help="verify a store's files, histories and records",
                       description="Verify the store without writing to it: its files (LMDB) or its schema "
                       "version (PostgreSQL), that every event of every history decodes with consecutive ids, that "
                       "records, indexes, tasks and timers agree, and that no running run lacks the task that would "
                       "move it. Prints each problem (run, workflow id, event id); exit status 0 when none is found, "
                       "1 otherwise. Workers may go on using the store meanwhile.")
    p.add_argument("--json", action="store_true", help="print the report as a JSON object")

    p = sub.add_parser("replay", parents=[common], help="replay stored runs against workflow code (a deploy check)",
                       description="Import each --module (from the current directory, as `python -m` does), take "
                       "the @duro.workflow definitions in it, and replay against them the histories of the store's "
                       "runs of those types, running and closed (the latest run of each workflow id, newest first). "
                       "Prints each run the code diverges from (the event, what was recorded, what the code asks for "
                       "now and where) or fails on, then a summary; exit status 0 when every run replays, 1 "
                       "otherwise. Nothing is written; workers may go on using the store meanwhile.")
    p.add_argument("--module", dest="modules", action="append", required=True, metavar="MODULE",
                   help="a module holding the workflows, e.g. app.workflows; repeat for several")
    p.add_argument("--type", dest="workflow_type", metavar="TYPE", type=_name("workflow type"),
                   help="only runs of this workflow type (one of the modules')")
    p.add_argument("--since", type=_when, metavar="TIME",
                   help="only runs started at or after TIME (ISO 8601 date or time, UTC when no offset is given)")
    p.add_argument("--limit", type=_positive_int, default=DEFAULT_REPLAY_LIMIT, metavar="N",
                   help=f"at most N runs, the newest (default {DEFAULT_REPLAY_LIMIT})")
    p.add_argument("--determinism", choices=["raise", "warn", "off"], default="raise",
                   help="the determinism guard for workflows that set none, as on the workers (default raise: "
                        "workflow code calling time.time(), uuid.uuid4()... fails the replay)")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "replayed", "diverged", "failed", "skipped", "left_out", "runs": [...]}')

    p = sub.add_parser("copy", help="copy every workflow, running ones included, into another store",
                       description="Copy every workflow of the store SRC_URL, running ones included, into the store "
                       "DST_URL (LMDB or PostgreSQL, either way), to continue there: stop the source's workers, "
                       "copy, then start workers against DST_URL. The source is only read and is left as it was. "
                       "See docs/copy.md.")
    p.add_argument("src_url", metavar="SRC_URL", help="the store to copy from (it must exist)")
    p.add_argument("dst_url", metavar="DST_URL", help="the store to copy into (created when missing)")
    p.add_argument("--merge", action="store_true",
                   help="add to a destination that holds workflows already (an id present in both is refused)")
    p.add_argument("--force", action="store_true",
                   help="copy although workers still hold leases in the source (they should be stopped)")
    p.add_argument("--json", action="store_true", help="print the report as a JSON object")
    add_schedule_parser(sub, common)  # duro schedule ... (duro._schedule_cli)

    p = sub.add_parser("build", parents=[common], help="worker versioning: a task queue's current build",
                       description="Worker versioning (docs/deployment.md): new runs, auto_upgrade runs and "
                       "unversioned runs of a task queue go to the workers of its current build (to any worker "
                       "while it has none); pinned runs stay on the build that started them.")
    bsub = p.add_subparsers(dest="build_command", metavar="ACTION", required=True)
    b = bsub.add_parser("set-current", parents=[common], help="make BUILD the current build of QUEUE")
    b.add_argument("task_queue", metavar="QUEUE", type=_name("task queue"))
    b.add_argument("build_id", metavar="BUILD", type=_name("build id"))
    b.add_argument("--json", action="store_true", help="print the queue as show --json does")
    b = bsub.add_parser("unset-current", parents=[common],
                        help="remove QUEUE's current build (any worker takes new runs again)")
    b.add_argument("task_queue", metavar="QUEUE", type=_name("task queue"))
    b.add_argument("--json", action="store_true", help="print the queue as show --json does")
    b = bsub.add_parser("show", parents=[common],
                        help="QUEUE's current build and its running runs by build (reads every run record)")
    b.add_argument("task_queue", metavar="QUEUE", type=_name("task queue"))
    b.add_argument("--json", action="store_true",
                   help='print {"task_queue", "current_build_id", "set_time", "running": [{"build_id", '
                   '"versioning_behavior", "count"}]}')

    p = sub.add_parser("ui", parents=[common], help="serve the web UI of a store (the 'ui' extra)",
                       description="Serve the web UI of the store URL (else --store, $DURO_STORE...) until "
                       "interrupted (Ctrl-C), and print its address: workflows, their histories and timelines, "
                       "actions, schedules. Needs pip install 'duro[ui]'.")
    p.add_argument("url", nargs="?", metavar="URL", help="the store URL (default: --store, else $DURO_STORE...)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8233,
                   help="the port to listen on (default 8233; 0: any free port, printed at start)")
    p.add_argument("--token", default=os.environ.get(UI_TOKEN_ENV) or None, metavar="TOKEN",
                   help=f"the token actions must carry (default: ${UI_TOKEN_ENV}; on a host other than "
                   "loopback, one is made when none is given)")
    return parser


def _epilog() -> str:
    """The end of ``duro --help``: how arguments are written, --json, and the table of exit statuses."""
    codes = "\n".join(textwrap.fill(text, 100, initial_indent=f"  {int(code):<4} ", subsequent_indent=" " * 7)
                      for code, text in EXIT_CODES.items())
    return ("Arguments of workflows, signals and queries are JSON, one per word:\n"
            "  duro signal order-1 approve '{\"by\": \"alice\"}'\n\n"
            "--json (on list, count, describe, history, result, query, check, replay, schedule list/describe,\n"
            "build, and on start, reset, batch, purge, copy, schedule trigger/backfill) prints one JSON object on\n"
            "stdout; docs/cli.md describes each.\n\n"
            f"exit status:\n{codes}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    JSON arguments may come before, between or after the options (``start T --id X --task-queue Q
    ARG ...``): argparse leaves the ones after an option unparsed, and they are put back here, in order.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The namespace: ``command``, ``store``, the options of the command and, for commands that
        take JSON arguments, ``values`` (those arguments, parsed).

    Raises:
        UsageError: the command line is not valid.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        unknown = [e for e in extras if e.startswith("-") and not _is_json(e)]
        if unknown or not hasattr(args, "json_args"):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extras)}")
        args.json_args = [*args.json_args, *extras]
    if hasattr(args, "json_args"):  # bad JSON is bad input whatever the store holds: check it first
        args.values = _json_args(args.json_args)
    return args


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_args(texts: Sequence[str]) -> list[Any]:
    """Parse each word as one JSON value (NaN and Infinity, which Python's json accepts, are refused)."""
    values = []
    for i, text in enumerate(texts, 1):
        try:
            values.append(json.loads(text, parse_constant=_no_constant))
        except json.JSONDecodeError as e:
            raise UsageError(
                f"argument {i} ({text!r}) is not JSON: {e.msg}; write strings in double quotes, "
                "e.g. '\"text\"' or '{\"by\": \"alice\"}'"
            ) from None
        except ValueError as e:
            raise UsageError(f"argument {i} ({text!r}) is not JSON: {e}") from None
    return values


def store_url(option: str | None) -> str:
    """The store URL to use: ``--store``, else ``$DURO_STORE``, else ``lmdb://./duro-data``."""
    return option or os.environ.get(STORE_ENV) or DEFAULT_STORE


async def _require_store(url: str) -> None:
    """Refuse to create a store for a command that only reads or addresses existing workflows.

    A mistyped LMDB path or PostgreSQL ``?schema=`` would otherwise be created, and read as empty.
    """
    missing = await missing_store(url)
    if missing is not None:
        raise OperationError(f"{missing} (store URL {display_url(url)!r}); pass --store URL or set {STORE_ENV}")


def _check_store_exists(url: str) -> None:
    """``_require_store`` for the commands that run without an event loop."""
    asyncio.run(_require_store(url))


# ---------------------------------------------------------------------------------------- commands


def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attr", dest="attrs", action="append", default=[], metavar="NAME=JSON",
                   help="only workflows whose search attribute NAME equals the JSON value "
                   "(e.g. customer='\"alice\"' or amount=5); repeat for several")
    p.add_argument("--after", type=_when, metavar="TIME", help="only workflows started after TIME (ISO 8601, UTC "
                   "when no offset is given)")
    p.add_argument("--before", type=_when, metavar="TIME", help="only workflows started before TIME")


def _when(text: str) -> datetime.datetime:
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-12-01T09:30)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.UTC)


def _attrs(texts: Sequence[str]) -> dict[str, Any] | None:
    attrs: dict[str, Any] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise UsageError(f"--attr {text!r}: write NAME=JSON, e.g. customer='\"alice\"' or amount=5")
        try:
            attrs[name] = json.loads(value, parse_constant=_no_constant)
        except ValueError as e:
            raise UsageError(f"--attr {text!r}: the value is not JSON ({e}); write strings in double quotes") from None
    return attrs or None


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"status": args.status, "workflow_type": args.workflow_type, "search_attributes": _attrs(args.attrs),
            "started_after": args.after, "started_before": args.before}



def _json_doc(args: argparse.Namespace, value: Any) -> ExitCode:
    """Print ``value`` as the command's ``--json`` document."""
    out: Output = args.output
    out.json(to_json(value, indent=2))
    return ExitCode.OK


async def _count(client: Client, args: argparse.Namespace) -> ExitCode:
    n = await client.count_workflows(**_filters(args))
    if args.json:
        return _json_doc(args, {"count": n})
    args.output.line(str(n))
    return ExitCode.OK


async def _list(client: Client, args: argparse.Namespace) -> ExitCode:
    out: Output = args.output
    runs = await client.list_workflows(**_filters(args), limit=args.limit, page_token=args.page)
    if args.json:
        return _json_doc(args, {"items": [execution_dict(r) for r in runs], "next_page_token": runs.next_page_token})
    if not runs:
        out.line("no workflows")
        return ExitCode.OK
    rows = [[r.workflow_id, r.workflow_type, r.status, time_text(r.start_time), time_text(r.close_time),
             str(r.history_length)] for r in runs]
    out.table(["workflow id", "type", "status", "started (UTC)", "closed (UTC)", "events"], rows, right=(5,),
              styled=(2,))
    if runs.next_page_token is not None:
        out.line(f"more: --page {runs.next_page_token}", "dim")
    return ExitCode.OK


async def _describe(client: Client, args: argparse.Namespace) -> ExitCode:
    ex = await client.get_handle(args.workflow_id, args.run_id).describe()
    if args.json:
        return _json_doc(args, execution_dict(ex))
    fields = [("workflow id", ex.workflow_id), ("run id", ex.run_id), ("type", ex.workflow_type),
              ("task queue", ex.task_queue), ("status", ex.status), ("started", time_text(ex.start_time) + " UTC"),
              ("closed", time_text(ex.close_time) + (" UTC" if ex.close_time else "")),
              ("events", str(ex.history_length))]
    if ex.task_failures:
        fields.append(("task failed", f"{ex.task_failures} time(s) in a row; see WorkflowTaskFailed in its history"))
    if ex.search_attributes:
        fields.append(("attributes", to_json(ex.search_attributes)))
    if ex.memo:
        fields.append(("memo", to_json(ex.memo)))
    if ex.build_id is not None:
        fields.append(("build", f"{ex.build_id} ({ex.versioning_behavior})"))
    for pa in ex.pending_activities:
        fields.append(("activity", pending_text(pa)))
    args.output.fields(fields, styled=("status",))
    return ExitCode.OK


async def _history(client: Client, args: argparse.Namespace) -> ExitCode:
    out: Output = args.output
    if args.state_args and not args.state_query:
        raise UsageError("--state-arg is an argument of the --state query; pass --state QUERY too")
    state_args = _json_args(args.state_args)  # bad JSON is bad input whatever the store holds: checked first
    history = await client.get_handle(args.workflow_id, args.run_id).fetch_history()
    states = await task_states(client, history, args.state_query, state_args) if args.state_query else None
    if args.json:
        if states is None:
            out.json(json_safe(history.to_json()))
        else:  # History.to_json's document, unchanged, plus one key (History.from_json reads it still)
            doc = json.loads(history.to_json())
            doc["state"] = state_dict(args.state_query, state_args, states)
            out.json(to_json(doc, indent=2))
        return ExitCode.OK
    rows = history_rows(history)
    headers: Sequence[str] = HISTORY_HEADERS
    if states is not None:
        headers = [*HISTORY_HEADERS, f"state: {args.state_query}"]
        rows = [[*row, cell] for row, cell in zip(rows, state_cells(history, states), strict=True)]
    if not rows:
        out.line(history_title(history), "bold")
    else:
        out.table(headers, rows, right=(0, 1), styled=(2,), title=history_title(history))
    return ExitCode.OK


async def _closed_status(client: Client, workflow_id: str, e: WorkflowFailedError) -> str:
    """The status of the run ``handle.result()`` found closed without completing."""
    try:
        return (await client.get_handle(e.workflow_id or workflow_id, e.run_id or None).describe()).status
    except DuroError:  # deleted since, say: tell by the cause
        cause = e.__cause__
        return ("canceled" if isinstance(cause, CancelledError) else
                "terminated" if isinstance(cause, TerminatedError) else "failed")


async def _result(client: Client, args: argparse.Namespace) -> ExitCode:
    handle = client.get_handle(args.workflow_id)
    try:
        value = await handle.result(timeout=args.timeout)
    except WorkflowFailedError as e:
        if args.json:  # the answer is that it did not complete: on stdout too, with the one error line
            status = await _closed_status(client, args.workflow_id, e)
            _json_doc(args, {"workflow_id": args.workflow_id, "status": status, "result": None,
                             "error": failure_dict(e)})
        raise OperationError(failure_text(e)) from None
    except TimeoutError:  # asyncio's timeout (duro.TimeoutError is a DuroError)
        raise OperationError(
            f"workflow {args.workflow_id!r} did not close within {args.timeout:g} seconds") from None
    if args.json:
        return _json_doc(args, {"workflow_id": args.workflow_id, "status": "completed", "result": value,
                                "error": None})
    return _json_doc(args, value)


async def _signal(client: Client, args: argparse.Namespace) -> ExitCode:
    await client.get_handle(args.workflow_id).signal(args.name, *args.values)
    args.output.line(f"sent signal {args.name!r} to workflow {args.workflow_id!r}")
    return ExitCode.OK


async def _query(client: Client, args: argparse.Namespace) -> ExitCode:
    handle = client.get_handle(args.workflow_id, args.run_id)
    try:
        answer = await handle.query(args.name, *args.values, at_event=args.at_event)
    except ApplicationError as e:  # the handler raised: say what, as history --state's cells do
        raise OperationError(f"query {args.name!r} of workflow {args.workflow_id!r} raised {e.type}: {e}") from e
    if args.json:
        doc = {"workflow_id": args.workflow_id, "query": args.name, "args": args.values, "result": answer}
        if args.at_event is not None:
            doc["at_event"] = args.at_event
        return _json_doc(args, doc)
    return _json_doc(args, answer)


async def _cancel(client: Client, args: argparse.Namespace) -> ExitCode:
    await client.get_handle(args.workflow_id).cancel()
    args.output.line(f"requested cancellation of workflow {args.workflow_id!r}")
    return ExitCode.OK


async def _batch(client: Client, args: argparse.Namespace) -> ExitCode:
    """Apply one action to every match, page by page; a workflow that closed meanwhile is passed over."""
    out: Output = args.output
    values = list(args.values)
    name = args.signal_name or ""
    if args.action == "signal" and not name:
        raise UsageError("batch signal needs --signal NAME")
    if args.action != "signal" and (values or name):
        raise UsageError(f"{args.action} takes no signal name or arguments (only signal does)")
    done = 0
    passed_over: list[dict[str, str]] = []
    token: str | None = None
    total = await client.count_workflows(**_filters(args)) if out.progress_shown else None
    with out.progress(f"batch {args.action}", total) as progress:
        while True:
            page = await client.list_workflows(**_filters(args), limit=500, page_token=token)
            for ex in page:
                handle = client.get_handle(ex.workflow_id, ex.run_id)
                try:
                    if args.action == "cancel":
                        await handle.cancel()
                    elif args.action == "terminate":
                        await handle.terminate(args.reason)
                    else:
                        await handle.signal(name, *values)
                    done += 1
                except DuroError as e:  # closed since it was listed, say
                    passed_over.append({"workflow_id": ex.workflow_id, "run_id": ex.run_id, "error": str(e)})
                    if not args.json:
                        out.line(f"{ex.workflow_id}: {e}")
                progress.advance()
            token = page.next_page_token
            if token is None:
                break
    if args.json:
        _json_doc(args, {"action": args.action, "done": done, "passed_over": passed_over})
    else:
        out.line(f"{args.action}: {done} workflow(s)" + (f", {len(passed_over)} passed over" if passed_over else ""))
    return ExitCode.FAILED if passed_over else ExitCode.OK


async def _delete(client: Client, args: argparse.Namespace) -> ExitCode:
    await client.get_handle(args.workflow_id, args.run_id).delete()
    args.output.line(f"deleted workflow {args.workflow_id!r}" + (f" run {args.run_id}" if args.run_id else ""))
    return ExitCode.OK


async def _purge(client: Client, args: argparse.Namespace) -> ExitCode:
    out: Output = args.output
    total = 0
    with out.progress("purging") as progress:
        while True:
            n = await client.purge(args.before, limit=1000)
            total += n
            progress.update(completed=total, description=f"purging: {total} run(s) deleted")
            if n < 1000:
                break
    if args.json:
        return _json_doc(args, {"deleted": total, "before": args.before.isoformat()})
    out.line(f"deleted {total} run(s) closed before {args.before.isoformat()}")
    return ExitCode.OK


async def _terminate(client: Client, args: argparse.Namespace) -> ExitCode:
    await client.get_handle(args.workflow_id).terminate(args.reason)
    args.output.line(f"terminated workflow {args.workflow_id!r}")
    return ExitCode.OK


def _started(args: argparse.Namespace, run_id: str) -> ExitCode:
    """What ``start`` and ``reset`` print: the run id, or ``{"workflow_id", "run_id"}``."""
    if args.json:
        return _json_doc(args, {"workflow_id": args.workflow_id, "run_id": run_id})
    args.output.line(run_id)
    return ExitCode.OK


async def _reset(client: Client, args: argparse.Namespace) -> ExitCode:
    handle = await client.get_handle(args.workflow_id, args.run_id).reset(event_id=args.event_id, reason=args.reason)
    return _started(args, str(handle.run_id))


async def _start(client: Client, args: argparse.Namespace) -> ExitCode:
    handle = await client.start_workflow(
        args.workflow_type, *args.values, id=args.workflow_id, task_queue=args.task_queue,
        id_reuse_policy=args.id_reuse_policy, execution_timeout=args.execution_timeout,
        run_timeout=args.run_timeout, id_conflict_policy=args.id_conflict_policy,
        start_signal=args.start_signal, start_signal_args=_json_args(args.start_signal_args),
    )
    return _started(args, str(handle.run_id))


async def _activity(client: Client, args: argparse.Namespace) -> ExitCode:
    from duro.errors import TaskTokenError

    try:
        token = bytes.fromhex(args.task_token)
        handle = client.get_async_activity_handle(token)
    except (ValueError, TaskTokenError) as e:  # not hex, or not a task token: bad input
        raise UsageError(f"TOKEN is not a task token ({e}); pass ActivityInfo.task_token.hex()") from None
    if args.action != "fail" and (args.error_type or args.non_retryable):
        raise UsageError("--type and --non-retryable go with fail")
    if args.action == "fail":
        if not args.value:
            raise UsageError("fail needs the error MESSAGE")
        await handle.fail(ApplicationError(args.value, type=args.error_type, non_retryable=args.non_retryable))
    else:
        [value] = _json_args([args.value]) if args.value is not None else [None]
        await (handle.complete(value) if args.action == "complete" else handle.heartbeat(value))
    args.output.line({"complete": "completed the activity attempt", "fail": "failed the activity attempt (its retry "
                      "policy applies)", "heartbeat": "recorded a heartbeat of the activity attempt"}[args.action])
    return ExitCode.OK


async def _build(client: Client, args: argparse.Namespace) -> ExitCode:
    """``duro build set-current|unset-current|show QUEUE``: a task queue's current build (worker versioning)."""
    queue = args.task_queue
    if args.build_command == "set-current":
        await client.set_current_build_id(queue, args.build_id)
    elif args.build_command == "unset-current":
        await client.set_current_build_id(queue, None)
    info = await client.store.aqueue_versioning(queue, running=args.build_command == "show")
    if args.json:
        return _json_doc(args, versioning_dict(info, running=args.build_command == "show"))
    for line in versioning_lines(info, running=args.build_command == "show"):
        args.output.line(line)
    return ExitCode.OK


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "list": _list, "count": _count, "batch": _batch, "delete": _delete, "purge": _purge,
    "describe": _describe, "history": _history, "result": _result, "signal": _signal,
    "query": _query, "cancel": _cancel, "terminate": _terminate, "reset": _reset, "start": _start,
    "activity": _activity,
    "schedule": run_schedule, "build": _build,
}


# ---------------------------------------------------------------------------------------- without a Client


def _check(url: str, args: argparse.Namespace) -> ExitCode:
    """``duro check``: runs without a Client, which would refuse a damaged store or write to it."""
    out: Output = args.output
    _check_store_exists(url)
    with out.status("checking the store"):
        report = check_store(url)
    if args.json:
        _json_doc(args, report.to_dict())
    else:
        lines = check_lines(report)
        for i, line in enumerate(lines):
            out.line(line, "green" if report.ok else "bold red" if i in (0, len(lines) - 1) else "red")
    return ExitCode.OK if report.ok else ExitCode.FAILED


def _compact(url: str, args: argparse.Namespace) -> ExitCode:
    """``duro compact DEST``: LMDB only (PostgreSQL compacts itself)."""
    if not url.startswith("lmdb://"):
        raise UsageError("compact is for LMDB stores; PostgreSQL reclaims space by itself (autovacuum), "
                         "and VACUUM FULL shrinks its files")
    _check_store_exists(url)
    store = open_lmdb_store(url)
    try:
        before = (Path(store.path) / "data.mdb").stat().st_size
        with args.output.status(f"writing a compacted copy to {args.destination}"):
            size = store.compact(args.destination)
    finally:
        asyncio.run(store.close())
    args.output.line(f"wrote a compacted copy to {args.destination}: {size} bytes (the store's file: {before} bytes)")
    return ExitCode.OK


def _copy(args: argparse.Namespace) -> ExitCode:
    """``duro copy``: a progress bar on a terminal, then a summary (``--store`` plays no part)."""
    out: Output = args.output
    with out.progress("copying") as progress:

        def advanced(r: CopyReport) -> None:
            progress.update(completed=r.runs, description=f"copying: {r.runs} runs, {r.events} events")

        try:
            report = copy_store(args.src_url, args.dst_url, merge=args.merge, force=args.force, progress=advanced)
        except (StoreCorruptedError, CorruptHistoryError) as e:
            # As it is: _execute's hint would name --store, which copy does not use.
            raise OperationError(str(e)) from None
    if args.json:
        return _json_doc(args, report.to_dict())
    for line in copy_lines(report):
        out.line(line)
    return ExitCode.OK


def _ui(url: str, args: argparse.Namespace) -> ExitCode:
    """``duro ui``: serve the web UI (``duro.ui``, the ``ui`` extra) until interrupted."""
    if args.url and getattr(args, "store", None) and args.url != args.store:
        raise UsageError(f"two stores given: URL {args.url!r} and --store {args.store!r}; give one")
    url = args.url or url
    try:
        # duro.ui imports without aiohttp and its serve() says what is missing: both are ImportErrors.
        serve = importlib.import_module("duro.ui").serve
        _check_store_exists(url)
        served = serve(url, host=args.host, port=args.port, token=args.token)
        if inspect.iscoroutine(served):
            asyncio.run(served)
    except ImportError as e:
        text = str(e)
        raise OperationError(text if "duro[ui]" in text else
                             f"duro ui needs the 'ui' extra: pip install 'duro[ui]' ({text})") from None
    except OSError as e:  # the address is taken or cannot be bound (the store's own errors are DuroErrors)
        raise OperationError(f"cannot serve the UI on {args.host}:{args.port}: {e}") from None
    return ExitCode.OK


def _workflow_definition(value: Any) -> WorkflowDefinition | None:
    """The definition ``@duro.workflow`` attached to a module attribute, if it is a workflow."""
    try:
        defn = getattr(value, "__duro_workflow__", None)
    except Exception:  # an object whose attribute lookup raises (a lazy proxy, say) is no workflow
        return None
    return defn if isinstance(defn, WorkflowDefinition) else None


def _import_workflows(modules: Sequence[str], show_traceback: bool) -> list[Any]:
    """The @duro.workflow definitions of ``modules`` (functions, or anything the decorator marked).

    The current directory goes first on the path, as ``python -m`` puts it: the ``duro`` script's
    own directory is the virtualenv's bin/, where the project's code is not.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    found: dict[str, tuple[str, Any, WorkflowDefinition]] = {}
    for name in modules:
        if name.endswith(".py") or "/" in name or os.sep in name or name.startswith("."):
            relative = os.path.relpath(name.removesuffix(".py"), cwd)
            if relative.startswith(".."):  # outside the current directory: no dotted name imports it from here
                hint = "run duro from the directory that holds its package, and give the dotted name from there"
            else:
                hint = f"from here: {relative.replace(os.sep, '.').replace('/', '.')!r}"
            raise UsageError(f"--module takes a module's dotted name, as `import` does, not a file path {name!r}; "
                             f"{hint}")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise UsageError(f"cannot import module {name!r}: no module named {e.name!r} (duro replay imports "
                                 f"it from the current directory, {cwd}, and the Python path: run it from the "
                                 "directory that holds your package, or set PYTHONPATH)") from None
            if show_traceback:
                traceback.print_exc()
            raise UsageError(f"importing module {name!r} failed: {e} (install what it needs in the environment that "
                             "runs duro)") from None
        except (Exception, SystemExit) as e:  # anything the module's own code raised while it was imported
            if show_traceback:
                traceback.print_exc()
            raise UsageError(f"importing module {name!r} raised {type(e).__name__}: {e}"
                             + ("" if show_traceback else " (--traceback shows where)")) from None
        count = 0
        for attr, value in vars(module).items():
            defn = _workflow_definition(value)
            if defn is None:
                continue
            count += 1
            where = f"{name}.{attr}"
            seen = found.get(defn.name)
            if seen is None:
                found[defn.name] = (where, value, defn)
            elif seen[2].fn is not defn.fn:
                raise UsageError(f"workflow type {defn.name!r} is defined twice, by {seen[0]} and {where}; "
                                 "pass modules that define each workflow type once")
        if not count:
            raise UsageError(f"module {name!r} ({getattr(module, '__file__', None) or 'no file'}) holds no "
                             "@duro.workflow definitions; pass the module that defines (or imports) your workflows")
    return [value for _, value, _ in found.values()]


def _replay(url: str, args: argparse.Namespace) -> ExitCode:
    """``duro replay``: the modules' workflows against the store's histories (``Replayer.replay_store``)."""
    out: Output = args.output
    replayer = Replayer(workflows=_import_workflows(args.modules, args.traceback), determinism=args.determinism)
    if args.workflow_type is not None and args.workflow_type not in replayer.workflow_types:
        raise UsageError(f"--type {args.workflow_type!r} is not a workflow type of the module(s) (they define: "
                         f"{', '.join(replayer.workflow_types)}); pass one of these, or the --module that defines it")

    async def replay() -> WorkflowReplayResults:
        # One look for the store (replay_store given a URL would look again), then a client on it.
        await _require_store(url)
        async with Client.connect(url) as client:
            return await replayer.replay_store(client, workflow_type=args.workflow_type, since=args.since,
                                               limit=args.limit)

    with out.status("replaying the store's runs"):
        results = asyncio.run(replay())
    if args.json:
        _json_doc(args, replay_dict(results))
    else:
        for text, style in replay_lines(results):
            out.line(text, style)
    return ExitCode.OK if results.ok else ExitCode.FAILED


_LOCAL: dict[str, Callable[[str, argparse.Namespace], ExitCode]] = {
    "check": _check, "compact": _compact, "copy": lambda url, args: _copy(args), "replay": _replay, "ui": _ui,
}


async def _run(url: str, args: argparse.Namespace) -> int:
    command = _COMMANDS[args.command]
    # Only start (and schedule create) may create a store; the others need its workflows.
    if args.command != "start" and getattr(args, "schedule_command", None) != "create":
        await _require_store(url)
    async with Client.connect(url) as client:
        return await command(client, args)


def _checked_argument(e: BaseException) -> bool:
    """Whether ``e`` was raised by duro's checks of call arguments (``duro._validate``): bad input."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == "duro._validate"


def _unexpected(out: Output, e: BaseException, url: str, show_traceback: bool) -> None:
    """A damaged record or a bug: still one line, and the way to see more."""
    if show_traceback:
        traceback.print_exc()
    out.error(f"unexpected {type(e).__name__}: {e} (a damaged store or a bug in duro: duro --store "
              f"{display_url(url)} check "
              "tells which" + ("" if show_traceback else "; --traceback shows where it happened") + ")")


def _execute(url: str, args: argparse.Namespace) -> int:
    try:
        local = _LOCAL.get(args.command)
        return local(url, args) if local is not None else asyncio.run(_run(url, args))
    except (StoreCorruptedError, CorruptHistoryError) as e:
        command = f"duro --store {display_url(url)} check"
        text = str(e)
        args.output.error(text.replace("duro check", command) if "duro check" in text else
                          f"{text} (see what is damaged: {command})")
    return ExitCode.FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the ``duro`` command.

    Every error is one line on stderr, starting with ``duro: error:``; no traceback unless
    ``--traceback`` is given and the error is not one duro raises on purpose.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status, an ``ExitCode``: 0 on success, 1 when the operation failed (including any
        store error and problems found by ``check``), 2 for bad input (options, JSON arguments, the
        store URL, a value past a limit of the store), 130 when interrupted. ``EXIT_CODES`` has them.
    """
    show_traceback = False
    url = DEFAULT_STORE
    out = Output()
    try:
        args = parse_args(argv)
        out = args.output = Output(args.color)
        show_traceback = args.traceback
        url = store_url(args.store)
        return _execute(url, args)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else (ExitCode.OK if e.code is None else ExitCode.USAGE)
    except (UsageError, StoreURLError, StoreLimitError, PayloadTooLargeError) as e:
        out.error(str(e))  # the input is at fault: an option, a JSON argument, the URL, an id or payload too big
        return ExitCode.USAGE
    except (OperationError, DuroError, mdb.Error) as e:  # mdb.Error: LMDB's errors are StoreErrors too
        out.error(str(e))
    except (TypeError, ValueError) as e:
        if _checked_argument(e):
            out.error(str(e))
            return ExitCode.USAGE
        _unexpected(out, e, url, show_traceback)
    except OSError as e:
        out.error(f"cannot open or use the store: {e}")
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as e:
        _unexpected(out, e, url, show_traceback)
    return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
