"""Tests of the deterministic workflow loop (duro._loop), driven by hand without the engine."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from duro._loop import WorkflowLoop, install_io_guard
from duro.errors import WorkflowIOError

HINT = "workflow code must be deterministic; do I/O in an activity"
T0 = 1_700_000_000.0


class Driver:
    """A stand-in for the engine: records timer commands, fires timers, runs activations."""

    def __init__(self, now: float = T0) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self._next_seq = 0
        self.loop = WorkflowLoop(start_timer=self._start_timer, cancel_timer=self._cancel_timer)
        self.loop.set_time(now)

    def _start_timer(self, delay: float) -> int:
        self._next_seq += 1
        self.commands.append(("start_timer", self._next_seq, delay))
        return self._next_seq

    def _cancel_timer(self, seq: int) -> None:
        self.commands.append(("cancel_timer", seq))

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.loop.run_until_quiescent()
        return task

    def run(self) -> None:
        self.loop.run_until_quiescent()

    def fire(self, *seqs: int) -> None:
        """One activation: the clock moves to the latest due time, the timers fire, the loop runs."""
        pending = self.loop.pending_timers()
        self.loop.set_time(max([self.loop.time()] + [pending[s] for s in seqs if s in pending]))
        for seq in seqs:
            self.loop.fire_timer(seq)
        self.loop.run_until_quiescent()


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    yield d
    errors = list(d.loop.unhandled_errors)
    d.loop.close()
    assert errors == [], "unexpected unhandled errors in the workflow loop"


def result(task: asyncio.Task[Any]) -> Any:
    assert task.done(), f"{task!r} is still blocked"
    return task.result()


# ------------------------------------------------------------------------ determinism


def run_mixed_workflow() -> tuple[list[str], list[tuple[Any, ...]]]:
    d = Driver()
    log: list[str] = []
    futs = [d.loop.create_future(), d.loop.create_future()]

    async def spin(name: str, n: int) -> str:
        for i in range(n):
            log.append(f"{name}{i}")
            await asyncio.sleep(0)
        return name

    async def waits(name: str, fut: asyncio.Future[str]) -> str:
        log.append(f"{name}-wait")
        value = await fut
        log.append(f"{name}-got-{value}")
        return value

    async def naps(name: str, seconds: float) -> str:
        log.append(f"{name}-sleep")
        await asyncio.sleep(seconds)
        log.append(f"{name}-woke")
        return name

    async def wf() -> None:
        results = await asyncio.gather(
            spin("a", 3), waits("c", futs[0]), naps("t5", 5), spin("b", 2), waits("d", futs[1]), naps("t3", 3)
        )
        log.append(f"done {results}")

    task = d.start(wf())
    log.append("-- resolve d then c")
    futs[1].set_result("D")
    futs[0].set_result("C")
    d.run()
    log.append("-- fire both timers")
    d.fire(2, 1)
    assert result(task) is None
    d.loop.close()
    return log, d.commands


def test_gather_runs_in_a_deterministic_order() -> None:
    first = run_mixed_workflow()
    second = run_mixed_workflow()
    assert first == second
    log, commands = first
    assert log == [
        "a0", "c-wait", "t5-sleep", "b0", "d-wait", "t3-sleep",
        "a1", "b1", "a2",
        "-- resolve d then c", "d-got-D", "c-got-C",
        "-- fire both timers", "t3-woke", "t5-woke",
        "done ['a', 'C', 't5', 'b', 'D', 't3']",
    ]  # fmt: skip
    assert commands == [("start_timer", 1, 5.0), ("start_timer", 2, 3.0)]


# ----------------------------------------------------------------------------- timers


def test_sleep_is_one_durable_timer(driver: Driver) -> None:
    async def wf() -> float:
        await asyncio.sleep(5)
        return asyncio.get_running_loop().time()

    task = driver.start(wf())
    assert driver.commands == [("start_timer", 1, 5.0)]
    assert driver.loop.pending_timers() == {1: T0 + 5}
    driver.run()
    driver.loop.set_time(T0 + 4)
    driver.run()
    assert not task.done(), "a timer completes only when the engine fires it"
    driver.fire(1)
    assert result(task) == T0 + 5
    assert driver.commands == [("start_timer", 1, 5.0)]
    assert driver.loop.pending_timers() == {}


def test_sleep_zero_starts_no_timer(driver: Driver) -> None:
    async def wf() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(-1)
        return "ok"

    assert result(driver.start(wf())) == "ok"
    assert driver.commands == []


def test_due_callbacks_run_at_once_without_a_timer(driver: Driver) -> None:
    ran: list[str] = []
    loop = driver.loop
    loop.call_later(0, ran.append, "later 0")
    loop.call_later(-3, ran.append, "later -3")
    loop.call_at(loop.time() - 5, ran.append, "at past")
    loop.call_at(loop.time(), ran.append, "at now")
    never = loop.call_later(math.inf, ran.append, "never")
    driver.run()
    assert ran == ["later 0", "later -3", "at past", "at now"]
    assert driver.commands == []
    never.cancel()
    assert driver.commands == []
    with pytest.raises(ValueError, match="NaN"):
        loop.call_later(math.nan, ran.append, "nan")


def test_wait_for_that_wins_cancels_its_timer(driver: Driver) -> None:
    fut = driver.loop.create_future()

    async def wf() -> str:
        value: str = await asyncio.wait_for(fut, timeout=10)
        return value

    task = driver.start(wf())
    assert driver.commands == [("start_timer", 1, 10.0)]
    fut.set_result("fast")
    driver.run()
    assert result(task) == "fast"
    assert driver.commands == [("start_timer", 1, 10.0), ("cancel_timer", 1)]
    assert driver.loop.pending_timers() == {}
    driver.fire(1)  # the cancelled timer fires anyway (a race): ignored


def test_wait_for_that_times_out_raises_and_cancels_nothing(driver: Driver) -> None:
    fut = driver.loop.create_future()

    async def wf() -> str:
        try:
            await asyncio.wait_for(fut, timeout=10)
        except TimeoutError:
            return "timed out"
        return "no"

    task = driver.start(wf())
    driver.fire(1)
    assert result(task) == "timed out"
    assert fut.cancelled()
    assert driver.commands == [("start_timer", 1, 10.0)]


def test_asyncio_timeout_records_the_delay_it_was_given(driver: Driver) -> None:
    driver.loop.set_time(T0 + 0.123)
    fut = driver.loop.create_future()

    async def wf() -> str:
        async with asyncio.timeout(0.1):
            await fut
        try:
            async with asyncio.timeout(7):
                await asyncio.Event().wait()
        except TimeoutError:
            return "second timed out"
        return "no"

    task = driver.start(wf())
    # when - time() at epoch magnitude is 0.09999990463256836; the recorded delay is exact.
    assert driver.commands == [("start_timer", 1, 0.1)]
    fut.set_result(None)
    driver.run()
    assert driver.commands == [("start_timer", 1, 0.1), ("cancel_timer", 1), ("start_timer", 2, 7.0)]
    driver.fire(2)
    assert result(task) == "second timed out"


def test_fire_timer_ignores_unknown_and_cancelled(driver: Driver) -> None:
    ran: list[int] = []
    handle = driver.loop.call_later(1, ran.append, 1)
    driver.loop.call_later(2, ran.append, 2)
    assert driver.loop.pending_timers() == {1: T0 + 1, 2: T0 + 2}
    handle.cancel()
    handle.cancel()
    assert driver.commands[-1] == ("cancel_timer", 1)
    assert driver.commands.count(("cancel_timer", 1)) == 1
    driver.loop.fire_timer(1)
    driver.loop.fire_timer(999)
    driver.loop.fire_timer(2)
    driver.loop.fire_timer(2)
    driver.run()
    assert ran == [2]
    assert driver.loop.pending_timers() == {}
    assert not driver.loop.has_ready()


def test_timer_sequence_numbers_must_be_unique() -> None:
    loop = WorkflowLoop(start_timer=lambda delay: 7, cancel_timer=lambda seq: None)
    loop.call_later(1, print)
    with pytest.raises(RuntimeError, match="live timer"):
        loop.call_later(2, print)
    loop.close()


def test_time_is_the_set_time_not_the_wall_clock(driver: Driver) -> None:
    seen: list[float] = []

    async def wf() -> None:
        seen.append(asyncio.get_running_loop().time())
        await asyncio.sleep(60)
        seen.append(asyncio.get_running_loop().time())

    driver.loop.set_time(12.5)
    driver.start(wf())
    driver.loop.set_time(100.0)
    driver.loop.fire_timer(1)
    driver.run()
    assert seen == [12.5, 100.0]
    assert driver.loop.time() == 100.0


def test_advance_time_only_moves_the_clock_forward(driver: Driver) -> None:
    driver.loop.set_time(100.0)
    driver.loop.advance_time(99.5)
    assert driver.loop.time() == 100.0
    driver.loop.advance_time(100.25)
    assert driver.loop.time() == 100.25


# ------------------------------------------------------------ asyncio primitives work


def test_event_set_by_one_task_wakes_another_in_the_same_run(driver: Driver) -> None:
    log: list[str] = []

    async def wf() -> None:
        event = asyncio.Event()

        async def waiter() -> None:
            log.append("waiting")
            await event.wait()
            log.append("woken")

        async def setter() -> None:
            await asyncio.sleep(0)
            log.append("setting")
            event.set()

        await asyncio.gather(waiter(), setter())

    task = driver.start(wf())
    assert result(task) is None
    assert log == ["waiting", "setting", "woken"]


def test_queue_lock_semaphore_condition(driver: Driver) -> None:
    log: list[str] = []

    async def wf() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        lock = asyncio.Lock()
        sem = asyncio.Semaphore(2)
        cond = asyncio.Condition()
        got: list[int] = []

        async def producer() -> None:
            for i in range(3):
                await queue.put(i)
                log.append(f"put {i}")
            await queue.put(-1)

        async def consumer() -> None:
            while (item := await queue.get()) >= 0:
                got.append(item)

        async def locked(name: str) -> None:
            async with lock:
                log.append(f"{name} in")
                await asyncio.sleep(0)
                log.append(f"{name} out")

        async def limited(name: str) -> None:
            async with sem:
                log.append(f"sem {name}")
                await asyncio.sleep(0)

        async def wait_cond(name: str) -> None:
            async with cond:
                await cond.wait()
                log.append(f"cond {name}")

        async def notify() -> None:
            await asyncio.sleep(0)
            async with cond:
                cond.notify_all()

        await asyncio.gather(producer(), consumer())
        await asyncio.gather(locked("x"), locked("y"))
        await asyncio.gather(limited("1"), limited("2"), limited("3"))
        await asyncio.gather(wait_cond("p"), wait_cond("q"), notify())
        return got

    assert result(driver.start(wf())) == [0, 1, 2]
    assert log == [
        "put 0", "put 1", "put 2",
        "x in", "x out", "y in", "y out",
        "sem 1", "sem 2", "sem 3",
        "cond p", "cond q",
    ]  # fmt: skip


def test_shield_and_task_group(driver: Driver) -> None:
    inner_fut = driver.loop.create_future()

    async def wf() -> tuple[str, str]:
        inner = asyncio.ensure_future(inner_fut)
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await asyncio.sleep(0)
        outer.cancel()
        try:
            await outer
        except asyncio.CancelledError:
            pass
        shielded = "inner survived" if not inner.cancelled() else "inner cancelled"

        async def ok() -> None:
            await asyncio.sleep(3600)

        async def bad() -> None:
            raise KeyError("boom")

        outcome = "no"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(ok())
                group.create_task(bad())
        except* KeyError:
            outcome = "group failed"
        return shielded, outcome

    task = driver.start(wf())
    assert result(task) == ("inner survived", "group failed")
    assert driver.commands == [("start_timer", 1, 3600.0), ("cancel_timer", 1)]


def test_asyncio_wait_with_timeout(driver: Driver) -> None:
    async def wf() -> tuple[int, int]:
        fast = asyncio.ensure_future(asyncio.sleep(1, "fast"))
        slow = asyncio.ensure_future(asyncio.sleep(10, "slow"))
        done, pending = await asyncio.wait({fast, slow}, timeout=5)
        slow.cancel()
        return len(done), len(pending)

    task = driver.start(wf())
    # wait() runs before the two new tasks take their first step: its timeout timer comes first.
    assert driver.commands == [("start_timer", 1, 5.0), ("start_timer", 2, 1.0), ("start_timer", 3, 10.0)]
    driver.fire(2)
    assert not task.done()
    driver.fire(1)
    assert result(task) == (1, 1)
    assert driver.commands[3:] == [("cancel_timer", 3)]


# ------------------------------------------------------------------------ tasks


def task_names_of_a_run() -> list[str]:
    d = Driver()
    names: list[str] = []

    async def child() -> None:
        current = asyncio.current_task()
        assert current is not None
        names.append(current.get_name())

    async def wf() -> None:
        await child()
        await asyncio.create_task(child())
        await asyncio.create_task(child(), name="custom")
        await asyncio.gather(child(), child())

    d.start(wf())
    d.loop.close()
    return names


def test_task_names_are_deterministic() -> None:
    # Other tasks in the process (this test's own, other loops') must not shift the numbers.
    first = task_names_of_a_run()
    asyncio.run(asyncio.sleep(0))
    # asyncio.create_task(name=...) names the task after the loop created it, so every task,
    # named or not, takes the next number.
    assert (
        task_names_of_a_run()
        == first
        == [
            "workflow-task-1",
            "workflow-task-2",
            "custom",
            "workflow-task-4",
            "workflow-task-5",
        ]
    )


def test_task_factory_is_used_and_names_stay_deterministic(driver: Driver) -> None:
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append("made")
        return asyncio.Task(coro, loop=loop, **kwargs)

    driver.loop.set_task_factory(factory)
    assert driver.loop.get_task_factory() is factory
    task = driver.start(asyncio.sleep(0))
    assert task.get_name() == "workflow-task-1"
    assert made == ["made"]


def test_unawaited_task_exception_is_reported_after_the_run(driver: Driver) -> None:
    async def boom() -> None:
        raise ValueError("lost")

    async def wf() -> None:
        asyncio.create_task(boom())  # noqa: RUF006 - dropped on purpose
        await asyncio.sleep(0)

    driver.start(wf())
    errors = driver.loop.unhandled_errors
    assert [e["message"] for e in errors] == ["Task exception was never retrieved"]
    assert isinstance(errors[0]["exception"], ValueError)
    errors.clear()


def test_task_awaited_in_a_later_activation_is_not_reported(driver: Driver) -> None:
    async def boom() -> None:
        raise ValueError("later")

    async def wf() -> str:
        task = asyncio.create_task(boom())
        await asyncio.sleep(5)
        try:
            await task
        except ValueError:
            return "caught"
        return "no"

    task = driver.start(wf())
    assert driver.loop.unhandled_errors == []
    driver.fire(1)
    assert result(task) == "caught"


def test_callback_exception_and_exception_handlers(driver: Driver) -> None:
    loop = driver.loop

    def fail() -> None:
        raise ZeroDivisionError

    loop.call_soon(fail)
    driver.run()
    [context] = loop.unhandled_errors
    assert isinstance(context["exception"], ZeroDivisionError)
    assert "handle" in context
    loop.unhandled_errors.clear()

    seen: list[dict[str, Any]] = []

    def handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        assert handler_loop is loop
        seen.append(context)

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.call_soon(fail)
    driver.run()
    assert len(seen) == 1 and loop.unhandled_errors == []

    def broken_handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        raise RuntimeError("handler broke")

    loop.set_exception_handler(broken_handler)
    loop.call_soon(fail)
    driver.run()
    [context] = loop.unhandled_errors
    assert isinstance(context["exception"], RuntimeError)
    assert isinstance(context["context"]["exception"], ZeroDivisionError)
    loop.unhandled_errors.clear()
    loop.set_exception_handler(None)


def test_is_running_only_inside_a_run(driver: Driver) -> None:
    async def wf() -> bool:
        return asyncio.get_running_loop().is_running()

    assert not driver.loop.is_running()
    assert result(driver.start(wf())) is True
    assert not driver.loop.is_running()
    assert not driver.loop.get_debug()


def test_reentrant_run_raises(driver: Driver) -> None:
    async def wf() -> str:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, WorkflowLoop)
        try:
            loop.run_until_quiescent()
        except RuntimeError as exc:
            assert "already running" in str(exc)
        else:
            return "no error"
        try:
            loop.close()
        except RuntimeError:
            return "refused"
        return "closed"

    assert result(driver.start(wf())) == "refused"


# ------------------------------------------- inside a real loop, running loop restored


def run_inside(outer: asyncio.AbstractEventLoop) -> None:
    d = Driver()
    seen: dict[str, Any] = {}

    async def agen(log: list[str]) -> Any:
        try:
            for i in range(10):
                yield i
        finally:
            log.append("agen closed on " + type(asyncio.get_running_loop()).__name__)

    async def wf() -> None:
        seen["loop"] = asyncio.get_running_loop()
        seen["event loop"] = asyncio.get_event_loop()
        log: list[str] = []
        async for i in agen(log):
            if i == 1:
                break
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen["agen"] = log
        await asyncio.sleep(5)

    hooks_before = sys.get_asyncgen_hooks()
    task = d.start(wf())
    assert seen["loop"] is d.loop and seen["event loop"] is d.loop
    assert seen["agen"] == ["agen closed on WorkflowLoop"]
    assert asyncio.get_running_loop() is outer
    assert sys.get_asyncgen_hooks() == hooks_before
    d.fire(1)
    assert result(task) is None
    assert asyncio.get_running_loop() is outer

    # An exception escaping the run (SystemExit passes through handles) restores the outer loop.
    def leave() -> None:
        raise SystemExit(3)

    d.loop.call_soon(leave)
    with pytest.raises(SystemExit):
        d.run()
    assert asyncio.get_running_loop() is outer
    assert not d.loop.is_running()
    assert sys.get_asyncgen_hooks() == hooks_before
    d.run()  # still usable
    assert d.loop.unhandled_errors == []
    d.loop.close()


async def test_runs_while_an_asyncio_loop_is_running() -> None:
    outer = asyncio.get_running_loop()
    run_inside(outer)
    await asyncio.sleep(0)  # the outer loop still works
    assert asyncio.get_running_loop() is outer


def test_runs_while_a_uvloop_loop_is_running() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> str:
        outer = asyncio.get_running_loop()
        run_inside(outer)
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()).startswith("uvloop")


def test_no_running_loop_before_and_after() -> None:
    d = Driver()
    d.start(asyncio.sleep(0))
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    d.loop.close()


# ------------------------------------------------------------------------ closing


def test_close_tears_down_coroutines_without_timer_commands() -> None:
    d = Driver()
    log: list[str] = []

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            log.append("background finally")

    async def wf() -> None:
        asyncio.create_task(background())  # noqa: RUF006 - kept alive by the loop
        try:
            await asyncio.sleep(30)
        finally:
            log.append("main finally")

    d.start(wf())
    assert d.commands == [("start_timer", 1, 30.0)]
    d.loop.close()
    assert log == ["main finally", "background finally"]
    assert d.commands == [("start_timer", 1, 30.0)], "eviction is not a decision to cancel a timer"
    assert d.loop.is_closed()
    assert d.loop.unhandled_errors == []
    loop = d.loop
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_quiescent()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()
    d.commands.clear()
    del d, loop
    gc.collect()  # nothing left to report or warn about


def test_blocked_task_in_a_reference_cycle_is_kept_alive(driver: Driver) -> None:
    log: list[str] = []

    async def stuck() -> None:
        # The task waits on an event only its own frame references: a cycle that only the loop's
        # strong reference keeps from being collected (and closed) at an arbitrary point.
        event = asyncio.Event()
        try:
            await event.wait()
        finally:
            log.append("closed")

    async def wf() -> None:
        asyncio.create_task(stuck())  # noqa: RUF006
        await asyncio.sleep(0)

    driver.start(wf())
    gc.collect()
    assert log == []


# ------------------------------------------------------------ refused loop methods

REFUSED = [
    "run_in_executor",
    "getaddrinfo",
    "getnameinfo",
    "create_connection",
    "create_server",
    "create_datagram_endpoint",
    "create_unix_connection",
    "create_unix_server",
    "connect_accepted_socket",
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendto",
    "sock_connect",
    "sock_accept",
    "sock_sendfile",
    "add_reader",
    "add_writer",
    "remove_reader",
    "remove_writer",
    "subprocess_exec",
    "subprocess_shell",
    "connect_read_pipe",
    "connect_write_pipe",
    "add_signal_handler",
    "remove_signal_handler",
    "sendfile",
    "start_tls",
    "call_soon_threadsafe",
    "set_default_executor",
    "shutdown_default_executor",
]


@pytest.mark.parametrize("name", REFUSED)
def test_io_methods_raise(driver: Driver, name: str) -> None:
    with pytest.raises(WorkflowIOError, match=f"loop.{name}\\(\\)") as info:
        getattr(driver.loop, name)(None, None)
    assert HINT in str(info.value)


@pytest.mark.parametrize("name", ["run_forever", "run_until_complete", "stop"])
def test_run_and_stop_say_the_engine_drives_the_loop(driver: Driver, name: str) -> None:
    with pytest.raises(WorkflowIOError, match="the duro engine drives this loop"):
        getattr(driver.loop, name)()


def test_asyncio_helpers_that_need_io_raise_inside_a_workflow(driver: Driver) -> None:
    async def wf() -> list[str]:
        out = []
        for attempt in (
            lambda: asyncio.to_thread(print),
            lambda: asyncio.open_connection("127.0.0.1", 9),
            lambda: asyncio.create_subprocess_exec("true"),
        ):
            try:
                await attempt()
            except WorkflowIOError as exc:
                out.append(str(exc).split("()")[0])
        return out

    assert result(driver.start(wf())) == [
        "loop.run_in_executor",
        "loop.create_connection",
        "loop.subprocess_exec",
    ]


# ------------------------------------------------------------------------ audit guard


@pytest.fixture(scope="module")
def io_guard() -> None:
    install_io_guard()
    install_io_guard()  # idempotent


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()
    server.close()


def io_attempts(tmp_path: Path, address: tuple[str, int]) -> dict[str, Callable[[], object]]:
    data = tmp_path / "data.txt"

    def read_file() -> str:
        with open(data) as f:
            return f.read()

    def write_file() -> None:
        with open(tmp_path / "out.txt", "w") as f:
            f.write("x")

    def connect() -> None:
        with socket.create_connection(address):
            pass

    def start_thread() -> None:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()

    def system() -> int:
        return os.system("true")

    def hostname() -> str:
        with open("/etc/hostname") as f:
            return f.read()

    attempts: dict[str, Callable[[], object]] = {
        "open for reading": read_file,
        "open for writing": write_file,
        "os.open": lambda: os.close(os.open(data, os.O_RDONLY)),
        "socket": lambda: socket.socket().close(),
        "connect": connect,
        "getaddrinfo": lambda: socket.getaddrinfo("127.0.0.1", 80),
        "subprocess": lambda: subprocess.run(["true"], check=True),
        "os.system": system,
        "thread": start_thread,
        "remove": lambda: (tmp_path / "scratch").unlink(),
        "mkdir": lambda: (tmp_path / "newdir").mkdir(),
    }
    if sys.version_info >= (3, 12):  # Python 3.11 raises no audit event for time.sleep
        attempts["time.sleep"] = lambda: time.sleep(0)
    if os.path.exists("/etc/hostname"):
        attempts["/etc/hostname"] = hostname
    return attempts


def prepare(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("data")
    (tmp_path / "scratch").write_text("")
    if (tmp_path / "newdir").exists():
        (tmp_path / "newdir").rmdir()
    (tmp_path / "out.txt").unlink(missing_ok=True)


def attempt_all(attempts: dict[str, Callable[[], object]]) -> dict[str, str]:
    outcomes = {}
    for label, attempt in attempts.items():
        try:
            attempt()
        except WorkflowIOError as exc:
            assert HINT in str(exc) or "asyncio.sleep" in str(exc), str(exc)
            outcomes[label] = "refused"
        else:
            outcomes[label] = "allowed"
    return outcomes


@pytest.mark.usefixtures("io_guard")
def test_guard_refuses_direct_io_in_workflow_code_only(
    driver: Driver, tmp_path: Path, listener: tuple[str, int]
) -> None:
    attempts = io_attempts(tmp_path, listener)
    prepare(tmp_path)
    outside_before = attempt_all(attempts)

    prepare(tmp_path)

    async def wf() -> dict[str, str]:
        return attempt_all(attempts)

    inside = result(driver.start(wf()))
    assert inside == dict.fromkeys(attempts, "refused")
    # Refused means not done.
    assert (tmp_path / "scratch").exists()
    assert not (tmp_path / "newdir").exists()
    assert not (tmp_path / "out.txt").exists()

    prepare(tmp_path)
    outside_after = attempt_all(attempts)
    assert set(outside_before.values()) == {"allowed"}
    assert outside_after == outside_before


@pytest.mark.usefixtures("io_guard")
def test_guard_messages_name_the_call(driver: Driver, tmp_path: Path) -> None:
    messages: list[str] = []

    async def wf() -> None:
        for attempt in (
            lambda: open(tmp_path / "nope.txt", "w"),
            lambda: subprocess.run(["true"]),
            lambda: time.sleep(0.001),
        ):
            try:
                attempt()
            except WorkflowIOError as exc:
                messages.append(str(exc))

    driver.start(wf())
    assert messages[0].startswith("open(") and "nope.txt" in messages[0] and HINT in messages[0]
    assert messages[1].startswith("subprocess.Popen(") and "starts a subprocess" in messages[1]
    if sys.version_info >= (3, 12):
        assert messages[2].startswith("time.sleep(0.001,)") and "asyncio.sleep()" in messages[2]


@pytest.mark.usefixtures("io_guard")
def test_guard_lets_imports_and_tracebacks_through(
    driver: Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "wfpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text(
        textwrap.dedent("""
        import json

        def encode(value):
            return json.dumps(value)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # The import system then also writes __pycache__ (mkdir, a temporary file, a rename).
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    for name in ("wfpkg", "wfpkg.helper", "colorsys"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    async def wf() -> tuple[str, float, str]:
        import colorsys
        import json

        import wfpkg.helper  # type: ignore[import-not-found]

        try:
            raise KeyError("for a traceback")
        except KeyError:
            formatted = traceback.format_exc()
        os.listdir(tmp_path)
        return wfpkg.helper.encode(json.loads("[1]")), colorsys.rgb_to_hsv(1, 0, 0)[0], formatted

    encoded, hue, formatted = result(driver.start(wf()))
    assert (encoded, hue) == ("[1]", 0.0)
    assert 'raise KeyError("for a traceback")' in formatted  # source lines were read
    assert list((package / "__pycache__").glob("helper.*.pyc"))


@pytest.mark.usefixtures("io_guard")
def test_guard_leaves_other_threads_alone(driver: Driver, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("from another thread")
    go = threading.Event()
    got: list[str] = []

    def other() -> None:
        go.wait(10)
        got.append((tmp_path / "data.txt").read_text())

    thread = threading.Thread(target=other)
    thread.start()

    async def wf() -> None:
        go.set()
        thread.join(10)  # blocks the workflow thread while the other one reads the file

    driver.start(wf())
    assert got == ["from another thread"]
