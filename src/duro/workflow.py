"""Workflows: ``@duro.workflow`` and the ``WorkflowContext`` a workflow function receives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from duro._determinism import check_mode
from duro._validate import check_call_args, check_duration, check_name, check_versioning_behavior, signature_of
from duro._visibility import check_search_attributes
from duro.activity import RetryPolicy
from duro.converter import parameter_hints
from duro.interceptor import StartActivityInput, StartChildWorkflowInput
from duro.stores.base import run_key_of

if TYPE_CHECKING:
    from duro._instance import ChildWorkflowHandle, WorkflowInstance

__all__ = ["ExternalWorkflowHandle", "WorkflowContext", "WorkflowDefinition", "WorkflowInfo",
           "get_workflow_definition", "workflow"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class WorkflowDefinition:
    """A registered workflow: its name and function, with the parameter types for decoding."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    arg_hints: list[Any]
    return_hint: Any
    signature: inspect.Signature | None = field(default=None, compare=False, repr=False)
    #: exception types that fail a run when the workflow raises them (besides duro's failures).
    failure_exception_types: tuple[type[BaseException], ...] = ()
    #: "pinned" or "auto_upgrade" on a versioned worker (None: the worker's default).
    versioning_behavior: str | None = None
    #: The determinism guard for this workflow: "raise", "warn" or "off" (None: the worker's).
    determinism: str | None = None


def get_workflow_definition(fn: Any) -> WorkflowDefinition:
    """The definition ``@duro.workflow`` attached to ``fn``; a clear TypeError otherwise."""
    defn = getattr(fn, "__duro_workflow__", None)
    if not isinstance(defn, WorkflowDefinition):
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not a workflow: decorate it with @duro.workflow")
    return defn


@overload
def workflow(fn: F) -> F: ...


@overload
def workflow(*, name: str | None = None,
             failure_exception_types: Sequence[type[BaseException]] = (),
             versioning_behavior: str | None = None, determinism: str | None = None) -> Callable[[F], F]: ...


def workflow(fn: Any = None, *, name: str | None = None,
             failure_exception_types: Sequence[type[BaseException]] = (),
             versioning_behavior: str | None = None, determinism: str | None = None) -> Any:
    """Mark an ``async def`` function as a workflow. Use bare or as ``@duro.workflow(name="Order")``.

    The function takes a ``WorkflowContext`` first, then its arguments. Its code must be
    deterministic: time, randomness and I/O come through the context and activities.

    What the function raises decides how the run ends, as in Temporal: ``duro.ApplicationError``
    (and duro's other failures: ``ActivityError``, ``WorkflowFailedError`` from a child,
    ``duro.TimeoutError``, ``CancelledError``, ``TerminatedError``) fails the run; any other
    exception fails only the workflow task, which is retried until fixed code gets through it.
    ``failure_exception_types`` lists more types that fail the run (``[Exception]`` for all).

    ``versioning_behavior`` matters on workers with a ``build_id`` (worker versioning, see
    docs/deployment.md): ``"pinned"`` keeps each run on the build that ran its first workflow task,
    ``"auto_upgrade"`` moves it to the task queue's current build at its next workflow task (its code
    must then replay older histories: ``ctx.patched``). None takes the worker's
    ``default_versioning_behavior`` (``"pinned"`` unless set).

    ``determinism`` sets the determinism guard for this workflow's code: ``"raise"`` (calls such as
    ``time.time()``, ``datetime.now()``, ``random.random()`` or ``uuid.uuid4()`` raise
    ``duro.NonDeterminismError``, failing the workflow task), ``"warn"`` (logged once per place
    instead) or ``"off"``. None takes the worker's ``determinism`` (``"raise"`` unless set).

    Raises:
        TypeError: ``fn`` is not an ``async def`` function taking a context, or
            ``failure_exception_types`` holds something that is not an exception class.
        ValueError: ``name`` is empty, holds NUL or is over 255 bytes in UTF-8, or
            ``versioning_behavior`` is not "pinned", "auto_upgrade" or None, or ``determinism`` is
            not "raise", "warn", "off" or None.
    """
    failure_types = check_exception_types("failure_exception_types", failure_exception_types)
    guard = check_mode("determinism", determinism, allow_none=True)
    behavior = check_versioning_behavior("versioning_behavior", versioning_behavior, allow_none=True)

    def wrap(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"@duro.workflow needs an `async def` function; {getattr(f, '__qualname__', f)!r} is not")
        if not inspect.signature(f).parameters:
            raise TypeError(f"workflow {f.__qualname__} must take a WorkflowContext as its first parameter")
        workflow_name = check_name("workflow name", name if name is not None else f.__name__)
        arg_hints, ret = parameter_hints(f)
        f.__duro_workflow__ = WorkflowDefinition(  # type: ignore[attr-defined]
            name=workflow_name, fn=f, arg_hints=arg_hints, return_hint=ret, signature=signature_of(f),
            failure_exception_types=failure_types, versioning_behavior=behavior, determinism=guard,
        )
        return f

    if fn is not None:
        return wrap(fn)
    return wrap


@dataclass(slots=True)
class WorkflowInfo:
    """Facts about the running workflow."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    attempt: int
    first_run_id: str
    parent: dict[str, Any] | None = None
    #: the interceptor headers the run was started with (a client's, or the parent's for a child).
    headers: dict[str, str] = field(default_factory=dict)
    #: the limit of this run (None: none), as given at start.
    run_timeout: datetime.timedelta | None = None
    #: the limit of the whole workflow, across continue-as-new (None: none).
    execution_timeout: datetime.timedelta | None = None
    _history_length: Callable[[], int] | None = field(default=None, repr=False, compare=False)

    def get_current_history_length(self) -> int:
        """How many events the run's history holds as of the current workflow task.

        Deterministic: a replay gets the same number at the same point of the code. It counts the
        recorded inputs, this run's commands and one event per workflow task.
        """
        return self._history_length() if self._history_length is not None else 0

    def is_continue_as_new_suggested(self) -> bool:
        """True once the history holds ``CONTINUE_AS_NEW_SUGGESTED_AT`` (10,000) events or more.

        A long history makes every replay (a restart, an evicted cache) slower; a workflow that
        loops forever should ``ctx.continue_as_new(...)`` when this turns true (after
        ``await ctx.wait_condition(ctx.all_handlers_finished)``).
        """
        return self.get_current_history_length() >= CONTINUE_AS_NEW_SUGGESTED_AT


def check_exception_types(what: str, types: Any) -> tuple[type[BaseException], ...]:
    """``types`` as a tuple of exception classes; a clear TypeError otherwise."""
    if isinstance(types, (str, bytes)) or not isinstance(types, Sequence):
        raise TypeError(f"{what} must be a list of exception classes, not {type(types).__name__}")
    for i, t in enumerate(types):
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"{what}[{i}] must be an exception class, not {t!r}")
    return tuple(types)


#: The history length from which ``WorkflowInfo.is_continue_as_new_suggested()`` is true.
CONTINUE_AS_NEW_SUGGESTED_AT = 10_000


class ExternalWorkflowHandle:
    """Another workflow, addressed by id from inside a workflow (``ctx.get_external_workflow_handle``)."""

    __slots__ = ("_inst", "id", "run_id")

    def __init__(self, inst: WorkflowInstance, workflow_id: str, run_id: str | None) -> None:
        self._inst = inst
        self.id = workflow_id
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"ExternalWorkflowHandle(id={self.id!r}, run_id={self.run_id!r})"

    async def signal(self, name: str, *args: Any) -> None:
        """Send a signal (delivered when this workflow task commits)."""
        self._inst.signal_external(self.id, self.run_id, name, args)

    async def cancel(self) -> None:
        """Ask the workflow to cancel (delivered when this workflow task commits)."""
        self._inst.request_external("cancel", self.id, self.run_id, "", ())


class WorkflowContext:
    """What a workflow function gets as its first argument.

    Everything nondeterministic a workflow needs — time, randomness, activities, timers, signals —
    goes through it, so replay reproduces the same decisions.
    """

    __slots__ = ("_inst", "_logger", "info")

    def __init__(self, inst: WorkflowInstance, info: WorkflowInfo) -> None:
        self._inst = inst
        self.info = info
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``duro.workflow``) that is silent while replaying, so a line is logged once.

        When a worker rebuilds a workflow from its history (after a restart, an eviction from its
        cache, in another process), the code runs again over recorded events; this logger records
        nothing then. Each record has the attributes ``workflow_id``, ``run_id``, ``workflow_type``
        and ``task_queue`` (for formatters and filters), and its message starts with them.
        """
        if self._logger is None:
            from duro._logging import WorkflowLogger

            self._logger = WorkflowLogger(self._inst)
        return self._logger

    # --- activities -------------------------------------------------------------------------------

    def execute_activity(
        self,
        activity: Callable[..., Any] | str,
        *args: Any,
        start_to_close_timeout: float | datetime.timedelta | None = None,
        schedule_to_close_timeout: float | datetime.timedelta | None = None,
        heartbeat_timeout: float | datetime.timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        task_queue: str | None = None,
        result_type: Any = None,
        cancellation_type: str = "try_cancel",
    ) -> asyncio.Future[Any]:
        """Schedule an activity and return an awaitable of its result.

        The activity is scheduled when this is called (so ``asyncio.gather`` of several calls
        schedules them in call order). Timeouts are seconds or ``timedelta``; unset options take
        the activity's decorator defaults. ``result_type`` decodes the result to that type (default:
        the activity's return annotation; needed when the activity is named by a string). A failure
        raises ``duro.ActivityError`` whose ``__cause__`` is the activity's error.

        Cancelling the awaitable (the workflow is cancelled, a timeout or ``task.cancel()`` reaches
        the ``await``) raises ``duro.ActivityError`` whose ``__cause__`` is a ``duro.CancelledError``,
        as in Temporal. ``cancellation_type`` says when, and what the activity is told:
        ``"try_cancel"`` (the default): at once, and the activity is asked to cancel;
        ``"wait_cancellation_completed"``: the activity is asked to cancel, and the ``await`` waits
        for its end (its result if it still completes, its failure, or the ActivityError of an
        acknowledged cancellation); ``"abandon"``: at once, and the activity is not told (it runs to
        its end; its result is dropped).

        Raises:
            TypeError: the arguments do not fit the activity's signature, cannot be encoded, or an
                option has the wrong type.
            ValueError: a timeout is NaN, infinite, negative or over 100 years; the activity name or
                ``task_queue`` is empty, holds NUL or is over 255 bytes; an argument holds NaN or
                infinity; ``cancellation_type`` is none of the three.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.

        These are raised here, in the workflow, before anything is recorded.
        """
        inst = self._inst
        if inst._outbound is not None:
            return inst._outbound.start_activity(StartActivityInput(
                activity, args, {}, start_to_close_timeout, schedule_to_close_timeout, heartbeat_timeout,
                retry_policy, task_queue, result_type, cancellation_type))
        return inst.schedule_activity(
            activity, args, start_to_close_timeout, schedule_to_close_timeout, heartbeat_timeout,
            retry_policy, task_queue, None, result_type, cancellation_type,
        )

    def execute_local_activity(
        self,
        activity: Callable[..., Any] | str,
        *args: Any,
        start_to_close_timeout: float | datetime.timedelta | None = None,
        schedule_to_close_timeout: float | datetime.timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        result_type: Any = None,
    ) -> asyncio.Future[Any]:
        """Run an activity in this worker, inside the current workflow task; an awaitable of its result.

        A local activity is not queued in the store: the worker that runs this workflow task runs it
        (registered on the worker or not), then records its outcome as a ``MarkerRecorded`` event in
        the task's commit, so a replay takes the recorded result without running it again. It runs
        at least once: if the worker dies before the task commits, the next worker runs it again.
        Failed attempts are retried in the worker per ``retry_policy`` (default: up to 3 attempts,
        1 s backoff doubling) within ``schedule_to_close_timeout`` (default 60 s); then the
        workflow gets ``duro.ActivityError``. Use it for short work (well under the workflow task's
        30 s lease); anything long, or that needs heartbeats, belongs in ``execute_activity``.

        Raises:
            TypeError: the arguments do not fit the activity's signature.
            ValueError: a timeout is NaN, infinite, negative or over 100 years.
        """
        from duro.activity import to_seconds

        options: dict[str, Any] = {
            "start_to_close": to_seconds(start_to_close_timeout, "start_to_close_timeout"),
            "schedule_to_close": to_seconds(schedule_to_close_timeout, "schedule_to_close_timeout")}
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a duro.RetryPolicy, not {type(retry_policy).__name__}")
        options["retry_policy"] = retry_policy
        return self._inst.schedule_local_activity(activity, args, options, result_type)

    # --- signals ----------------------------------------------------------------------------------

    async def wait_signal(self, name: str) -> Any:
        """Wait for the next signal called ``name`` and return its payload.

        Signals that arrived before the call are kept in order, so none is lost. With one
        argument the payload is returned as is; with several, as a tuple.
        """
        return await self._inst.wait_signal(check_name("signal name", name))

    def set_signal_handler(self, name: str, handler: Callable[..., Any] | None) -> None:
        """Call ``handler(*args)`` (sync or async) for every signal ``name``; buffered ones first."""
        self._inst.set_signal_handler(check_name("signal name", name), handler)

    def set_dynamic_signal_handler(self, handler: Callable[..., Any] | None) -> None:
        """Call ``handler(name, *args)`` (sync or async) for every signal that nothing else takes.

        A signal goes to its own handler (``set_signal_handler``) if it has one, else to a
        ``wait_signal(name)`` waiting for it, else to this handler, else it is buffered. Signals
        buffered so far are delivered to it at once, oldest first. ``None`` removes it.
        """
        self._inst.set_dynamic_signal_handler(handler)

    def get_signal_handler(self, name: str) -> Callable[..., Any] | None:
        """The handler set for signal ``name``, or None (the dynamic handler is not returned)."""
        return self._inst.signal_handler(check_name("signal name", name))

    def get_dynamic_signal_handler(self) -> Callable[..., Any] | None:
        """The dynamic signal handler, or None."""
        return self._inst.signal_handler(None)

    # --- time, randomness, conditions ------------------------------------------------------------

    def now(self) -> datetime.datetime:
        """The workflow's current time: deterministic, timezone-aware UTC."""
        return datetime.datetime.fromtimestamp(self._inst.loop.time(), tz=datetime.UTC)

    def random(self) -> float:
        """A deterministic random float in [0, 1) (seeded by the run id)."""
        return self._inst.rng.random()

    def uuid4(self) -> uuid.UUID:
        """A deterministic random UUID (version 4)."""
        return uuid.UUID(int=self._inst.rng.getrandbits(128), version=4)

    def unsafe(self) -> contextlib.AbstractContextManager[None]:
        """A block where the determinism guard and the I/O guard are lifted, for a deliberate call.

        ``with ctx.unsafe(): started = time.time()`` raises nothing and logs nothing. The call is
        still not replayed: the value may differ in each replay, so it must not decide what the
        workflow does next (use it for a metric, a debug print, a tracer). Keep the block free of
        awaits: while it is suspended, other code of this workflow runs unguarded too.
        """
        return self._inst.loop.unguarded()

    async def sleep(self, seconds: float | datetime.timedelta) -> None:
        """Sleep durably: a timer in the store, which fires even if no worker ran in between.

        Raises:
            ValueError: ``seconds`` is NaN, infinite, negative or over 100 years (raised here, in
                the workflow; nothing is recorded). ``0`` returns at once without a timer.
        """
        await asyncio.sleep(check_duration("ctx.sleep seconds", seconds))

    async def wait_condition(self, fn: Callable[[], bool], timeout: float | datetime.timedelta | None = None) -> None:
        """Wait until ``fn()`` is true (checked after every step); raise ``asyncio.TimeoutError`` on timeout.

        ``timeout=None`` waits without limit; ``timeout=0`` checks once and times out at once if
        ``fn()`` is false.

        Raises:
            ValueError: ``timeout`` is NaN, infinite, negative or over 100 years.
            TypeError: ``fn`` is not callable.
        """
        seconds = check_duration("wait_condition timeout", timeout, allow_none=True)
        if not callable(fn):
            raise TypeError(f"wait_condition needs a function returning a bool, not {type(fn).__name__}")
        fut = self._inst.add_condition(fn)
        if seconds is None:
            await fut
        else:
            await asyncio.wait_for(fut, seconds)

    # --- child workflows ---------------------------------------------------------------------------

    async def start_child_workflow(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        id: str | None = None,
        task_queue: str | None = None,
        parent_close_policy: str = "terminate",
        result_type: Any = None,
    ) -> ChildWorkflowHandle:
        """Start a child workflow; it starts in the same commit as this workflow task.

        Args:
            workflow: the child's ``@duro.workflow`` function or registered name.
            *args: its arguments.
            id: the child's workflow id (default: "<parent id>/child-<n>").
            task_queue: its queue (default: this workflow's).
            parent_close_policy: what happens to the child if this workflow closes first:
                "terminate" (default), "request_cancel" or "abandon".
            result_type: the type its result is decoded to (default: the child's return
                annotation; needed when the child is named by a string).

        Returns:
            A handle: ``await handle.result()``, ``await handle.signal(...)``, ``await handle.cancel()``.

        Raises:
            TypeError: the arguments do not fit the child's signature or cannot be encoded.
            ValueError: ``id``, ``task_queue`` or the workflow name is empty, holds NUL or is over
                255 bytes; ``parent_close_policy`` is unknown; an argument holds NaN or infinity.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.
        """
        return self._start_child(workflow, args, id, task_queue, parent_close_policy, result_type)

    def _start_child(self, workflow: Callable[..., Any] | str, args: tuple[Any, ...], id: str | None,
                     task_queue: str | None, parent_close_policy: str, result_type: Any) -> ChildWorkflowHandle:
        inst = self._inst
        if inst._outbound is not None:
            return inst._outbound.start_child_workflow(StartChildWorkflowInput(
                workflow, args, {}, id, task_queue, parent_close_policy, result_type))
        return inst.start_child(workflow, args, id, task_queue, parent_close_policy, None, result_type)

    async def execute_child_workflow(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        id: str | None = None,
        task_queue: str | None = None,
        parent_close_policy: str = "terminate",
        result_type: Any = None,
    ) -> Any:
        """Start a child workflow and wait for its result (``WorkflowFailedError`` if it fails)."""
        handle = self._start_child(workflow, args, id, task_queue, parent_close_policy, result_type)
        return await handle.result()

    def upsert_search_attributes(self, attributes: dict[str, Any]) -> None:
        """Change this run's search attributes (what ``list_workflows`` filters on); replay-safe.

        Recorded as a command (a ``MarkerRecorded`` event named "duro:search_attributes") and
        applied when this workflow task commits. A value of None removes the attribute. Values:
        str, int, float, bool or a timezone-aware datetime.

        Raises:
            TypeError, ValueError: as for ``start_workflow(search_attributes=...)``.
        """
        self._inst.upsert_search_attributes(check_search_attributes(attributes, allow_none=True))

    def get_external_workflow_handle(self, workflow_id: str, run_id: str | None = None) -> ExternalWorkflowHandle:
        """A handle to signal or cancel any workflow by id (not only this workflow's children).

        ``await handle.signal(name, *args)`` and ``await handle.cancel()`` are recorded as commands
        and delivered in the commit of this workflow task, exactly once (replay does not send them
        again). A target that is not open then (no such id, or closed) does not receive them, and
        the sending workflow goes on.

        Raises:
            ValueError: ``workflow_id`` is empty, holds NUL or is over 255 bytes; ``run_id`` is not
                a run id.
        """
        check_name("workflow id", workflow_id)
        if run_id is not None:
            try:
                run_key_of(run_id)
            except (ValueError, TypeError):
                raise ValueError(f"run_id must be a run id (32 hex digits, as handle.run_id gives) or None for the "
                                 f"latest run, got {run_id!r}") from None
        return ExternalWorkflowHandle(self._inst, workflow_id, run_id)

    # --- queries, updates, versioning, continue-as-new -----------------------------------------

    def set_query_handler(self, name: str, handler: Callable[..., Any] | None) -> None:
        """Answer ``handle.query(name, *args)`` with ``handler(*args)`` (a plain function, no side effects)."""
        self._inst.set_query_handler(check_name("query name", name), handler)

    def set_dynamic_query_handler(self, handler: Callable[..., Any] | None) -> None:
        """Answer queries that have no handler of their own with ``handler(name, *args)``; None removes it."""
        self._inst.set_dynamic_query_handler(handler)

    def get_query_handler(self, name: str) -> Callable[..., Any] | None:
        """The handler set for query ``name``, or None (the dynamic handler is not returned)."""
        return self._inst.query_handler(check_name("query name", name))

    def get_dynamic_query_handler(self) -> Callable[..., Any] | None:
        """The dynamic query handler, or None."""
        return self._inst.query_handler(None)

    def all_handlers_finished(self) -> bool:
        """Whether every async signal handler and update handler started so far has finished.

        Wait for it before returning or continuing as new, so that no handler is cut short:
        ``await ctx.wait_condition(ctx.all_handlers_finished)``.
        """
        return self._inst.all_handlers_finished()

    def set_update_handler(self, name: str, handler: Callable[..., Any] | None,
                           validator: Callable[..., Any] | None = None) -> None:
        """Handle ``handle.execute_update(name, *args)``.

        ``validator(*args)`` (plain function) runs first: if it raises, the update is rejected and
        nothing is written. Then ``handler(*args)`` (sync or async) runs inside the workflow and
        its return value goes back to the caller.
        """
        self._inst.set_update_handler(check_name("update name", name), handler, validator)

    def set_dynamic_update_handler(self, handler: Callable[..., Any] | None,
                                   validator: Callable[..., Any] | None = None) -> None:
        """Handle updates that have no handler of their own: ``validator(name, *args)``, then ``handler(name, *args)``.

        The rules are those of ``set_update_handler``. ``None`` removes it.
        """
        self._inst.set_dynamic_update_handler(handler, validator)

    def get_update_handler(self, name: str) -> Callable[..., Any] | None:
        """The handler set for update ``name``, or None (the dynamic handler is not returned)."""
        return self._inst.update_handler(check_name("update name", name))

    def get_dynamic_update_handler(self) -> Callable[..., Any] | None:
        """The dynamic update handler, or None."""
        return self._inst.update_handler(None)

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the code path added by change ``change_id``.

        New runs get True (and record it); runs recorded before the change replay with False,
        so they keep replaying the old path. Use ``if ctx.patched("x"): new() else: old()``.
        """
        return self._inst.patched(check_name("change_id", change_id))

    def deprecate_patch(self, change_id: str) -> None:
        """Mark ``change_id`` as applied everywhere: old branches removed, recorded markers still accepted."""
        self._inst.patched(check_name("change_id", change_id), deprecated=True)

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a new one of the same workflow with ``args`` and an empty history.

        Raises:
            TypeError: ``args`` do not fit the workflow's signature or cannot be encoded (raised
                here, in the caller, so the run does not end).
            ValueError: an argument holds NaN or infinity.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.
        """
        from duro._instance import ContinueAsNew

        defn = self._inst.defn
        check_call_args("workflow", defn.name, defn.signature, args)
        self._inst.converter.encode_args(args)  # fail here, in the caller, if they cannot be encoded
        raise ContinueAsNew(args)

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs recorded history (for example to skip logging)."""
        return self._inst.replaying
