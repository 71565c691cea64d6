"""Tracing with OpenTelemetry: spans around starts, signals, queries, updates, workflow runs and activities.

    from duro.contrib.opentelemetry import TracingInterceptor

    client = await duro.Client.connect(url, interceptors=[TracingInterceptor()])  # workers built on it too

Needs the extra ``otel`` (the OpenTelemetry API; bring your own SDK and exporter). The spans, their
attributes and what crosses processes are described in ``docs/tracing.md``.

The trace context travels in duro's interceptor headers, written and read with the configured
OpenTelemetry propagator (``opentelemetry.propagate``; W3C trace context and baggage by default):
from a client to the workflow it starts, signals, queries or updates, and from a workflow to its
activities, children and the workflows it signals. Those headers are recorded in the history, so a
workflow rebuilt in another process hangs its new spans on the same trace.

Spans made inside a workflow are observations: each is started and ended at once (a workflow runs
across many tasks, processes and replays, and a span can only be ended by the process that started
it), none is made while the workflow replays its history, and nothing the tracer does reaches the
workflow's decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.util.types import AttributeValue
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "duro.contrib.opentelemetry needs the OpenTelemetry API: pip install 'duro[otel]' "
        "(and an OpenTelemetry SDK with an exporter to see the spans)") from e

import duro
from duro._async_completion import CompleteAsync
from duro._instance import ContinueAsNew, is_cancellation
from duro.errors import NonDeterminismError, WorkflowIOError
from duro.interceptor import (
    ActivityInboundInterceptor,
    ClientOutboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleQueryInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    QueryWorkflowInput,
    SignalExternalWorkflowInput,
    SignalWorkflowInput,
    StartActivityInput,
    StartChildWorkflowInput,
    StartWorkflowInput,
    UpdateWorkflowInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)

if TYPE_CHECKING:
    from duro._instance import ChildWorkflowHandle
    from duro.client import WorkflowHandle, WorkflowUpdateHandle
    from duro.workflow import WorkflowContext, WorkflowInfo

__all__ = [
    "ACTIVITY_ATTEMPT",
    "ACTIVITY_ID",
    "ACTIVITY_TYPE",
    "RUN_ID",
    "TASK_QUEUE",
    "UPDATE_ID",
    "WORKFLOW_ID",
    "WORKFLOW_STATUS",
    "WORKFLOW_TYPE",
    "TracingInterceptor",
]

# Span attributes. Named in the OpenTelemetry semantic conventions' style (lower case, dotted
# namespaces, snake_case words) and as duro.contrib.metrics names its attributes, so spans and
# metrics can be filtered by the same keys.
WORKFLOW_ID = "duro.workflow.id"
RUN_ID = "duro.workflow.run_id"
WORKFLOW_TYPE = "duro.workflow.type"
#: how the workflow function ended, on ``CompleteWorkflow`` spans: a run status
#: ("completed", "failed", "canceled", "continued_as_new").
WORKFLOW_STATUS = "duro.workflow.status"
TASK_QUEUE = "duro.task_queue"
ACTIVITY_TYPE = "duro.activity.type"
#: the activity's sequence number in its workflow run (``ActivityInfo.activity_id``).
ACTIVITY_ID = "duro.activity.id"
ACTIVITY_ATTEMPT = "duro.activity.attempt"
UPDATE_ID = "duro.update.id"
_ERROR_TYPE = "error.type"  # semantic conventions: the exception's class name on a failed span

_SCOPE = "duro.contrib.opentelemetry"
_T = TypeVar("_T")
_Attributes = dict[str, AttributeValue]

# OpenTelemetry loads its context implementation lazily, on first use; do it at import time rather
# than inside a workflow task (where the workflow loop's I/O guard is armed).
otel_context.get_current()


class TracingInterceptor(Interceptor):
    """Makes OpenTelemetry spans for what clients, workflows and activities do, and carries the trace along.

    Give it to ``duro.Client.connect(url, interceptors=[TracingInterceptor()])``: the client's
    calls get spans, and workers built on that client trace their workflows and activities.

    Args:
        tracer: the tracer to make spans with. By default, one of the global tracer provider
            (``opentelemetry.trace.get_tracer(...)``: a provider set after this interceptor was
            built is used too). With no provider configured, spans are no-ops and no trace headers
            are added.

    With an OpenTelemetry SDK tracer, the ``RunWorkflow`` span of a run gets ids derived from its
    run id (the tracer's id generator is wrapped once to allow this; every other span keeps the
    generator's ids), so a worker that rebuilds the run from its history, in any process, hangs
    the run's later spans on that same ``RunWorkflow`` span. With another tracer, spans made after
    such a rebuild hang on the context the run was started with.
    """

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer if tracer is not None else trace.get_tracer(_SCOPE, duro.__version__)

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer spans are made with now."""
        tracer = self._tracer
        if isinstance(tracer, trace.ProxyTracer):
            # Taken from the global provider before one was set (ours by default, or a user's
            # trace.get_tracer() at import time): the tracer behind it, once a provider is set, is
            # the SDK's, which can give RunWorkflow spans their ids.
            inner = getattr(tracer, "_tracer", None)
            if isinstance(inner, trace.Tracer):
                return inner
        return tracer

    def intercept_client(self, next: ClientOutboundInterceptor) -> ClientOutboundInterceptor:
        """Spans around a client's starts, signals, queries and updates, their context in the headers."""
        return _ClientOutbound(next, self)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """A span around each activity attempt, a child of the span that scheduled it."""
        return _ActivityInbound(next, self)

    def intercept_workflow(self, next: WorkflowInboundInterceptor) -> WorkflowInboundInterceptor:
        """Spans for a workflow run and for what it receives and asks for (none while it replays)."""
        return _WorkflowInbound(next, self)


# ---------------------------------------------------------------------------------------------- helpers


def _extract(headers: Mapping[str, str]) -> Context:
    """The context the headers carry; an empty one (a new trace), never the process's current one."""
    return propagate.extract(headers, context=Context())


def _has_span(ctx: Context) -> bool:
    return trace.get_current_span(ctx).get_span_context().is_valid


def _fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute(_ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _handle_attrs(handle: WorkflowHandle) -> _Attributes:
    attrs: _Attributes = {WORKFLOW_ID: handle.id}
    if handle.run_id:
        attrs[RUN_ID] = handle.run_id
    return attrs


def _run_attrs(info: WorkflowInfo) -> _Attributes:
    return {WORKFLOW_ID: info.workflow_id, RUN_ID: info.run_id, WORKFLOW_TYPE: info.workflow_type,
            TASK_QUEUE: info.task_queue}


# The ids of RunWorkflow spans. A workflow's later spans (activities, children, completion) are
# children of its RunWorkflow span, which is made once, when the run's first task runs live; a
# worker that rebuilds the run from its history later (after an eviction, in another process) must
# name the same parent without making the span again. So its ids are derived from the run id, and
# the SDK tracer is made to use them for that one span: its id generator is wrapped by one that
# returns the ids pinned in this context variable, set only around that start_span call.

_PINNED: ContextVar[tuple[int, int] | None] = ContextVar("duro_otel_pinned_ids", default=None)


class _PinnableIds:
    """An SDK tracer's id generator that gives the ids pinned in ``_PINNED`` when there are some."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        pinned = _PINNED.get()
        return pinned[1] if pinned is not None else int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:  # asked only for a root span: a run started without a trace
        pinned = _PINNED.get()
        return pinned[0] if pinned is not None else int(self.inner.generate_trace_id())

    def __getattr__(self, name: str) -> Any:  # is_trace_id_random(), and whatever later SDKs ask
        return getattr(self.inner, name)


def _pinnable(tracer: trace.Tracer) -> bool:
    """Whether ``tracer`` takes pinned ids (an SDK tracer: its id generator is wrapped on first call)."""
    gen = getattr(tracer, "id_generator", None)
    if isinstance(gen, _PinnableIds):
        return True
    if gen is None or not callable(getattr(gen, "generate_span_id", None)):
        return False
    try:
        tracer.id_generator = _PinnableIds(gen)  # type: ignore[attr-defined]
    except AttributeError:  # a read-only attribute: not a tracer we know
        return False
    return True


def _run_ids(run_id: str) -> tuple[int, int]:
    """The (trace id, span id) of run ``run_id``'s RunWorkflow span; the trace id serves a run without a parent."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=24, person=b"duro-otel-run").digest()
    # Zero is the one invalid value of each: map it away (it will not happen in practice).
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:], "big") or 1


@contextlib.contextmanager
def _observing(ctx: WorkflowContext) -> Iterator[None]:
    """Around the tracer's calls inside a workflow: they read the real clock and make random ids.

    Those are observations that never reach the workflow's decisions. DESIGN.md names
    ``ctx.unsafe()`` as the escape from the determinism guard: once the context has it, the
    tracer's calls run inside it.
    """
    unsafe = getattr(ctx, "unsafe", None)
    if unsafe is None:
        yield
    else:
        with unsafe():
            yield


# ---------------------------------------------------------------------------------------------- client


class _ClientOutbound(ClientOutboundInterceptor):
    """A span around each call of a client; its context goes out in the call's headers."""

    def __init__(self, next: ClientOutboundInterceptor, root: TracingInterceptor) -> None:
        super().__init__(next)
        self._root = root

    @contextlib.contextmanager
    def _span(self, name: str, attrs: _Attributes, headers: dict[str, str]) -> Iterator[Span]:
        """The call's span, current (a child of the caller's), its context injected into ``headers``."""
        with self._root.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs,
                                                     record_exception=False, set_status_on_exception=False) as span:
            propagate.inject(headers)
            try:
                yield span
            except BaseException as e:
                _fail(span, e)
                raise

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle:
        verb = "SignalWithStartWorkflow" if input.start_signal is not None else "StartWorkflow"
        attrs: _Attributes = {WORKFLOW_ID: input.id, WORKFLOW_TYPE: input.workflow, TASK_QUEUE: input.task_queue}
        with self._span(f"{verb}:{input.workflow}", attrs, input.headers) as span:
            handle = await self.next.start_workflow(input)
            if handle.run_id:
                span.set_attribute(RUN_ID, handle.run_id)
            return handle

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        with self._span(f"SignalWorkflow:{input.signal}", _handle_attrs(input.handle), input.headers):
            await self.next.signal_workflow(input)

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        with self._span(f"QueryWorkflow:{input.query}", _handle_attrs(input.handle), input.headers):
            return await self.next.query_workflow(input)

    async def update_workflow(self, input: UpdateWorkflowInput) -> WorkflowUpdateHandle:
        attrs = _handle_attrs(input.handle)
        if input.id:
            attrs[UPDATE_ID] = input.id
        with self._span(f"UpdateWorkflow:{input.update}", attrs, input.headers):
            return await self.next.update_workflow(input)


# ---------------------------------------------------------------------------------------------- activities


class _ActivityInbound(ActivityInboundInterceptor):
    """A span over an activity attempt, from its start to its end, under the span that scheduled it."""

    def __init__(self, next: ActivityInboundInterceptor, root: TracingInterceptor) -> None:
        super().__init__(next)
        self._root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = input.ctx.info
        attrs: _Attributes = {
            WORKFLOW_ID: info.workflow_id, RUN_ID: info.workflow_run_id, WORKFLOW_TYPE: info.workflow_type,
            TASK_QUEUE: info.task_queue, ACTIVITY_TYPE: info.activity_type, ACTIVITY_ID: info.activity_id,
            ACTIVITY_ATTEMPT: info.attempt,
        }
        # The headers' context becomes current (its baggage too) for the activity's own spans; a
        # sync activity sees it as well: the worker runs it in a copy of this context.
        token = otel_context.attach(_extract(input.headers))
        try:
            with self._root.tracer.start_as_current_span(
                    f"RunActivity:{info.activity_type}", kind=SpanKind.SERVER, attributes=attrs,
                    record_exception=False, set_status_on_exception=False) as span:
                try:
                    return await self.next.execute_activity(input)
                except CompleteAsync:  # not a failure: the attempt is completed later, from outside
                    raise
                except BaseException as e:  # a timeout or a cancellation ends the attempt too
                    _fail(span, e)
                    raise
        finally:
            otel_context.detach(token)


# ---------------------------------------------------------------------------------------------- workflows


class _WorkflowInbound(WorkflowInboundInterceptor):
    """One workflow instance's spans: RunWorkflow, CompleteWorkflow and the handlers' (none in replay)."""

    def __init__(self, next: WorkflowInboundInterceptor, root: TracingInterceptor) -> None:
        super().__init__(next)
        self._root = root
        # The parent of the spans the workflow makes: its RunWorkflow span. Made lazily: it is
        # derived from the run's start headers and run id, so a replay rebuilds the same one.
        self._run: Context | None = None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound, self))

    # ------------------------------------------------------------------ the run's span

    @property
    def run_context(self) -> Context:
        """The context whose span is this run's RunWorkflow span (rebuilt, not made, in replay)."""
        if self._run is None:
            self._run = self._rebuilt_run_context(_extract(self.ctx.info.headers))
        return self._run

    def _rebuilt_run_context(self, parent: Context) -> Context:
        tracer = self._root.tracer
        if not _pinnable(tracer):
            return parent  # the RunWorkflow span's ids were random: hang on what the run started with
        trace_id, span_id = _run_ids(self.ctx.info.run_id)
        up = trace.get_current_span(parent).get_span_context()
        if up.is_valid:  # what a parent-based sampler, the SDK's default, decided for RunWorkflow
            sc = SpanContext(up.trace_id, span_id, is_remote=False, trace_flags=up.trace_flags,
                             trace_state=up.trace_state)
        else:
            flags = TraceFlags.SAMPLED
            if getattr(getattr(tracer, "id_generator", None), "is_trace_id_random", lambda: False)():
                flags |= TraceFlags.RANDOM_TRACE_ID
            sc = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))
        return trace.set_span_in_context(NonRecordingSpan(sc), parent)

    def _start_run_span(self, parent: Context) -> None:
        info = self.ctx.info
        tracer = self._root.tracer
        token = _PINNED.set(_run_ids(info.run_id)) if _pinnable(tracer) else None
        try:
            with _observing(self.ctx):
                span = tracer.start_span(f"RunWorkflow:{info.workflow_type}", context=parent, kind=SpanKind.SERVER,
                                         attributes=_run_attrs(info))
                span.end()
        finally:
            if token is not None:
                _PINNED.reset(token)
        self._run = trace.set_span_in_context(span, parent)

    def _complete(self, status: str, exc: BaseException | None = None) -> None:
        if self.ctx.is_replaying:
            return
        info = self.ctx.info
        with _observing(self.ctx):
            span = self._root.tracer.start_span(f"CompleteWorkflow:{info.workflow_type}", context=self.run_context,
                                                attributes={**_run_attrs(info), WORKFLOW_STATUS: status})
            if exc is not None:
                _fail(span, exc)
            span.end()

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        parent = _extract(input.headers)
        if self.ctx.is_replaying:
            self._run = self._rebuilt_run_context(parent)
        else:  # the run's first task, live: the one time its RunWorkflow span is made
            self._start_run_span(parent)
        try:
            result = await self.next.execute_workflow(input)
        except ContinueAsNew:
            self._complete("continued_as_new")
            raise
        except asyncio.CancelledError as e:
            if self.ctx._inst.cancel_requested:
                self._complete("canceled")  # asked for (handle.cancel()): an end, not an error
            else:
                self._complete("failed", e)  # a cancellation nobody asked the run for fails it
            raise
        except (NonDeterminismError, WorkflowIOError):
            raise  # not an end of the run: its workflow task fails and is tried again
        except Exception as e:
            if self.ctx._inst.cancel_requested and is_cancellation(e):  # a cancelled activity's ActivityError
                self._complete("canceled")
            else:
                self._complete("failed", e)
            raise
        # (GeneratorExit, when the worker drops the instance, passes through: nothing ended.)
        self._complete("completed")
        return result

    # ------------------------------------------------------------------ handlers

    def _handler_span(self, name: str, headers: Mapping[str, str], attrs: _Attributes | None = None) -> Span:
        """A span for a signal, query or update reaching the workflow: a child of the sender's span.

        A message sent without a trace context hangs on the run's span instead; one sent with
        one also links to the run's span, which is in another trace when the sender's is.
        """
        info = self.ctx.info
        parent = _extract(headers)
        links: list[Link] = []
        if _has_span(parent):
            run_sc = trace.get_current_span(self.run_context).get_span_context()
            if run_sc.is_valid:
                links.append(Link(run_sc))
        else:
            parent = self.run_context
        with _observing(self.ctx):
            return self._root.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                                attributes={**_run_attrs(info), **(attrs or {})}, links=links)

    def _around(self, name: str, headers: Mapping[str, str], call: Callable[[], _T],
                attrs: _Attributes | None = None) -> _T:
        """``call()`` inside a handler span (ended as soon as the synchronous call returns or raises)."""
        if self.ctx.is_replaying:
            return call()
        span = self._handler_span(name, headers, attrs)
        try:
            return call()
        except BaseException as e:
            _fail(span, e)
            raise
        finally:
            with _observing(self.ctx):
                span.end()

    def handle_signal(self, input: HandleSignalInput) -> None:
        """Deliver a signal; live, under a ``HandleSignal`` span."""
        self._around(f"HandleSignal:{input.signal}", input.headers, lambda: self.next.handle_signal(input))

    def handle_query(self, input: HandleQueryInput) -> Any:
        """Answer a query under a ``HandleQuery`` span."""
        return self._around(f"HandleQuery:{input.query}", input.headers, lambda: self.next.handle_query(input))

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        """Validate an update under a ``ValidateUpdate`` span (a rejection is its error)."""
        self._around(f"ValidateUpdate:{input.update}", input.headers,
                     lambda: self.next.handle_update_validator(input))

    async def handle_update(self, input: HandleUpdateInput) -> Any:
        """Run an accepted update; live, a ``HandleUpdate`` span is made (and ended) as it begins."""
        if not self.ctx.is_replaying:
            span = self._handler_span(f"HandleUpdate:{input.update}", input.headers, {UPDATE_ID: input.id})
            with _observing(self.ctx):
                span.end()
        return await self.next.handle_update(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    """Spans for what a workflow asks for, children of its RunWorkflow span; their context goes in the headers."""

    def __init__(self, next: WorkflowOutboundInterceptor, inbound: _WorkflowInbound) -> None:
        super().__init__(next)
        self._in = inbound

    def _traced(self, name: str, attrs: _Attributes, headers: dict[str, str], call: Callable[[], _T],
                after: Callable[[_T, Span], None] | None = None) -> _T:
        if self.ctx.is_replaying:
            return call()  # the command is recorded, with the headers it had when it first ran
        ctx = self.ctx
        parent = self._in.run_context
        with _observing(ctx):
            span = self._in._root.tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attrs)
        propagate.inject(headers, context=trace.set_span_in_context(span, parent))
        try:
            result = call()
            if after is not None:
                after(result, span)
            return result
        except BaseException as e:
            _fail(span, e)
            raise
        finally:
            with _observing(ctx):
                span.end()

    def _attrs(self) -> _Attributes:
        info = self.ctx.info
        return {WORKFLOW_ID: info.workflow_id, RUN_ID: info.run_id, WORKFLOW_TYPE: info.workflow_type}

    def start_activity(self, input: StartActivityInput) -> asyncio.Future[Any]:
        """Schedule an activity under a ``StartActivity`` span."""
        if self.ctx.is_replaying:
            return self.next.start_activity(input)
        try:
            name = input.name
        except Exception:  # not an activity: the engine raises its own error for it, in the call below
            name = getattr(input.activity, "__name__", "?")
        attrs = {**self._attrs(), ACTIVITY_TYPE: name, TASK_QUEUE: input.task_queue or self.ctx.info.task_queue}
        return self._traced(f"StartActivity:{name}", attrs, input.headers, lambda: self.next.start_activity(input))

    def start_child_workflow(self, input: StartChildWorkflowInput) -> ChildWorkflowHandle:
        """Start a child under a ``StartChildWorkflow`` span (its attributes name the child)."""
        if self.ctx.is_replaying:
            return self.next.start_child_workflow(input)
        try:
            name = input.name
        except Exception:  # not a workflow: the engine raises its own error for it, in the call below
            name = getattr(input.workflow, "__name__", "?")
        attrs: _Attributes = {WORKFLOW_TYPE: name, TASK_QUEUE: input.task_queue or self.ctx.info.task_queue}
        if input.id is not None:
            attrs[WORKFLOW_ID] = input.id

        def named(handle: ChildWorkflowHandle, span: Span) -> None:
            span.set_attributes({WORKFLOW_ID: handle.id, RUN_ID: handle.run_id})

        return self._traced(f"StartChildWorkflow:{name}", attrs, input.headers,
                            lambda: self.next.start_child_workflow(input), named)

    def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        """Signal another run under a ``SignalExternalWorkflow`` span (its attributes name the target)."""
        attrs: _Attributes = {WORKFLOW_ID: input.workflow_id}
        if input.run_id:
            attrs[RUN_ID] = input.run_id
        self._traced(f"SignalExternalWorkflow:{input.signal}", attrs, input.headers,
                     lambda: self.next.signal_external_workflow(input))
