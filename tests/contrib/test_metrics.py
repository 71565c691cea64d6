"""Metrics: the OpenTelemetry and Prometheus backends see what the engine does, on every store.

Counts are asserted exactly; durations only as present and positive (never against a bound).
"""

from __future__ import annotations

import asyncio
import inspect
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import duro
from duro import _metrics
from tests.waiting import eventually

pytest.importorskip("opentelemetry.sdk.metrics")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from opentelemetry.metrics import Meter  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from duro.contrib import metrics as otel_backend  # noqa: E402
from duro.contrib import prometheus as prom_backend  # noqa: E402

Q = "m"
FAST_RETRY = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=3)


@duro.activity
async def add_one(ctx: duro.ActivityContext, x: int) -> int:
    return x + 1


@duro.activity
async def flaky(ctx: duro.ActivityContext) -> str:
    if ctx.info.attempt == 1:
        raise duro.ApplicationError("first attempt fails", type="Flaky")
    return "ok"


@duro.activity
async def broken(ctx: duro.ActivityContext) -> None:
    raise duro.ApplicationError("never works", type="Broken", non_retryable=True)


@duro.workflow
async def m_ok(ctx: duro.WorkflowContext, x: int) -> int:
    return int(await ctx.execute_activity(add_one, x, start_to_close_timeout=30))


@duro.workflow
async def m_fail(ctx: duro.WorkflowContext) -> None:
    await ctx.execute_activity(broken, start_to_close_timeout=30)


@duro.workflow
async def m_retry(ctx: duro.WorkflowContext) -> str:
    return str(await ctx.execute_activity(flaky, start_to_close_timeout=30, retry_policy=FAST_RETRY))


@duro.workflow
async def m_again(ctx: duro.WorkflowContext, n: int) -> int:
    if n > 0:
        ctx.continue_as_new(n - 1)
    return n


@duro.workflow
async def m_wait(ctx: duro.WorkflowContext) -> int:
    await ctx.wait_signal("go")
    return int(await ctx.execute_activity(add_one, 41, start_to_close_timeout=30))


@duro.workflow
async def m_forever(ctx: duro.WorkflowContext) -> None:
    await ctx.wait_signal("never")


WORKFLOWS = [m_ok, m_fail, m_retry, m_again, m_wait, m_forever]
ACTIVITIES = [add_one, flaky, broken]


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, otel_backend.MetricsHandle]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handle = otel_backend.enable_metrics(meter_provider=provider)
    try:
        yield reader, handle
    finally:
        handle.disable()  # also when the test failed: later tests start with nothing enabled
        provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Each metric of the "duro" meter: its data points."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name == "duro":
                for m in sm.metrics:
                    out[m.name] = list(m.data.data_points)
    return out


def point(points: dict[str, list[Any]], name: str, **attrs: str) -> Any:
    """The one data point of ``name`` whose attributes are ``attrs`` (dots spelled as __), or None."""
    want = {k.replace("__", "."): v for k, v in attrs.items()}
    found = [p for p in points.get(name, ()) if dict(p.attributes) == want]
    assert len(found) <= 1
    return found[0] if found else None


def value(points: dict[str, list[Any]], name: str, **attrs: str) -> int:
    p = point(points, name, **attrs)
    return 0 if p is None else int(p.value)


async def wait_status(handle: duro.WorkflowHandle, status: str) -> None:
    async def check() -> bool:
        return (await handle.describe()).status == status

    await eventually(check, f"run {handle.id} to be {status}")


async def test_opentelemetry_metrics(store: str, otel: tuple[InMemoryMetricReader, otel_backend.MetricsHandle]) -> None:
    reader, handle = otel
    assert _metrics.ENABLED
    async with duro.Client.connect(store) as client:
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=ACTIVITIES):
            assert await client.execute_workflow(m_ok, 1, id="ok", task_queue=Q) == 2
            with pytest.raises(duro.WorkflowFailedError):
                await client.execute_workflow(m_fail, id="bad", task_queue=Q)
            assert await client.execute_workflow(m_retry, id="retry", task_queue=Q) == "ok"
            assert await client.execute_workflow(m_again, 1, id="again", task_queue=Q) == 0
            waiting = await client.start_workflow(m_wait, id="wait", task_queue=Q)
            terminated = await client.start_workflow(m_forever, id="term", task_queue=Q)
            canceled = await client.start_workflow(m_forever, id="cancel", task_queue=Q)
            timed_out = await client.start_workflow(m_forever, id="timeout", task_queue=Q, run_timeout=0.05)
            await terminated.terminate("test")
            await canceled.cancel()
            await wait_status(canceled, "canceled")
            await wait_status(timed_out, "timed_out")

            async def first_task_done() -> bool:
                return any(e.event_type == "WorkflowTaskCompleted" for e in await waiting.fetch_history())

            await eventually(first_task_done, "the waiting run's first workflow task")
        # A fresh worker holds no instance: the signal's task replays the history (a cache miss).
        # With room for one instance, caching the second parked run evicts the first.
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=ACTIVITIES,
                               max_cached_workflows=1):
            await waiting.signal("go")
            assert await asyncio.wait_for(waiting.result(), 20) == 42
            parked = [await client.start_workflow(m_forever, id=f"park{i}", task_queue=Q) for i in range(2)]
            live = collect(reader)  # while the worker runs: the gauges report its queue
            for h in parked:
                await h.terminate()
    points = collect(reader)

    wf = "duro.workflow.type"
    started = {t: value(points, "duro.workflow.started", duro__workflow__type=t) for t in
               ("m_ok", "m_fail", "m_retry", "m_again", "m_wait", "m_forever")}
    assert started == {"m_ok": 1, "m_fail": 1, "m_retry": 1, "m_again": 1, "m_wait": 1, "m_forever": 5}
    closed = {(status, p.attributes[wf]): int(p.value) for status in _metrics.CLOSE_STATUSES
              for p in points.get(f"duro.workflow.{status}", ())}
    assert closed == {("completed", "m_ok"): 1, ("completed", "m_retry"): 1, ("completed", "m_again"): 1,
                      ("completed", "m_wait"): 1, ("failed", "m_fail"): 1, ("continued_as_new", "m_again"): 1,
                      ("terminated", "m_forever"): 3, ("canceled", "m_forever"): 1, ("timed_out", "m_forever"): 1}

    # Activities: every attempt is timed; the first attempt's schedule-to-start only.
    for name, attempts, firsts in (("add_one", 2, 2), ("flaky", 2, 1), ("broken", 1, 1)):
        ex = point(points, "duro.activity.execution.duration", duro__activity__type=name)
        assert ex.count == attempts and ex.sum > 0, name
        s2s = point(points, "duro.activity.schedule_to_start.duration", duro__activity__type=name)
        assert s2s.count == firsts and s2s.sum >= 0, name
    if "explicit_bucket_boundaries_advisory" in inspect.signature(Meter.create_histogram).parameters:
        assert tuple(ex.explicit_bounds) == otel_backend.DURATION_BUCKETS_S  # the bucket advice was taken
    assert value(points, "duro.activity.retried", duro__activity__type="flaky", error__type="Flaky") == 1
    assert value(points, "duro.activity.failed", duro__activity__type="broken", error__type="Broken") == 1
    assert len(points["duro.activity.retried"]) == 1 and len(points["duro.activity.failed"]) == 1

    # Workflow tasks: every type ran at least one; the ordinary tasks (queued, not fused with an
    # activity's result or run at the start) also report how long they waited.
    for t in started:
        p = point(points, "duro.workflow.task.execution.duration", duro__workflow__type=t)
        assert p.count >= 1 and p.sum > 0, t
    p = point(points, "duro.workflow.task.schedule_to_start.duration", duro__workflow__type="m_wait")
    assert p.count >= 1 and p.sum >= 0

    # The sticky cache: the cancel found its run in the cache; the fresh worker replayed "wait".
    queue = {"duro__task_queue": Q}
    assert value(points, "duro.worker.sticky_cache.hits", **queue) >= 1
    misses = value(points, "duro.worker.sticky_cache.misses", **queue)
    assert misses >= 1
    replay = point(points, "duro.worker.replay.duration", duro__workflow__type="m_wait")
    assert replay.count == misses and replay.sum > 0
    assert value(points, "duro.worker.sticky_cache.evictions", duro__eviction__reason="cache_full", **queue) == 1

    # Group commits of this store kind.
    kind = "lmdb" if store.startswith("lmdb") else "postgresql"
    commit_s = point(points, "duro.store.commit.duration", duro__store__kind=kind)
    commit_ops = point(points, "duro.store.commit.size", duro__store__kind=kind)
    assert commit_s.count >= 1 and commit_s.sum > 0
    assert commit_ops.count == commit_s.count and commit_ops.sum >= commit_ops.count

    # Backlog and cache-size gauges, one point per queue (and kind) of a running worker.
    kinds = {p.attributes["duro.task.kind"]: p.value for p in live["duro.worker.task_queue.backlog"]
             if p.attributes["duro.task_queue"] == Q}
    assert set(kinds) == {"workflow", "activity"} and all(v >= 0 for v in kinds.values())
    assert value(live, "duro.worker.sticky_cache.size", **queue) == 1  # the second parked run
    assert "duro.worker.task_queue.backlog" not in points  # no worker runs now

    # disable(): nothing more is recorded, the engine runs on.
    handle.disable()
    assert not _metrics.ENABLED and not handle.enabled
    async with duro.Client.connect(store) as client:
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=ACTIVITIES):
            assert await client.execute_workflow(m_ok, 5, id="after", task_queue=Q) == 6
            after = collect(reader)
    assert value(after, "duro.workflow.started", duro__workflow__type="m_ok") == 1
    assert value(after, "duro.workflow.completed", duro__workflow__type="m_ok") == 1
    assert "duro.worker.task_queue.backlog" not in after  # a worker runs, but the gauges are off


def scrape(url: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """``url``'s metrics: family name -> {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in prometheus_parser.text_string_to_metric_families(text):
        samples = out.setdefault(fam.name, {})
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_prometheus_endpoint(store: str) -> None:
    handle = prom_backend.start_http_server(port=0)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel_handle = otel_backend.enable_metrics(meter_provider=provider)  # both on: every hook reaches both
    try:
        assert handle.port and handle.url == f"http://127.0.0.1:{handle.port}/metrics"
        async with duro.Client.connect(store) as client:
            async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=ACTIVITIES):
                assert await client.execute_workflow(m_ok, 1, id="ok", task_queue=Q) == 2
                assert await client.execute_workflow(m_retry, id="retry", task_queue=Q) == "ok"
                assert handle.url is not None
                got = await asyncio.to_thread(scrape, handle.url)
        wf = (("duro_workflow_type", "m_ok"),)
        assert got["duro_workflow_started"][("duro_workflow_started_total", wf)] == 1
        assert got["duro_workflow_completed"][("duro_workflow_completed_total", wf)] == 1
        completed = got["duro_workflow_completed"]
        assert completed[("duro_workflow_completed_total", (("duro_workflow_type", "m_retry"),))] == 1
        retried = (("duro_activity_type", "flaky"), ("error_type", "Flaky"))
        assert got["duro_activity_retried"][("duro_activity_retried_total", retried)] == 1
        act = got["duro_activity_execution_duration_seconds"]
        assert act[("duro_activity_execution_duration_seconds_count", (("duro_activity_type", "add_one"),))] == 1
        assert act[("duro_activity_execution_duration_seconds_count", (("duro_activity_type", "flaky"),))] == 2
        assert act[("duro_activity_execution_duration_seconds_sum", (("duro_activity_type", "flaky"),))] > 0
        kind = (("duro_store_kind", "lmdb" if store.startswith("lmdb") else "postgresql"),)
        assert got["duro_store_commit_duration_seconds"][("duro_store_commit_duration_seconds_count", kind)] >= 1
        assert got["duro_store_commit_size"][("duro_store_commit_size_sum", kind)] >= 1
        assert "duro_workflow_task_execution_duration_seconds" in got
        assert "duro_activity_schedule_to_start_duration_seconds" in got
        backlog = got["duro_worker_task_queue_backlog"]
        assert set(backlog) == {("duro_worker_task_queue_backlog", (("duro_task_kind", k), ("duro_task_queue", Q)))
                                for k in ("workflow", "activity")}
        assert "duro_worker_sticky_cache_size" in got
        # The fan-out: the OpenTelemetry backend counted the same starts.
        assert value(collect(reader), "duro.workflow.started", duro__workflow__type="m_ok") == 1

        url = handle.url
        handle.disable()
        assert handle.port is None and _metrics.ENABLED  # OpenTelemetry is still on
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(scrape, url)
        assert list(handle.registry.collect()) == []  # duro's metrics left the registry
    finally:
        handle.disable()
        otel_handle.disable()
        provider.shutdown()
    assert not _metrics.ENABLED


async def test_enable_prometheus_on_a_given_registry_twice_is_refused() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    first = prom_backend.enable_prometheus(registry)
    try:
        assert first.registry is registry
        with pytest.raises(ValueError):
            prom_backend.enable_prometheus(registry)
        assert _metrics.RECORDER is first._recorder  # the refused one installed nothing
    finally:
        first.disable()
    again = prom_backend.enable_prometheus(registry)  # disable() left the registry reusable
    again.disable()
    assert not _metrics.ENABLED


async def test_nothing_enabled_is_a_no_op(store: str) -> None:
    assert not _metrics.ENABLED and type(_metrics.RECORDER) is _metrics.Recorder
    async with duro.Client.connect(store) as client:
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=ACTIVITIES) as worker:
            assert await client.execute_workflow(m_ok, 1, id="ok", task_queue=Q) == 2
            assert await client.execute_workflow(m_retry, id="retry", task_queue=Q) == "ok"
            assert worker._wf_offered == {}  # nothing timed
            assert [g.task_queue for g in _metrics.worker_gauges()] == [Q]  # gauges read workers lazily
    assert _metrics.worker_gauges() == []
