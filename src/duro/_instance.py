"""A live workflow run in memory: its deterministic loop, pending futures and the commands it produced.

The worker keeps instances in a sticky LRU cache and feeds them *activations* (batches of input
events); replay feeds the same instance the recorded activations and checks its commands against
the recorded ones. Live and replay run exactly the same code path.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import random
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, cast

import orjson

from duro._child import ChildWorkflowHandle
from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import CommandMatcher, apply_inputs, replay_history
from duro._interceptor_roots import InboundRoot, OutboundRoot
from duro._loop import WorkflowLoop
from duro._validate import check_call_args, check_duration, check_name
from duro.activity import ActivityDefinition, RetryPolicy, get_activity_definition, to_seconds
from duro.converter import (
    DataConverter,
    convert,
    decode_failure,
    encode_failure,
    failure_from_dict,
    parameter_hints,
)
from duro.engine.records import SEARCH_ATTRIBUTES_MARKER
from duro.errors import (
    ActivityError,
    ApplicationError,
    CancelledError,
    DuroError,
    NonDeterminismError,
    TerminatedError,
    TimeoutError,
    WorkflowFailedError,
    WorkflowIOError,
)
from duro.interceptor import (
    ExecuteWorkflowInput,
    HandleQueryInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    SignalExternalWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
    check_headers,
)
from duro.stores.base import (
    CANCEL_TYPES,
    FLAG_CANCEL_TYPE,
    FLAG_HEADERS,
    ActivityTask,
    ChildStart,
    ExternalRequest,
    WorkflowTaskCompletion,
    headed,
    pack,
    split_headed,
    unpack,
)
from duro.workflow import WorkflowContext, WorkflowDefinition, WorkflowInfo

__all__ = ["STACK_TRACE_QUERY", "ChildWorkflowHandle", "ContinueAsNew", "WorkflowInstance", "WorkflowTaskError"]

# A built-in query every workflow answers (unless it defines its own): where it waits now.
STACK_TRACE_QUERY = "__stack_trace"

PARENT_CLOSE_POLICIES = ("terminate", "request_cancel", "abandon")

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_RETRY = RetryPolicy().to_dict()


_ACTIVITY_SCHEDULED = codec.ACTIVITY_SCHEDULED
# Future's methods, called unbound on activity futures: a method lookup on an instance of a C
# future type is not specialized by the interpreter (3.11), a global is.
_future_done = asyncio.Future.done
_future_set_result = asyncio.Future.set_result
_NO_EXTRAS: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])  # never mutated
_SHARED = "the shared empty container of instances that never added to it: give the instance its own first"


class _SharedEmptyList(list[Any]):
    """The empty list that rarely used lists of every instance share until the instance adds to one.

    A worker may hold 100,000 parked instances: a dozen empty containers of each one's own cost
    about 1 KB per instance, and each list or set is one more object for the cycle collector to
    walk. A site that adds to such an attribute first replaces ``_NO_LIST`` with a list of the
    instance's own; adding to the shared one raises, so a site that forgets cannot leak state.
    """

    __slots__ = ()

    def append(self, item: Any) -> None:
        raise TypeError(_SHARED)

    def extend(self, items: Any) -> None:
        raise TypeError(_SHARED)

    def insert(self, index: Any, item: Any) -> None:
        raise TypeError(_SHARED)

    def __setitem__(self, index: Any, value: Any) -> None:
        raise TypeError(_SHARED)

    def __iadd__(self, other: Any) -> NoReturn:  # type: ignore[misc]  # refuses, unlike __add__
        raise TypeError(_SHARED)


class _SharedEmptyDict(dict[Any, Any]):
    """The empty dict that rarely used registries of every instance share (see ``_SharedEmptyList``)."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(_SHARED)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        raise TypeError(_SHARED)

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(_SHARED)

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]  # refuses, unlike __or__
        raise TypeError(_SHARED)


_NO_LIST: list[Any] = _SharedEmptyList()
_NO_DICT: dict[Any, Any] = _SharedEmptyDict()


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``: ends this run and starts a fresh one with ``args``.

    A BaseException, so that ``except Exception`` in workflow code does not swallow it.
    """

    def __init__(self, args: tuple[Any, ...]) -> None:
        super().__init__("continue as new")
        self.args_ = args


# What fails a run when the workflow raises it (the rest fail the workflow task, which is retried):
# duro's failures, as Temporal's FailureError subclasses.
RUN_FAILURES: tuple[type[BaseException], ...] = (ApplicationError, ActivityError, WorkflowFailedError, TimeoutError,
                                                 CancelledError, TerminatedError)


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether ``exc`` means "cancelled" (Temporal's ``is_cancelled_exception``).

    ``asyncio.CancelledError``, ``duro.CancelledError``, or an ``ActivityError`` (or a child's
    ``WorkflowFailedError``) whose cause is ``duro.CancelledError``. A run whose cancellation was
    asked for and whose code raises one of these closes as canceled.
    """
    if isinstance(exc, (asyncio.CancelledError, CancelledError)):
        return True
    return isinstance(exc, (ActivityError, WorkflowFailedError)) and isinstance(exc.__cause__, CancelledError)


# Cancellation types of activities as recorded in ActivityTaskScheduled's flags (FLAG_CANCEL_TYPE).
CANCELLATION_TYPES = tuple(CANCEL_TYPES)
_TRY_CANCEL = CANCEL_TYPES["try_cancel"]
_WAIT_CANCELLATION = CANCEL_TYPES["wait_cancellation_completed"]
_ABANDON = CANCEL_TYPES["abandon"]
_LEGACY_CANCEL = 0  # recorded before cancellation types existed: the future itself is cancelled


class _ActivityFuture(asyncio.Future[Any]):
    """The awaitable of ``ctx.execute_activity``: cancelling it asks the activity to cancel.

    As in Temporal, the ``await`` does not see ``asyncio.CancelledError``: per the activity's
    cancellation type it raises ``duro.ActivityError`` (its cause a ``duro.CancelledError``) at once
    ("try_cancel", "abandon"), or gets the activity's own end ("wait_cancellation_completed"). The
    request is recorded when the activation ends (``_cancel_dropped_activities``, in seq order). An
    activity recorded before cancellation types existed (type 0) is cancelled as it was then.
    """

    __slots__ = ("_ctype", "_inst", "_name", "_seq", "cancel_asked")

    # Made by _activity_future, or inline in schedule_activity's replay path (the class has no
    # __init__ of its own: one call fewer per activity). Keep the two in step.
    _inst: WorkflowInstance
    _seq: int
    _name: str
    _ctype: int | None  # None: recorded; read from the history when first needed
    cancel_asked: bool

    @property
    def cancellation_type(self) -> int:
        """The activity's cancellation type (the ``CANCEL_TYPES`` value; 0: recorded before they existed)."""
        if self._ctype is None:
            self._ctype = self._inst.recorded_cancellation_type(self._seq)
        return self._ctype

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        ctype = self.cancellation_type
        if ctype == _LEGACY_CANCEL:
            self._inst._note_cancel_asked(self._seq)
            return super().cancel(msg)
        if not self.cancel_asked:
            self.cancel_asked = True
            self._inst._note_cancel_asked(self._seq)
            if ctype != _WAIT_CANCELLATION:
                err = ActivityError(f"activity {self._name!r} was cancelled", activity_type=self._name,
                                    activity_id=self._seq)
                err.__cause__ = CancelledError(msg if isinstance(msg, str) and msg else "activity cancelled")
                self.set_exception(err)
                # Often nobody reads it (asyncio.wait_for raises its own CancelledError): not an error.
                self._log_traceback = False
        return True  # the task awaiting it is not cancelled: it gets what this future gets


def _activity_future(inst: WorkflowInstance, seq: int, name: str, ctype: int | None) -> _ActivityFuture:
    fut = _ActivityFuture(loop=inst.loop)
    fut._inst = inst
    fut._seq = seq
    fut._name = name
    fut._ctype = ctype
    fut.cancel_asked = False
    return fut


class LocalCall:
    """A local activity the workflow waits for: what to run, and the future its outcome resolves."""

    __slots__ = ("activity", "args", "future", "hint", "name", "options", "seq")

    def __init__(self, seq: int, name: str, activity: Callable[..., Any] | str, args: tuple[Any, ...],
                 options: dict[str, Any], future: asyncio.Future[Any], hint: Any) -> None:
        self.seq = seq
        self.name = name
        self.activity = activity
        self.args = args
        self.options = options
        self.future = future
        self.hint = hint

    @property
    def marker_name(self) -> str:
        """The name of the MarkerRecorded event its outcome is recorded as."""
        return f"{LOCAL_ACTIVITY_MARKER}:{self.seq}:{self.name}"


# The MarkerRecorded events of local activities' outcomes are named "<this>:<seq>:<activity name>".
LOCAL_ACTIVITY_MARKER = "duro:local_activity"


class WorkflowTaskError(Exception):
    """A workflow task could not complete (a bug or nondeterminism); the run stays open and is retried."""


class _Location:
    """Where workflow code asked for a command; formatted as "file:line" only when an error shows it."""

    __slots__ = ("filename", "lineno")

    def __init__(self, filename: str, lineno: int) -> None:
        self.filename = filename
        self.lineno = lineno

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"

    __repr__ = __str__


_LOOP_FILE = os.path.join(_PKG_DIR, "_loop.py")


def _caller_location() -> _Location | str:
    """The innermost frame outside duro (and asyncio): the workflow code that asked.

    The walk stops at the workflow loop: above it is the engine (or a Replayer's caller), never
    the workflow code, so a command issued from duro's own helpers is reported as unknown rather
    than blamed on the test that drove the replay.
    """
    f: Any = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn == _LOOP_FILE and f.f_code.co_name == "run_until_quiescent":
            break  # the engine drives the loop from here: no workflow code above
        if not fn.startswith(_PKG_DIR) and "asyncio" not in fn:
            return _Location(fn, f.f_lineno)
        f = f.f_back
    return "?"


class WorkflowInstance:
    """One run of a workflow, driven activation by activation."""

    # Slots: a worker may hold 100,000 parked instances; a __dict__ each would cost ~1.5 KB more.
    __slots__ = (
        "__weakref__",
        "_args_payload",
        "_cancel_asked",
        "_children",
        "_conditions",
        "_divergence",
        "_dynamic_query",
        "_dynamic_signal",
        "_dynamic_update",
        "_handler_tasks",
        "_hlen",
        "_in_query",
        "_inbound",
        "_local_pending",
        "_main",
        "_matcher",
        "_outbound",
        "_patches",
        "_pending",
        "_query_handlers",
        "_replay_events",
        "_rng",
        "_signal_arrivals",
        "_signal_handlers",
        "_signal_waiters",
        "_signals",
        "_update_handlers",
        "accepted_updates",
        "activity_tasks",
        "busy",
        "cancel_activities",
        "cancel_requested",
        "cancelled_timers",
        "child_starts",
        "close_status",
        "commands",
        "converter",
        "ctx",
        "defn",
        "epoch",
        "external",
        "failure_types",
        "info",
        "last_event_id",
        "last_marker_id",
        "loop",
        "next_event_id",
        "replaying",
        "run_key",
        "seq",
        "timers",
    )

    def __init__(self, defn: WorkflowDefinition, run_key: bytes, started: Event, converter: DataConverter,
                 interceptors: tuple[Interceptor, ...] = (),
                 failure_types: tuple[type[BaseException], ...] = (), determinism: str = "raise") -> None:
        # Events as of the current task, counted the same live and in replay (see activate, _command).
        self._hlen = 0
        # Exception types that fail the run (besides RUN_FAILURES): the workflow's and the worker's.
        self.failure_types = defn.failure_exception_types + failure_types
        meta_b, self._args_payload = unpack(started.payload)
        meta = orjson.loads(meta_b)
        self.defn = defn
        self.run_key = run_key
        self.converter = converter
        run_id = run_key.hex()
        first_run = meta.get("first_run", run_id)
        self.info = WorkflowInfo(
            # One string where two equal ones would do, and queue names interned: a worker may hold
            # 100,000 parked instances.
            workflow_id=meta["wid"], run_id=run_id, workflow_type=started.name, task_queue=sys.intern(meta["queue"]),
            attempt=started.attempt or 1, first_run_id=run_id if first_run == run_id else first_run,
            parent=meta.get("parent"),
            headers=meta.get("headers") or {},
            run_timeout=_timedelta(meta.get("run_timeout")),
            execution_timeout=_timedelta(meta.get("execution_timeout")),
            _history_length=self._get_history_length,
        )
        self.loop = WorkflowLoop(start_timer=self._start_timer, cancel_timer=self._cancel_timer)
        self.loop.set_time(started.timestamp)
        self.loop.workflow_type = started.name
        mode = defn.determinism or determinism  # the workflow's own setting, else the worker's
        if mode != "raise":
            self.loop.determinism = mode
        self._rng: random.Random | None = None
        self.ctx = WorkflowContext(self, self.info)
        self.replaying = False
        self.seq = 0
        # Commands produced since the last take_commands(), with where in the code each was asked for.
        self.commands: list[Event] = []
        self.activity_tasks: list[ActivityTask] = []
        self.timers: list[tuple[int, float]] = []
        self.close_status: str | None = None
        self._pending: dict[int, tuple[_ActivityFuture, Any, str, str]] = {}
        # The containers set to _NO_LIST / _NO_DICT below (and _handler_tasks) are made when first
        # added to: most runs never use them, and a parked instance should cost little memory.
        # (task queue, seq, wait for its end) of the activities whose cancellation was recorded.
        self.cancel_activities: list[tuple[str, int, bool]] = _NO_LIST
        # Seqs of activities whose futures were cancelled in this activation (see _ActivityFuture).
        self._cancel_asked: list[int] = _NO_LIST
        # The history being replayed (replay only): where recorded cancellation types are read.
        self._replay_events: list[Event] | None = None
        # Signals no handler or waiter took yet, by name: (arrival number, args), oldest first.
        self._signals: dict[str, list[tuple[int, list[Any]]]] = _NO_DICT
        self._signal_arrivals = 0
        self._signal_waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._signal_handlers: dict[str, Callable[..., Any]] = _NO_DICT
        # Catch-all handlers (ctx.set_dynamic_*_handler): called with the name first.
        self._dynamic_signal: Callable[..., Any] | None = None
        self._dynamic_query: Callable[..., Any] | None = None
        self._dynamic_update: tuple[Callable[..., Any], Callable[..., Any] | None] | None = None
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = _NO_LIST
        self._main: asyncio.Task[Any] | None = None
        self._children: dict[int, ChildWorkflowHandle] = _NO_DICT
        self.child_starts: list[ChildStart] = _NO_LIST
        self.external: list[ExternalRequest] = _NO_LIST
        self.cancelled_timers: list[int] = _NO_LIST
        self.cancel_requested = False
        self._patches: dict[str, bool] = _NO_DICT
        self._query_handlers: dict[str, Callable[..., Any]] = _NO_DICT
        self._update_handlers: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = _NO_DICT
        # The ids of the updates accepted on this run so far (what a repeated update id is checked
        # against), each with its WorkflowExecutionUpdateAccepted event id (0: not known yet).
        self.accepted_updates: dict[str, int] = _NO_DICT
        self._in_query = False
        # Async signal handlers and update handlers still running (ctx.all_handlers_finished).
        self._handler_tasks: set[asyncio.Task[Any]] | None = None
        # Local activities the code waits for, by seq: run by the worker before the task commits.
        self._local_pending: dict[int, LocalCall] = {}
        self._matcher: CommandMatcher | None = None
        # The first divergence found in replay: kept even if workflow code catches the exception.
        self._divergence: NonDeterminismError | None = None
        # Bookkeeping against the store: the last event id this instance has seen or written, and
        # the run's count of completed workflow tasks when this instance last committed.
        self.last_event_id = 0
        self.next_event_id = 1
        self.last_marker_id = 0
        self.epoch = 0
        self.busy = False
        # Interceptor chains (None without interceptors: then every path calls straight through).
        self._inbound: WorkflowInboundInterceptor | None = None
        self._outbound: WorkflowOutboundInterceptor | None = None
        if interceptors:
            inbound: WorkflowInboundInterceptor = InboundRoot(self)
            for it in reversed(interceptors):
                inbound = it.intercept_workflow(inbound)
            self._inbound = inbound
            inbound.init(OutboundRoot(self))  # the root's init keeps the wrapped chain as _outbound

    def _get_history_length(self) -> int:
        return self._hlen

    @property
    def rng(self) -> random.Random:
        """The run's deterministic random generator (seeded by the run id; made on first use)."""
        if self._rng is None:
            self._rng = random.Random(int.from_bytes(self.run_key, "big"))
        return self._rng

    # ------------------------------------------------------------------ driving

    def activate(self, inputs: list[Event]) -> None:
        """Apply input events in order, then run the code until every branch is blocked."""
        self._hlen += len(inputs) + 1  # the inputs, and this task's WorkflowTaskCompleted
        # In order: an activity's result to _activity_completed, any other event to _apply.
        t, self.last_event_id = apply_inputs(self, inputs, self.last_event_id)
        self.loop.advance_time(t)
        self._run()

    def _run(self) -> None:
        loop = self.loop
        while True:
            loop.run_until_quiescent()
            if self._conditions and self._check_conditions():
                continue
            if self._local_pending and self.replaying and self._replay_local_activities():
                continue
            break
        if loop.nondeterministic_call is not None:
            # The determinism guard refused a call: the cause of whatever followed (the error where
            # a handler or callback raised it, a path the code then took that diverges). Other
            # errors of the activation are kept as notes: the task fails with this one.
            err = loop.nondeterministic_call
            for other in loop.unhandled_errors:
                exc = other.get("exception")
                if exc is not err:
                    err.add_note(f"also in this workflow task: {other.get('message', '')} {exc!r}")
            loop.unhandled_errors.clear()
            raise err
        if loop.unhandled_errors:
            ctx = loop.unhandled_errors[0]
            loop.unhandled_errors.clear()
            exc = ctx.get("exception")
            raise WorkflowTaskError(f"unhandled error in workflow {self.info.workflow_type!r}: "
                                    f"{ctx.get('message', '')} {exc!r}") from exc
        if self._divergence is not None:
            raise self._divergence
        if self._cancel_asked:
            self._cancel_dropped_activities()
        main = self._main
        if main is not None and main.done() and self.close_status is None:
            self._finish(main)

    def _check_conditions(self) -> bool:
        fired = False
        keep = []
        for fn, fut in self._conditions:
            if fut.done():
                continue
            try:
                met = fn()
            except Exception as e:  # raised where the code waits, like any error of its own
                fut.set_exception(e)
                fired = True
                continue
            if met:
                fut.set_result(None)
                fired = True
            else:
                keep.append((fn, fut))
        self._conditions = keep or _NO_LIST
        return fired

    def _finish(self, main: asyncio.Task[Any]) -> None:
        if main.cancelled():
            exc: BaseException | None = asyncio.CancelledError("workflow cancelled")
        else:
            exc = main.exception()
        if isinstance(exc, ContinueAsNew):
            payload = self.converter.encode_args(exc.args_)
            self._command(Event(codec.WORKFLOW_CONTINUED_AS_NEW, 0, 0, 0, 0, self.info.workflow_type, payload),
                          self._fn_location("continue_as_new"))
            self.close_status = "continued_as_new"
            return
        if isinstance(exc, asyncio.CancelledError) and not self.cancel_requested:
            matcher = self._matcher
            if self.replaying and matcher is not None and matcher.matches_parts(codec.WORKFLOW_CANCELED, 0, ""):
                # Recorded as canceled: before duro 0.2 any asyncio.CancelledError closed the run so.
                self.close_status = "canceled"
                return
            # A cancellation nobody asked the run for (the code cancelled something of its own and
            # did not catch it): a failure, as in Temporal.
            detail = f": {exc}" if str(exc) else ""
            exc = CancelledError(f"workflow {self.info.workflow_type!r} raised asyncio.CancelledError, but its "
                                 f"cancellation was not requested{detail}")
        elif self.cancel_requested and is_cancellation(exc):
            # As Temporal: once the run's cancellation was asked for, a cancellation error out of the
            # code (asyncio's, duro's, or an ActivityError or child failure caused by one) closes it
            # as canceled.
            failure = orjson.dumps({"kind": "cancelled", "type": "CancelledError",
                                    "message": "the workflow was cancelled"})
            self._command(Event(codec.WORKFLOW_CANCELED, 0, 0, 0, 0, "", failure), self._fn_location("cancel"))
            self.close_status = "canceled"
            return
        if exc is None:
            matcher = self._matcher
            if self.replaying and matcher is not None and matcher.matches_parts(codec.WORKFLOW_COMPLETED, 0, ""):
                # Recorded as completed: its result is in the history already. Not encoding it
                # again keeps a history recorded under older rules (a NaN stored as null, a larger
                # payload limit) replayable.
                self.close_status = "completed"
                return
            try:
                payload = self.converter.encode(main.result())
            except (TypeError, ValueError) as e:  # not encodable, NaN/inf or too large: a bug in the code
                exc = e
            else:
                self._command(Event(codec.WORKFLOW_COMPLETED, 0, 0, 0, 0, "", payload), self._fn_location("return"))
                self.close_status = "completed"
                return
        if isinstance(exc, (NonDeterminismError, WorkflowIOError)):
            raise WorkflowTaskError(str(exc)) from exc
        assert exc is not None
        matcher = self._matcher
        if self.replaying and matcher is not None and matcher.matches_parts(codec.WORKFLOW_FAILED, 0, ""):
            # Recorded as failed: a history from before duro 0.2, when any exception failed the run,
            # replays as it was recorded.
            self.close_status = "failed"
            return
        if not isinstance(exc, RUN_FAILURES + self.failure_types):
            # As in Temporal: an exception that is not a failure fails the workflow task, not the run;
            # the task is retried (with backoff) until fixed code gets through it.
            raise WorkflowTaskError(
                f"workflow {self.info.workflow_type!r} raised {type(exc).__name__}: {exc}. The workflow task "
                "failed and will be retried; the run stays open. To fail the run, raise duro.ApplicationError, "
                "or list the type in workflow_failure_exception_types (@duro.workflow or Worker)") from exc
        self._command(Event(codec.WORKFLOW_FAILED, 0, 0, 0, 0, "", encode_failure(exc)), self._fn_location("raise"))
        self.close_status = "failed"

    def _fn_location(self, what: str) -> str:
        code = getattr(self.defn.fn, "__code__", None)
        if code is None:
            return what
        return f"{what} from the workflow function at {code.co_filename}:{code.co_firstlineno}"

    def take_commands(self) -> tuple[list[Event], list[ActivityTask], list[tuple[int, float]]]:
        """Return and clear what the code produced since the last call.

        Child starts, external requests and cancelled timers are taken with ``take_extras``.
        """
        out = (self.commands, self.activity_tasks, self.timers)
        self.commands, self.activity_tasks, self.timers = [], [], []
        return out

    def take_extras(self) -> tuple[list[ChildStart], list[ExternalRequest], list[int], list[tuple[str, int, bool]]]:
        """Return and clear child starts, signals/cancels to other runs, cancelled timers and activities."""
        if not (self.child_starts or self.external or self.cancelled_timers or self.cancel_activities):
            return _NO_EXTRAS
        out = (self.child_starts, self.external, self.cancelled_timers, self.cancel_activities)
        self.child_starts = self.external = self.cancelled_timers = self.cancel_activities = _NO_LIST
        return out

    def completion(self, processed_through: int, inputs: list[Event] | None = None,
                   completed_activity: tuple[int, int] | None = None) -> WorkflowTaskCompletion:
        """The outcome of the task just run, as one object to commit.

        It holds every command, activity task, timer, child start and request the code produced
        since the last completion (they are taken from the instance).

        Args:
            processed_through: the id of the last recorded input the code saw (0 with ``inputs``).
            inputs: events not in the history yet that the code was shown (committed with it).
            completed_activity: (seq, attempt) of the activity task those inputs finish.
        """
        commands, atasks, timers = self.take_commands()
        children, external, cancel_timers, cancel_activities = self.take_extras()
        return WorkflowTaskCompletion(
            run_key=self.run_key, task_queue=self.info.task_queue, epoch=self.epoch,
            processed_through=processed_through, commands=commands, activity_tasks=atasks, timers=timers,
            inputs=inputs or [], expect_next_event_id=self.next_event_id, completed_activity=completed_activity,
            close_status=self.close_status, children=children, external=external, cancel_timers=cancel_timers,
            cancel_activities=cancel_activities,
        )

    def committed(self, c: WorkflowTaskCompletion, next_event_id: int, marker_id: int | None = None) -> None:
        """Move the event-id cursor past a committed completion.

        ``next_event_id`` is the run's next id after the commit. ``marker_id``, when the caller
        knows it, is the id of the commit's WorkflowTaskCompleted; otherwise it is taken to sit
        right before the commands, at the end of the history.
        """
        self.epoch += 1
        self.last_marker_id = next_event_id - 1 - len(c.commands) if marker_id is None else marker_id
        # Events between what we read and our marker (if any) are inputs we have not seen yet:
        # then the read position stays before them; otherwise it moves past our own commands.
        if self.last_marker_id == self.next_event_id + len(c.inputs):
            # Past our own commands only: the store may have appended inputs after them in the
            # same commit (a child that could not start), which the next task must read.
            self.last_event_id = self.last_marker_id + len(c.commands)
        self.next_event_id = next_event_id

    def replay(self, events: list[Event]) -> list[Event]:
        """Re-run the code over a recorded history; return the inputs no task has processed yet.

        Each command is checked against the recorded one when the code asks for it, so the
        error can name the line that asked. Raises NonDeterminismError on divergence.
        """
        matcher = self._matcher = CommandMatcher(self.info.workflow_type)
        self.replaying = True
        self._replay_events = events
        try:
            with self.loop.held():
                # The per-task loop, compiled; it splits the history into tasks as it goes.
                last, tasks, pending = replay_history(self, events, matcher)
            # The activities still pending keep their recorded cancellation types past replay.
            unknown = {seq for seq, entry in self._pending.items() if entry[0]._ctype is None}
            if unknown:
                for seq, ctype in self._recorded_cancellation_types(unknown).items():
                    self._pending[seq][0]._ctype = ctype
        finally:
            self.replaying = False
            self._matcher = None
            self._replay_events = None
        self.epoch += tasks
        if last:
            self.last_event_id = last
        if events:
            self.last_event_id = max(self.last_event_id, events[-1].event_id)
        return pending

    # ------------------------------------------------------------------ inputs

    def _apply(self, ev: Event) -> None:
        t = ev.type  # never ActivityTaskCompleted: apply_inputs hands those to _activity_completed
        if t == codec.ACTIVITY_FAILED or t == codec.ACTIVITY_CANCELED:
            # ActivityTaskCanceled: a "wait_cancellation_completed" activity acknowledged its
            # cancellation (its failure is a duro.CancelledError), as ActivityError's cause.
            entry = self._pending.pop(ev.ref, None)
            if entry is not None and not entry[0].done():
                d = orjson.loads(ev.payload)
                cause = failure_from_dict(d)
                if isinstance(cause, ActivityError):  # already wrapped (e.g. by the reaper)
                    entry[0].set_exception(cause)
                else:
                    what = "was cancelled" if t == codec.ACTIVITY_CANCELED else f"failed after attempt {ev.attempt}"
                    err = ActivityError(f"activity {entry[2]!r} {what}: {cause}",
                                        activity_type=entry[2], activity_id=ev.ref, attempt=ev.attempt)
                    err.__cause__ = cause
                    entry[0].set_exception(err)
        elif t == codec.TIMER_FIRED:
            self.loop.fire_timer(ev.ref)
        elif t == codec.SIGNAL_RECEIVED:
            if ev.flags & FLAG_HEADERS or self._inbound is not None:
                headers, body = split_headed(ev.payload, ev.flags)
                args = self.converter.decode_args(body, ())
                if self._inbound is not None:
                    self.loop.call_soon(self._inbound.handle_signal, HandleSignalInput(ev.name, args, headers))
                else:
                    self.loop.call_soon(self._deliver_signal, ev.name, args)
            else:
                self.loop.call_soon(self._deliver_signal, ev.name, self.converter.decode_args(ev.payload, ()))
        elif t == codec.WORKFLOW_CANCEL_REQUESTED:
            self.cancel_requested = True
            main = self._main
            if main is not None and not main.done():
                waiter = getattr(main, "_fut_waiter", None)
                main.cancel()
                if isinstance(waiter, _ActivityFuture) and waiter.cancel_asked:
                    # The await on the activity gets the activity's outcome (ActivityError), not a
                    # cancellation: the task is not left "cancelling" (as Temporal's uncancel).
                    main.uncancel()
        elif t == codec.CHILD_COMPLETED or t == codec.CHILD_FAILED or t == codec.CHILD_CANCELED:
            # ChildWorkflowExecutionCanceled carries the child's cancellation failure, as the
            # ChildWorkflowExecutionFailed named "canceled" of older histories does: the same error.
            child = self._children.get(ev.ref)
            if child is not None:
                child._resolve(t == codec.CHILD_COMPLETED, ev.payload)
        elif t == codec.UPDATE_ACCEPTED:
            meta_b, args_b = unpack(ev.payload)
            umeta = orjson.loads(meta_b)
            self.note_update_accepted(umeta["id"], ev.event_id)
            self.loop.call_soon(self._run_update, umeta["id"], ev.name, args_b, umeta.get("headers") or {})
        elif t == codec.WORKFLOW_STARTED:
            args = self.converter.decode_args(self._args_payload, self.defn.arg_hints)
            if self._inbound is not None:
                coro = self._inbound.execute_workflow(
                    ExecuteWorkflowInput(self.info.workflow_type, self.defn.fn, args, dict(self.info.headers)))
            else:
                coro = cast(Coroutine[Any, Any, Any], self.defn.fn(self.ctx, *args))
            self._main = self.loop.create_task(coro, name="workflow-main")
        else:
            raise NonDeterminismError(f"event {ev.event_id} ({ev.type_name}) cannot be applied to a workflow",
                                      event_id=ev.event_id)

    def _activity_completed(self, seq: int, payload: bytes) -> None:
        """ActivityTaskCompleted: resolve the activity's future with its result."""
        entry = self._pending.pop(seq, None)
        if entry is not None:
            fut = entry[0]
            if not _future_done(fut):
                _future_set_result(fut, self.converter.decode(payload, entry[1]))

    def _deliver_signal(self, name: str, args: list[Any]) -> None:
        """Give a signal to its handler, else to a ``wait_signal`` waiter, else to the dynamic handler.

        What none of them takes is buffered (in arrival order) for the next ``wait_signal`` or
        handler. The order is fixed: replay delivers every recorded signal the same way.
        """
        handler = self._signal_handlers.get(name)
        if handler is not None:
            self._call_handler(handler, args)
            return
        waiters = self._signal_waiters.get(name)
        while waiters:
            fut = waiters.pop(0)
            if not fut.done():
                fut.set_result(_signal_value(args))
                return
        dynamic = self._dynamic_signal
        if dynamic is not None:
            self._call_handler(dynamic, args, name)
            return
        self._signal_arrivals += 1
        if self._signals is _NO_DICT:
            self._signals = {}
        self._signals.setdefault(name, []).append((self._signal_arrivals, args))

    def _call_handler(self, handler: Callable[..., Any], args: list[Any], name: str | None = None) -> None:
        """Call a signal handler (a dynamic one gets the signal's ``name`` first)."""
        if name is not None:
            result = handler(*_typed(handler, [name, *args]))
        else:
            result = handler(*_typed(handler, args))
        if asyncio.iscoroutine(result):
            self._track_handler(self.loop.create_task(result))

    def _track_handler(self, task: asyncio.Task[Any]) -> None:
        if self._handler_tasks is None:
            self._handler_tasks = set()
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    def all_handlers_finished(self) -> bool:
        """Whether no async signal handler or update handler is still running."""
        return not self._handler_tasks

    # ------------------------------------------------------------------ commands (called by ctx)

    def _command(self, ev: Event, location: Any = None) -> None:
        """Record a command; during replay, check it against the history right away.

        ``location`` is where the code asked (given by callers outside user code); when None it
        is read from the stack, and only on a mismatch.
        """
        if self._in_query:
            raise DuroError("query handlers and update validators must not schedule anything or change state")
        self._hlen += 1
        matcher = self._matcher
        if matcher is not None:
            if matcher.matches(ev):
                return
            err = matcher.mismatch(ev, location if location is not None else _caller_location())
            if self._divergence is None:
                self._divergence = err
            raise err
        self.commands.append(ev)

    def schedule_activity(
        self, activity: Callable[..., Any] | str, args: tuple[Any, ...], start_to_close: Any, schedule_to_close: Any,
        heartbeat: Any, retry_policy: RetryPolicy | None, task_queue: str | None,
        headers: dict[str, str] | None = None, result_type: Any = None, cancellation_type: str = "try_cancel",
    ) -> asyncio.Future[Any]:
        """Create the ActivityTaskScheduled command and the future its result resolves.

        The cancellation type is recorded in the command's flags (``FLAG_CANCEL_TYPE``); replay
        takes the recorded one, so what cancelling the future does never depends on the code.
        """
        if isinstance(activity, str):
            name, hint, defaults = activity, None, None
        else:
            # get_activity_definition's common case inlined (it raises the error for a non-activity).
            defaults = getattr(activity, "__duro_activity__", None)
            if not isinstance(defaults, ActivityDefinition):
                defaults = get_activity_definition(activity)
            name, hint = defaults.name, defaults.return_hint
        if result_type is not None:
            hint = result_type
        matcher = self._matcher
        if matcher is not None and self.replaying and matcher.matches_parts(_ACTIVITY_SCHEDULED, self.seq + 1, name):
            # Recorded (_replay_matches, inlined: this is the path of every activity in replay): this
            # call passed the checks below when it first ran, and its arguments and options are in
            # the history. Replay only needs the future to resolve.
            self._hlen += 1
            seq = self.seq = self.seq + 1
            fut = _ActivityFuture(loop=self.loop)  # _activity_future(self, seq, name, None), inlined
            fut._inst = self
            fut._seq = seq
            fut._name = name
            fut._ctype = None
            fut.cancel_asked = False
            self._pending[seq] = (fut, hint, name, task_queue or self.info.task_queue)
            return fut
        # Live, or a call that replay did not find recorded (maybe because it raised when it first
        # ran and the code caught that): check it as live did, so it raises the same error at the
        # same point, before a sequence number is taken.
        if defaults is None:
            check_name("activity name", name)
        else:
            check_call_args("activity", name, defaults.signature, args)
        queue = check_name("task_queue", task_queue, allow_none=True) or self.info.task_queue
        stc = to_seconds(start_to_close, "start_to_close_timeout")
        s2c = to_seconds(schedule_to_close, "schedule_to_close_timeout")
        hb = to_seconds(heartbeat, "heartbeat_timeout")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a duro.RetryPolicy, not {type(retry_policy).__name__}")
        ctype = CANCEL_TYPES.get(cancellation_type) if isinstance(cancellation_type, str) else None
        if ctype is None:
            raise ValueError(f"cancellation_type must be one of {CANCELLATION_TYPES}, got {cancellation_type!r}")
        self.seq += 1
        seq = self.seq
        fut = _activity_future(self, seq, name, ctype)
        self._pending[seq] = (fut, hint, name, queue)
        if self.replaying:
            self._encode_command_args(seq, args)  # raises if it raised live
            self._command(Event(codec.ACTIVITY_SCHEDULED, 0, 0, seq, 0, name, b""))  # the divergence
            return fut
        if defaults is not None:
            stc = stc if stc is not None else defaults.start_to_close_timeout
            s2c = s2c if s2c is not None else defaults.schedule_to_close_timeout
            hb = hb if hb is not None else defaults.heartbeat_timeout
            retry_policy = retry_policy or defaults.retry_policy
        payload = self._encode_command_args(seq, args)
        if headers:
            headers = check_headers(headers)
            recorded, flags = headed(payload, headers)
            self._command(Event(codec.ACTIVITY_SCHEDULED, 0, 0, seq, 0, name, recorded, flags | ctype))
        else:
            self._command(Event(codec.ACTIVITY_SCHEDULED, 0, 0, seq, 0, name, payload, ctype))
        self.activity_tasks.append(ActivityTask(
            run_key=self.run_key, workflow_id=self.info.workflow_id, workflow_type=self.info.workflow_type,
            task_queue=queue, seq=seq, name=name, args=payload, attempt=1,
            scheduled_time=self.loop.time(), start_to_close_timeout=stc, schedule_to_close_timeout=s2c,
            heartbeat_timeout=hb, retry_policy=retry_policy.to_dict() if retry_policy is not None else _DEFAULT_RETRY,
            headers=headers or None,
        ))
        return fut

    # ------------------------------------------------------------------ local activities
    # A local activity runs in the worker that runs the workflow task, before the task commits; its
    # outcome is recorded as a MarkerRecorded command ("duro:local_activity:<seq>:<name>", payload
    # pack({"ok"}, result or failure)) in that task. Whenever the code is quiescent with local
    # activities pending, all of them are resolved at once in seq order: live, after the worker ran
    # them; in replay, from their markers, which the live run recorded at that same point.

    def schedule_local_activity(self, activity: Callable[..., Any] | str, args: tuple[Any, ...],
                                options: dict[str, Any], result_type: Any) -> asyncio.Future[Any]:
        """The future of a local activity's result (run by the worker before this task commits)."""
        if self._in_query:
            raise DuroError("query handlers and update validators must not schedule anything or change state")
        if isinstance(activity, str):
            name, hint = check_name("activity name", activity), None
        else:
            defn = get_activity_definition(activity)
            check_call_args("activity", defn.name, defn.signature, args)
            name, hint = defn.name, defn.return_hint
        if result_type is not None:
            hint = result_type
        self.seq += 1
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._local_pending[self.seq] = LocalCall(self.seq, name, activity, args, options, fut, hint)
        return fut

    @property
    def has_local_activities(self) -> bool:
        """Whether the code waits for local activities (the worker runs them before committing)."""
        return bool(self._local_pending)

    def take_local_activities(self) -> list[LocalCall]:
        """The local activities the worker must run now (none once the run is closing), in seq order."""
        for seq in [s for s, c in self._local_pending.items() if c.future.done()]:
            del self._local_pending[seq]  # cancelled by the code: neither run nor recorded
        if self.close_status is not None or self._main is None or self._main.done():
            return []
        return [self._local_pending[s] for s in sorted(self._local_pending)]

    def resolve_local_activities(self, outcomes: list[tuple[LocalCall, bool, bytes]]) -> None:
        """Record the outcomes of local activities (as run by the worker), resolve them, run the code on."""
        for call, ok, payload in outcomes:
            del self._local_pending[call.seq]
            meta = b'{"ok":true}' if ok else b'{"ok":false}'
            self._command(Event(codec.MARKER, 0, 0, call.seq, 0, call.marker_name, pack(meta, payload)),
                          f"local activity {call.name!r}")
            self._resolve_local(call, ok, payload)
        self._run()

    def _replay_local_activities(self) -> bool:
        """In replay: resolve the pending local activities from their recorded markers (False: none to do)."""
        for seq in [s for s, c in self._local_pending.items() if c.future.done()]:
            del self._local_pending[seq]
        main = self._main
        if not self._local_pending or main is None or main.done() or self._matcher is None:
            return False
        for seq in sorted(self._local_pending):
            call = self._local_pending.pop(seq)
            recorded = self._matcher.take_marker_payload(call.marker_name)
            if recorded is None:
                err = self._matcher.mismatch(Event(codec.MARKER, 0, 0, seq, 0, call.marker_name, b""),
                                             f"local activity {call.name!r}")
                if self._divergence is None:
                    self._divergence = err
                return False
            self._hlen += 1
            meta_b, payload = unpack(recorded)
            self._resolve_local(call, bool(orjson.loads(meta_b)["ok"]), payload)
        return True

    def _resolve_local(self, call: LocalCall, ok: bool, payload: bytes) -> None:
        if call.future.done():
            return
        if ok:
            call.future.set_result(self.converter.decode(payload, call.hint))
            return
        cause = decode_failure(payload)
        if isinstance(cause, ActivityError):
            call.future.set_exception(cause)
            return
        err = ActivityError(f"local activity {call.name!r} failed: {cause}", activity_type=call.name,
                            activity_id=call.seq, attempt=0)
        err.__cause__ = cause
        call.future.set_exception(err)

    def _encode_command_args(self, seq: int, args: tuple[Any, ...]) -> bytes:
        """Encode an activity's arguments; if they cannot be sent, forget command ``seq`` and raise."""
        try:
            return self.converter.encode_args(args)
        except (TypeError, ValueError):  # not encodable, NaN/inf, too large: raised in the workflow
            del self._pending[seq]
            self.seq -= 1
            raise

    def _start_timer(self, delay: float) -> int:
        # Every timer comes here (ctx.sleep, asyncio.sleep, wait_for, timeout): a delay past the
        # limit raises in the workflow code that asked, before a sequence number is taken.
        check_duration("timer delay (ctx.sleep, asyncio.sleep or a timeout in the workflow)", delay,
                       allow_zero=False)
        self.seq += 1
        seq = self.seq
        self._command(Event(codec.TIMER_STARTED, 0, 0, seq, 0, "", orjson.dumps({"duration": delay})))
        if not self.replaying:
            self.timers.append((seq, delay))
        return seq

    def _cancel_timer(self, seq: int) -> None:
        # Recorded, so the store drops the durable timer; one that fires anyway is ignored.
        self._command(Event(codec.TIMER_CANCELED, 0, 0, seq, 0, "", b""), "timer cancelled")
        if not self.replaying:
            if self.cancelled_timers is _NO_LIST:
                self.cancelled_timers = []
            self.cancelled_timers.append(seq)

    def _note_cancel_asked(self, seq: int) -> None:
        if self._cancel_asked is _NO_LIST:
            self._cancel_asked = []
        self._cancel_asked.append(seq)

    def note_update_accepted(self, update_id: str, event_id: int) -> None:
        """Remember that update ``update_id`` was accepted on this run (``event_id``: its event, 0 if unknown)."""
        if self.accepted_updates is _NO_DICT:
            self.accepted_updates = {}
        self.accepted_updates[update_id] = event_id

    def _cancel_dropped_activities(self) -> None:
        """Cancel the activities whose futures the code cancelled (gather cancelled, cancel requested...).

        Done once per activation, in the order the activities were scheduled (as duro always
        recorded it): ActivityTaskCancelRequested for each, except "abandon" (nothing is asked of
        the activity). A "wait_cancellation_completed" activity stays pending: its recorded end
        resolves the future.
        """
        asked, self._cancel_asked = self._cancel_asked, _NO_LIST
        for seq in sorted(set(asked)):
            entry = self._pending.get(seq)
            if entry is None:
                continue
            ctype = entry[0].cancellation_type
            wait = ctype == _WAIT_CANCELLATION
            if not wait:
                del self._pending[seq]
            if ctype == _ABANDON:
                continue
            self._command(Event(codec.ACTIVITY_CANCEL_REQUESTED, 0, 0, seq, 0, "", b""), "activity cancelled")
            if not self.replaying:
                if self.cancel_activities is _NO_LIST:
                    self.cancel_activities = []
                self.cancel_activities.append((entry[3], seq, wait))

    def recorded_cancellation_type(self, seq: int) -> int:
        """The cancellation type recorded for activity ``seq`` (replay only; 0 when recorded before types)."""
        return self._recorded_cancellation_types({seq}).get(seq, _TRY_CANCEL)

    def _recorded_cancellation_types(self, seqs: set[int]) -> dict[int, int]:
        """The recorded cancellation types of activities ``seqs``, from the history being replayed.

        Read only when needed (an activity cancelled in replay, or pending when replay ends), newest
        event first: the activities asked about are usually recent.
        """
        found: dict[int, int] = {}
        for ev in reversed(self._replay_events or ()):
            if ev.type == _ACTIVITY_SCHEDULED and ev.ref in seqs:
                found[ev.ref] = ev.flags & FLAG_CANCEL_TYPE
                if len(found) == len(seqs):
                    break
        return found

    # ------------------------------------------------------------------ child workflows

    def start_child(self, workflow: Any, args: tuple[Any, ...], workflow_id: str | None, task_queue: str | None,
                    parent_close_policy: str, headers: dict[str, str] | None = None,
                    result_type: Any = None) -> ChildWorkflowHandle:
        """Record StartChildWorkflowExecutionInitiated; the child starts in the same commit."""
        from duro.workflow import get_workflow_definition

        if isinstance(workflow, str):
            name, hint, sig = workflow, None, None
        else:
            d = get_workflow_definition(workflow)
            name, hint, sig = d.name, d.return_hint, d.signature
        if result_type is not None:
            hint = result_type
        # A start replay finds recorded passed these checks when it first ran (see _replay_matches).
        matched = self._replay_matches(codec.CHILD_STARTED, name)
        if not matched:
            check_name("workflow name", name)
            check_call_args("workflow", name, sig, args)
            check_name("child workflow id", workflow_id, allow_none=True)
            check_name("task_queue", task_queue, allow_none=True)
            if parent_close_policy not in PARENT_CLOSE_POLICIES:
                raise ValueError(f"parent_close_policy must be one of {PARENT_CLOSE_POLICIES}, "
                                 f"got {parent_close_policy!r}")
        # Encoded before a sequence number is taken: a payload that cannot be sent raises here.
        payload = b"" if matched else self.converter.encode_args(args)
        self.seq += 1
        seq = self.seq
        wid = workflow_id or f"{self.info.workflow_id}/child-{seq}"
        # Deterministic: replay rebuilds the same run id without reading the recorded command.
        run_id = hashlib.blake2b(self.run_key + seq.to_bytes(8, "big"), digest_size=16).hexdigest()
        queue = task_queue or self.info.task_queue
        handle = ChildWorkflowHandle(self, seq, wid, run_id, hint)
        if self.replaying:
            if not matched:
                self._command(Event(codec.CHILD_STARTED, 0, 0, seq, 0, name, b""))
        else:
            meta: dict[str, Any] = {"id": wid, "run": run_id, "queue": queue, "policy": parent_close_policy}
            if headers:
                meta["headers"] = headers = check_headers(headers)
            self._command(Event(codec.CHILD_STARTED, 0, 0, seq, 0, name, pack(orjson.dumps(meta), payload)))
            if self.child_starts is _NO_LIST:
                self.child_starts = []
            self.child_starts.append(ChildStart(seq=seq, workflow_id=wid, run_id=run_id, workflow_type=name,
                                               task_queue=queue, args=payload, parent_close_policy=parent_close_policy,
                                               headers=headers or None))
        if self._children is _NO_DICT:
            self._children = {}
        self._children[seq] = handle
        return handle

    def _replay_matches(self, event_type: int, name: str) -> bool:
        """In replay, whether the next command (seq ``self.seq + 1``) is recorded; consumes it if so.

        Replay neither checks nor encodes the arguments of a recorded command: they passed when it
        first ran. One that is not recorded may be a call that raised then (an error the code
        caught): the caller checks and encodes it as live does, so replay raises that same error
        at the same point, and otherwise reports the divergence.
        """
        matcher = self._matcher
        if self.replaying and matcher is not None and matcher.matches_parts(event_type, self.seq + 1, name):
            self._hlen += 1  # a recorded command, counted as _command counts a live one
            return True
        return False

    def request_external(self, kind: str, workflow_id: str, run_id: str | None, name: str,
                         args: tuple[Any, ...], headers: dict[str, str] | None = None) -> None:
        """Record a signal (or a cancel request) to another run; delivered in the same commit."""
        # A cancel request recorded before RequestCancelExternalWorkflowExecutionInitiated existed
        # (a SignalExternalWorkflowExecutionInitiated with flags bit 0) matches too: the matcher knows.
        etype = codec.EXTERNAL_CANCEL if kind == "cancel" else codec.EXTERNAL_SIGNAL
        matched = self._replay_matches(etype, name)
        if not matched:  # checked and encoded as live does (see _replay_matches)
            check_name("workflow id", workflow_id)
            if kind == "signal":
                check_name("signal name", name)
        if matched:
            payload = b""
        elif kind == "cancel":  # a cancel has no arguments: its record names its target, as Temporal's does
            payload = orjson.dumps({"id": workflow_id, "run": run_id} if run_id else {"id": workflow_id})
        else:
            payload = self.converter.encode_args(args)
        self.seq += 1
        if headers and not matched:
            headers = check_headers(headers)
        if not matched:
            recorded, hflag = headed(payload, headers)
            self._command(Event(etype, 0, 0, self.seq, 0, name, recorded, hflag))
        if not self.replaying:
            if self.external is _NO_LIST:
                self.external = []
            self.external.append(ExternalRequest(kind=kind, workflow_id=workflow_id, run_id=run_id, name=name,
                                                 args=payload, headers=headers or None, seq=self.seq))

    def signal_external(self, workflow_id: str, run_id: str | None, name: str, args: tuple[Any, ...]) -> None:
        """A signal to another run, through the outbound interceptors when there are any."""
        if self._outbound is not None:
            self._outbound.signal_external_workflow(SignalExternalWorkflowInput(workflow_id, run_id, name, args, {}))
        else:
            self.request_external("signal", workflow_id, run_id, name, args)

    def upsert_search_attributes(self, attrs: dict[str, Any]) -> None:
        """Record a change of the run's search attributes (applied by the store with the task's commit)."""
        self._command(Event(codec.MARKER, 0, 0, 0, 0, SEARCH_ATTRIBUTES_MARKER, orjson.dumps(attrs)))

    # ------------------------------------------------------------------ versioning

    def patched(self, change_id: str, deprecated: bool = False) -> bool:
        """True when this run runs the code after ``change_id`` (see ``WorkflowContext.patched``)."""
        known = self._patches.get(change_id)
        if known is not None:
            return known
        matcher = self._matcher
        if matcher is not None:
            result = matcher.take_marker(change_id)
            if result:
                self._hlen += 1  # its recorded marker, counted as _command counted it live
        elif deprecated:
            result = True
        else:
            self._command(Event(codec.MARKER, 0, 0, 0, 0, change_id, b"patched"))
            result = True
        if self._patches is _NO_DICT:
            self._patches = {}
        self._patches[change_id] = result
        return bool(result)

    # ------------------------------------------------------------------ queries and updates

    def set_query_handler(self, name: str, handler: Callable[..., Any] | None) -> None:
        """Install (or remove) a query handler."""
        if handler is None:
            self._query_handlers.pop(name, None)
        elif not callable(handler):
            raise TypeError("a query handler must be callable")
        else:
            if self._query_handlers is _NO_DICT:
                self._query_handlers = {}
            self._query_handlers[name] = handler

    def set_dynamic_query_handler(self, handler: Callable[..., Any] | None) -> None:
        """Install (or remove) the catch-all query handler: ``handler(name, *args)``."""
        if handler is not None and not callable(handler):
            raise TypeError("a dynamic query handler must be callable")
        self._dynamic_query = handler

    def query_handler(self, name: str | None) -> Callable[..., Any] | None:
        """The handler of query ``name`` (None: the dynamic one), or None."""
        return self._dynamic_query if name is None else self._query_handlers.get(name)

    def query(self, name: str, args: list[Any], headers: dict[str, str] | None = None) -> Any:
        """Answer a query from the current state; the handler may not change anything durable."""
        if self._inbound is not None:
            return self._inbound.handle_query(HandleQueryInput(name, args, headers or {}))
        return self._answer_query(name, args)

    def _answer_query(self, name: str, args: list[Any]) -> Any:
        handler = self._query_handlers.get(name)
        if handler is None and name == STACK_TRACE_QUERY:
            return self.stack_trace()
        if handler is None:
            dynamic = self._dynamic_query
            if dynamic is not None:
                return self._guarded(dynamic, _typed(dynamic, [name, *args]), "query")
            raise DuroError(f"workflow {self.info.workflow_type!r} has no query handler {name!r}; known: "
                            f"{sorted(self._query_handlers)}")
        return self._guarded(handler, _typed(handler, args), "query")

    def _guarded(self, fn: Callable[..., Any], args: list[Any], what: str) -> Any:
        self._in_query = True
        try:
            result = fn(*args)
        finally:
            self._in_query = False
        if asyncio.iscoroutine(result):
            result.close()
            raise TypeError(f"{what} handlers must be plain functions (not async): they cannot wait")
        return result

    def stack_trace(self) -> str:
        """Where the workflow waits now: each unfinished task's await chain, then what is pending.

        The answer of the built-in query ``__stack_trace`` (unless the workflow defines its own).
        """
        lines: list[str] = []
        for task in list(self.loop._tasks):
            if task.done():
                continue
            lines.append(f"{task.get_name()}:")
            lines.extend(f"    {where}" for where in _await_chain(task.get_coro()))
        pending: list[str] = []
        for seq, (_fut, _hint, name, queue) in sorted(self._pending.items()):
            pending.append(f"activity {name!r} (seq {seq}, task queue {queue!r})")
        for seq, when in sorted(self.loop.pending_timers().items()):
            due = datetime.datetime.fromtimestamp(when, tz=datetime.UTC).isoformat()
            pending.append(f"timer seq {seq}, due {due}")
        for seq, child in sorted(self._children.items()):
            if not child._result.done():
                pending.append(f"child workflow {child.id!r} (seq {seq})")
        for signal, waiters in sorted(self._signal_waiters.items()):
            if any(not w.done() for w in waiters):
                pending.append(f"signal {signal!r}")
        if any(not fut.done() for _fn, fut in self._conditions):
            pending.append(f"{sum(not fut.done() for _fn, fut in self._conditions)} wait_condition(s)")
        if pending:
            lines.append("waiting for:")
            lines.extend(f"    {p}" for p in pending)
        return "\n".join(lines)

    def set_update_handler(self, name: str, handler: Callable[..., Any] | None,
                           validator: Callable[..., Any] | None) -> None:
        """Install (or remove) an update handler and its optional validator."""
        if handler is None:
            self._update_handlers.pop(name, None)
            return
        if not callable(handler) or (validator is not None and not callable(validator)):
            raise TypeError("an update handler and its validator must be callable")
        if self._update_handlers is _NO_DICT:
            self._update_handlers = {}
        self._update_handlers[name] = (handler, validator)

    def set_dynamic_update_handler(self, handler: Callable[..., Any] | None,
                                   validator: Callable[..., Any] | None) -> None:
        """Install (or remove) the catch-all update handler and validator, both called with the name first."""
        if handler is None:
            self._dynamic_update = None
            return
        if not callable(handler) or (validator is not None and not callable(validator)):
            raise TypeError("a dynamic update handler and its validator must be callable")
        self._dynamic_update = (handler, validator)

    def update_handler(self, name: str | None) -> Callable[..., Any] | None:
        """The handler of update ``name`` (None: the dynamic one), or None."""
        entry = self._dynamic_update if name is None else self._update_handlers.get(name)
        return None if entry is None else entry[0]

    def validate_update(self, name: str, args: list[Any], headers: dict[str, str] | None = None,
                        update_id: str = "") -> None:
        """Raise if update ``name`` would be rejected (no handler, or its validator raised)."""
        if self._inbound is not None:
            self._inbound.handle_update_validator(HandleUpdateInput(update_id, name, args, headers or {}))
        else:
            self._validate_update(name, args)

    def _validate_update(self, name: str, args: list[Any]) -> None:
        entry = self._update_handlers.get(name)
        if entry is not None:
            if entry[1] is not None:
                self._guarded(entry[1], _typed(entry[1], args), "update validator")
            return
        dynamic = self._dynamic_update
        if dynamic is None:
            raise DuroError(f"workflow {self.info.workflow_type!r} has no update handler {name!r}; known: "
                            f"{sorted(self._update_handlers)}")
        if dynamic[1] is not None:
            self._guarded(dynamic[1], _typed(dynamic[1], [name, *args]), "update validator")

    def _run_update(self, update_id: str, name: str, args_b: bytes, headers: dict[str, str]) -> None:
        entry = self._update_handlers.get(name) or self._dynamic_update

        def finish(ok: bool, payload: bytes) -> None:
            meta = orjson.dumps({"ok": ok})
            self._command(Event(codec.UPDATE_COMPLETED, 0, 0, 0, 0, update_id, pack(meta, payload)),
                          f"update handler {name!r}")

        if entry is None:
            finish(False, encode_failure(DuroError(f"no update handler {name!r}")))
            return
        raw_args = self.converter.decode_args(args_b, ())
        inbound = self._inbound

        async def run() -> None:
            try:
                if inbound is not None:
                    result = await inbound.handle_update(HandleUpdateInput(update_id, name, raw_args, headers))
                else:
                    result = await self._call_update(name, raw_args)
                payload = self.converter.encode(result)
            except Exception as e:  # the update fails; the workflow goes on
                finish(False, encode_failure(e))
            else:
                finish(True, payload)

        self._track_handler(self.loop.create_task(run(), name=f"update-{name}"))

    async def _call_update(self, name: str, args: list[Any]) -> Any:
        entry = self._update_handlers.get(name)
        if entry is not None:
            result = entry[0](*_typed(entry[0], args))
        elif self._dynamic_update is not None:
            dynamic = self._dynamic_update[0]
            result = dynamic(*_typed(dynamic, [name, *args]))
        else:  # removed since it was accepted
            raise DuroError(f"no update handler {name!r}")
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def wait_signal(self, name: str) -> Any:
        """Next buffered signal ``name``, or wait for one."""
        buffered = self._signals.get(name)
        if buffered:
            return _signal_value(buffered.pop(0)[1])
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._signal_waiters.setdefault(name, []).append(fut)
        return await fut

    def set_signal_handler(self, name: str, handler: Callable[..., Any] | None) -> None:
        """Install (or remove, with None) a handler; signals buffered so far are delivered to it first."""
        if handler is None:
            self._signal_handlers.pop(name, None)
            return
        if not callable(handler):
            raise TypeError("a signal handler must be callable")
        if self._signal_handlers is _NO_DICT:
            self._signal_handlers = {}
        self._signal_handlers[name] = handler
        buffered = self._signals.pop(name, None)
        while buffered:
            self._call_handler(handler, buffered.pop(0)[1])

    def set_dynamic_signal_handler(self, handler: Callable[..., Any] | None) -> None:
        """Install (or remove) the catch-all signal handler; every buffered signal goes to it, oldest first.

        Buffered signals are those no handler or waiter took, so none has a handler of its own.
        """
        if handler is None:
            self._dynamic_signal = None
            return
        if not callable(handler):
            raise TypeError("a dynamic signal handler must be callable")
        self._dynamic_signal = handler
        buffered = sorted((no, name, args) for name, entries in self._signals.items() for no, args in entries)
        self._signals.clear()
        for _no, name, args in buffered:
            self._deliver_signal(name, args)  # to this handler, unless a call changed the handlers

    def signal_handler(self, name: str | None) -> Callable[..., Any] | None:
        """The handler of signal ``name`` (None: the dynamic one), or None."""
        return self._dynamic_signal if name is None else self._signal_handlers.get(name)

    def add_condition(self, fn: Callable[[], bool]) -> asyncio.Future[None]:
        """A future resolved the first time ``fn()`` is true after a step of the workflow."""
        fut: asyncio.Future[None] = self.loop.create_future()
        if fn():
            fut.set_result(None)
        else:
            if self._conditions is _NO_LIST:
                self._conditions = []
            self._conditions.append((fn, fut))
        return fut

    def is_pending(self, seq: int) -> bool:
        """Whether the code still waits for the result of activity ``seq``."""
        return seq in self._pending

    @property
    def pending_activities(self) -> int:
        """How many activities and other commands still wait for a result."""
        return len(self._pending)

    def close(self) -> None:
        """Drop the coroutines without running them further (on eviction)."""
        self.loop.close()


_HANDLER_HINTS: dict[Any, list[Any]] = {}


def _typed(handler: Callable[..., Any], args: list[Any]) -> list[Any]:
    """Handler arguments converted to the handler's parameter annotations (dataclasses, models...)."""
    # Keyed by code object: a handler defined inside the workflow (a closure, a lambda) is a new
    # function in every run, but its annotations are those of the same code.
    fn = getattr(handler, "__func__", handler)
    key = getattr(fn, "__code__", fn)
    hints = _HANDLER_HINTS.get(key)
    if hints is None:
        try:
            hints = parameter_hints(handler, skip_first=False)[0]
        except (TypeError, ValueError):  # builtins such as list.append have no signature
            hints = []
        if len(_HANDLER_HINTS) < 10_000:
            _HANDLER_HINTS[key] = hints
    if not hints:
        return args
    return [convert(a, hints[i]) if i < len(hints) and hints[i] is not None else a for i, a in enumerate(args)]


def _await_chain(coro: Any) -> list[str]:
    """Each frame ("file:line in function") a suspended coroutine awaits through, outermost first.

    Frames inside duro show as ``duro/<file>``; asyncio's own are left out.
    """
    out: list[str] = []
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            fn = frame.f_code.co_filename
            if "asyncio" not in fn:
                shown = "duro/" + os.path.relpath(fn, _PKG_DIR) if fn.startswith(_PKG_DIR) else fn
                out.append(f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return out


def _timedelta(seconds: float | None) -> datetime.timedelta | None:
    return datetime.timedelta(seconds=seconds) if seconds else None


def _signal_value(args: list[Any]) -> Any:
    if len(args) == 1:
        return args[0]
    if not args:
        return None
    return tuple(args)
