r"""What the ``duro`` command prints: plain text when piped, ``rich`` tables, colours and progress on a terminal.

Plain output is the contract scripts read: aligned columns, ``key: value`` lines, JSON. It does not
depend on the terminal's width and holds no escape sequences. On a terminal (``--color auto``, the
default) the same data is drawn by ``rich``; ``--color always`` draws it into a pipe as well (for
``less -R``), ``--color never`` prints plain text to a terminal. Progress bars and spinners go to
stderr, only when stderr is a terminal. ``rich`` is imported only when something is drawn with it.

Everything read from a store (ids, names, payloads, error messages) has its control characters
escaped by ``clean`` before it is printed, in both modes; JSON escapes them as JSON does.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

from duro.errors import ApplicationError, NonDeterminismError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from duro.client import PendingActivity, WorkflowExecution
    from duro.history import History, HistoryEvent
    from duro.stores.base import QueueVersioning
    from duro.stores.check import CheckReport
    from duro.stores.copy import CopyReport
    from duro.testing import WorkflowReplayResult, WorkflowReplayResults

__all__ = ["COLOR_CHOICES", "HISTORY_HEADERS", "Output", "Tracker", "check_lines", "clean", "copy_lines",
           "execution_dict", "failure_dict", "failure_text", "history_lines", "history_rows", "history_title",
           "json_safe", "replay_dict", "replay_lines", "state_cells", "state_dict", "table_lines", "time_text",
           "to_json", "versioning_dict", "versioning_lines"]

Color = Literal["auto", "always", "never"]
COLOR_CHOICES: tuple[Color, ...] = ("auto", "always", "never")
PAYLOAD_WIDTH = 48

# Styles on a terminal (rich style names); plain output has none.
STATUS_STYLES = {"running": "cyan", "completed": "green", "failed": "bold red", "timed_out": "red",
                 "canceled": "yellow", "terminated": "magenta", "continued_as_new": "blue",
                 "active": "green", "paused": "yellow"}


# ---------------------------------------------------------------------------------------- escaping

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


def json_safe(text: str) -> str:
    r"""JSON text with the characters ``clean`` escapes, which JSON leaves raw (DEL, C1...), as ``\uXXXX``."""
    # They can only occur inside JSON strings (the syntax around them is ASCII), where \uXXXX is valid.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text safe to print (non-ASCII kept, control characters escaped)."""
    return json_safe(json.dumps(value, indent=indent, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------------------------- plain text


def time_text(t: datetime.datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC, or ``-``."""
    return "-" if t is None else t.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def execution_dict(ex: WorkflowExecution) -> dict[str, Any]:
    """A workflow run as ``list --json`` and ``describe --json`` print it (times ISO 8601)."""
    return {
        "workflow_id": ex.workflow_id, "run_id": ex.run_id, "workflow_type": ex.workflow_type,
        "task_queue": ex.task_queue, "status": ex.status, "start_time": ex.start_time.isoformat(),
        "close_time": ex.close_time.isoformat() if ex.close_time else None, "history_length": ex.history_length,
        "task_failures": ex.task_failures, "search_attributes": ex.search_attributes, "memo": ex.memo,
        "pending_activities": [pending_dict(pa) for pa in ex.pending_activities],
        "build_id": ex.build_id, "versioning_behavior": ex.versioning_behavior,
    }


def versioning_dict(info: QueueVersioning, *, running: bool = True) -> dict[str, Any]:
    """What ``duro build ... --json`` prints about a task queue (``running`` only for show)."""
    out: dict[str, Any] = {
        "task_queue": info.task_queue, "current_build_id": info.current_build_id,
        "set_time": datetime.datetime.fromtimestamp(info.set_time, tz=datetime.UTC).isoformat()
        if info.set_time is not None else None,
    }
    if running:
        out["running"] = [{"build_id": b, "versioning_behavior": v, "count": n} for b, v, n in info.running]
    return out


def versioning_lines(info: QueueVersioning, *, running: bool = True) -> list[str]:
    """What ``duro build ...`` prints about a task queue, line by line."""
    if info.current_build_id is None:
        lines = [f"task queue {info.task_queue}: no current build (any worker takes new runs)"]
    else:
        when = datetime.datetime.fromtimestamp(info.set_time or 0, tz=datetime.UTC)
        lines = [f"task queue {info.task_queue}: current build {info.current_build_id} (since {time_text(when)} UTC)"]
    if running:
        if not info.running:
            lines.append("no running runs")
        for build, behavior, n in info.running:
            what = f"build {build} ({behavior})" if build is not None else "no build (unversioned, or not run yet)"
            lines.append(f"{n} running on {what}")
    return lines


def pending_dict(pa: PendingActivity) -> dict[str, Any]:
    """A pending activity as ``describe --json`` prints it."""

    def iso(t: datetime.datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "activity_id": pa.activity_id, "activity_type": pa.activity_type, "task_queue": pa.task_queue,
        "attempt": pa.attempt, "state": pa.state, "scheduled_time": iso(pa.scheduled_time),
        "last_heartbeat_time": iso(pa.last_heartbeat_time), "heartbeat_details": pa.heartbeat_details,
        "last_failure": pa.last_failure, "next_attempt_time": iso(pa.next_attempt_time),
    }


def pending_text(pa: PendingActivity) -> str:
    """One line on a pending activity for ``describe``: what, which attempt, its last failure."""
    text = f"{pa.activity_type} (seq {pa.activity_id}), attempt {pa.attempt}, {pa.state.replace('_', ' ')}"
    if pa.next_attempt_time:
        text += f" until {time_text(pa.next_attempt_time)} UTC"
    if pa.last_heartbeat_time:
        text += f"; last heartbeat {time_text(pa.last_heartbeat_time)} UTC"
    if pa.last_failure:
        text += f"; last failure: {pa.last_failure}"
    return text


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
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
    text = json_safe(json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str))
    return text if len(text) <= width else text[: width - 3] + "..."


def _event_label(event: HistoryEvent) -> str:
    """The event's name, with the command's sequence number where it has one."""
    kind = event.event_type
    if event.ref and kind.startswith(("Activity", "Timer", "StartChild", "ChildWorkflow", "SignalExternal",
                                      "RequestCancelExternal")):
        return f"{event.name} #{event.ref}".strip()
    return event.name


HISTORY_HEADERS = ("id", "+ms", "event type", "name / seq", "payload")


def history_rows(history: History) -> list[list[str]]:
    """The cells of ``history_lines``' table, one row per event."""
    if not len(history):
        return []
    t0 = history[0].timestamp
    return [[str(e.event_id), f"{(e.timestamp - t0).total_seconds() * 1000:.1f}", e.event_type, _event_label(e),
             _payload_summary(e)] for e in history]


def history_title(history: History) -> str:
    """The line above a history's table."""
    return f"workflow {history.workflow_id!r} run {history.run_id}: {len(history)} events"


def history_lines(history: History) -> list[str]:
    """A readable table of a history: id, milliseconds since the start, type, name / seq, payload.

    Args:
        history: the events of one run.

    Returns:
        The lines of the table, a title first.
    """
    rows = history_rows(history)
    return [history_title(history), *(table_lines(HISTORY_HEADERS, rows, right=(0, 1)) if rows else [])]


def _state_error(err: BaseException) -> dict[str, str]:
    kind = err.type if isinstance(err, ApplicationError) else type(err).__name__
    return {"type": kind, "message": str(err)}


def state_cells(history: History, states: dict[int, Any]) -> list[str]:
    """The ``history --state`` column: at each event of ``states`` the answer as compact JSON, or its error.

    Args:
        history: the events of one run.
        states: event id -> the query's answer as of that event (decoded), or the exception it was.
    """
    cells = []
    for e in history:
        if e.event_id not in states:
            cells.append("")
            continue
        value = states[e.event_id]
        if isinstance(value, BaseException):
            err = _state_error(value)
            cells.append(f"error: {err['type']}: {err['message']}")
        else:
            cells.append(json_safe(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)))
    return cells


def state_dict(query: str, args: list[Any], states: dict[int, Any]) -> dict[str, Any]:
    """The ``"state"`` key ``history --state --json`` adds next to the history's own keys.

    ``{"query", "args", "answers": [{"event_id", "result", "error"}]}``, one answer per event of
    ``states`` in order; ``error`` is ``{"type", "message"}`` (then ``result`` is null) or null.
    """
    answers = []
    for event_id, value in sorted(states.items()):
        failed = isinstance(value, BaseException)
        answers.append({"event_id": event_id, "result": None if failed else value,
                        "error": _state_error(value) if failed else None})
    return {"query": query, "args": args, "answers": answers}


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
    if r.current_builds:
        lines.append(f"  {r.current_builds} task queue(s)' current build (worker versioning) set in the destination")
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


def _replay_run(r: WorkflowReplayResult) -> str:
    return f"workflow {r.workflow_id} (run {r.run_id}, type {r.workflow_type}, {r.status})"


def _replay_counts(results: WorkflowReplayResults) -> tuple[int, int]:
    """How many runs diverged, and how many failed otherwise (the code raised)."""
    diverged = sum(1 for r in results if r.diverged)
    return diverged, sum(1 for r in results if not r.ok) - diverged


def replay_lines(results: WorkflowReplayResults) -> list[tuple[str, str | None]]:
    """What ``duro replay`` prints: each run that did not replay, then a summary; each line with its style.

    Args:
        results: what ``Replayer.replay_store`` found.

    Returns:
        ``(text, rich style or None)`` pairs (the text not yet escaped).
    """
    lines: list[tuple[str, str | None]] = []
    for r in results.failures:
        err = r.replay_failure
        if isinstance(err, NonDeterminismError):
            if not err.event_id and not err.recorded:  # the determinism guard: a call, not an event
                lines.append((f"{_replay_run(r)}: workflow code called a nondeterministic function", "bold red"))
            else:
                at = f" at event {err.event_id}" if err.event_id else ""
                lines.append((f"{_replay_run(r)}: diverged{at}", "bold red"))
            if err.recorded and err.requested:
                lines += [(f"  recorded:  {err.recorded}", None), (f"  requested: {err.requested}", None)]
            else:
                lines.append((f"  {err}", None))
        else:
            lines.append((f"{_replay_run(r)}: replay failed, the code raised {type(err).__name__}: {err}", "bold red"))
    diverged, failed = _replay_counts(results)
    summary = (f"replayed {len(results)} run(s): {len(results) - diverged - failed} ok, {diverged} diverged, "
               f"{failed} failed; {results.skipped} skipped (workflow type not in --module)")
    if results.left_out:
        summary += f"; {results.left_out} older run(s) left out by --limit"
    lines.append((summary, "green" if results.ok else "bold red"))
    if not len(results) and results.skipped:
        lines.append(("no run of the module(s)' workflow types is in the store, only runs of other types: was the "
                      "type renamed, or is it another --module?", "yellow"))
    return lines


def replay_dict(results: WorkflowReplayResults) -> dict[str, Any]:
    """What ``duro replay --json`` prints: the counts, and every run replayed with its error (null: replayed)."""
    runs = []
    for r in results:
        err = r.replay_failure
        error: dict[str, Any] | None = None
        if err is not None:
            nd = err if isinstance(err, NonDeterminismError) else None
            error = {"class": type(err).__name__, "message": str(err),
                     "event_id": nd.event_id if nd is not None else None,
                     "recorded": nd.recorded if nd is not None else None,
                     "requested": nd.requested if nd is not None else None}
        runs.append({"workflow_id": r.workflow_id, "run_id": r.run_id, "workflow_type": r.workflow_type,
                     "status": r.status, "ok": r.ok, "diverged": r.diverged, "error": error})
    diverged, failed = _replay_counts(results)
    return {"ok": results.ok, "replayed": len(results), "diverged": diverged, "failed": failed,
            "skipped": results.skipped, "left_out": results.left_out, "runs": runs}


def _causes(err: BaseException) -> list[tuple[BaseException, str]]:
    """The chain of causes of ``err``, each with its description (type, ApplicationError type and details)."""
    out = []
    cause = err.__cause__
    while cause is not None:
        desc = type(cause).__name__
        if isinstance(cause, ApplicationError):
            if cause.type != "ApplicationError":
                desc += f" type {cause.type!r}"
            if cause.details is not None:
                desc += f" details {to_json(cause.details)}"
        out.append((cause, desc))
        cause = cause.__cause__
    return out


def failure_text(err: BaseException) -> str:
    """The error of a failed run in one line, with the chain of causes (types, details) its message lacks."""
    text = str(err)
    causes = [desc + (f": {cause}" if str(cause) and str(cause) not in text else "") for cause, desc in _causes(err)]
    return f"{text} (cause: {', caused by '.join(causes)})" if causes else text


def failure_dict(err: BaseException) -> dict[str, Any]:
    """The error of a failed run as ``result --json`` prints it: its message and its chain of causes."""
    causes = []
    for cause, _ in _causes(err):
        entry: dict[str, Any] = {"class": type(cause).__name__, "message": str(cause)}
        if isinstance(cause, ApplicationError):
            entry.update(type=cause.type, non_retryable=cause.non_retryable, details=cause.details)
        causes.append(entry)
    return {"message": str(err), "causes": causes}


# ---------------------------------------------------------------------------------------- the output


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _style(name: str) -> str | None:
    """The style of a status, or of an event type of a history."""
    if name in STATUS_STYLES:
        return STATUS_STYLES[name]
    if name.endswith(("Failed", "TimedOut", "Terminated")):
        return "red"
    if name.endswith("Completed") and name.startswith(("Workflow", "Activity", "Child")) and "Task" not in name:
        return "green"
    if name.endswith(("Signaled", "CancelRequested", "Canceled")):
        return "yellow"
    if name.startswith("WorkflowTask"):
        return "dim"
    return None


class Tracker:
    """The progress of one long operation, drawn on stderr by ``rich`` (or not at all: every method is a no-op)."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more steps done."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        """Set the steps done so far and/or the text before the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed,
                                  description=clean(description) if description is not None else None)


class Output:
    """Where one ``duro`` invocation prints: stdout for results, stderr for errors and progress.

    Args:
        color: ``auto`` (rich output when stdout is a terminal), ``always`` or ``never``.
        stdout: defaults to ``sys.stdout`` as it is now.
        stderr: defaults to ``sys.stderr`` as it is now.
    """

    def __init__(self, color: Color = "auto", *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.color = color
        # Only a real terminal (or --color always) gets rich output: FORCE_COLOR, which rich honours, must
        # not turn the plain output scripts read into tables with escape sequences.
        self.rich = color == "always" or (color == "auto" and _isatty(self.stdout))
        self.progress_shown = _isatty(self.stderr)
        self._console: Console | None = None
        self._err_console: Console | None = None
        self._live: Progress | None = None  # the progress bar drawn now, if any

    # -- consoles, made (and rich imported) on first use

    def _out(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stdout, force_terminal=True if self.color == "always" else None,
                                    highlight=False, markup=False, emoji=False)
        return self._console

    def _err(self) -> Console:
        if self._err_console is None:
            from rich.console import Console

            self._err_console = Console(file=self.stderr, no_color=True if self.color == "never" else None,
                                        highlight=False, markup=False, emoji=False)
        return self._err_console

    # -- results (stdout)

    def line(self, text: str, style: str | None = None) -> None:
        """One line of text, escaped; ``style`` (a rich style) colours it on a terminal."""
        if self._live is not None and _isatty(self.stdout):
            # The bar is on the same terminal: its console prints the line above it (a plain print would
            # land inside the bar's line, and the next refresh would erase the wrong line).
            from rich.text import Text

            self._live.console.print(Text(clean(text), style=(style or "") if self.rich else ""), soft_wrap=True)
        elif self.rich and style:
            from rich.text import Text

            self._out().print(Text(clean(text), style=style), soft_wrap=True)
        else:
            print(clean(text), file=self.stdout)

    def json(self, text: str) -> None:
        """A JSON document (already safe text, see ``to_json``); highlighted on a terminal, the same characters."""
        if self.rich:
            from rich.highlighter import JSONHighlighter
            from rich.text import Text

            shown = Text(text)
            JSONHighlighter().highlight(shown)
            self._out().print(shown, soft_wrap=True)
        else:
            print(text, file=self.stdout)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = (),
              styled: Sequence[int] = (), title: str | None = None) -> None:
        """Rows in columns; on a terminal a rich table whose ``styled`` columns are coloured by their value."""
        if title is not None:
            self.line(title, "bold")
        if not self.rich:
            for text in table_lines(headers, rows, right=right):
                print(text, file=self.stdout)
            return
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(Text(clean(c), style=(_style(c) or "") if i in styled else "") for i, c in enumerate(row)))
        self._out().print(table)

    def fields(self, pairs: Sequence[tuple[str, str]], *, styled: Sequence[str] = ()) -> None:
        """``key: value`` lines, the values aligned; on a terminal the keys in bold, ``styled`` values coloured."""
        if not self.rich:
            for key, value in pairs:
                print(clean(f"{key + ':':<12} {value}"), file=self.stdout)
            return
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in pairs:
            grid.add_row(Text(key + ":"), Text(clean(value), style=(_style(value) or "") if key in styled else ""))
        self._out().print(grid)

    # -- errors, progress (stderr)

    def error(self, message: str) -> None:
        """Report an error in one line on stderr (escaped: the message may quote ids and payloads)."""
        if _isatty(self.stderr) and self.color != "never":
            from rich.text import Text

            self._err().print(Text.assemble(("duro: error: ", "bold red"), clean(message)), soft_wrap=True)
        else:
            print(f"duro: error: {clean(message)}", file=self.stderr)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Tracker]:
        """A progress bar on stderr while the block runs, when stderr is a terminal (it is erased at the end).

        ``total`` is the number of steps when known (a bar and N/M), else None (a pulsing bar; the
        description can carry a count).
        """
        if not self.progress_shown:
            yield Tracker()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                   *([MofNCompleteColumn()] if total is not None else []), TimeElapsedColumn()]
        # Lines printed meanwhile go above the bar when stdout is the terminal too (see line), else straight on.
        with Progress(*columns, console=self._err(), transient=True, redirect_stdout=False,
                      redirect_stderr=False) as progress:
            self._live = progress
            try:
                yield Tracker(progress, progress.add_task(clean(description), total=total))
            finally:
                self._live = None

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner with ``text`` on stderr while the block runs, when stderr is a terminal."""
        if not self.progress_shown:
            yield
            return
        with self._err().status(clean(text)):
            yield
