"""duro's metrics on a Prometheus endpoint, for users without an OpenTelemetry collector (extra ``prometheus``).

    from duro.contrib.prometheus import start_http_server, enable_prometheus

    handle = start_http_server(port=9464)          # serves http://127.0.0.1:9464/metrics
    handle.disable()                               # stops recording and the server

    handle = enable_prometheus(prometheus_client.REGISTRY)   # you already serve /metrics

The metrics are those of ``duro.contrib.metrics`` under their Prometheus names: dots become
underscores, counters end in ``_total``, durations in ``_seconds`` (``docs/metrics.md`` has the
table).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(f"duro.contrib.prometheus needs prometheus-client: pip install 'duro[prometheus]' ({e})") from e

from duro import _metrics

__all__ = ["DURATION_BUCKETS_S", "OPS_BUCKETS", "PrometheusHandle", "enable_prometheus", "start_http_server"]

#: Histogram buckets for durations, in seconds: duro's steps take 0.1 ms to a few ms, waits for a
#: slot or a retry up to minutes.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    float("inf"))
#: Histogram buckets for operations per group commit (a batch holds at most 4,096 on LMDB).
OPS_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, float("inf"))

_WF = ("duro_workflow_type",)
_ACT = ("duro_activity_type",)
_QUEUE = ("duro_task_queue",)


class _PromRecorder(_metrics.Recorder):
    """Records into prometheus_client metrics of one registry.

    ``labels()`` looks the child up under a lock each time; the children are kept here per label
    value, so a measurement is one dict lookup and the child's own (thread-safe) update.
    """

    def __init__(self) -> None:
        r = None  # created unregistered: ``register`` adds them all or none
        self._started = Counter("duro_workflow_started", "Runs started by a client of this process", _WF, registry=r)
        self._closed = {
            status: Counter(f"duro_workflow_{status}",
                            f"Runs that closed as {status}, committed by this process's store", _WF, registry=r)
            for status in _metrics.CLOSE_STATUSES}
        self._wft_s2s = Histogram(
            "duro_workflow_task_schedule_to_start_duration_seconds",
            "From a workflow task reaching this process's worker (leased to it) to its start", _WF, registry=r,
            buckets=DURATION_BUCKETS_S)
        self._wft_exec = Histogram(
            "duro_workflow_task_execution_duration_seconds",
            "From a workflow task's start to its completion being durable", _WF, registry=r,
            buckets=DURATION_BUCKETS_S)
        self._act_s2s = Histogram(
            "duro_activity_schedule_to_start_duration_seconds",
            "From an activity being scheduled to its first attempt starting", _ACT, registry=r,
            buckets=DURATION_BUCKETS_S)
        self._act_exec = Histogram(
            "duro_activity_execution_duration_seconds", "How long an activity attempt's code ran", _ACT, registry=r,
            buckets=DURATION_BUCKETS_S)
        self._act_failed = Counter(
            "duro_activity_failed", "Activities whose last attempt failed with no retry left",
            ("duro_activity_type", "error_type"), registry=r)
        self._act_retried = Counter(
            "duro_activity_retried", "Failed activity attempts after which another attempt was scheduled",
            ("duro_activity_type", "error_type"), registry=r)
        self._hits = Counter(
            "duro_worker_sticky_cache_hits", "Workflow tasks that resumed a live instance from the worker's cache",
            _QUEUE, registry=r)
        self._misses = Counter(
            "duro_worker_sticky_cache_misses", "Workflow tasks that rebuilt their instance by replaying its history",
            _QUEUE, registry=r)
        self._evictions = Counter(
            "duro_worker_sticky_cache_evictions", "Live instances dropped from the cache before their run closed",
            ("duro_task_queue", "duro_eviction_reason"), registry=r)
        self._replay = Histogram(
            "duro_worker_replay_duration_seconds", "Replaying a run's history to rebuild its instance", _WF,
            registry=r, buckets=DURATION_BUCKETS_S)
        self._commit_s = Histogram(
            "duro_store_commit_duration_seconds",
            "One group commit: running its operations, the commit and the flush to disk", ("duro_store_kind",),
            registry=r, buckets=DURATION_BUCKETS_S)
        self._commit_ops = Histogram(
            "duro_store_commit_size", "Operations in one group commit", ("duro_store_kind",), registry=r,
            buckets=OPS_BUCKETS)
        self._gauges = _GaugeCollector()
        self.collectors: list[Any] = [self._started, *self._closed.values(), self._wft_s2s, self._wft_exec,
                                      self._act_s2s, self._act_exec, self._act_failed, self._act_retried, self._hits,
                                      self._misses, self._evictions, self._replay, self._commit_s, self._commit_ops,
                                      self._gauges]
        self._children: dict[tuple[Any, ...], Any] = {}

    def register(self, registry: CollectorRegistry) -> None:
        """Add every metric to ``registry``; on a clash (duro's metrics are there already), none."""
        done: list[Any] = []
        try:
            for c in self.collectors:
                registry.register(c)
                done.append(c)
        except BaseException:
            for c in done:
                registry.unregister(c)
            raise

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def workflow_started(self, workflow_type: str) -> None:
        self._child(self._started, workflow_type).inc()

    def workflow_closed(self, workflow_type: str, status: str) -> None:
        counter = self._closed.get(status)
        if counter is not None:
            self._child(counter, workflow_type).inc()

    def workflow_task_scheduled_to_start(self, workflow_type: str, seconds: float) -> None:
        self._child(self._wft_s2s, workflow_type).observe(seconds)

    def workflow_task_executed(self, workflow_type: str, seconds: float) -> None:
        self._child(self._wft_exec, workflow_type).observe(seconds)

    def activity_scheduled_to_start(self, activity_type: str, seconds: float) -> None:
        self._child(self._act_s2s, activity_type).observe(seconds)

    def activity_executed(self, activity_type: str, seconds: float) -> None:
        self._child(self._act_exec, activity_type).observe(seconds)

    def activity_failed(self, activity_type: str, error_type: str, retried: bool) -> None:
        self._child(self._act_retried if retried else self._act_failed, activity_type, error_type).inc()

    def sticky_cache_hit(self, task_queue: str) -> None:
        self._child(self._hits, task_queue).inc()

    def sticky_cache_miss(self, task_queue: str) -> None:
        self._child(self._misses, task_queue).inc()

    def sticky_cache_evicted(self, task_queue: str, reason: str) -> None:
        self._child(self._evictions, task_queue, reason).inc()

    def replayed(self, workflow_type: str, seconds: float) -> None:
        self._child(self._replay, workflow_type).observe(seconds)

    def store_committed(self, store_kind: str, ops: int, seconds: float) -> None:
        self._child(self._commit_s, store_kind).observe(seconds)
        self._child(self._commit_ops, store_kind).observe(ops)


class _GaugeCollector(Collector):
    """The backlog and cache-size gauges, read from the running workers when the registry is collected."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("duro_worker_task_queue_backlog",
                                    "Tasks leased to this process's workers, waiting for a free slot",
                                    labels=["duro_task_queue", "duro_task_kind"])
        cache = GaugeMetricFamily("duro_worker_sticky_cache_size",
                                  "Live workflow instances in this process's workers' caches",
                                  labels=["duro_task_queue"])
        for g in _metrics.worker_gauges():
            backlog.add_metric([g.task_queue, "workflow"], g.workflow_backlog)
            backlog.add_metric([g.task_queue, "activity"], g.activity_backlog)
            cache.add_metric([g.task_queue], g.cached_workflows)
        return [backlog, cache]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Without describe() the registry would collect() once at registration to learn the names.
        return [GaugeMetricFamily("duro_worker_task_queue_backlog", "", labels=["duro_task_queue", "duro_task_kind"]),
                GaugeMetricFamily("duro_worker_sticky_cache_size", "", labels=["duro_task_queue"])]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow client does not hold up the next."""

    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a scrape every few seconds would fill stderr."""


class PrometheusHandle:
    """What ``enable_prometheus`` and ``start_http_server`` return; ``disable()`` undoes them."""

    def __init__(self, recorder: _PromRecorder, registry: CollectorRegistry) -> None:
        self._recorder = recorder
        #: The registry holding duro's metrics.
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._enabled = True

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on (the one chosen when asked for port 0); None without a server."""
        return self._server.server_port if self._server is not None else None

    @property
    def url(self) -> str | None:
        """The endpoint's URL (``http://ADDR:PORT/metrics``); None without a server."""
        if self._server is None:
            return None
        host = str(self._server.server_address[0])
        return f"http://[{host}]:{self.port}/metrics" if ":" in host else f"http://{host}:{self.port}/metrics"

    @property
    def enabled(self) -> bool:
        """Whether this handle still records (``disable()`` was not called)."""
        return self._enabled

    def disable(self) -> None:
        """Stop recording, take duro's metrics out of the registry and stop the server, if any (idempotent)."""
        with self._lock:
            if not self._enabled:
                return
            self._enabled = False
        _metrics.uninstall(self._recorder)
        for c in self._recorder.collectors:
            with contextlib.suppress(KeyError):  # the user unregistered it already
                self.registry.unregister(c)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PrometheusHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disable()


def enable_prometheus(registry: CollectorRegistry | None = None) -> PrometheusHandle:
    """Record duro's metrics into a prometheus_client registry, for an endpoint you serve yourself.

    Args:
        registry: where the metrics are registered (``prometheus_client.REGISTRY`` for the
            default endpoint of prometheus_client); None: a new ``CollectorRegistry``
            (``handle.registry``).

    Returns:
        A handle whose ``disable()`` stops the recording and unregisters the metrics.

    Raises:
        ValueError: the registry holds duro's metrics already (enabled on it and not disabled).
    """
    if registry is None:
        registry = CollectorRegistry()
    rec = _PromRecorder()
    rec.register(registry)
    _metrics.install(rec)
    return PrometheusHandle(rec, registry)


def start_http_server(port: int = 9464, addr: str = "127.0.0.1",
                      registry: CollectorRegistry | None = None) -> PrometheusHandle:
    """Record duro's metrics and serve them at ``http://ADDR:PORT/metrics`` from a daemon thread.

    Args:
        port: the port to listen on (9464, the OpenTelemetry Prometheus exporter's; 0: any free
            port, see ``handle.port``).
        addr: the address to listen on (the default is reachable from this machine only; "0.0.0.0"
            or "::" for every interface).
        registry: as for ``enable_prometheus``; the endpoint serves the whole registry.

    Returns:
        A handle whose ``disable()`` stops the recording and the server.

    Raises:
        OSError: the address cannot be bound (nothing stays enabled then).
    """
    handle = enable_prometheus(registry)
    try:
        server_class = _ThreadingWSGIServer6 if ":" in addr else _ThreadingWSGIServer
        server = make_server(addr, port, make_wsgi_app(handle.registry), server_class, handler_class=_QuietHandler)
    except BaseException:
        handle.disable()
        raise
    thread = threading.Thread(target=server.serve_forever, name="duro-prometheus", daemon=True)
    thread.start()
    handle._server = server
    handle._thread = thread
    return handle
