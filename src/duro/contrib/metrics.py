"""duro's metrics through the OpenTelemetry metrics API (extra ``otel``).

    from duro.contrib.metrics import enable_metrics

    handle = enable_metrics()                      # the global MeterProvider (set up by your SDK)
    handle = enable_metrics(meter_provider=mp)     # or an explicit one
    ...
    handle.disable()

The instruments and what each counts are listed in ``docs/metrics.md``. Names follow the
OpenTelemetry semantic conventions' style (``duro.workflow.task.execution.duration``, unit ``s``);
an OpenTelemetry Prometheus exporter turns them into ``duro_workflow_task_execution_duration_seconds``,
the same names ``duro.contrib.prometheus`` serves.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
except ImportError as e:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(f"duro.contrib.metrics needs the OpenTelemetry API: pip install 'duro[otel]' ({e})") from e

from duro import _metrics

__all__ = ["DURATION_BUCKETS_S", "OPS_BUCKETS", "MetricsHandle", "enable_metrics"]

#: Histogram boundaries for durations, in seconds: duro's steps take 0.1 ms to a few ms, waits
#: for a slot or a retry up to minutes. Only a hint (an SDK view can override it).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Histogram boundaries for operations per group commit (a batch holds at most 4,096 on LMDB).
OPS_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

_Attrs = dict[str, str]


def _histogram(meter: Meter, name: str, unit: str, description: str, buckets: Sequence[float]) -> Histogram:
    try:
        return meter.create_histogram(name, unit=unit, description=description,
                                      explicit_bucket_boundaries_advisory=buckets)
    except TypeError:  # opentelemetry-api before 1.23 takes no bucket advice: the SDK's (or a view's) apply
        return meter.create_histogram(name, unit=unit, description=description)


class _Tally:
    """Monotonic counts per attribute set, kept here and reported by an observable counter.

    A synchronous counter's ``add`` costs about 6 µs in the Python SDK (it cleans and hashes the
    attributes on every call); counting here costs a dict update under a lock, and the SDK reads
    the totals once per collection. The closes are counted on the LMDB writer thread, between
    one group commit and the next, where those microseconds would delay every following commit.
    The exported data is the same: a cumulative, monotonic sum per attribute set.
    """

    __slots__ = ("_attrs", "_counts", "_lock", "_names")

    def __init__(self, *attribute_names: str) -> None:
        self._names = attribute_names
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}
        self._attrs: dict[tuple[str, ...], _Attrs] = {}

    def add(self, *values: str) -> None:
        with self._lock:
            n = self._counts.get(values)
            if n is None:
                self._attrs[values] = dict(zip(self._names, values, strict=True))
                n = 0
            self._counts[values] = n + 1

    def callback(self) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """The counter's callback: every total so far (they stay reported, frozen, after ``disable()``)."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                return [Observation(n, self._attrs[k]) for k, n in self._counts.items()]

        return observe


class _OtelRecorder(_metrics.Recorder):
    """Records into the instruments of one meter.

    Attribute dicts are built once per type name and reused: the SDK only reads them, and a dict
    per measurement would be a good part of what a hook costs. Counters are tallied here and
    observed (see ``_Tally``); histograms have no observable form, so they are recorded as they come.
    """

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.users = 0  # handles that enabled it and have not disabled it yet
        self._lock = threading.Lock()
        wf = "{workflow}"

        def counter(name: str, unit: str, description: str, *attribute_names: str) -> _Tally:
            tally = _Tally(*attribute_names)
            meter.create_observable_counter(name, callbacks=[tally.callback()], unit=unit, description=description)
            return tally

        wf_type = "duro.workflow.type"
        self._started = counter("duro.workflow.started", wf, "Runs started by a client of this process", wf_type)
        self._closed = {
            status: counter(f"duro.workflow.{status}", wf,
                            f"Runs that closed as {status}, committed by this process's store", wf_type)
            for status in _metrics.CLOSE_STATUSES}
        self._wft_s2s = _histogram(
            meter, "duro.workflow.task.schedule_to_start.duration", "s",
            "From a workflow task reaching this process's worker (leased to it) to its start", DURATION_BUCKETS_S)
        self._wft_exec = _histogram(
            meter, "duro.workflow.task.execution.duration", "s",
            "From a workflow task's start to its completion being durable", DURATION_BUCKETS_S)
        self._act_s2s = _histogram(
            meter, "duro.activity.schedule_to_start.duration", "s",
            "From an activity being scheduled to its first attempt starting", DURATION_BUCKETS_S)
        self._act_exec = _histogram(
            meter, "duro.activity.execution.duration", "s",
            "How long an activity attempt's code ran", DURATION_BUCKETS_S)
        act_err = ("duro.activity.type", "error.type")
        self._act_failed = counter("duro.activity.failed", "{activity}",
                                   "Activities whose last attempt failed with no retry left", *act_err)
        self._act_retried = counter("duro.activity.retried", "{attempt}",
                                    "Failed activity attempts after which another attempt was scheduled", *act_err)
        queue = "duro.task_queue"
        self._hits = counter("duro.worker.sticky_cache.hits", "{task}",
                             "Workflow tasks that resumed a live instance from the worker's cache", queue)
        self._misses = counter("duro.worker.sticky_cache.misses", "{task}",
                               "Workflow tasks that rebuilt their instance by replaying its history", queue)
        self._evictions = counter("duro.worker.sticky_cache.evictions", "{instance}",
                                  "Live instances dropped from the cache before their run closed",
                                  queue, "duro.eviction.reason")
        self._replay = _histogram(
            meter, "duro.worker.replay.duration", "s",
            "Replaying a run's history to rebuild its instance", DURATION_BUCKETS_S)
        self._commit_s = _histogram(
            meter, "duro.store.commit.duration", "s",
            "One group commit: running its operations, the commit and the flush to disk", DURATION_BUCKETS_S)
        self._commit_ops = _histogram(
            meter, "duro.store.commit.size", "{operation}", "Operations in one group commit", OPS_BUCKETS)
        meter.create_observable_gauge(
            "duro.worker.task_queue.backlog", callbacks=[self._observe_backlog], unit="{task}",
            description="Tasks leased to this process's workers, waiting for a free slot")
        meter.create_observable_gauge(
            "duro.worker.sticky_cache.size", callbacks=[self._observe_cache], unit="{instance}",
            description="Live workflow instances in this process's workers' caches")
        self._wf_attrs: dict[str, _Attrs] = {}
        self._act_attrs: dict[str, _Attrs] = {}
        self._store_attrs: dict[str, _Attrs] = {}

    # -------------------------------------------------------------- attribute dicts, built once each

    def _wf(self, workflow_type: str) -> _Attrs:
        a = self._wf_attrs.get(workflow_type)
        if a is None:
            a = self._wf_attrs[workflow_type] = {"duro.workflow.type": workflow_type}
        return a

    def _act(self, activity_type: str) -> _Attrs:
        a = self._act_attrs.get(activity_type)
        if a is None:
            a = self._act_attrs[activity_type] = {"duro.activity.type": activity_type}
        return a

    # -------------------------------------------------------------- the hooks

    def workflow_started(self, workflow_type: str) -> None:
        self._started.add(workflow_type)

    def workflow_closed(self, workflow_type: str, status: str) -> None:
        tally = self._closed.get(status)
        if tally is not None:
            tally.add(workflow_type)

    def workflow_task_scheduled_to_start(self, workflow_type: str, seconds: float) -> None:
        self._wft_s2s.record(seconds, self._wf(workflow_type))

    def workflow_task_executed(self, workflow_type: str, seconds: float) -> None:
        self._wft_exec.record(seconds, self._wf(workflow_type))

    def activity_scheduled_to_start(self, activity_type: str, seconds: float) -> None:
        self._act_s2s.record(seconds, self._act(activity_type))

    def activity_executed(self, activity_type: str, seconds: float) -> None:
        self._act_exec.record(seconds, self._act(activity_type))

    def activity_failed(self, activity_type: str, error_type: str, retried: bool) -> None:
        (self._act_retried if retried else self._act_failed).add(activity_type, error_type)

    def sticky_cache_hit(self, task_queue: str) -> None:
        self._hits.add(task_queue)

    def sticky_cache_miss(self, task_queue: str) -> None:
        self._misses.add(task_queue)

    def sticky_cache_evicted(self, task_queue: str, reason: str) -> None:
        self._evictions.add(task_queue, reason)

    def replayed(self, workflow_type: str, seconds: float) -> None:
        self._replay.record(seconds, self._wf(workflow_type))

    def store_committed(self, store_kind: str, ops: int, seconds: float) -> None:
        a = self._store_attrs.get(store_kind)
        if a is None:
            a = self._store_attrs[store_kind] = {"duro.store.kind": store_kind}
        self._commit_s.record(seconds, a)
        self._commit_ops.record(ops, a)

    # -------------------------------------------------------------- gauges (called by the SDK's reader)

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.users:  # disabled: the instrument stays in the meter, but reports nothing
            return []
        out = []
        for g in _metrics.worker_gauges():
            out.append(Observation(g.workflow_backlog, {"duro.task_queue": g.task_queue, "duro.task.kind": "workflow"}))
            out.append(Observation(g.activity_backlog, {"duro.task_queue": g.task_queue, "duro.task.kind": "activity"}))
        return out

    def _observe_cache(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.users:
            return []
        return [Observation(g.cached_workflows, {"duro.task_queue": g.task_queue}) for g in _metrics.worker_gauges()]


# A meter hands back its existing instrument when one is created again under the same name (an
# observable instrument keeps its first callbacks), so one recorder per provider serves every
# handle on it. Keyed by the provider: the API's proxy provider makes a new proxy meter per call.
_recorders: weakref.WeakKeyDictionary[MeterProvider, _OtelRecorder] = weakref.WeakKeyDictionary()
_recorders_lock = threading.Lock()


class MetricsHandle:
    """What ``enable_metrics`` returns: ``disable()`` stops this registration's recording."""

    def __init__(self, recorder: _OtelRecorder, meter: Meter) -> None:
        self._recorder = recorder
        #: The meter ("duro", duro's version) the instruments live in.
        self.meter = meter
        self._enabled = True

    @property
    def enabled(self) -> bool:
        """Whether this handle still records (``disable()`` was not called)."""
        return self._enabled

    def disable(self) -> None:
        """Stop recording into this meter (idempotent). Other backends enabled stay on."""
        rec = self._recorder
        with rec._lock:
            if not self._enabled:
                return
            self._enabled = False
            rec.users -= 1
            if rec.users == 0:
                _metrics.uninstall(rec)

    def __enter__(self) -> MetricsHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disable()


def enable_metrics(meter_provider: MeterProvider | None = None) -> MetricsHandle:
    """Record duro's metrics with OpenTelemetry, from now until ``disable()``.

    Args:
        meter_provider: where the instruments are created (meter ``"duro"``, duro's version);
            None: the global provider (``opentelemetry.metrics.set_meter_provider``; until one
            is set, the API's proxy, which forwards to it once it is). Enabling again for the
            same provider shares the first registration (the metrics are not counted twice);
            enable once before ``set_meter_provider`` or after it, not both.

    Returns:
        A handle whose ``disable()`` stops the recording (also usable as a context manager).
    """
    from duro import __version__

    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    with _recorders_lock:
        rec = _recorders.get(provider)
        if rec is None:
            rec = _recorders[provider] = _OtelRecorder(provider.get_meter("duro", __version__))
    with rec._lock:
        rec.users += 1
        if rec.users == 1:
            _metrics.install(rec)
    return MetricsHandle(rec, rec.meter)
