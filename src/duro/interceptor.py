"""Interceptors: hooks around what clients, workflows and activities do, with headers that travel along.

An ``Interceptor`` is given to ``Client.connect(url, interceptors=[...])`` (workers built on that
client use it too) or to ``Worker(..., interceptors=[...])``. Each hook receives the next link of a
chain and returns its own link, which overrides the calls it cares about and passes every call on
with ``self.next``. The first interceptor of the list is the outermost.

Headers are a ``dict[str, str]`` carried by starts, signals, updates, queries, activities and
children. Those of starts, signals, activities, children and updates are recorded in the history
(so a replay sees what the first run saw); query headers only travel with the query. Tracing uses
them to carry a trace context from a client to a workflow, and from a workflow to its activities
and children (``duro.contrib.opentelemetry``).

Links are built once per client, once per worker for activities, and once per workflow instance
for workflows (so a workflow link may keep state for its run). A workflow link runs inside the
workflow's deterministic loop, like workflow code: it must not do I/O or wait on anything but the
call it wraps, and should do nothing visible while ``self.ctx.is_replaying``.

With no interceptor, none of this is on the path: clients, workers and workflows call straight
through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from duro._updates import WorkflowUpdateStage
from duro._validate import check_name

if TYPE_CHECKING:
    from duro._instance import ChildWorkflowHandle
    from duro.activity import ActivityContext, RetryPolicy
    from duro.client import WorkflowHandle, WorkflowUpdateHandle
    from duro.workflow import WorkflowContext

__all__ = [
    "ActivityInboundInterceptor",
    "CancelWorkflowInput",
    "ClientOutboundInterceptor",
    "ExecuteActivityInput",
    "ExecuteWorkflowInput",
    "HandleQueryInput",
    "HandleSignalInput",
    "HandleUpdateInput",
    "Headers",
    "Interceptor",
    "QueryWorkflowInput",
    "SignalExternalWorkflowInput",
    "SignalWorkflowInput",
    "StartActivityInput",
    "StartChildWorkflowInput",
    "StartWorkflowInput",
    "TerminateWorkflowInput",
    "UpdateWorkflowInput",
    "WorkflowInboundInterceptor",
    "WorkflowOutboundInterceptor",
    "check_headers",
]

Headers = dict[str, str]

MAX_HEADERS_BYTES = 64 * 1024  # all keys and values of one header set, in UTF-8


def check_headers(headers: Any) -> Headers:
    """A copy of ``headers`` if it is a mapping of str to str; a clear error otherwise.

    Raises:
        TypeError: not a mapping, or a key or value that is not a str.
        ValueError: an empty key, a key holding NUL or over 255 bytes, or more than 64 KiB in all.
    """
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a dict of str to str, not {type(headers).__name__}")
    out: Headers = {}
    size = 0
    for k, v in headers.items():
        check_name("header name", k)
        if not isinstance(v, str):
            raise TypeError(f"header {k!r} must have a str value, not {type(v).__name__}")
        size += len(k.encode()) + len(v.encode())
        out[k] = v
    if size > MAX_HEADERS_BYTES:
        raise ValueError(f"headers hold {size} bytes; at most {MAX_HEADERS_BYTES} are allowed")
    return out


# ---------------------------------------------------------------------------------------------- client


@dataclass(slots=True)
class StartWorkflowInput:
    """A workflow start, as ``Client.start_workflow`` checked it (the arguments are not encoded yet)."""

    workflow: str
    args: tuple[Any, ...]
    id: str
    task_queue: str
    headers: Headers = field(default_factory=dict)
    id_reuse_policy: str = "allow_duplicate"
    execution_timeout: float | None = None
    run_timeout: float | None = None
    id_conflict_policy: str = "fail"
    start_signal: str | None = None
    start_signal_args: tuple[Any, ...] = ()
    search_attributes: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    #: the workflow function when the caller gave one (decodes the result), else None.
    definition: Any = None


@dataclass(slots=True)
class SignalWorkflowInput:
    """A signal sent from a handle."""

    handle: WorkflowHandle
    signal: str
    args: tuple[Any, ...]
    headers: Headers = field(default_factory=dict)


@dataclass(slots=True)
class QueryWorkflowInput:
    """A query sent from a handle (its headers travel with it; queries are not recorded)."""

    handle: WorkflowHandle
    query: str
    args: tuple[Any, ...]
    headers: Headers = field(default_factory=dict)
    #: the type the answer is decoded to (None: plain JSON values).
    result_type: Any = None
    #: a time-travel query: answer as the run stood right after this event (None: as it stands now).
    #: Last, so interceptors that build the input positionally keep working.
    at_event: int | None = None


@dataclass(slots=True)
class UpdateWorkflowInput:
    """An update sent from a handle (``start_update``, ``execute_update``); its headers are recorded with it."""

    handle: WorkflowHandle
    update: str
    args: tuple[Any, ...]
    headers: Headers = field(default_factory=dict)
    #: the type the result is decoded to (None: plain JSON values).
    result_type: Any = None
    #: the update's id: the caller's, or one made up for it (an id accepted on the run before is
    #: not applied again).
    id: str = ""
    #: how far the update must get before ``update_workflow`` returns its handle.
    wait_for_stage: WorkflowUpdateStage = WorkflowUpdateStage.COMPLETED


@dataclass(slots=True)
class CancelWorkflowInput:
    """A cancellation request from a handle."""

    handle: WorkflowHandle


@dataclass(slots=True)
class TerminateWorkflowInput:
    """A termination from a handle."""

    handle: WorkflowHandle
    reason: str


class ClientOutboundInterceptor:
    """A link of the client's chain: each method passes the call on to ``self.next``."""

    def __init__(self, next: ClientOutboundInterceptor) -> None:
        self.next = next

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle:
        """Start a workflow; the handle once the start is durable."""
        return await self.next.start_workflow(input)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        """Send a signal; returns once it is durable."""
        await self.next.signal_workflow(input)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        """Ask a query; its answer."""
        return await self.next.query_workflow(input)

    async def update_workflow(self, input: UpdateWorkflowInput) -> WorkflowUpdateHandle:
        """Send an update; its handle once it reached ``input.wait_for_stage`` (accepted or completed).

        ``execute_update`` asks for the completed stage, then returns ``await handle.result()``.
        """
        return await self.next.update_workflow(input)

    async def cancel_workflow(self, input: CancelWorkflowInput) -> None:
        """Request cancellation."""
        await self.next.cancel_workflow(input)

    async def terminate_workflow(self, input: TerminateWorkflowInput) -> None:
        """Terminate the run."""
        await self.next.terminate_workflow(input)


# ---------------------------------------------------------------------------------------------- activities


@dataclass(slots=True)
class ExecuteActivityInput:
    """One attempt of an activity about to run: its function, decoded arguments and headers."""

    fn: Callable[..., Any]
    args: Sequence[Any]
    headers: Headers
    ctx: ActivityContext
    #: whether ``fn`` is ``async def`` (a sync one runs on the worker's activity executor: its
    #: thread pool, or a process pool, where ``fn`` and ``args`` must be picklable).
    is_async: bool


class ActivityInboundInterceptor:
    """A link of a worker's activity chain."""

    def __init__(self, next: ActivityInboundInterceptor) -> None:
        self.next = next

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        """Run the attempt; its result (or raise its error)."""
        return await self.next.execute_activity(input)


# ---------------------------------------------------------------------------------------------- workflows


@dataclass(slots=True)
class ExecuteWorkflowInput:
    """A workflow run beginning (live or in replay): its function, decoded arguments and start headers."""

    workflow_type: str
    fn: Callable[..., Any]
    args: Sequence[Any]
    headers: Headers


@dataclass(slots=True)
class HandleSignalInput:
    """A signal delivered to the workflow (to its handler, a waiter, or the buffer)."""

    signal: str
    args: list[Any]
    headers: Headers


@dataclass(slots=True)
class HandleQueryInput:
    """A query to answer from the workflow's state."""

    query: str
    args: list[Any]
    headers: Headers


@dataclass(slots=True)
class HandleUpdateInput:
    """An update: validated before it is recorded, then handled inside the workflow."""

    id: str
    update: str
    args: list[Any]
    headers: Headers


@dataclass(slots=True)
class StartActivityInput:
    """An activity the workflow schedules (the options as given; unset ones take the decorator's)."""

    activity: Callable[..., Any] | str
    args: tuple[Any, ...]
    headers: Headers
    start_to_close_timeout: Any = None
    schedule_to_close_timeout: Any = None
    heartbeat_timeout: Any = None
    retry_policy: RetryPolicy | None = None
    task_queue: str | None = None
    #: the type the result is decoded to (None: the activity's return annotation).
    result_type: Any = None
    #: what cancelling the awaitable does: "try_cancel", "wait_cancellation_completed" or "abandon".
    cancellation_type: str = "try_cancel"

    @property
    def name(self) -> str:
        """The activity's registered name."""
        if isinstance(self.activity, str):
            return self.activity
        from duro.activity import get_activity_definition

        return get_activity_definition(self.activity).name


@dataclass(slots=True)
class StartChildWorkflowInput:
    """A child workflow the workflow starts."""

    workflow: Callable[..., Any] | str
    args: tuple[Any, ...]
    headers: Headers
    id: str | None = None
    task_queue: str | None = None
    parent_close_policy: str = "terminate"
    #: the type the result is decoded to (None: the child's return annotation).
    result_type: Any = None

    @property
    def name(self) -> str:
        """The child's registered workflow name."""
        if isinstance(self.workflow, str):
            return self.workflow
        from duro.workflow import get_workflow_definition

        return get_workflow_definition(self.workflow).name


@dataclass(slots=True)
class SignalExternalWorkflowInput:
    """A signal the workflow sends to another run (a child or any workflow by id)."""

    workflow_id: str
    run_id: str | None
    signal: str
    args: tuple[Any, ...]
    headers: Headers


class WorkflowOutboundInterceptor:
    """A link of what a workflow asks of the engine (one chain per workflow instance)."""

    def __init__(self, next: WorkflowOutboundInterceptor) -> None:
        self.next = next

    @property
    def ctx(self) -> WorkflowContext:
        """The workflow's context (``.info``, ``.is_replaying``, ``.now()``)."""
        return self.next.ctx

    def start_activity(self, input: StartActivityInput) -> asyncio.Future[Any]:
        """Schedule an activity; the future of its result."""
        return self.next.start_activity(input)

    def start_child_workflow(self, input: StartChildWorkflowInput) -> ChildWorkflowHandle:
        """Start a child workflow (in the commit of this workflow task); its handle."""
        return self.next.start_child_workflow(input)

    def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        """Send a signal to another run (in the commit of this workflow task)."""
        self.next.signal_external_workflow(input)


class WorkflowInboundInterceptor:
    """A link of what reaches a workflow (one chain per workflow instance).

    ``init`` is called once, before anything else, with the outbound chain: a link that wants to
    see what the workflow asks for wraps it, ``super().init(MyOutbound(outbound))``.
    """

    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        self.next = next

    @property
    def ctx(self) -> WorkflowContext:
        """The workflow's context (``.info``, ``.is_replaying``, ``.now()``)."""
        return self.next.ctx

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        """Receive the outbound chain (wrap it to intercept activities, children and signals out)."""
        self.next.init(outbound)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        """Run the workflow function; its result."""
        return await self.next.execute_workflow(input)

    def handle_signal(self, input: HandleSignalInput) -> None:
        """Deliver a signal (synchronously: an async handler is started as a task)."""
        self.next.handle_signal(input)

    def handle_query(self, input: HandleQueryInput) -> Any:
        """Answer a query."""
        return self.next.handle_query(input)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        """Validate an update (raise to reject it; nothing is recorded then)."""
        self.next.handle_update_validator(input)

    async def handle_update(self, input: HandleUpdateInput) -> Any:
        """Run an accepted update's handler; its result."""
        return await self.next.handle_update(input)


class Interceptor:
    """Base of an interceptor: override the hooks you need; each returns a link wrapping ``next``."""

    def intercept_client(self, next: ClientOutboundInterceptor) -> ClientOutboundInterceptor:
        """The link of this interceptor around a client's calls (default: none)."""
        return next

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """The link of this interceptor around a worker's activity attempts (default: none)."""
        return next

    def intercept_workflow(self, next: WorkflowInboundInterceptor) -> WorkflowInboundInterceptor:
        """The link of this interceptor for one workflow instance (default: none)."""
        return next


def check_interceptors(interceptors: Any) -> tuple[Interceptor, ...]:
    """The interceptors as a tuple; a clear TypeError for anything but a list of ``Interceptor``."""
    if isinstance(interceptors, (str, bytes)) or not isinstance(interceptors, Sequence):
        raise TypeError(f"interceptors must be a list of duro.interceptor.Interceptor, not "
                        f"{type(interceptors).__name__}")
    for i, it in enumerate(interceptors):
        if not isinstance(it, Interceptor):
            raise TypeError(f"interceptors[{i}] must be a duro.interceptor.Interceptor (subclass it), not "
                            f"{type(it).__name__}")
    return tuple(interceptors)
