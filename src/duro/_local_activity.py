"""Running local activities: in the worker that runs the workflow task, before that task commits.

The workflow side (``WorkflowInstance.schedule_local_activity`` and the markers that record the
outcomes) is in ``duro._instance``; this module is the worker's side: it runs every local activity
the workflow waits for, with its retries, and hands the outcomes back, until none is left.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any

from duro.activity import ActivityContext, ActivityInfo, RetryPolicy, get_activity_definition
from duro.converter import encode_failure
from duro.engine.machine import backoff_delay
from duro.errors import ApplicationError
from duro.errors import TimeoutError as DuroTimeoutError

if TYPE_CHECKING:
    from duro._instance import LocalCall, WorkflowInstance
    from duro.worker import Worker

__all__ = ["DEFAULT_LOCAL_RETRY", "DEFAULT_LOCAL_SCHEDULE_TO_CLOSE_S", "run_local_activities"]

log = logging.getLogger("duro.worker")

# Local activities run inside a workflow task (whose lease is 30 s): by default a few quick attempts.
DEFAULT_LOCAL_RETRY = RetryPolicy(initial_interval=1.0, maximum_attempts=3)
DEFAULT_LOCAL_SCHEDULE_TO_CLOSE_S = 60.0


async def run_local_activities(worker: Worker, inst: WorkflowInstance) -> None:
    """Run the local activities ``inst`` waits for and record their outcomes, until none is left.

    Each round runs every pending one at once and resolves them together in seq order (what a
    replay does from the recorded markers), then lets the workflow code go on, which may ask for
    more. Raises what the code raises then (a ``WorkflowTaskError``), as ``activate`` does.
    """
    while True:
        calls = inst.take_local_activities()
        if not calls:
            return
        outcomes = await asyncio.gather(*(_run(worker, inst, call) for call in calls))
        inst.resolve_local_activities([(call, ok, payload)
                                       for call, (ok, payload) in zip(calls, outcomes, strict=True)])


async def _run(worker: Worker, inst: WorkflowInstance, call: LocalCall) -> tuple[bool, bytes]:
    """Run one local activity with its retries: (True, result payload) or (False, failure payload)."""
    conv = worker.converter
    fn, is_async, hints = _resolve(worker, call)
    if fn is None:
        return False, encode_failure(ApplicationError(
            f"local activity {call.name!r} is not registered on worker {worker.identity}: pass the function to "
            "ctx.execute_local_activity, or register it in the worker's activities", type="ActivityNotRegistered",
            non_retryable=True))
    policy: RetryPolicy = call.options.get("retry_policy") or DEFAULT_LOCAL_RETRY
    start_to_close: float | None = call.options.get("start_to_close")
    schedule_to_close: float = call.options.get("schedule_to_close") or DEFAULT_LOCAL_SCHEDULE_TO_CLOSE_S
    try:  # through the converter, as a queued activity's arguments are: the same types arrive
        args = conv.decode_args(conv.encode_args(call.args), hints)
    except (TypeError, ValueError) as e:
        return False, encode_failure(ApplicationError(f"the arguments of local activity {call.name!r} cannot be "
                                                      f"sent: {e}", type=type(e).__name__, non_retryable=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    scheduled = worker.store.clock.now()
    attempt = 0
    while True:
        attempt += 1
        left = schedule_to_close - (loop.time() - started)
        timeout = left if start_to_close is None else min(start_to_close, left)
        info = ActivityInfo(
            activity_id=call.seq, activity_type=call.name, attempt=attempt, workflow_id=inst.info.workflow_id,
            workflow_run_id=inst.info.run_id, workflow_type=inst.info.workflow_type, task_queue=inst.info.task_queue,
            scheduled_time=scheduled, heartbeat_details=None, start_to_close_timeout=start_to_close,
            heartbeat_timeout=None)
        ctx = ActivityContext(info, _no_heartbeat)
        try:
            if is_async:
                result = await asyncio.wait_for(fn(ctx, *args), timeout)
            else:
                call_in_context = contextvars.copy_context().run
                result = await asyncio.wait_for(
                    loop.run_in_executor(worker._executor, call_in_context, fn, ctx, *args), timeout)
            return True, conv.encode(result)
        except TimeoutError:  # asyncio.wait_for's (the builtin)
            kind = "start_to_close" if timeout != left else "schedule_to_close"
            error: BaseException = DuroTimeoutError(f"local activity {call.name!r} ran past its {kind} timeout "
                                                f"({timeout:.3g}s)", timeout_type=kind)
        except Exception as e:  # the attempt failed: retried per the policy below
            error = e
        etype = error.type if isinstance(error, ApplicationError) else type(error).__name__
        delay = backoff_delay(policy.to_dict(), attempt, etype,
                              isinstance(error, ApplicationError) and error.non_retryable)
        if delay is None or loop.time() - started + delay >= schedule_to_close:
            log.warning("local activity %r of workflow %r failed on attempt %d: %s: %s; no retry left",
                        call.name, inst.info.workflow_id, attempt, etype, error)
            return False, encode_failure(error)
        log.warning("local activity %r of workflow %r failed on attempt %d: %s: %s; retrying in %.3gs",
                    call.name, inst.info.workflow_id, attempt, etype, error, delay)
        await asyncio.sleep(delay)


def _resolve(worker: Worker, call: LocalCall) -> tuple[Any, bool, list[Any]]:
    """(the callable, whether it is async, its argument hints); (None, ...) when it cannot be found."""
    if isinstance(call.activity, str):
        defn = worker._activities.get(call.activity)
        if defn is None:
            return None, False, []
        return defn.fn, defn.is_async, defn.arg_hints
    defn = get_activity_definition(call.activity)
    # A bound method is called as it was given (its instance); a plain function as itself.
    return call.activity, defn.is_async, defn.arg_hints


def _no_heartbeat(ctx: ActivityContext, details: Any) -> None:
    """Local activities do not heartbeat (they are done before their workflow task commits)."""
