"""The kill matrix's worker process and its workflow: ``python -m tests.integration.km_worker STORE QUEUE LOGDIR``.

Runs a ``duro.Worker`` for ``km_workflow`` until it is killed (SIGKILL from the driver) or gets
SIGTERM/SIGINT; prints ``ready`` (flushed) once the worker polls. SIGUSR1 dumps the asyncio tasks'
stacks to stderr (``worker_main._dump_tasks``).

Every execution of an activity is logged to ``LOGDIR/act-<pid>.log``, one line per event, each
written with ``O_APPEND`` and fsynced before the activity goes on:

- ``S wfid run_id activity_id attempt step start_us pid`` when an attempt starts (before any work);
- ``E wfid run_id activity_id attempt step end_us pid`` just before it returns its result.

The driver compares these lines with the recorded histories: an attempt that *started* after its
activity's ``ActivityTaskCompleted`` event was recorded is a re-run after the result was recorded.
The module is importable (the driver and the clients use ``km_workflow`` and ``expected_result``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import duro  # noqa: E402
from tests.integration.worker_main import _dump_tasks  # noqa: E402

TASK_QUEUE = "killmatrix"
STEPS = (1, 2, 3, 4)
# Short retries: a killed attempt is retried as soon as its owner is known dead.
RETRY = duro.RetryPolicy(initial_interval=0.05, backoff_coefficient=2.0, maximum_interval=0.5)
# An attempt's own timeout, far above its real duration: a take-over must come from the owner's
# death, not from this timeout (a live worker never loses an attempt it still runs).
START_TO_CLOSE_S = 60.0
# Activities take a random time in this range, so that kills land in the middle of attempts.
ACT_MIN_S, ACT_MAX_S = 0.0, 0.1


def step_value(wfid: str, step: int) -> int:
    """The result step ``step`` of workflow ``wfid`` must return (a pure function of both)."""
    return int.from_bytes(hashlib.sha256(f"{wfid}:{step}".encode()).digest()[:6], "big")


def expected_result(wfid: str) -> list[int]:
    """What ``km_workflow(wfid)`` must return."""
    return [step_value(wfid, s) for s in STEPS]


class _ActivityLog:
    """This process's append-only, fsynced log of activity executions (opened on first use)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()

    def write(self, kind: str, ctx: duro.ActivityContext, step: int) -> None:
        info = ctx.info
        line = (f"{kind} {info.workflow_id} {info.workflow_run_id} {info.activity_id} {info.attempt} {step} "
                f"{time.time_ns() // 1000} {os.getpid()}\n").encode()
        with self._lock:
            if self._fd is None:
                log_dir = os.environ["KM_LOG_DIR"]
                self._fd = os.open(os.path.join(log_dir, f"act-{os.getpid()}.log"),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fd = self._fd
        os.write(fd, line)  # one write(2) of one line under O_APPEND: never interleaved with another
        os.fsync(fd)


_LOG = _ActivityLog()


@duro.activity
async def km_step(ctx: duro.ActivityContext, wfid: str, step: int) -> int:
    """An async activity: logs its start, takes a random short time, logs its end, returns its value."""
    _LOG.write("S", ctx, step)
    await asyncio.sleep(random.uniform(ACT_MIN_S, ACT_MAX_S))
    value = step_value(wfid, step)
    _LOG.write("E", ctx, step)
    return value


@duro.activity
def km_step_sync(ctx: duro.ActivityContext, wfid: str, step: int) -> int:
    """The same as ``km_step`` as a sync activity (runs in the worker's thread pool)."""
    _LOG.write("S", ctx, step)
    time.sleep(random.uniform(ACT_MIN_S, ACT_MAX_S))  # an activity's own work, not a wait in a test
    value = step_value(wfid, step)
    _LOG.write("E", ctx, step)
    return value


def _run_step(ctx: duro.WorkflowContext, activity: object, wfid: str, step: int) -> asyncio.Future[int]:
    return ctx.execute_activity(activity, wfid, step,  # type: ignore[arg-type]
                                start_to_close_timeout=START_TO_CLOSE_S, retry_policy=RETRY)


@duro.workflow
async def km_workflow(ctx: duro.WorkflowContext, wfid: str) -> list[int]:
    """Four activities: one, then two in parallel (async and sync), a durable timer, then one more."""
    a = await _run_step(ctx, km_step, wfid, 1)
    b, c = await asyncio.gather(_run_step(ctx, km_step, wfid, 2), _run_step(ctx, km_step_sync, wfid, 3))
    await ctx.sleep(0.01)
    d = await _run_step(ctx, km_step_sync, wfid, 4)
    return [a, b, c, d]


async def main(url: str, task_queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=task_queue, workflows=[km_workflow],
                               activities=[km_step, km_step_sync], identity=f"km-worker-{os.getpid()}"):
            print("ready", flush=True)
            await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tests.integration.km_worker STORE_URL TASK_QUEUE LOG_DIR")
    os.environ["KM_LOG_DIR"] = sys.argv[3]
    asyncio.run(main(sys.argv[1], sys.argv[2]))
