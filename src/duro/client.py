"""The client: start workflows, signal them, wait for results, read their histories."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from duro import _metrics
from duro._core import codec
from duro._local import LocalDispatch, local_dispatch
from duro._updates import WorkflowUpdateStage, check_stage, wait_outcome
from duro._validate import check_call_args, check_duration, check_name
from duro._visibility import check_memo, check_search_attributes, parse_page
from duro._visibility import page_token as page_token_of
from duro.activity import to_seconds
from duro.converter import DataConverter, decode_failure, default_converter, with_max_payload_size
from duro.engine.machine import ASYNC_OWNER
from duro.engine.records import ActivityMeta, RunStatus
from duro.errors import DuroError, WorkflowClosedError, WorkflowFailedError, WorkflowNotFoundError
from duro.history import History
from duro.interceptor import (
    CancelWorkflowInput,
    ClientOutboundInterceptor,
    Interceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    TerminateWorkflowInput,
    UpdateWorkflowInput,
    check_headers,
    check_interceptors,
)
from duro.schedules import ScheduleClient
from duro.stores import open_store
from duro.stores.base import RUNNING, ListQuery, RunInfo, StartRequest, Store, new_run_id, run_key_of, unpack
from duro.workflow import WorkflowDefinition, get_workflow_definition

if TYPE_CHECKING:
    from duro._async_completion import AsyncActivityHandle

__all__ = ["Client", "WorkflowExecution", "WorkflowHandle", "WorkflowUpdateHandle", "WorkflowUpdateStage"]

ID_REUSE_POLICIES = ("allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate")
ID_CONFLICT_POLICIES = ("fail", "use_existing", "terminate_existing")


@dataclass(frozen=True)
class PendingActivity:
    """An activity of a running workflow that has not ended yet (``describe().pending_activities``)."""

    #: its sequence number in the run (the ``ref`` of its history events).
    activity_id: int
    activity_type: str
    task_queue: str
    #: the attempt now running or waiting (1 for the first).
    attempt: int
    #: "scheduled" (waiting for a worker), "started" (a worker runs it), "backing_off" (a retry
    #: waiting out its backoff), "async" (waiting for a completion from outside), or
    #: "cancel_requested" (the workflow no longer waits for it).
    state: str
    scheduled_time: datetime.datetime
    #: when the current attempt last heartbeat, or None.
    last_heartbeat_time: datetime.datetime | None
    #: the latest heartbeat details (decoded), or None.
    heartbeat_details: Any
    #: "Type: message" of the previous attempt's failure, or None (first attempt).
    last_failure: str | None
    #: when a backing-off retry becomes due, or None.
    next_attempt_time: datetime.datetime | None = None


@dataclass(frozen=True)
class WorkflowExecution:
    """What ``describe()`` and ``list_workflows()`` report about a run."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: str
    start_time: datetime.datetime
    close_time: datetime.datetime | None
    history_length: int
    #: Failed attempts in a row of the run's current workflow task (0 when its last task went
    #: through). Each new failure is a ``WorkflowTaskFailed`` event in the history; the task is
    #: retried with backoff until a worker's code gets through it.
    task_failures: int = 0
    #: The run's search attributes (set at start, changed by ``ctx.upsert_search_attributes``).
    search_attributes: dict[str, Any] = field(default_factory=dict)
    #: The memo given at start.
    memo: dict[str, Any] = field(default_factory=dict)
    #: The run that followed this one (continue-as-new or a reset), or None.
    next_run_id: str | None = None
    #: Activities scheduled and not ended yet (``describe()`` of a running run; LMDB: those on the
    #: run's own task queue). Empty in ``list_workflows``.
    pending_activities: list[PendingActivity] = field(default_factory=list)
    #: Worker versioning: the build of the worker that ran the run's latest workflow task (None: an
    #: unversioned worker, or none ran yet), and the behaviour it declared ("pinned": the run's
    #: workflow tasks go only to that build; "auto_upgrade": to the task queue's current build).
    build_id: str | None = None
    versioning_behavior: str | None = None

    @classmethod
    def _from(cls, info: RunInfo) -> WorkflowExecution:
        return cls(
            workflow_id=info.workflow_id, run_id=info.run_id, workflow_type=info.workflow_type,
            task_queue=info.task_queue, status=info.status,
            start_time=datetime.datetime.fromtimestamp(info.start_time, tz=datetime.UTC),
            close_time=datetime.datetime.fromtimestamp(info.close_time, tz=datetime.UTC) if info.close_time else None,
            history_length=info.history_length, task_failures=info.task_failures,
            search_attributes=dict(info.search_attributes or {}), memo=dict(info.memo or {}),
            next_run_id=info.next_run_id, build_id=info.build_id, versioning_behavior=info.versioning_behavior,
        )


class WorkflowPage(list[WorkflowExecution]):
    """A page of ``list_workflows``: a list, newest first, with the token of the next page.

    ``next_page_token`` is None when this page is the last one; pass it as ``page_token`` to get
    the next (pages follow the start order, so workflows started meanwhile do not shift them).
    """

    next_page_token: str | None = None


class _Connect:
    """What ``Client.connect`` returns: awaitable, and an async context manager that closes."""

    def __init__(self, url: str, converter: DataConverter | None, max_payload_size: int | None,
                 interceptors: tuple[Interceptor, ...]) -> None:
        self._url = url
        self._converter = converter
        self._max_payload_size = max_payload_size
        self._interceptors = interceptors
        self._client: Client | None = None

    def _open(self) -> Client:
        self._client = Client(open_store(self._url), self._converter, max_payload_size=self._max_payload_size,
                              interceptors=self._interceptors)
        return self._client

    def __await__(self) -> Generator[Any, None, Client]:
        if False:  # pragma: no cover - makes this a generator
            yield
        return self._open()

    async def __aenter__(self) -> Client:
        return self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()


class Client(ScheduleClient):
    """A connection to a store. Create with ``duro.Client.connect(url)``.

    Schedules (``create_schedule``, ``get_schedule_handle``, ``list_schedules``) come from
    ``duro.schedules.ScheduleClient``.

    Args:
        store: the opened store.
        converter: the data converter (default: ``JsonConverter()``, orjson with a 2 MiB limit).
        max_payload_size: when given, the converter's payload size limit in bytes (see
            ``Client.connect``).
        interceptors: ``duro.interceptor.Interceptor`` objects, the first the outermost (see
            ``Client.connect``).
    """

    def __init__(self, store: Store, converter: DataConverter | None = None, *,
                 max_payload_size: int | None = None, interceptors: Sequence[Interceptor] = ()) -> None:
        conv = converter or default_converter
        if max_payload_size is not None:
            conv = with_max_payload_size(conv, max_payload_size)
        self.store = store
        self.converter: DataConverter = conv
        #: the client's interceptors; workers built on this client use them too.
        self.interceptors = check_interceptors(interceptors)
        outbound: ClientOutboundInterceptor = _ClientRoot(self)
        for it in reversed(self.interceptors):
            outbound = it.intercept_client(outbound)
        self._outbound = outbound
        self._awaiting_results = 0  # handle.result() calls in progress (see duro.testing's time skipping)
        self._closed = False
        self._dispatch: LocalDispatch | None = None  # this process's workers on the store, once looked up

    @property
    def _local(self) -> LocalDispatch:
        """The workers of this process on this client's store (``duro._local``)."""
        d = self._dispatch
        if d is None:
            d = self._dispatch = local_dispatch(self.store)
        return d

    @staticmethod
    def connect(url: str, *, converter: DataConverter | None = None, max_payload_size: int | None = None,
                interceptors: Sequence[Interceptor] = ()) -> _Connect:
        """Open the store at ``url`` (``lmdb://PATH``): ``async with Client.connect(url) as client``.

        ``await Client.connect(url)`` works too; then call ``await client.close()`` when done.

        Args:
            url: the store URL.
            converter: the data converter (default: ``JsonConverter()``).
            max_payload_size: the largest encoded payload (arguments, result, signal, query,
                update, heartbeat) in bytes; a larger one raises ``duro.PayloadTooLargeError``.
                None keeps the converter's own limit (2 MiB for ``JsonConverter``; build
                ``JsonConverter(max_payload_size=None)`` for none). Workers built on this client
                apply it to activity results and heartbeats too.
            interceptors: ``duro.interceptor.Interceptor`` objects around this client's calls (the
                first is the outermost); workers built on this client use them too, before their own.

        Raises:
            ValueError: ``max_payload_size`` is not a positive int.
            TypeError: ``interceptors`` is not a list of ``Interceptor``.
        """
        if max_payload_size is not None:
            with_max_payload_size(default_converter, max_payload_size)  # check it now, not at open
        return _Connect(url, converter, max_payload_size, check_interceptors(interceptors))

    async def close(self) -> None:
        """Release the store (shared stores stay open for their other users)."""
        if not self._closed:
            self._closed = True
            await self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ starting

    async def start_workflow(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        id: str,
        task_queue: str,
        id_reuse_policy: str = "allow_duplicate",
        execution_timeout: float | datetime.timedelta | None = None,
        run_timeout: float | datetime.timedelta | None = None,
        id_conflict_policy: str | None = None,
        start_signal: str | None = None,
        start_signal_args: Sequence[Any] = (),
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
        request_eager_start: bool = False,
    ) -> WorkflowHandle:
        """Start a workflow run and return its handle once the start is durable.

        Args:
            workflow: the ``@duro.workflow`` function, or its registered name.
            *args: the workflow's arguments (after its context).
            id: the workflow id, unique among running workflows.
            task_queue: the queue whose workers run it.
            id_reuse_policy: "allow_duplicate" (default), "allow_duplicate_failed_only" or
                "reject_duplicate": whether a closed run's id may be used again.
            execution_timeout: limit for the whole workflow, in seconds or a timedelta (0 or None:
                no limit; at most 100 years).
            run_timeout: limit for this run (same range).
            id_conflict_policy: what to do when a run with this id is open: "fail" (raise
                WorkflowAlreadyStartedError), "use_existing" (return a handle on that run) or
                "terminate_existing" (terminate it, then start this one). Default: "fail", or
                "use_existing" with ``start_signal`` (signal-with-start, as in Temporal).
            start_signal: signal-with-start: this signal is recorded in the same commit as the
                start, right after it, so the workflow's first task sees it; with "use_existing" and
                an open run, that run gets the signal instead.
            start_signal_args: the signal's arguments.
            search_attributes: what ``list_workflows`` can filter on (str, int, float, bool or
                timezone-aware datetime values); the workflow changes them with
                ``ctx.upsert_search_attributes``.
            memo: a JSON object shown by ``describe()`` (not filtered on).
            request_eager_start: accepted for code written for Temporal. duro always starts eagerly
                when it can: with a worker of the queue in this process, a plain start runs the
                run's first workflow task here, in the start's own commit.

        Returns:
            A handle on the run started, or on the open run that was used.

        Raises:
            WorkflowAlreadyStartedError: a run with this id is running and the conflict policy is
                "fail" (or the reuse policy forbids reusing a closed run's id).
            TypeError: the arguments do not fit the workflow's signature or cannot be encoded, or an
                argument has the wrong type.
            ValueError: ``id``, ``task_queue`` or the workflow name is empty, holds NUL or is over
                255 bytes in UTF-8; a timeout is NaN, infinite, negative or over 100 years; an
                argument holds NaN or infinity.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.

        Nothing is stored when any of these is raised (WorkflowAlreadyStartedError leaves the
        existing run as it was).
        """
        defn = _definition(workflow)  # a TypeError for anything but a str or a @duro.workflow function
        name = check_name("workflow name", defn.name if defn is not None else workflow)
        check_name("workflow id", id)
        check_name("task_queue", task_queue)
        if not isinstance(request_eager_start, bool):
            raise TypeError(f"request_eager_start must be a bool, not {type(request_eager_start).__name__}")
        if id_reuse_policy not in ID_REUSE_POLICIES:
            raise ValueError(f"id_reuse_policy must be one of {ID_REUSE_POLICIES}, got {id_reuse_policy!r}")
        if id_conflict_policy is None:
            id_conflict_policy = "fail" if start_signal is None else "use_existing"
        if id_conflict_policy not in ID_CONFLICT_POLICIES:
            raise ValueError(f"id_conflict_policy must be one of {ID_CONFLICT_POLICIES}, got {id_conflict_policy!r}")
        if start_signal is not None:
            check_name("start_signal", start_signal)
            if isinstance(start_signal_args, (str, bytes)) or not isinstance(start_signal_args, Sequence):
                raise TypeError("start_signal_args must be a list or tuple of the signal's arguments, got "
                                f"{type(start_signal_args).__name__}")
        elif start_signal_args:
            raise ValueError("start_signal_args given without start_signal")
        attrs = check_search_attributes(search_attributes) if search_attributes is not None else None
        memo_doc = check_memo(memo) if memo is not None else None
        execution_s = to_seconds(execution_timeout, "execution_timeout")
        run_s = to_seconds(run_timeout, "run_timeout")
        if defn is not None:
            check_call_args("workflow", defn.name, defn.signature, args)
        return await self._outbound.start_workflow(StartWorkflowInput(
            workflow=name, args=args, id=id, task_queue=task_queue, id_reuse_policy=id_reuse_policy,
            execution_timeout=execution_s, run_timeout=run_s, id_conflict_policy=id_conflict_policy,
            start_signal=start_signal, start_signal_args=tuple(start_signal_args), search_attributes=attrs or None,
            memo=memo_doc or None, definition=defn))

    async def _start(self, input: StartWorkflowInput) -> WorkflowHandle:
        """The start itself, once the interceptors have seen it: encode, store, handle."""
        payload = self.converter.encode_args(input.args)
        signal_args = b""
        if input.start_signal is not None:
            signal_args = self.converter.encode_args(tuple(input.start_signal_args))
        req = StartRequest(
            workflow_id=input.id, workflow_type=input.workflow, task_queue=input.task_queue, args=payload,
            run_id=new_run_id(), id_reuse_policy=input.id_reuse_policy, execution_timeout=input.execution_timeout,
            run_timeout=input.run_timeout, id_conflict_policy=input.id_conflict_policy,
            start_signal=input.start_signal, start_signal_args=signal_args,
            search_attributes=input.search_attributes, memo=input.memo,
            headers=check_headers(input.headers) if input.headers else None,
        )
        # Eager start (the first task run here, in the start's commit) only for a plain start.
        plain = input.id_conflict_policy == "fail" and input.start_signal is None
        worker = self._eager_worker(input.workflow, input.task_queue) if plain else None
        run_id = req.run_id
        if worker is None or not await worker.eager_start(req):
            run_id = await self.store.start_workflow(req)
        if _metrics.ENABLED and run_id == req.run_id:  # another id: "use_existing" found a run open
            _metrics.RECORDER.workflow_started(input.workflow)
        defn = input.definition
        handle = WorkflowHandle(self, input.id, run_id, result_hint=defn.return_hint if defn else None)
        handle._defn = defn
        return handle

    async def execute_update_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str,
                                        task_queue: str, update: str, update_args: Sequence[Any] = (),
                                        id_conflict_policy: str = "use_existing", update_id: str | None = None,
                                        update_result_type: Any = None, **options: Any) -> Any:
        """Start the workflow unless a run with ``id`` is open, then run update ``update`` on it; its result.

        The start is ``start_workflow`` with ``id_conflict_policy`` (default "use_existing", so the call
        may be repeated safely: a second call updates the run the first started) and ``options``;
        the update is ``handle.execute_update(update, *update_args, id=update_id)``, with its rules
        (a validator that raises rejects it, an accepted update is recorded with its result, an
        ``update_id`` accepted on the run before is not applied again).

        Raises:
            What ``start_workflow`` and ``WorkflowHandle.execute_update`` raise.
        """
        uh = await self.start_update_with_start(
            workflow, *args, id=id, task_queue=task_queue, update=update, update_args=update_args,
            id_conflict_policy=id_conflict_policy, update_id=update_id, update_result_type=update_result_type,
            wait_for_stage=WorkflowUpdateStage.COMPLETED, **options)
        return await uh.result()

    async def start_update_with_start(self, workflow: Callable[..., Any] | str, *args: Any, id: str,
                                      task_queue: str, update: str, update_args: Sequence[Any] = (),
                                      id_conflict_policy: str = "use_existing", update_id: str | None = None,
                                      wait_for_stage: WorkflowUpdateStage | str = WorkflowUpdateStage.ACCEPTED,
                                      update_result_type: Any = None, **options: Any) -> WorkflowUpdateHandle:
        """Update-with-start that returns the update's handle once it is accepted (or completed).

        As ``execute_update_with_start``, with the update sent by ``handle.start_update(update,
        *update_args, wait_for_stage=wait_for_stage, id=update_id, result_type=update_result_type)``.
        ``client.get_handle(id)`` reaches the workflow.

        Raises:
            What ``start_workflow`` and ``WorkflowHandle.start_update`` raise.
        """
        if isinstance(update_args, (str, bytes)) or not isinstance(update_args, Sequence):
            raise TypeError(f"update_args must be a list or tuple, got {type(update_args).__name__}")
        check_name("update name", update)
        check_stage(wait_for_stage)
        if update_id is not None:
            check_name("update id", update_id)
        handle = await self.start_workflow(workflow, *args, id=id, task_queue=task_queue,
                                           id_conflict_policy=id_conflict_policy, **options)
        return await handle.start_update(update, *update_args, wait_for_stage=wait_for_stage, id=update_id,
                                         result_type=update_result_type)

    def _holding_worker(self, run_id: str) -> Any:
        """A worker on the running loop that holds the run's live instance (an eager signal), or None."""
        try:
            run_key = run_key_of(run_id)
        except ValueError:
            return None
        loop = asyncio.get_running_loop()
        for worker, _inst in self._local.cached(run_key):
            if worker.loop is loop:
                return worker
        return None

    def _eager_worker(self, workflow_type: str, task_queue: str) -> Any:
        """A worker of this process that can run the first task of the workflow right away."""
        return self._local.eager_worker(workflow_type, task_queue)

    async def execute_workflow(self, workflow: Callable[..., Any] | str, *args: Any, id: str, task_queue: str,
                               **kwargs: Any) -> Any:
        """Start a workflow and wait for its result (see ``start_workflow`` and ``WorkflowHandle.result``)."""
        handle = await self.start_workflow(workflow, *args, id=id, task_queue=task_queue, **kwargs)
        return await handle.result()

    def get_handle(self, workflow_id: str, run_id: str | None = None, *, result_type: Any = None,
                   workflow: Callable[..., Any] | None = None) -> WorkflowHandle:
        """A handle to an existing workflow (its latest run when ``run_id`` is None).

        ``workflow`` (the function) lets this process answer queries by replay and decode the
        result to its annotated type.

        Raises:
            ValueError: ``workflow_id`` is empty, holds NUL or is over 255 bytes.
            TypeError: ``workflow_id`` is not a str.
        """
        check_name("workflow id", workflow_id)
        defn = _definition(workflow) if workflow is not None else None
        hint = result_type if result_type is not None else (defn.return_hint if defn else None)
        handle = WorkflowHandle(self, workflow_id, run_id, result_hint=hint)
        handle._defn = defn
        handle._follow_runs = run_id is None
        return handle

    def get_async_activity_handle(self, task_token: bytes) -> AsyncActivityHandle:
        """A handle to complete, fail or heartbeat, from outside, the activity attempt ``task_token`` names.

        The token is ``ActivityInfo.task_token`` of an attempt (typically one that raised
        ``duro.CompleteAsync()``); this process needs no worker, only the same store.

        Raises:
            TypeError: ``task_token`` is not bytes.
            duro.TaskTokenError: it is not a duro task token (garbage, cut, altered, another
                version). Whether the attempt exists and waits is checked by each call on the handle.
        """
        from duro._async_completion import AsyncActivityHandle

        return AsyncActivityHandle(self, task_token)

    async def list_workflows(self, status: str | None = None, workflow_type: str | None = None,
                             search_attributes: dict[str, Any] | None = None,
                             started_after: datetime.datetime | float | None = None,
                             started_before: datetime.datetime | float | None = None,
                             limit: int = 100, page_token: str | None = None) -> WorkflowPage:
        """The latest run of each workflow id, newest first, filtered; served by the store's indexes.

        Args:
            status: "running", "completed", "failed", "canceled", "terminated",
                "continued_as_new" or "timed_out".
            workflow_type: the registered workflow name.
            search_attributes: equality filters on the runs' search attributes (all must hold).
            started_after: only runs started after this (a timezone-aware datetime or epoch
                seconds; exclusive).
            started_before: only runs started before this (exclusive).
            limit: the page size (a positive int).
            page_token: ``next_page_token`` of the previous page.

        Returns:
            A ``WorkflowPage``: a list of ``WorkflowExecution`` with ``next_page_token``.

        Raises:
            ValueError: an unknown status, a bad name, limit or page token, a naive datetime.
            TypeError: a filter value of an unsupported type.
        """
        query = _list_query(status, workflow_type, search_attributes, started_after, started_before)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        after = parse_page(page_token) if page_token is not None else None
        infos = await self.store.alist_runs(query, limit, after)
        page = WorkflowPage(WorkflowExecution._from(i) for i in infos)
        if len(infos) == limit:
            last = infos[-1]
            page.next_page_token = page_token_of(round(last.start_time * 1e6), last.workflow_id)
        return page

    async def purge(self, before: datetime.datetime | float, limit: int = 1000) -> int:
        """Delete up to ``limit`` runs closed before ``before`` (with their histories); how many.

        The store's retention (``?retention_days=``, default 30) does this in the background; this
        is for doing it now. Call again while it returns ``limit``.
        """
        before_us = _time_us("before", before)
        if before_us is None:
            raise TypeError("before must be a timezone-aware datetime or epoch seconds")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        return await self.store.purge(before_us, limit)

    async def count_workflows(self, status: str | None = None, workflow_type: str | None = None,
                              search_attributes: dict[str, Any] | None = None,
                              started_after: datetime.datetime | float | None = None,
                              started_before: datetime.datetime | float | None = None) -> int:
        """How many workflow ids' latest runs match the filters (those of ``list_workflows``)."""
        query = _list_query(status, workflow_type, search_attributes, started_after, started_before)
        return await self.store.acount_runs(query)

    async def set_current_build_id(self, task_queue: str, build_id: str | None) -> None:
        """Make ``build_id`` the current build of ``task_queue`` (worker versioning; docs/deployment.md).

        New runs, ``auto_upgrade`` runs and unversioned runs of the queue then go only to workers of
        that build; runs pinned to another build stay on it. None removes the setting: any worker of
        the queue (versioned or not) takes those runs again. Takes effect at once in every process;
        a workflow task that a worker of another build is running when it changes is handed back
        when it completes, and runs again on the current build.
        """
        check_name("task_queue", task_queue)
        check_name("build_id", build_id, allow_none=True)
        await self.store.set_current_build_id(task_queue, build_id)
        local_dispatch(self.store).poll_workflow_tasks(task_queue)

    async def get_current_build_id(self, task_queue: str) -> str | None:
        """The current build of ``task_queue`` (None: none is set)."""
        check_name("task_queue", task_queue)
        return (await self.store.aqueue_versioning(task_queue, running=False)).current_build_id


_STATUSES = (RUNNING, "completed", "failed", "terminated", "canceled", "continued_as_new", "timed_out")


def _time_us(name: str, value: datetime.datetime | float | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(datetime.UTC))")
        return round(value.timestamp() * 1e6)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return round(value * 1e6)
    raise TypeError(f"{name} must be a timezone-aware datetime or epoch seconds, got {value!r}")


def _list_query(status: str | None, workflow_type: str | None, search_attributes: dict[str, Any] | None,
                started_after: datetime.datetime | float | None,
                started_before: datetime.datetime | float | None) -> ListQuery:
    if status is not None and status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(_STATUSES)}")
    check_name("workflow_type", workflow_type, allow_none=True)
    attrs = check_search_attributes(search_attributes) if search_attributes is not None else None
    return ListQuery(status=status, workflow_type=workflow_type, search_attributes=attrs or None,
                     started_after_us=_time_us("started_after", started_after),
                     started_before_us=_time_us("started_before", started_before))


def _definition(workflow: Any) -> WorkflowDefinition | None:
    if isinstance(workflow, str):
        return None
    return get_workflow_definition(workflow)


class WorkflowHandle:
    """A reference to one workflow (and, once known, one run of it)."""

    # A caller may hold one handle per workflow it started (100,000 parked workflows: 100,000
    # handles); slots make each 80 bytes instead of about 280.
    __slots__ = ("_defn", "_follow_runs", "_result_hint", "client", "id", "run_id")

    def __init__(self, client: Client, workflow_id: str, run_id: str | None, *, result_hint: Any = None) -> None:
        self.client = client
        self.id = workflow_id
        self.run_id = run_id
        self._result_hint = result_hint
        # A handle made by start_workflow follows continue-as-new to the last run, as does one
        # made for "the latest run" (run_id None); one for an explicit run id stays on that run.
        self._follow_runs = True
        self._defn: WorkflowDefinition | None = None

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, run_id={self.run_id!r})"

    def _result_hint_for(self, query: str) -> Any:
        return None

    async def _target(self) -> str | None:
        """The run that signals, queries, cancels and describes address.

        A handle from ``start_workflow`` follows its workflow through continue-as-new (as its
        ``result()`` does): once its run continued as new, it addresses the latest run.
        """
        if self.run_id is None or not self._follow_runs:
            return self.run_id
        info = await self.client.store.afind_run(self.id, self.run_id)
        return None if info.status == "continued_as_new" else self.run_id

    async def _info(self) -> RunInfo:
        return await self.client.store.afind_run(self.id, await self._target())

    async def result(self, timeout: float | datetime.timedelta | None = None) -> Any:
        """Wait for the run to close and return its result.

        Args:
            timeout: how long to wait, in seconds or a timedelta; None waits without limit. Zero
                or less does not wait: the result of a closed run is returned, a running one
                raises ``asyncio.TimeoutError`` at once.

        Raises:
            WorkflowFailedError: the run failed, was terminated or cancelled; the cause is chained.
            asyncio.TimeoutError: ``timeout`` seconds passed first.
            ValueError: ``timeout`` is NaN, infinite or over 100 years.
        """
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout < 0:
            timeout = 0.0  # "do not wait" (NaN compares false and is refused below)
        elif isinstance(timeout, datetime.timedelta) and timeout < datetime.timedelta(0):
            timeout = 0.0
        seconds = check_duration("result timeout", timeout, allow_none=True)
        # A test environment with time skipping skips only while someone waits for a result.
        self.client._awaiting_results += 1
        try:
            return await self._result(seconds)
        finally:
            self.client._awaiting_results -= 1

    async def _result(self, seconds: float | None) -> Any:
        store = self.client.store
        run_id = self.run_id or (await self._info()).run_id
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            run_key = run_key_of(run_id)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                # No time left to wait: read the run as it stands (a closed one has its result).
                info = await store.afind_run(self.id, run_id)
                if info.status == RUNNING:
                    raise TimeoutError(f"workflow {self.id!r} (run {run_id}) is still running "
                                       f"after the result timeout of {seconds}s")
            else:
                waiter = store.wait_closed(run_key)
                info = await (asyncio.wait_for(waiter, left) if left is not None else waiter)
            ev = info.close_event
            if ev is None:
                last = await store.aread_history(run_key, info.history_length)
                if not last:
                    raise WorkflowNotFoundError(self.id, info.run_id)
                ev = last[-1]
            if ev.type == codec.WORKFLOW_CONTINUED_AS_NEW and info.next_run_id and self._follow_runs:
                run_id = info.next_run_id  # the workflow goes on in a new run: follow it
                continue
            break
        if ev.type == codec.WORKFLOW_COMPLETED:
            return self.client.converter.decode(ev.payload, self._result_hint)
        if ev.type == codec.WORKFLOW_CONTINUED_AS_NEW:
            cause: BaseException = DuroError(f"run {info.run_id} continued as new as run {info.next_run_id}; "
                                             "use a handle without run_id to follow it")
        else:
            cause = decode_failure(ev.payload)
        err = WorkflowFailedError(f"workflow {self.id!r} (run {info.run_id}) {info.status}: {cause}",
                                  workflow_id=self.id, run_id=info.run_id)
        raise err from cause

    async def signal(self, name: str, *args: Any) -> None:
        """Send signal ``name`` with its payload; returns once it is durable.

        Raises:
            ValueError: ``name`` is empty, holds NUL or is over 255 bytes; a payload holds NaN or infinity.
            TypeError: ``name`` is not a str, or a payload cannot be encoded.
            duro.PayloadTooLargeError: the encoded payload is over the converter's size limit.
        """
        check_name("signal name", name)
        await self.client._outbound.signal_workflow(SignalWorkflowInput(self, name, args))

    async def describe(self) -> WorkflowExecution:
        """Status, type, times, history length, search attributes and pending activities of the run."""
        info = await self._info()
        desc = WorkflowExecution._from(info)
        if info.status != RUNNING:
            return desc
        found = await self.client.store.apending_activities(run_key_of(info.run_id), info.task_queue)
        if not found:
            return desc
        return dataclasses.replace(desc, pending_activities=[
            _pending_activity(self.client.converter, queue, seq, meta, details)
            for seq, queue, meta, details in found])

    async def fetch_history(self) -> History:
        """The run's recorded events."""
        info = await self._info()
        events = await self.client.store.aread_history(run_key_of(info.run_id))
        await self.client.store.adurable()
        return History(self.id, info.run_id, events)

    async def history(self) -> History:
        """Alias of ``fetch_history``."""
        return await self.fetch_history()

    async def cancel(self) -> None:
        """Ask the workflow to cancel: its code sees ``asyncio.CancelledError`` at its current await.

        The workflow may catch it and still run cleanup activities; ``result()`` then raises
        ``WorkflowFailedError`` caused by ``duro.CancelledError`` if it ended cancelled.
        """
        await self.client._outbound.cancel_workflow(CancelWorkflowInput(self))

    async def query(self, name: str, *args: Any, result_type: Any = None, at_event: int | None = None) -> Any:
        """Ask the workflow a question; nothing is written.

        ``result_type`` decodes the answer to that type (a dataclass, an Enum, a model...); by
        default it comes back as plain JSON values.

        Answered by the live instance of a worker in this process when there is one, otherwise by
        replaying the history here (this process must have the workflow's code: a Worker that
        registers it, or a handle from ``start_workflow(fn, ...)``), otherwise by a worker of the
        run's task queue in another process.

        ``at_event=N`` is a time-travel query: the answer as the run stood right after event N of
        its history, found by replaying the history up to there (never from a live instance): the
        state after every workflow task whose WorkflowTaskCompleted is at or before N has run.
        Inputs recorded by then that no such task had processed (a signal that came in after it)
        are not seen yet; an N among a task's commands gives the state after that task. The run
        is this handle's (the latest one unless it names a run), running or closed.

        Raises:
            TypeError: ``at_event`` is not an int.
            ValueError: ``name`` is empty, holds NUL or is over 255 bytes; an argument holds NaN or
                infinity; ``at_event`` is not an event id of the run (1 to its last event).
            duro.PayloadTooLargeError: the encoded arguments or answer are over the size limit.
            duro.DuroError: no handler ``name`` (at that point, with ``at_event``: also before the
                first workflow task completed); no process could answer.
        """
        return await self.client._outbound.query_workflow(QueryWorkflowInput(
            self, check_name("query name", name), args, result_type=result_type, at_event=at_event))

    async def execute_update(self, name: str, *args: Any, id: str | None = None, result_type: Any = None) -> Any:
        """Send an update and wait for the handler's result (decoded to ``result_type`` when given).

        ``start_update(name, *args, wait_for_stage=COMPLETED, id=id)``, then its result. A validator
        that raises rejects the update without writing history (the error is raised here). An
        accepted update is recorded in the history with its result. With ``id``, a repeated call
        (a retry, from any process) does not apply the update again: it returns the first one's
        result.

        Raises:
            ValueError: ``name`` or ``id`` is empty, holds NUL or is over 255 bytes; an argument
                holds NaN or infinity.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.
            duro.ApplicationError: (or another error) the validator rejected the update or the
                handler raised.
            duro.DuroError: the run is closed, or closed before the update completed.
        """
        handle = await self.start_update(name, *args, wait_for_stage=WorkflowUpdateStage.COMPLETED, id=id,
                                         result_type=result_type)
        return await handle.result()

    async def start_update(self, name: str, *args: Any,
                           wait_for_stage: WorkflowUpdateStage | str = WorkflowUpdateStage.ACCEPTED,
                           id: str | None = None, result_type: Any = None) -> WorkflowUpdateHandle:
        """Send an update; its handle once a worker accepted it (validated and recorded it).

        Args:
            name: the update's name (its handler's, or the dynamic handler's).
            *args: the handler's arguments.
            wait_for_stage: ``WorkflowUpdateStage.ACCEPTED`` (return once it is recorded) or
                ``COMPLETED`` (also wait for its result). ``ADMITTED`` raises ``ValueError``: duro
                validates and records an update in one step.
            id: the update's id (unique within the run); one is made up when None. An update whose
                id was accepted on the run before is not applied again: the handle is the first
                one's (the validator does not run again). This holds for a run that closed after
                completing it, too.
            result_type: the type ``handle.result()`` decodes to.

        Raises:
            ValueError: ``name`` or ``id`` is empty, holds NUL or is over 255 bytes; an argument
                holds NaN or infinity; an unsupported ``wait_for_stage``.
            duro.PayloadTooLargeError: the encoded arguments are over the converter's size limit.
            duro.ApplicationError: (or another error) the validator rejected the update; nothing
                is written.
            duro.DuroError: the run is closed; no worker of its task queue took the update.
        """
        check_name("update name", name)
        stage = check_stage(wait_for_stage)
        update_id = new_run_id() if id is None else check_name("update id", id)
        return await self.client._outbound.update_workflow(UpdateWorkflowInput(
            self, name, args, result_type=result_type, id=update_id, wait_for_stage=stage))

    def get_update_handle(self, update_id: str, *, result_type: Any = None) -> WorkflowUpdateHandle:
        """A handle on update ``update_id`` of this handle's run (the latest run without ``run_id``).

        Its ``result()`` reads the outcome from the history, or waits for it; it raises
        ``DuroError`` if no update with that id was accepted on the run.

        Raises:
            ValueError: ``update_id`` is empty, holds NUL or is over 255 bytes.
        """
        return WorkflowUpdateHandle(self.client, check_name("update id", update_id), self.id, self.run_id,
                                    result_type=result_type, known_accepted=False)

    async def terminate(self, reason: str = "") -> None:
        """Close the run at once; its code does not run again.

        Raises:
            TypeError: ``reason`` is not a str.
            duro.PayloadTooLargeError: ``reason`` is over the converter's size limit.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        self.client.converter.encode(reason)  # the payload size limit applies to the reason too
        await self.client._outbound.terminate_workflow(TerminateWorkflowInput(self, reason))

    async def delete(self) -> None:
        """Delete the run (a closed one) and its history; the workflow id's row goes too if it named it.

        A handle without ``run_id`` deletes the latest run of the id.

        Raises:
            DuroError: the run is running (cancel or terminate it first); nothing is deleted.
            WorkflowNotFoundError: no such workflow or run.
        """
        await self.client.store.delete_workflow(self.id, self.run_id)

    async def reset(self, *, event_id: int, reason: str = "") -> WorkflowHandle:
        """Start a new run of this workflow from a workflow task of the run, with the current code.

        The new run keeps the run's history before ``event_id`` (a WorkflowTaskCompleted event:
        the decisions of that workflow task and after are made again by the workers' current
        code), then the signals and updates that arrived after it, so none is lost. Activities,
        timers and child workflows decided before it and still pending carry on in the new run.
        An open run is terminated ("reset: <reason>"); open or closed, it points to the new run
        (its record's next run id), and the workflow id now names the new run. One commit.

        Args:
            event_id: the id of a WorkflowTaskCompleted event of this handle's run (see
                ``fetch_history()``).
            reason: why, recorded in both runs' histories.

        Returns:
            A handle on the new run.

        Raises:
            TypeError: ``event_id`` is not an int, or ``reason`` not a str.
            ValueError: ``event_id`` is less than 1.
            duro.WorkflowNotFoundError: no such workflow or run.
            duro.DuroError: ``event_id`` is not a WorkflowTaskCompleted of the run (the message
                lists those that are), the run has none yet, or another run of the id is open.
                Nothing is written then.
        """
        if isinstance(event_id, bool) or not isinstance(event_id, int):
            raise TypeError(f"event_id must be an int (a WorkflowTaskCompleted event's id), "
                            f"not {type(event_id).__name__}")
        if event_id < 1:
            raise ValueError(f"event_id must be the id of a WorkflowTaskCompleted event (1 or more), got {event_id}")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        self.client.converter.encode(reason)  # the payload size limit applies to the reason too
        new_run = await self.client.store.reset_workflow(self.id, await self._target(), event_id, reason)
        handle = WorkflowHandle(self.client, self.id, new_run, result_hint=self._result_hint)
        handle._defn = self._defn
        return handle


class WorkflowUpdateHandle:
    """An update sent to a workflow (``handle.start_update``, ``get_update_handle``): its ids and its result.

    Attributes:
        id: the update's id.
        workflow_id: the workflow's id.
        run_id: the run the update was accepted on (None for a handle from ``get_update_handle``
            on a handle without a run id: the latest run, looked up by ``result()``).
    """

    def __init__(self, client: Client, update_id: str, workflow_id: str, run_id: str | None, *,
                 result_type: Any = None, from_event_id: int = 1, outcome: bytes | None = None,
                 known_accepted: bool = True) -> None:
        self.client = client
        self.id = update_id
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._result_type = result_type
        self._from = from_event_id
        self._outcome = outcome
        self._known_accepted = known_accepted

    def __repr__(self) -> str:
        return f"WorkflowUpdateHandle(id={self.id!r}, workflow_id={self.workflow_id!r}, run_id={self.run_id!r})"

    @property
    def workflow_run_id(self) -> str | None:
        """``run_id`` under Temporal's name."""
        return self.run_id

    async def _wait(self, seconds: float | None) -> bytes:
        if self._outcome is None:
            run_id = self.run_id
            if run_id is None:
                run_id = (await self.client.store.afind_run(self.workflow_id, None)).run_id
            self._outcome = await wait_outcome(self.client.store, self.workflow_id, run_id, self.id,
                                               from_event_id=self._from, timeout=seconds,
                                               known_accepted=self._known_accepted)
        return self._outcome

    async def result(self, timeout: float | datetime.timedelta | None = None) -> Any:
        """Wait for the update's handler to finish; its result, decoded to ``result_type`` when given.

        Args:
            timeout: how long to wait, in seconds or a timedelta; None waits without limit.

        Raises:
            duro.ApplicationError: (or another error) the handler raised.
            duro.DuroError: the run closed before the update completed, or no update with this id
                was accepted on the run.
            asyncio.TimeoutError: ``timeout`` seconds passed first.
            ValueError: ``timeout`` is NaN, infinite, negative or over 100 years.
        """
        outcome = await self._wait(check_duration("update result timeout", timeout, allow_none=True))
        meta_b, payload = unpack(outcome)
        if orjson.loads(meta_b)["ok"]:
            return self.client.converter.decode(payload, self._result_type)
        raise decode_failure(payload)


def _when(time_us: int) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(time_us / 1e6, tz=datetime.UTC) if time_us else None


def _pending_activity(conv: DataConverter, task_queue: str, seq: int, meta: ActivityMeta,
                      details: bytes) -> PendingActivity:
    now_us = int(time.time() * 1e6)
    if meta.cancel:
        state = "cancel_requested"
    elif meta.owner == ASYNC_OWNER:
        state = "async"
    elif meta.owner:
        state = "started"
    elif meta.visible_us > now_us:
        state = "backing_off"
    else:
        state = "scheduled"
    decoded: Any = None
    if details:
        try:
            decoded = conv.decode(details)
        except Exception:  # a converter that cannot read them: show the bytes rather than fail describe()
            decoded = details
    return PendingActivity(
        activity_id=seq, activity_type=meta.name, task_queue=task_queue, attempt=meta.attempt, state=state,
        scheduled_time=_when(meta.scheduled_us) or datetime.datetime.fromtimestamp(0, tz=datetime.UTC),
        last_heartbeat_time=_when(meta.heartbeat_us), heartbeat_details=decoded, last_failure=meta.last_failure,
        next_attempt_time=_when(meta.visible_us) if state == "backing_off" else None)


class _ClientRoot(ClientOutboundInterceptor):
    """The innermost link of a client's chain: the calls themselves."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle:
        return await self._client._start(input)

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        h = input.handle
        client = self._client
        payload = client.converter.encode_args(input.args)
        headers = check_headers(input.headers) if input.headers else None
        run_id = h.run_id
        if run_id is None:
            await client.store.signal_workflow(h.id, None, input.signal, payload, headers)
            return
        worker = client._holding_worker(run_id)
        if worker is not None and await worker.eager_signal(h.id, run_key_of(run_id), input.signal, payload, headers):
            return  # a worker here held the run idle: the signal was committed with the task it woke
        await _following(h, lambda run: client.store.signal_workflow(h.id, run, input.signal, payload, headers))

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        from duro._query import run_query

        return await run_query(input.handle, input.query, input.args, input.headers, input.result_type,
                               input.at_event)

    async def update_workflow(self, input: UpdateWorkflowInput) -> WorkflowUpdateHandle:
        from duro._query import start_update

        h = input.handle
        update_id = input.id or new_run_id()
        run_id, first, outcome = await start_update(h, check_name("update name", input.update), input.args,
                                                    check_name("update id", update_id), input.headers)
        handle = WorkflowUpdateHandle(self._client, update_id, h.id, run_id, result_type=input.result_type,
                                      from_event_id=first, outcome=outcome)
        if check_stage(input.wait_for_stage) is WorkflowUpdateStage.COMPLETED:
            await handle._wait(None)
        return handle

    async def cancel_workflow(self, input: CancelWorkflowInput) -> None:
        h = input.handle
        await _following(h, lambda run: self._client.store.cancel_workflow(h.id, run))

    async def terminate_workflow(self, input: TerminateWorkflowInput) -> None:
        h = input.handle
        await _following(h, lambda run: self._client.store.terminate_workflow(h.id, run, input.reason))


async def _following(h: WorkflowHandle, call: Callable[[str | None], Awaitable[None]]) -> None:
    """``call`` on the handle's run; on the latest run of the id if that run continued as new.

    A handle from ``start_workflow`` follows its workflow through continue-as-new (see ``_target``).
    The run is read only when the store refused it as closed, not before every call.
    """
    try:
        await call(h.run_id)
    except WorkflowClosedError as e:
        if h.run_id is None or not h._follow_runs or e.status != RunStatus.CONTINUED_AS_NEW:
            raise
        await call(None)
