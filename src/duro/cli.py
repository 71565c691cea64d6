r"""The ``duro`` command: look at and drive workflows in a store from a shell.

::

    duro [--store URL] list [--status S] [--type T] [--limit N] [--json]
    duro [--store URL] describe WORKFLOW_ID [--run RUN_ID] [--json]
    duro [--store URL] history WORKFLOW_ID [--run RUN_ID] [--json]
    duro [--store URL] result WORKFLOW_ID [--timeout SECONDS]
    duro [--store URL] signal WORKFLOW_ID NAME [JSON_ARG ...]
    duro [--store URL] query WORKFLOW_ID NAME [JSON_ARG ...]
    duro [--store URL] cancel WORKFLOW_ID
    duro [--store URL] terminate WORKFLOW_ID [--reason TEXT]
    duro [--store URL] reset WORKFLOW_ID --event-id N [--run-id RUN_ID] [--reason TEXT]
    duro [--store URL] start TYPE --id ID --task-queue Q [JSON_ARG ...]
    duro [--store URL] check [--json]
    duro copy SRC_URL DST_URL [--merge] [--force]
    duro [--store URL] schedule list|describe|create|pause|unpause|trigger|backfill|delete ...  (duro._schedule_cli)

The store is ``--store``, else the environment variable ``DURO_STORE``, else
``lmdb://./duro-data``. Arguments of workflows, signals and queries are JSON, one per word
(``'{"by": "alice"}'``, ``42``, ``'"text"'``). Exit status: 0 on success, 1 when the operation
failed (unknown workflow, failed run, closed run, a store error, problems found by ``check``...),
2 for bad input (options, JSON, store URL, a value past a limit of the store).

Everything printed from the store (ids, names, payloads, error messages) has its control
characters escaped (``\x1b``), so a workflow id cannot drive the terminal; JSON output escapes them
as JSON does (``\u001b``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from duro._core import mdb
from duro._schedule_cli import add_schedule_parser, run_schedule
from duro._validate import MAX_DURATION_S, check_name
from duro.client import Client, WorkflowExecution
from duro.errors import (
    ApplicationError,
    CorruptHistoryError,
    DuroError,
    PayloadTooLargeError,
    StoreCorruptedError,
    StoreLimitError,
    StoreURLError,
    WorkflowFailedError,
)
from duro.history import History, HistoryEvent
from duro.stores.check import CheckReport, check_store
from duro.stores.copy import CopyReport, copy_store
from duro.stores.lmdb import open_lmdb_store

__all__ = ["DEFAULT_STORE", "STORE_ENV", "main"]

DEFAULT_STORE = "lmdb://./duro-data"
STORE_ENV = "DURO_STORE"
STATUSES = ("running", "completed", "failed", "terminated", "canceled", "continued_as_new", "timed_out")
PAYLOAD_WIDTH = 48


class UsageError(Exception):
    """Bad input on the command line (exit status 2)."""


class OperationError(Exception):
    """The operation could not be done (exit status 1)."""


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

    # --store is accepted before the subcommand and after it (a subcommand's value wins).
    store_help = f"the store URL (default: ${STORE_ENV}, else {DEFAULT_STORE})"
    common = _Parser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=store_help)

    parser = _Parser(
        prog="duro",
        description="Look at and drive duro workflows in a store.",
        epilog="Arguments of workflows, signals and queries are JSON, one per word: "
        "duro signal order-1 approve '{\"by\": \"alice\"}'",
    )
    parser.add_argument("--store", metavar="URL", default=None, help=store_help)
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
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = sub.add_parser("count", parents=[common], help="count workflows (the latest run of each id) by filters",
                       description="Count the workflow ids whose latest run matches the filters of `list`.")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")
    p.add_argument("--type", dest="workflow_type", metavar="TYPE", help="only workflows of this registered type")
    _filter_options(p)

    p = sub.add_parser("describe", parents=[common], help="status, type, times and length of a run",
                       description="Describe a workflow run (the latest run unless --run is given).")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = sub.add_parser("history", parents=[common], help="the recorded events of a run",
                       description="Print the event history of a run (the latest run unless --run is given).")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a specific run (default: the latest)")
    p.add_argument("--json", action="store_true",
                   help="print the exact history as JSON (readable back with duro.History.from_json)")

    p = sub.add_parser("result", parents=[common], help="wait for a workflow and print its result",
                       description="Wait for the workflow to close and print its result as JSON. If it did not "
                       "complete (failed, cancelled, terminated, timed out), print the error and exit with 1.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up after this many seconds")

    p = sub.add_parser("signal", parents=[common], help="send a signal",
                       description="Send signal NAME to the workflow, with each JSON_ARG as an argument.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("name", metavar="NAME", type=_name("name"))
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG")

    p = sub.add_parser("query", parents=[common], help="ask a workflow's query handler",
                       description="Ask query NAME of the workflow and print the answer as JSON. A worker of the "
                       "run's task queue (in any process) answers.")
    p.add_argument("workflow_id", metavar="WORKFLOW_ID", type=_name("workflow id"))
    p.add_argument("name", metavar="NAME", type=_name("name"))
    p.add_argument("json_args", nargs="*", metavar="JSON_ARG")

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
    add_schedule_parser(sub, common)  # duro schedule ... (duro._schedule_cli)
    return parser


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


def _check_store_exists(url: str) -> None:
    """Refuse to create an LMDB store for a command that only reads or addresses existing workflows."""
    parsed = urlparse(url)
    if parsed.scheme != "lmdb":
        return  # open_store says what is wrong with it
    raw = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
    if not raw:
        return
    path = Path(raw).expanduser()
    if not (path / "data.mdb").is_file():
        raise OperationError(
            f"no duro store at {str(path)!r} (store URL {url!r}); pass --store URL or set {STORE_ENV}")


# ---------------------------------------------------------------------------------------- output


# Characters that must not reach a terminal raw: C0 controls (ESC starts escape sequences), DEL,
# C1 controls (U+009B is a one-character CSI), line and paragraph separators, the bidirectional
# overrides and isolates (they reorder what is shown), and lone surrogates (not encodable).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# JSON already escapes C0 controls inside strings; outside them only its whitespace (\t \n \r) occurs.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _SHORT.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def clean(text: str) -> str:
    r"""``text`` with control characters escaped Python-style (``\x1b``, ``\n``, ``\u202e``), safe to print.

    Args:
        text: anything read from a store or given by a user: ids, names, payloads, error messages.

    Returns:
        One line of printable text; text without such characters comes back unchanged.
    """
    return _UNSAFE.sub(_escape_char, text)


def _json_safe(text: str) -> str:
    r"""JSON text with the characters ``clean`` escapes, which JSON leaves raw (DEL, C1...), as ``\uXXXX``."""
    # They can only occur inside JSON strings (the syntax around them is ASCII), where \uXXXX is valid.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _json(value: Any, *, indent: int | None = None) -> str:
    return _json_safe(json.dumps(value, indent=indent, ensure_ascii=False, default=str))


def _print(line: str) -> None:
    """Print one line of plain (not JSON) output, escaped."""
    print(clean(line))


def _time(t: datetime.datetime | None) -> str:
    return "-" if t is None else t.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _execution_dict(ex: WorkflowExecution) -> dict[str, Any]:
    return {
        "workflow_id": ex.workflow_id, "run_id": ex.run_id, "workflow_type": ex.workflow_type,
        "task_queue": ex.task_queue, "status": ex.status, "start_time": ex.start_time.isoformat(),
        "close_time": ex.close_time.isoformat() if ex.close_time else None, "history_length": ex.history_length,
        "task_failures": ex.task_failures, "search_attributes": ex.search_attributes, "memo": ex.memo,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Rows aligned in columns (the last column is not padded); cells are escaped first."""
    rows = [[clean(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _payload_summary(event: HistoryEvent, width: int = PAYLOAD_WIDTH) -> str:
    """The event's payload as short JSON (a start event shows its arguments)."""
    data = event.data()
    if isinstance(data, dict) and set(data) == {"meta", "args"}:
        data = data["args"]
    if isinstance(data, dict) and "message" in data and "kind" in data and "stack" in data:  # a failure
        text = clean(f"{data.get('type') or data['kind']}: {data['message']}")
        return text if len(text) <= width else text[: width - 3] + "..."
    if isinstance(data, bytes):
        if not data:
            return ""
        try:
            data = json.loads(data)  # true, false, null and negative numbers come back as bytes
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"<{len(data)} bytes>"
    text = _json_safe(json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str))
    return text if len(text) <= width else text[: width - 3] + "..."


def _event_label(event: HistoryEvent) -> str:
    """The event's name, with the command's sequence number where it has one."""
    kind = event.event_type
    if event.ref and kind.startswith(("Activity", "Timer", "StartChild", "ChildWorkflow", "SignalExternal")):
        return f"{event.name} #{event.ref}".strip()
    return event.name


def history_lines(history: History) -> list[str]:
    """A readable table of a history: id, milliseconds since the start, type, name / seq, payload.

    Args:
        history: the events of one run.

    Returns:
        The lines of the table, a title first.
    """
    title = f"workflow {history.workflow_id!r} run {history.run_id}: {len(history)} events"
    if not len(history):
        return [title]
    t0 = history[0].timestamp
    rows = [
        [str(e.event_id), f"{(e.timestamp - t0).total_seconds() * 1000:.1f}", e.event_type, _event_label(e),
         _payload_summary(e)]
        for e in history
    ]
    return [title, *_table(["id", "+ms", "event type", "name / seq", "payload"], rows, right=(0, 1))]


def _failure_text(err: BaseException) -> str:
    """The error of a failed run in one line, with the chain of causes (types, details) its message lacks."""
    text = str(err)
    causes = []
    cause = err.__cause__
    while cause is not None:
        desc = type(cause).__name__
        if isinstance(cause, ApplicationError):
            if cause.type != "ApplicationError":
                desc += f" type {cause.type!r}"
            if cause.details is not None:
                desc += f" details {_json(cause.details)}"
        if str(cause) and str(cause) not in text:
            desc += f": {cause}"
        causes.append(desc)
        cause = cause.__cause__
    return f"{text} (cause: {', caused by '.join(causes)})" if causes else text


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


async def _count(client: Client, args: argparse.Namespace) -> int:
    _print(str(await client.count_workflows(**_filters(args))))
    return 0


async def _list(client: Client, args: argparse.Namespace) -> int:
    runs = await client.list_workflows(**_filters(args), limit=args.limit, page_token=args.page)
    if args.json:
        print(_json([_execution_dict(r) for r in runs], indent=2))
        return 0
    if not runs:
        _print("no workflows")
        return 0
    rows = [[r.workflow_id, r.workflow_type, r.status, _time(r.start_time), _time(r.close_time),
             str(r.history_length)] for r in runs]
    for line in _table(["workflow id", "type", "status", "started (UTC)", "closed (UTC)", "events"], rows,
                       right=(5,)):
        _print(line)
    if runs.next_page_token is not None:
        _print(f"more: --page {runs.next_page_token}")
    return 0


async def _describe(client: Client, args: argparse.Namespace) -> int:
    ex = await client.get_handle(args.workflow_id, args.run_id).describe()
    if args.json:
        print(_json(_execution_dict(ex), indent=2))
        return 0
    fields = [("workflow id", ex.workflow_id), ("run id", ex.run_id), ("type", ex.workflow_type),
              ("task queue", ex.task_queue), ("status", ex.status), ("started", _time(ex.start_time) + " UTC"),
              ("closed", _time(ex.close_time) + (" UTC" if ex.close_time else "")),
              ("events", str(ex.history_length))]
    if ex.task_failures:
        fields.append(("task failed", f"{ex.task_failures} time(s) in a row; see WorkflowTaskFailed in its history"))
    if ex.search_attributes:
        fields.append(("attributes", _json(ex.search_attributes)))
    if ex.memo:
        fields.append(("memo", _json(ex.memo)))
    for key, value in fields:
        _print(f"{key + ':':<12} {value}")
    return 0


async def _history(client: Client, args: argparse.Namespace) -> int:
    history = await client.get_handle(args.workflow_id, args.run_id).fetch_history()
    if args.json:
        print(_json_safe(history.to_json()))
        return 0
    for line in history_lines(history):
        _print(line)
    return 0


async def _result(client: Client, args: argparse.Namespace) -> int:
    handle = client.get_handle(args.workflow_id)
    try:
        value = await handle.result(timeout=args.timeout)
    except WorkflowFailedError as e:
        raise OperationError(_failure_text(e)) from None
    except TimeoutError:  # asyncio's timeout (duro.TimeoutError is a DuroError)
        raise OperationError(
            f"workflow {args.workflow_id!r} did not close within {args.timeout:g} seconds") from None
    print(_json(value, indent=2))
    return 0


async def _signal(client: Client, args: argparse.Namespace) -> int:
    values = args.values
    await client.get_handle(args.workflow_id).signal(args.name, *values)
    _print(f"sent signal {args.name!r} to workflow {args.workflow_id!r}")
    return 0


async def _query(client: Client, args: argparse.Namespace) -> int:
    values = args.values
    answer = await client.get_handle(args.workflow_id).query(args.name, *values)
    print(_json(answer, indent=2))
    return 0


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    await client.get_handle(args.workflow_id).cancel()
    _print(f"requested cancellation of workflow {args.workflow_id!r}")
    return 0


async def _batch(client: Client, args: argparse.Namespace) -> int:
    """Apply one action to every match, page by page; a workflow that closed meanwhile is passed over."""
    values = list(args.values)
    name = args.signal_name or ""
    if args.action == "signal" and not name:
        raise UsageError("batch signal needs --signal NAME")
    if args.action != "signal" and (values or name):
        raise UsageError(f"{args.action} takes no signal name or arguments (only signal does)")
    done = skipped = 0
    token: str | None = None
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
                skipped += 1
                _print(f"{ex.workflow_id}: {e}")
        token = page.next_page_token
        if token is None:
            break
    _print(f"{args.action}: {done} workflow(s)" + (f", {skipped} passed over" if skipped else ""))
    return 0 if not skipped else 1


async def _delete(client: Client, args: argparse.Namespace) -> int:
    await client.get_handle(args.workflow_id, args.run_id).delete()
    _print(f"deleted workflow {args.workflow_id!r}" + (f" run {args.run_id}" if args.run_id else ""))
    return 0


async def _purge(client: Client, args: argparse.Namespace) -> int:
    total = 0
    while True:
        n = await client.purge(args.before, limit=1000)
        total += n
        if n < 1000:
            break
    _print(f"deleted {total} run(s) closed before {args.before.isoformat()}")
    return 0


async def _terminate(client: Client, args: argparse.Namespace) -> int:
    await client.get_handle(args.workflow_id).terminate(args.reason)
    _print(f"terminated workflow {args.workflow_id!r}")
    return 0


async def _reset(client: Client, args: argparse.Namespace) -> int:
    handle = await client.get_handle(args.workflow_id, args.run_id).reset(event_id=args.event_id, reason=args.reason)
    _print(str(handle.run_id))
    return 0


async def _start(client: Client, args: argparse.Namespace) -> int:
    values = args.values
    handle = await client.start_workflow(
        args.workflow_type, *values, id=args.workflow_id, task_queue=args.task_queue,
        id_reuse_policy=args.id_reuse_policy, execution_timeout=args.execution_timeout,
        run_timeout=args.run_timeout, id_conflict_policy=args.id_conflict_policy,
        start_signal=args.start_signal, start_signal_args=_json_args(args.start_signal_args),
    )
    _print(str(handle.run_id))
    return 0


async def _activity(client: Client, args: argparse.Namespace) -> int:
    from duro.errors import ApplicationError, TaskTokenError

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
    _print({"complete": "completed the activity attempt", "fail": "failed the activity attempt (its retry policy "
            "applies)", "heartbeat": "recorded a heartbeat of the activity attempt"}[args.action])
    return 0


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "list": _list, "count": _count, "batch": _batch, "delete": _delete, "purge": _purge,
    "describe": _describe, "history": _history, "result": _result, "signal": _signal,
    "query": _query, "cancel": _cancel, "terminate": _terminate, "reset": _reset, "start": _start,
    "activity": _activity,
    "schedule": run_schedule,
}


def check_lines(report: CheckReport) -> list[str]:
    """What ``duro check`` prints: each problem, then a summary line.

    Args:
        report: what ``duro.stores.check.check_store`` found.

    Returns:
        The lines (not yet escaped).
    """
    counts = (f"{report.events} events, {report.workflows} workflow ids, {report.tasks} tasks, "
              f"{report.timers} timers")
    if report.ok:
        return [f"store {report.path}: {report.runs} runs, {counts}: no problems found"]
    damaged = report.runs - report.runs_ok
    runs = f"{report.runs} runs ({report.runs_ok} fine, {damaged} with problems)" if report.runs else "0 runs"
    n = len(report.problems)
    summary = f"{runs}, {counts}" if report.records_checked else "its records were not checked"
    return [f"problems in the store at {report.path}:", *(f"  {p}" for p in report.problems),
            f"store {report.path}: {summary}: {n} problem{'s' if n != 1 else ''}"]


def _check(url: str, args: argparse.Namespace) -> int:
    """``duro check``: runs without a Client, which would refuse a damaged store or write to it."""
    _check_store_exists(url)
    report = check_store(url)
    if args.json:
        print(_json(report.to_dict(), indent=2))
    else:
        for line in check_lines(report):
            _print(line)
    return 0 if report.ok else 1


def _compact(url: str, args: argparse.Namespace) -> int:
    """``duro compact DEST``: LMDB only (PostgreSQL compacts itself)."""
    if not url.startswith("lmdb://"):
        raise UsageError("compact is for LMDB stores; PostgreSQL reclaims space by itself (autovacuum), "
                         "and VACUUM FULL shrinks its files")
    _check_store_exists(url)
    store = open_lmdb_store(url)
    try:
        before = (Path(store.path) / "data.mdb").stat().st_size
        size = store.compact(args.destination)
    finally:
        asyncio.run(store.close())
    _print(f"wrote a compacted copy to {args.destination}: {size} bytes (the store's file: {before} bytes)")
    return 0


async def _run(url: str, args: argparse.Namespace) -> int:
    command = _COMMANDS[args.command]
    # Only start (and schedule create) may create a store; the others need its workflows.
    if args.command != "start" and getattr(args, "schedule_command", None) != "create":
        _check_store_exists(url)
    async with Client.connect(url) as client:
        return await command(client, args)


def _error(message: str) -> None:
    """Report an error in one line on stderr (escaped: the message may quote ids and payloads)."""
    print(f"duro: error: {clean(message)}", file=sys.stderr)


def _checked_argument(e: BaseException) -> bool:
    """Whether ``e`` was raised by duro's checks of call arguments (``duro._validate``): bad input."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == "duro._validate"


def _unexpected(e: BaseException, url: str, show_traceback: bool) -> None:
    """A damaged record or a bug: still one line, and the way to see more."""
    if show_traceback:
        traceback.print_exc()
    _error(f"unexpected {type(e).__name__}: {e} (a damaged store or a bug in duro: duro --store {url} check "
           "tells which" + ("" if show_traceback else "; --traceback shows where it happened") + ")")


def _copy(args: argparse.Namespace) -> int:
    """``duro copy``: progress at most once a second, then a summary (``--store`` plays no part)."""
    last = time.monotonic()

    def progress(r: CopyReport) -> None:
        nonlocal last
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            _print(f"copied {r.runs} runs ({r.running} running), {r.events} events so far")

    try:
        report = copy_store(args.src_url, args.dst_url, merge=args.merge, force=args.force, progress=progress)
    except (StoreCorruptedError, CorruptHistoryError) as e:
        # As it is: _execute's hint would name --store, which copy does not use.
        raise OperationError(str(e)) from None
    for line in copy_lines(report):
        _print(line)
    return 0


def copy_lines(report: CopyReport) -> list[str]:
    """What ``duro copy`` prints once it is done.

    Args:
        report: what ``duro.stores.copy.copy_store`` copied.

    Returns:
        The lines (not yet escaped).
    """
    r = report
    lines = [f"copied {r.runs} runs ({r.running} running) of {r.workflows} workflow ids from {r.source} to "
             f"{r.destination} in {r.seconds:.1f} s:",
             f"  {r.events} events, {r.workflow_tasks} workflow tasks, {r.activity_attempts} activity attempts, "
             f"{r.timers} timers"]
    if r.leases_reset:
        lines.append(f"  {r.leases_reset} task(s) leased in the source are free in the destination")
    if r.dropped_attempts:
        lines.append(f"  {r.dropped_attempts} activity attempt(s) their workflows had cancelled were left behind")
    if r.skipped_index_entries:
        lines.append(f"  warning: {r.skipped_index_entries} workflow id(s) of the source name no run and were not "
                     "copied (a damaged index: duro --store SRC_URL check tells more)")
    if r.source_changed:
        lines.append("  warning: the source changed during the copy; what it recorded after the copy began is "
                     "not in the destination")
    lines.append("the source is unchanged: start your workers against the destination, and delete the source once "
                 "you have checked the copy")
    return lines


def _execute(url: str, args: argparse.Namespace) -> int:
    try:
        if args.command == "copy":
            return _copy(args)
        if args.command == "check":
            return _check(url, args)
        if args.command == "compact":
            return _compact(url, args)
        return asyncio.run(_run(url, args))
    except (StoreCorruptedError, CorruptHistoryError) as e:
        command = f"duro --store {url} check"
        text = str(e)
        _error(text.replace("duro check", command) if "duro check" in text else
               f"{text} (see what is damaged: {command})")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``duro`` command.

    Every error is one line on stderr, starting with ``duro: error:``; no traceback unless
    ``--traceback`` is given and the error is not one duro raises on purpose.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 1 when the operation failed (including any store error and
        problems found by ``check``), 2 for bad input (options, JSON arguments, the store URL, a
        value past a limit of the store).
    """
    show_traceback = False
    url = DEFAULT_STORE
    try:
        args = parse_args(argv)
        show_traceback = args.traceback
        url = store_url(args.store)
        return _execute(url, args)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (UsageError, StoreURLError, StoreLimitError, PayloadTooLargeError) as e:
        _error(str(e))  # the input is at fault: an option, a JSON argument, the URL, an id or payload too big
        return 2
    except (OperationError, DuroError, mdb.Error) as e:  # mdb.Error: LMDB's errors are StoreErrors too
        _error(str(e))
    except (TypeError, ValueError) as e:
        if _checked_argument(e):
            _error(str(e))
            return 2
        _unexpected(e, url, show_traceback)
    except OSError as e:
        _error(f"cannot open or use the store: {e}")
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        _unexpected(e, url, show_traceback)
    return 1


if __name__ == "__main__":
    sys.exit(main())
