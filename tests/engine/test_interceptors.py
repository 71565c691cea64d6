"""Interceptors: client, workflow and activity chains, and headers recorded in the history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import duro
from duro import interceptor as di
from tests.waiting import eventually


@duro.activity
async def shout(actx: duro.ActivityContext, text: str) -> str:
    return f"{text.upper()} via {actx.info.headers.get('trace', '-')}"


@duro.activity
def whisper(actx: duro.ActivityContext, text: str) -> str:  # sync: runs on the worker's thread pool
    return f"{text.lower()} via {actx.info.headers.get('trace', '-')}"


@duro.workflow
async def kid(ctx: duro.WorkflowContext, n: int) -> str:
    return f"kid {n} trace={ctx.info.headers.get('trace', '-')}"


@duro.workflow
async def parent(ctx: duro.WorkflowContext, text: str) -> dict[str, Any]:
    seen: list[Any] = []
    ctx.set_signal_handler("note", seen.append)
    ctx.set_query_handler("seen", lambda: list(seen))

    def bump(x: int) -> int:
        return x + 1

    ctx.set_update_handler("bump", bump)
    loud = await ctx.execute_activity(shout, text, start_to_close_timeout=10)
    quiet = await ctx.execute_activity(whisper, text, start_to_close_timeout=10)
    child = await ctx.execute_child_workflow(kid, 7)
    await ctx.wait_condition(lambda: "done" in seen)
    return {"start": dict(ctx.info.headers), "loud": loud, "quiet": quiet, "child": child, "seen": seen}


class Recorder(di.Interceptor):
    """Records every call it sees, and adds a "trace" header to what goes out."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.calls: list[tuple[str, ...]] = []
        self.replayed: list[tuple[str, ...]] = []

    def intercept_client(self, next: di.ClientOutboundInterceptor) -> di.ClientOutboundInterceptor:
        rec = self

        class Out(di.ClientOutboundInterceptor):
            async def start_workflow(self, input: di.StartWorkflowInput) -> duro.WorkflowHandle:
                rec.calls.append(("start", input.workflow, input.id))
                input.headers.setdefault("trace", rec.tag)
                return await self.next.start_workflow(input)

            async def signal_workflow(self, input: di.SignalWorkflowInput) -> None:
                rec.calls.append(("signal", input.signal, input.handle.id))
                input.headers["trace"] = f"{rec.tag}-signal"
                await self.next.signal_workflow(input)

            async def query_workflow(self, input: di.QueryWorkflowInput) -> Any:
                rec.calls.append(("query", input.query))
                input.headers["trace"] = f"{rec.tag}-query"
                return await self.next.query_workflow(input)

            async def update_workflow(self, input: di.UpdateWorkflowInput) -> Any:
                rec.calls.append(("update", input.update))
                input.headers["trace"] = f"{rec.tag}-update"
                return await self.next.update_workflow(input)

            async def cancel_workflow(self, input: di.CancelWorkflowInput) -> None:
                rec.calls.append(("cancel", input.handle.id))
                await self.next.cancel_workflow(input)

            async def terminate_workflow(self, input: di.TerminateWorkflowInput) -> None:
                rec.calls.append(("terminate", input.reason))
                await self.next.terminate_workflow(input)

        return Out(next)

    def intercept_activity(self, next: di.ActivityInboundInterceptor) -> di.ActivityInboundInterceptor:
        rec = self

        class In(di.ActivityInboundInterceptor):
            async def execute_activity(self, input: di.ExecuteActivityInput) -> Any:
                rec.calls.append(("activity", input.ctx.info.activity_type, input.headers.get("trace", "-"),
                                  "async" if input.is_async else "sync"))
                return await self.next.execute_activity(input)

        return In(next)

    def intercept_workflow(self, next: di.WorkflowInboundInterceptor) -> di.WorkflowInboundInterceptor:
        rec = self

        class WOut(di.WorkflowOutboundInterceptor):
            def start_activity(self, input: di.StartActivityInput) -> asyncio.Future[Any]:
                input.headers["trace"] = self.ctx.info.headers.get("trace", "?") + "/act"
                return self.next.start_activity(input)

            def start_child_workflow(self, input: di.StartChildWorkflowInput) -> Any:
                input.headers["trace"] = self.ctx.info.headers.get("trace", "?") + "/child"
                return self.next.start_child_workflow(input)

        class WIn(di.WorkflowInboundInterceptor):
            def log(self, *what: str) -> None:
                (rec.replayed if self.ctx.is_replaying else rec.calls).append(what)

            def init(self, outbound: di.WorkflowOutboundInterceptor) -> None:
                super().init(WOut(outbound))

            async def execute_workflow(self, input: di.ExecuteWorkflowInput) -> Any:
                self.log("run", input.workflow_type, input.headers.get("trace", "-"))
                return await self.next.execute_workflow(input)

            def handle_signal(self, input: di.HandleSignalInput) -> None:
                self.log("wf-signal", input.signal, input.headers.get("trace", "-"))
                self.next.handle_signal(input)

            def handle_query(self, input: di.HandleQueryInput) -> Any:
                self.log("wf-query", input.query, input.headers.get("trace", "-"))
                return self.next.handle_query(input)

            def handle_update_validator(self, input: di.HandleUpdateInput) -> None:
                self.log("wf-validate", input.update, input.headers.get("trace", "-"))
                self.next.handle_update_validator(input)

            async def handle_update(self, input: di.HandleUpdateInput) -> Any:
                self.log("wf-update", input.update, input.headers.get("trace", "-"))
                return await self.next.handle_update(input)

        return WIn(next)


async def test_headers_travel_from_the_client_through_workflows_activities_and_children(store: str) -> None:
    rec = Recorder("t1")
    async with duro.Client.connect(store, interceptors=[rec]) as client:
        async with duro.Worker(client, task_queue="icpt", workflows=[parent, kid], activities=[shout, whisper]):
            handle = await client.start_workflow(parent, "Hi", id="icpt-1", task_queue="icpt")
            await handle.signal("note", "a")
            await eventually(lambda: any(c[0] == "wf-signal" for c in rec.calls), "the signal to reach the workflow")
            assert await handle.query("seen") == ["a"]
            assert await handle.execute_update("bump", 41) == 42
            await handle.signal("note", "done")
            result = await handle.result()
    assert result == {"start": {"trace": "t1"}, "loud": "HI via t1/act", "quiet": "hi via t1/act",
                      "child": "kid 7 trace=t1/child", "seen": ["a", "done"]}
    calls = rec.calls
    assert calls[0] == ("start", "parent", "icpt-1")
    for expected in [("run", "parent", "t1"), ("activity", "shout", "t1/act", "async"),
                     ("activity", "whisper", "t1/act", "sync"), ("run", "kid", "t1/child"),
                     ("signal", "note", "icpt-1"), ("wf-signal", "note", "t1-signal"), ("query", "seen"),
                     ("wf-query", "seen", "t1-query"), ("update", "bump"), ("wf-validate", "bump", "t1-update"),
                     ("wf-update", "bump", "t1-update")]:
        assert expected in calls, expected

    # Recorded in the history: the start, each signal, each activity, the child's start and the update.
    async with duro.Client.connect(store) as plain:
        hist = await plain.get_handle("icpt-1").fetch_history()
        by_type: dict[str, list[dict[str, str]]] = {}
        for ev in hist:
            by_type.setdefault(ev.event_type, []).append(ev.headers)
        assert by_type["WorkflowExecutionStarted"] == [{"trace": "t1"}]
        assert by_type["WorkflowExecutionSignaled"] == [{"trace": "t1-signal"}] * 2
        assert by_type["ActivityTaskScheduled"] == [{"trace": "t1/act"}] * 2
        assert by_type["StartChildWorkflowExecutionInitiated"] == [{"trace": "t1/child"}]
        child_hist = await plain.get_handle("icpt-1/child-3").fetch_history()
        assert child_hist[0].headers == {"trace": "t1/child"}
        # The JSON export keeps them (flags included) and reads back to the same events.
        again = duro.History.from_json(hist.to_json())
        assert [e.headers for e in again] == [e.headers for e in hist]
        assert again.core_events == hist.core_events


async def test_a_replay_sees_the_recorded_headers_and_interceptors_know_it_is_replaying(store: str) -> None:
    rec = Recorder("t2")
    async with duro.Client.connect(store, interceptors=[rec]) as client:
        async with duro.Worker(client, task_queue="icpt", workflows=[parent, kid], activities=[shout, whisper]):
            handle = await client.start_workflow(parent, "x", id="icpt-2", task_queue="icpt")
            await handle.signal("note", "a")
            await eventually(lambda: ("wf-signal", "note", "t2-signal") in rec.calls and
                             ("activity", "whisper", "t2/act", "sync") in rec.calls, "the workflow to get going")
        before = len(rec.replayed)  # (the first worker may have replayed too, after a conflict)
        # A fresh worker rebuilds the run from its history: the workflow links see the recorded
        # headers again, while ctx.is_replaying says so.
        async with duro.Worker(client, task_queue="icpt", workflows=[parent, kid], activities=[shout, whisper]):
            await handle.signal("note", "done")
            assert (await handle.result())["seen"] == ["a", "done"]
    assert ("run", "parent", "t2") in rec.replayed[before:]
    assert ("wf-signal", "note", "t2-signal") in rec.replayed[before:]
    assert rec.calls.count(("run", "parent", "t2")) == 1


async def test_interceptors_added_later_replay_runs_recorded_without_them(store: str) -> None:
    async with duro.Client.connect(store) as plain:
        async with duro.Worker(plain, task_queue="icpt", workflows=[parent, kid], activities=[shout, whisper]):
            handle = await plain.start_workflow(parent, "Old", id="icpt-3", task_queue="icpt")
            await handle.signal("note", "a")
            await eventually(lambda: _count(plain, "icpt-3", "ChildWorkflowExecutionCompleted"),
                             "the child to complete")
    rec = Recorder("t3")
    async with duro.Client.connect(store, interceptors=[rec]) as client:
        async with duro.Worker(client, task_queue="icpt", workflows=[parent, kid], activities=[shout, whisper]):
            await client.get_handle("icpt-3").signal("note", "done")
            result = await client.get_handle("icpt-3").result()
    assert result["start"] == {} and result["loud"] == "OLD via -" and result["seen"] == ["a", "done"]
    assert ("run", "parent", "-") in rec.replayed


async def _count(client: duro.Client, wid: str, event_type: str) -> bool:
    hist = await client.get_handle(wid).fetch_history()
    return any(e.event_type == event_type for e in hist)


class Order(di.Interceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def intercept_client(self, next: di.ClientOutboundInterceptor) -> di.ClientOutboundInterceptor:
        me = self

        class Out(di.ClientOutboundInterceptor):
            async def start_workflow(self, input: di.StartWorkflowInput) -> duro.WorkflowHandle:
                me.log.append(f"{me.name} in")
                try:
                    return await self.next.start_workflow(input)
                finally:
                    me.log.append(f"{me.name} out")

            async def cancel_workflow(self, input: di.CancelWorkflowInput) -> None:
                me.log.append(f"{me.name} cancel")
                await self.next.cancel_workflow(input)

            async def terminate_workflow(self, input: di.TerminateWorkflowInput) -> None:
                me.log.append(f"{me.name} terminate {input.reason}")
                await self.next.terminate_workflow(input)

        return Out(next)


async def test_the_first_interceptor_is_the_outermost_and_cancel_terminate_pass_through(store: str) -> None:
    log: list[str] = []
    async with duro.Client.connect(store, interceptors=[Order("a", log), Order("b", log)]) as client:
        h1 = await client.start_workflow("nobody-runs-this", id="o-1", task_queue="none")
        assert log == ["a in", "b in", "b out", "a out"]
        await h1.cancel()
        await h1.terminate("enough")
        assert log[4:] == ["a cancel", "b cancel", "a terminate enough", "b terminate enough"]
        assert (await h1.describe()).status == "terminated"


class BadHeaders(di.Interceptor):
    def __init__(self, value: Any) -> None:
        self.value = value

    def intercept_client(self, next: di.ClientOutboundInterceptor) -> di.ClientOutboundInterceptor:
        value = self.value

        class Out(di.ClientOutboundInterceptor):
            async def start_workflow(self, input: di.StartWorkflowInput) -> duro.WorkflowHandle:
                input.headers["bad"] = value
                return await self.next.start_workflow(input)

        return Out(next)


async def test_bad_interceptors_and_headers_are_refused_and_store_nothing(store: str) -> None:
    with pytest.raises(TypeError, match=r"interceptors\[0\] must be a duro\.interceptor\.Interceptor"):
        duro.Client.connect(store, interceptors=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="interceptors must be a list"):
        duro.Client.connect(store, interceptors=Recorder("x"))  # type: ignore[arg-type]
    async with duro.Client.connect(store, interceptors=[BadHeaders(5)]) as client:
        with pytest.raises(TypeError, match="header 'bad' must have a str value, not int"):
            await client.start_workflow("wf", id="bad-1", task_queue="q")
        with pytest.raises(TypeError, match=r"interceptors\[0\]"):
            duro.Worker(client, task_queue="q", workflows=[kid], interceptors=["no"])  # type: ignore[list-item]
    async with duro.Client.connect(store, interceptors=[BadHeaders("x" * 70_000)]) as client:
        with pytest.raises(ValueError, match="at most 65536"):
            await client.start_workflow("wf", id="bad-2", task_queue="q")
        assert await client.count_workflows() == 0
