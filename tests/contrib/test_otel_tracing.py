"""duro.contrib.opentelemetry: span trees across a client, workers, children, processes and replays.

Each test gives the interceptor a tracer of its own ``TracerProvider`` (in-memory exporter); the
global provider is never set. ``python -m tests.contrib.test_otel_tracing STORE QUEUE OUT`` runs a
traced worker of this module's workflows in another process, writing its finished spans to OUT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage import get_baggage, set_baggage
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import duro
from duro import interceptor as di
from duro.contrib.opentelemetry import TracingInterceptor
from tests.processes import ready_process
from tests.waiting import eventually

# ---------------------------------------------------------------------------------------------- workflows


@duro.activity
async def shout(actx: duro.ActivityContext, text: str) -> str:
    return text.upper()


@duro.activity
def whisper(actx: duro.ActivityContext, text: str) -> str:
    """A sync activity (thread pool): the RunActivity span and the baggage are current in its thread too."""
    return f"{text.lower()} in {trace.get_current_span().get_span_context().span_id:016x} for {get_baggage('who')}"


@duro.activity
async def double(actx: duro.ActivityContext, n: int) -> int:
    return 2 * n


@duro.workflow
async def kid(ctx: duro.WorkflowContext, n: int) -> int:
    return int(await ctx.execute_activity(double, n, start_to_close_timeout=10))


@duro.workflow
async def family(ctx: duro.WorkflowContext, text: str) -> list[Any]:
    loud = await ctx.execute_activity(shout, text, start_to_close_timeout=10)
    quiet = await ctx.execute_activity(whisper, text, start_to_close_timeout=10)
    child = await ctx.execute_child_workflow(kid, 21)
    return [loud, quiet, child]


@duro.workflow
async def chat(ctx: duro.WorkflowContext) -> list[str]:
    seen: list[str] = []
    total = [0]

    def bump(n: int) -> int:
        total[0] += n
        return total[0]

    def positive(n: int) -> None:
        if n < 0:
            raise duro.ApplicationError("no negative bumps")

    ctx.set_signal_handler("note", seen.append)
    ctx.set_query_handler("seen", lambda: list(seen))
    ctx.set_update_handler("bump", bump, positive)
    await ctx.wait_condition(lambda: "done" in seen)
    return seen


@duro.workflow
async def pinger(ctx: duro.WorkflowContext, wid: str) -> None:
    await ctx.get_external_workflow_handle(wid).signal("note", "ping")


@duro.workflow
async def again(ctx: duro.WorkflowContext, n: int) -> int:
    if n < 1:
        ctx.continue_as_new(n + 1)
    return n


@duro.workflow
async def two_steps(ctx: duro.WorkflowContext) -> list[str]:
    first = await ctx.execute_activity(shout, "a", start_to_close_timeout=10)
    await ctx.wait_signal("go")
    second = await ctx.execute_activity(shout, "b", start_to_close_timeout=10)
    return [first, second]


@duro.activity
async def flaky(actx: duro.ActivityContext) -> int:
    if actx.info.attempt == 1:
        raise RuntimeError("first attempts fail")
    return actx.info.attempt


@duro.activity
async def broken(actx: duro.ActivityContext) -> None:
    raise ValueError("always broken")


@duro.workflow
async def retrying(ctx: duro.WorkflowContext) -> int:
    return int(await ctx.execute_activity(flaky, start_to_close_timeout=10,
                                          retry_policy=duro.RetryPolicy(initial_interval=0.01, maximum_attempts=2)))


@duro.workflow
async def doomed(ctx: duro.WorkflowContext) -> None:
    await ctx.execute_activity(broken, start_to_close_timeout=10, retry_policy=duro.RetryPolicy(maximum_attempts=1))


WORKFLOWS: list[Callable[..., Any]] = [family, kid, chat, pinger, again, two_steps, retrying, doomed]
ACTIVITIES: list[Callable[..., Any]] = [shout, whisper, double, flaky, broken]

# ---------------------------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class S:
    """A finished span, as much of it as the trees need (also what the worker process writes)."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    start: int = 0

    @staticmethod
    def of(span: ReadableSpan) -> S:
        ctx = span.get_span_context()
        assert ctx is not None
        return S(span.name, ctx.trace_id, ctx.span_id, span.parent.span_id if span.parent else None,
                 span.start_time or 0)


class Traced:
    """A tracer provider of a test's own with an in-memory exporter, and views of what it caught."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, render([S.of(s) for s in self.spans()]))
        return found[0]

    def has(self, *names: str) -> bool:
        got = {s.name for s in self.spans()}
        return all(n in got for n in names)

    def tree(self) -> str:
        return render([S.of(s) for s in self.spans()])


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.provider.shutdown()


def render(spans: Sequence[S]) -> str:
    """The spans as an indented tree (children in start order); a span whose parent is not here is a root."""
    ids = {s.span_id for s in spans}
    kids: dict[int | None, list[S]] = {}
    for s in spans:
        kids.setdefault(s.parent_id if s.parent_id in ids else None, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(kids.get(parent, []), key=lambda s: (s.start, s.name)):
            lines.append("  " * depth + s.name)
            walk(s.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def sid(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


def tid(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id


# ---------------------------------------------------------------------------------------------- tests

FAMILY_TREE = """\
StartWorkflow:family
  RunWorkflow:family
    StartActivity:shout
      RunActivity:shout
    StartActivity:whisper
      RunActivity:whisper
    StartChildWorkflow:kid
      RunWorkflow:kid
        StartActivity:double
          RunActivity:double
        CompleteWorkflow:kid
    CompleteWorkflow:family"""


async def test_one_trace_from_the_client_through_the_workflow_its_activities_and_child(
        store: str, traced: Traced) -> None:
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(traced.tracer)]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES):
            token = otel_context.attach(set_baggage("who", "ada"))  # baggage travels with the trace context
            try:
                handle = await client.start_workflow(family, "Hi", id="otel-1", task_queue="otel")
            finally:
                otel_context.detach(token)
            loud, quiet, child = await handle.result(timeout=20)
    assert (loud, child) == ("HI", 42)
    await eventually(lambda: traced.has("CompleteWorkflow:family"), "the run's last span", details=traced.tree)
    assert traced.tree() == FAMILY_TREE
    spans = traced.spans()
    assert len({tid(s) for s in spans}) == 1  # one trace

    start, run = traced.one("StartWorkflow:family"), traced.one("RunWorkflow:family")
    assert start.kind == SpanKind.CLIENT and run.kind == SpanKind.SERVER
    assert dict(start.attributes or {}) == {"duro.workflow.id": "otel-1", "duro.workflow.type": "family",
                                            "duro.task_queue": "otel", "duro.workflow.run_id": handle.run_id}
    assert dict(run.attributes or {}) == {"duro.workflow.id": "otel-1", "duro.workflow.run_id": handle.run_id,
                                          "duro.workflow.type": "family", "duro.task_queue": "otel"}
    act = traced.one("RunActivity:shout")
    assert dict(act.attributes or {}) == {
        "duro.workflow.id": "otel-1", "duro.workflow.run_id": handle.run_id, "duro.workflow.type": "family",
        "duro.task_queue": "otel", "duro.activity.type": "shout", "duro.activity.id": 1, "duro.activity.attempt": 1}
    # The sync activity ran in a thread with its RunActivity span current.
    assert quiet == f"hi in {sid(traced.one('RunActivity:whisper')):016x} for ada"
    child_start, child_run = traced.one("StartChildWorkflow:kid"), traced.one("RunWorkflow:kid")
    assert (child_start.attributes or {})["duro.workflow.id"] == "otel-1/child-3"
    child_run_id = (child_run.attributes or {})["duro.workflow.run_id"]
    assert (child_start.attributes or {})["duro.workflow.run_id"] == child_run_id
    complete = traced.one("CompleteWorkflow:family")
    assert (complete.attributes or {})["duro.workflow.status"] == "completed"
    assert complete.status.status_code == StatusCode.UNSET

    # The trace context is what the history recorded: a replay sees the same headers.
    async with duro.Client.connect(store) as plain:
        events = await plain.get_handle("otel-1").fetch_history()
    [started] = [e for e in events if e.event_type == "WorkflowExecutionStarted"]
    flags = start.get_span_context().trace_flags  # type: ignore[union-attr]
    assert started.headers == {"traceparent": f"00-{tid(start):032x}-{sid(start):016x}-{flags:02x}",
                               "baggage": "who=ada"}


async def test_signals_queries_and_updates_hang_from_the_client_spans(store: str, traced: Traced) -> None:
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(traced.tracer)]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES):
            with traced.tracer.start_as_current_span("test"):
                handle = await client.start_workflow(chat, id="otel-2", task_queue="otel")
                await handle.signal("note", "a")
                await eventually(lambda: traced.has("HandleSignal:note"), "the signal to be handled",
                                 details=traced.tree)
                assert await handle.query("seen") == ["a"]
                assert await handle.execute_update("bump", 5) == 5
                with pytest.raises(duro.ApplicationError, match="no negative bumps"):
                    await handle.execute_update("bump", -1)
                await client.execute_workflow(pinger, "otel-2", id="otel-2-pinger", task_queue="otel")
                await handle.signal("note", "done")
                assert await handle.result(timeout=20) == ["a", "ping", "done"]
    await eventually(lambda: traced.has("CompleteWorkflow:chat", "test"), "the run's last span", details=traced.tree)
    assert traced.tree() == """\
test
  StartWorkflow:chat
    RunWorkflow:chat
      CompleteWorkflow:chat
  SignalWorkflow:note
    HandleSignal:note
  QueryWorkflow:seen
    HandleQuery:seen
  UpdateWorkflow:bump
    ValidateUpdate:bump
    HandleUpdate:bump
  UpdateWorkflow:bump
    ValidateUpdate:bump
  StartWorkflow:pinger
    RunWorkflow:pinger
      SignalExternalWorkflow:note
        HandleSignal:note
      CompleteWorkflow:pinger
  SignalWorkflow:note
    HandleSignal:note"""
    run = traced.one("RunWorkflow:chat")
    external = traced.one("SignalExternalWorkflow:note")
    assert dict(external.attributes or {}) == {"duro.workflow.id": "otel-2"}  # the run it signals
    for name in ("HandleSignal:note", "HandleQuery:seen", "ValidateUpdate:bump", "HandleUpdate:bump"):
        for span in traced.named(name):
            assert span.kind == SpanKind.SERVER
            assert [link.context.span_id for link in span.links] == [sid(run)], name  # and a link to the run
            assert (span.attributes or {})["duro.workflow.id"] == "otel-2"
    update = traced.one("HandleUpdate:bump")
    assert str((update.attributes or {})["duro.update.id"])
    failed = {s.name: s for s in traced.spans() if s.status.status_code == StatusCode.ERROR}
    assert sorted(failed) == ["UpdateWorkflow:bump", "ValidateUpdate:bump"]
    rejected_client, rejected = failed["UpdateWorkflow:bump"], failed["ValidateUpdate:bump"]
    assert parent_of(rejected) == sid(rejected_client)
    for span in (rejected_client, rejected):
        assert (span.attributes or {})["error.type"] == "ApplicationError"
        assert [e.name for e in span.events] == ["exception"]


async def test_a_rebuilt_run_emits_no_span_twice_and_hangs_new_ones_on_the_same_run_span(
        store: str, traced: Traced) -> None:
    tracing = TracingInterceptor(traced.tracer)
    async with duro.Client.connect(store, interceptors=[tracing]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES) as first:
            handle = await client.start_workflow(two_steps, id="otel-4", task_queue="otel")
            await eventually(lambda: _waits_for_signal(client, "otel-4"), "the run to wait for its signal")
        assert first.stats["replays"] == 0
        before = traced.tree()
        # A new worker has an empty cache: the signal's task rebuilds the run from its history,
        # re-running the code that started the run and the first activity.
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES) as second:
            await handle.signal("go")
            assert await handle.result(timeout=20) == ["A", "B"]
            assert second.stats["replays"] == 1
    await eventually(lambda: traced.has("CompleteWorkflow:two_steps"), "the run's last span", details=traced.tree)
    assert before == """\
StartWorkflow:two_steps
  RunWorkflow:two_steps
    StartActivity:shout
      RunActivity:shout"""
    assert traced.tree() == """\
StartWorkflow:two_steps
  RunWorkflow:two_steps
    StartActivity:shout
      RunActivity:shout
    StartActivity:shout
      RunActivity:shout
    CompleteWorkflow:two_steps
SignalWorkflow:go
  HandleSignal:go"""
    names = [s.name for s in traced.spans()]
    assert names.count("RunWorkflow:two_steps") == 1 and names.count("StartActivity:shout") == 2
    assert len(names) == 9
    # The rebuilt run's spans name the RunWorkflow span the first worker made as their parent.
    run = traced.one("RunWorkflow:two_steps")
    assert [parent_of(s) for s in traced.named("StartActivity:shout")] == [sid(run), sid(run)]
    assert len({tid(s) for s in traced.spans() if not s.name.endswith(":go")}) == 1


async def _waits_for_signal(client: duro.Client, wid: str) -> bool:
    hist = await client.get_handle(wid).fetch_history()
    types = [e.event_type for e in hist]
    return "ActivityTaskCompleted" in types and types[-1] == "WorkflowTaskCompleted"


async def test_a_failed_attempt_records_its_exception_and_an_error_status(store: str, traced: Traced) -> None:
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(traced.tracer)]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES):
            assert await client.execute_workflow(retrying, id="otel-5", task_queue="otel") == 2
            with pytest.raises(duro.WorkflowFailedError):
                await client.execute_workflow(doomed, id="otel-5b", task_queue="otel")
    await eventually(lambda: traced.has("CompleteWorkflow:retrying", "CompleteWorkflow:doomed"), "the runs' ends",
                     details=traced.tree)
    first, second = sorted(traced.named("RunActivity:flaky"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["duro.activity.attempt"] for s in (first, second)] == [1, 2]
    assert parent_of(first) == parent_of(second) == sid(traced.one("StartActivity:flaky"))
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "RuntimeError: first attempts fail"
    [event] = first.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"
    assert dict(event.attributes or {})["exception.message"] == "first attempts fail"
    assert second.status.status_code == StatusCode.UNSET and not second.events

    assert traced.one("RunActivity:broken").status.status_code == StatusCode.ERROR
    done = traced.one("CompleteWorkflow:doomed")
    assert (done.attributes or {})["duro.workflow.status"] == "failed"
    assert done.status.status_code == StatusCode.ERROR
    assert (done.attributes or {})["error.type"] == "ActivityError"
    assert parent_of(done) == sid(traced.one("RunWorkflow:doomed"))


async def test_a_canceled_run_and_a_run_continued_as_new_say_how_they_ended(store: str, traced: Traced) -> None:
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(traced.tracer)]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES):
            assert await client.execute_workflow(again, 0, id="otel-7", task_queue="otel") == 1
            handle = await client.start_workflow(chat, id="otel-7b", task_queue="otel")
            await eventually(lambda: traced.has("RunWorkflow:chat"), "the run to start")
            await handle.cancel()
            with pytest.raises(duro.WorkflowFailedError):
                await handle.result(timeout=20)
    await eventually(lambda: traced.has("CompleteWorkflow:chat") and len(traced.named("CompleteWorkflow:again")) == 2,
                     "the runs' ends", details=traced.tree)
    ends = sorted(traced.named("CompleteWorkflow:again"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["duro.workflow.status"] for s in ends] == ["continued_as_new", "completed"]
    canceled = traced.one("CompleteWorkflow:chat")
    assert (canceled.attributes or {})["duro.workflow.status"] == "canceled"
    assert all(s.status.status_code == StatusCode.UNSET for s in [*ends, canceled])
    # The next run keeps the start's headers, so it goes on in the same trace, under the start.
    assert traced.tree() == """\
StartWorkflow:again
  RunWorkflow:again
    CompleteWorkflow:again
  RunWorkflow:again
    CompleteWorkflow:again
StartWorkflow:chat
  RunWorkflow:chat
    CompleteWorkflow:chat"""


class Mine(di.Interceptor):
    """Adds a header of its own to starts, next to whatever tracing adds."""

    def intercept_client(self, next: di.ClientOutboundInterceptor) -> di.ClientOutboundInterceptor:
        class Out(di.ClientOutboundInterceptor):
            async def start_workflow(self, input: di.StartWorkflowInput) -> duro.WorkflowHandle:
                input.headers["x-mine"] = "1"
                return await self.next.start_workflow(input)

        return Out(next)


async def test_without_a_tracer_provider_nothing_is_traced_and_nothing_breaks(store: str) -> None:
    # No provider configured (the tests never set the global one): the API's no-op tracer.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(), Mine()]) as client:
        async with duro.Worker(client, task_queue="otel", workflows=WORKFLOWS, activities=ACTIVITIES):
            loud, quiet, child = await client.execute_workflow(family, "Hi", id="otel-6", task_queue="otel")
            assert (loud, quiet, child) == ("HI", "hi in 0000000000000000 for None", 42)
            handle = await client.start_workflow(chat, id="otel-6b", task_queue="otel")
            await handle.signal("note", "a")
            await eventually(lambda: _query_is(handle, ["a"]), "the signal to be handled")
            assert await handle.execute_update("bump", 2) == 2
            await handle.signal("note", "done")
            assert await handle.result(timeout=20) == ["a", "done"]
        events = await client.get_handle("otel-6").fetch_history()
        headed = {e.event_type: e.headers for e in events if e.headers}
        assert headed == {"WorkflowExecutionStarted": {"x-mine": "1"}}  # no trace headers at all


async def _query_is(handle: duro.WorkflowHandle, expected: Any) -> bool:
    try:
        return bool(await handle.query("seen") == expected)
    except duro.DuroError:  # no workflow task has run yet: no handler is installed
        return False


# ---------------------------------------------------------------------------------------------- processes


class JsonLines(SpanExporter):
    """Writes each finished span as a JSON line (opened once: workflow spans end under the I/O guard)."""

    def __init__(self, path: str) -> None:
        self.out = open(path, "a", buffering=1)  # closed by shutdown()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            s = S.of(span)
            self.out.write(json.dumps([s.name, s.trace_id, s.span_id, s.parent_id, s.start]) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.out.close()


def read_spans(path: Path) -> list[S]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(S(*json.loads(line)))
        except ValueError:  # a line being written
            pass
    return out


async def worker_main(url: str, task_queue: str, out: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(out)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with duro.Client.connect(url, interceptors=[TracingInterceptor(provider.get_tracer("w"))]) as client:
            async with duro.Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
                print("ready", flush=True)
                await stop.wait()
    finally:
        provider.shutdown()


@pytest.fixture
def traced_worker(store: str, tmp_path: Path) -> Iterator[Path]:
    """A worker of queue "remote" in another process, with its own tracer; the path its spans go to."""
    out = tmp_path / "worker-spans.jsonl"
    with ready_process("-m", "tests.contrib.test_otel_tracing", store, "remote", str(out)):
        yield out


async def test_the_trace_context_crosses_to_a_worker_in_another_process(
        store: str, traced: Traced, traced_worker: Path) -> None:
    async with duro.Client.connect(store, interceptors=[TracingInterceptor(traced.tracer)]) as client:
        handle = await client.start_workflow(family, "Hi", id="otel-3", task_queue="remote")
        assert (await handle.result(timeout=20))[2] == 42
    await eventually(lambda: "CompleteWorkflow:family" in {s.name for s in read_spans(traced_worker)},
                     "the worker's spans", details=lambda: traced_worker.read_text())
    mine = [S.of(s) for s in traced.spans()]
    theirs = read_spans(traced_worker)
    assert [s.name for s in mine] == ["StartWorkflow:family"]
    # The two processes' spans make one tree: the client's StartWorkflow span is the parent of the
    # worker's RunWorkflow span.
    assert render(mine + theirs) == FAMILY_TREE
    [run] = [s for s in theirs if s.name == "RunWorkflow:family"]
    assert (run.parent_id, run.trace_id) == (mine[0].span_id, mine[0].trace_id)
    assert {s.trace_id for s in theirs} == {mine[0].trace_id}


if __name__ == "__main__":
    asyncio.run(worker_main(*sys.argv[1:4]))
