"""Microbenchmarks of the compiled core and the workflow loop (pytest-benchmark).

Not part of the test suite (pyproject's testpaths is ["tests"]); run them with

    .venv/bin/python -m pytest benchmarks/micro --benchmark-only -p no:cacheprovider

What each one times:

- codec: ``encode_event`` / ``decode_event`` of one small event (an activity result, 19-byte payload);
- history append: one write transaction appending a 10-event batch to a run through
  ``HistoryLog.append``, committed per batch on an environment opened with ``sync=True`` (so each
  round includes the commit's fsync; the batch is built outside the timing);
- history read: ``HistoryLog.read`` of a 1,000-event run in a fresh read transaction, with
  ``buffers=True`` (zero-copy, what the LMDB store does) and without;
- replay: ``duro.testing.Replayer.replay`` of a 2,000-activity history (6,003 events, already
  decoded; built once per module by a Worker on a temporary LMDB store);
- loop step: resolve one future and ``WorkflowLoop.run_until_quiescent()`` until the workflow
  coroutine blocks on its next future (the live-worker path, which switches the running loop and
  arms the I/O guard per call); ``_held_x100`` does 100 such steps inside ``loop.held()`` (the
  replay path): divide its time by 100.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro._core import codec, mdb
from duro._core.codec import Event
from duro._core.log import HistoryLog
from duro._loop import WorkflowLoop

MAP_SIZE = 1 << 30
T0_US = 1_700_000_000_000_000

# --- codec -----------------------------------------------------------------------------------------

# A small, typical event (the same as benchmarks/bench_codec.py): an activity result.
SMALL = (codec.ACTIVITY_COMPLETED, 5, T0_US, 2, 1, "charge", b'{"ok":true,"id":42}')


def test_codec_encode(benchmark: Any) -> None:
    envelope = benchmark(codec.encode_event, *SMALL)
    assert codec.decode_event(envelope) == Event(*SMALL)


@pytest.mark.parametrize("view", [False, True], ids=["bytes", "memoryview"])
def test_codec_decode(benchmark: Any, view: bool) -> None:
    envelope = codec.encode_event(*SMALL)
    event = benchmark(codec.decode_event, memoryview(envelope) if view else envelope)
    assert event == Event(*SMALL)


# --- history log on duro._core.mdb -----------------------------------------------------------------


def _events(first_id: int, n: int) -> list[Event]:
    """``n`` events from ``first_id``: scheduled/completed pairs of a small activity."""
    out = []
    for i in range(n):
        eid = first_id + i
        if eid % 2:
            out.append(Event(codec.ACTIVITY_SCHEDULED, eid, T0_US + eid, eid // 2 + 1, 0, "charge", b'[{"amount":3}]'))
        else:
            out.append(Event(codec.ACTIVITY_COMPLETED, eid, T0_US + eid, eid // 2, 1, "charge", b'{"ok":true}'))
    return out


@pytest.fixture
def fresh_log(tmp_path: Path) -> Iterator[tuple[mdb.Environment, HistoryLog]]:
    env = mdb.Environment(str(tmp_path), map_size=MAP_SIZE, sync=True)
    try:
        yield env, HistoryLog(env, env.open_db(b"history"))
    finally:
        env.close()


def test_history_append_10_events(benchmark: Any, fresh_log: tuple[mdb.Environment, HistoryLog]) -> None:
    """One durable commit (sync=True: fsync per commit) of a 10-event batch, appended to one run."""
    env, log = fresh_log
    run_key = uuid.uuid4().bytes
    next_id = [1]

    def setup() -> tuple[tuple[list[Event]], dict[str, Any]]:
        batch = _events(next_id[0], 10)
        next_id[0] += 10
        return (batch,), {}

    def append(batch: list[Event]) -> None:
        with env.begin(write=True) as txn:  # commits (and fsyncs) on leaving the block
            log.append(txn, run_key, batch)

    benchmark.pedantic(append, setup=setup, rounds=300, warmup_rounds=10)
    with env.begin() as txn:
        assert log.count(txn, run_key) == next_id[0] - 1


@pytest.fixture(scope="module")
def run_of_1000(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[mdb.Environment, HistoryLog, bytes]]:
    env = mdb.Environment(str(tmp_path_factory.mktemp("read")), map_size=MAP_SIZE, sync=True)
    log = HistoryLog(env, env.open_db(b"history"))
    run_key = uuid.uuid4().bytes
    with env.begin(write=True) as txn:
        for first in range(1, 1001, 10):
            log.append(txn, run_key, _events(first, 10))
        log.append(txn, uuid.uuid4().bytes, _events(1, 10))  # a neighbouring run the read must stop at
    try:
        yield env, log, run_key
    finally:
        env.close()


@pytest.mark.parametrize("buffers", [True, False], ids=["buffers", "copy"])
def test_history_read_1000_events(benchmark: Any, run_of_1000: tuple[mdb.Environment, HistoryLog, bytes],
                                  buffers: bool) -> None:
    env, log, run_key = run_of_1000

    def read() -> list[Event]:
        with env.begin(buffers=buffers) as txn:
            return log.read(txn, run_key)

    events = benchmark(read)
    assert len(events) == 1000 and events[-1].event_id == 1000


# --- replay ----------------------------------------------------------------------------------------


@duro.activity
async def echo(ctx: duro.ActivityContext, i: int) -> int:
    return i


@duro.workflow
async def chain(ctx: duro.WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.execute_activity(echo, i)
    return total


async def _record_chain(store_dir: Path, n: int) -> duro.History:
    async with duro.Client.connect(f"lmdb://{store_dir}") as client:
        async with duro.Worker(client, task_queue="micro", workflows=[chain], activities=[echo]):
            handle = await client.start_workflow(chain, n, id="micro-replay", task_queue="micro")
            assert await handle.result(timeout=50) == sum(range(n))
        return await handle.fetch_history()


@pytest.fixture(scope="module")
def history_of_2000(tmp_path_factory: pytest.TempPathFactory) -> duro.History:
    history = asyncio.run(_record_chain(tmp_path_factory.mktemp("replay") / "store", 2000))
    assert sum(e.event_type == "ActivityTaskCompleted" for e in history) == 2000
    return history


def test_replay_2000_activities(benchmark: Any, history_of_2000: duro.History) -> None:
    replayer = duro.testing.Replayer(workflows=[chain])
    with asyncio.Runner() as runner:
        benchmark(lambda: runner.run(replayer.replay(history_of_2000)))


# --- workflow loop -------------------------------------------------------------------------------


class _Stepper:
    """A workflow coroutine that waits on one future after another; ``step`` resolves the current one."""

    def __init__(self) -> None:
        self.loop = WorkflowLoop(start_timer=self._no_timers, cancel_timer=self._no_timers)
        self.loop.set_time(T0_US / 1e6)
        self.steps = 0
        self.current: asyncio.Future[int] | None = None
        self.task = self.loop.create_task(self._body())
        self.loop.run_until_quiescent()

    @staticmethod
    def _no_timers(_: Any) -> Any:
        raise AssertionError("the stepper starts no timers")

    async def _body(self) -> None:
        while True:
            self.current = self.loop.create_future()
            self.steps += await self.current

    def step(self) -> None:
        assert self.current is not None
        self.current.set_result(1)
        self.loop.run_until_quiescent()

    def close(self) -> None:
        errors = list(self.loop.unhandled_errors)
        self.loop.close()
        assert errors == []


@pytest.fixture
def stepper() -> Iterator[_Stepper]:
    s = _Stepper()
    yield s
    s.close()


def test_loop_step(benchmark: Any, stepper: _Stepper) -> None:
    benchmark(stepper.step)
    assert stepper.steps > 0 and not stepper.task.done()


def test_loop_step_held_x100(benchmark: Any, stepper: _Stepper) -> None:
    step: Callable[[], None] = stepper.step

    def hundred_steps() -> None:
        with stepper.loop.held():
            for _ in range(100):
                step()

    benchmark(hundred_steps)
    assert stepper.steps % 100 == 0 and not stepper.task.done()
