"""The compiled replay matcher (duro._core.replay) on hand-built histories, and replay end to end."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest

import duro
from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import (
    CommandMatcher,
    apply_inputs,
    drive,
    is_command,
    match_commands,
    replay_history,
    split_activations,
)
from duro.errors import DuroError, NonDeterminismError
from tests.engine import wfs
from tests.engine.wfs import Order, Receipt, charge, reserve, ship, validate

STARTED = codec.WORKFLOW_STARTED
TASK = codec.WORKFLOW_TASK_COMPLETED  # the marker that ends each workflow task
SCHEDULED = codec.ACTIVITY_SCHEDULED
COMPLETED = codec.ACTIVITY_COMPLETED
TIMER = codec.TIMER_STARTED
FIRED = codec.TIMER_FIRED
SIGNAL = codec.SIGNAL_RECEIVED
DONE = codec.WORKFLOW_COMPLETED

COMMANDS = {
    codec.WORKFLOW_COMPLETED, codec.WORKFLOW_FAILED, codec.WORKFLOW_CONTINUED_AS_NEW, codec.WORKFLOW_CANCELED,
    codec.ACTIVITY_SCHEDULED, codec.ACTIVITY_CANCEL_REQUESTED, codec.TIMER_STARTED, codec.TIMER_CANCELED,
    codec.UPDATE_COMPLETED, codec.CHILD_STARTED, codec.EXTERNAL_SIGNAL, codec.EXTERNAL_CANCEL, codec.MARKER,
}
INPUTS = {
    codec.WORKFLOW_STARTED, codec.WORKFLOW_CANCEL_REQUESTED, codec.ACTIVITY_COMPLETED, codec.ACTIVITY_FAILED,
    codec.ACTIVITY_CANCELED, codec.TIMER_FIRED, codec.SIGNAL_RECEIVED, codec.UPDATE_ACCEPTED,
    codec.CHILD_COMPLETED, codec.CHILD_FAILED, codec.CHILD_CANCELED,
}


def ev(type_: int, event_id: int, ref: int = 0, name: str = "", payload: bytes = b"", attempt: int = 0) -> Event:
    return Event(type_, event_id, 1_700_000_000_000_000 + event_id, ref, attempt, name, payload)


def ids(events: list[Event]) -> list[int]:
    return [e.event_id for e in events]


def shape(activations: list[tuple[list[Event], Event | None, list[Event]]]) -> list[tuple[list[int], int | None,
                                                                                        list[int]]]:
    """Activations as event ids: (input ids, marker id or None, command ids)."""
    return [(ids(inputs), None if marker is None else marker.event_id, ids(commands))
            for inputs, marker, commands in activations]


# ------------------------------------------------------------------ is_command


def test_is_command_partitions_the_event_types() -> None:
    others = {TASK, codec.WORKFLOW_TASK_FAILED, codec.WORKFLOW_TERMINATED, codec.WORKFLOW_TIMED_OUT}
    assert COMMANDS | INPUTS | others == set(codec.EVENT_NAMES)
    for t in COMMANDS:
        assert is_command(t), codec.EVENT_NAMES[t]
    for t in INPUTS | others:
        assert not is_command(t), codec.EVENT_NAMES[t]


# ------------------------------------------------------------------ split_activations


def test_split_at_workflow_task_completed_markers() -> None:
    events = [
        ev(STARTED, 1, name="wf"),
        ev(TASK, 2, ref=1), ev(SCHEDULED, 3, ref=1, name="a"),
        ev(COMPLETED, 4, ref=1, name="a"),
        ev(TASK, 5, ref=4), ev(TIMER, 6, ref=2), ev(SCHEDULED, 7, ref=3, name="b"),
        ev(FIRED, 8, ref=2), ev(COMPLETED, 9, ref=3, name="b"),
        ev(TASK, 10, ref=9), ev(DONE, 11),
    ]
    acts = split_activations(events)
    assert shape(acts) == [
        ([1], 2, [3]),
        ([4], 5, [6, 7]),
        ([8, 9], 10, [11]),
        ([], None, []),
    ]
    # The very event objects come back, not copies.
    assert acts[0][0][0] is events[0] and acts[0][1] is events[1] and acts[1][2][1] is events[6]


def test_inputs_after_the_markers_ref_belong_to_the_next_activation() -> None:
    # The signal (2) and the activity result (4) arrived while the task that ended at marker 3 ran:
    # that task had only seen event 1 (its ref), so they are inputs of the next activation.
    events = [
        ev(STARTED, 1, name="wf"), ev(SIGNAL, 2, name="go"),
        ev(TASK, 3, ref=1), ev(SCHEDULED, 4, ref=1, name="a"),
        ev(COMPLETED, 5, ref=1, name="a"),
        ev(TASK, 6, ref=5), ev(SCHEDULED, 7, ref=2, name="b"),
        ev(SIGNAL, 8, name="late"),
    ]
    assert shape(split_activations(events)) == [
        ([1], 3, [4]),
        ([2, 5], 6, [7]),
        ([8], None, []),
    ]


def test_late_inputs_not_yet_processed_stay_pending_in_order() -> None:
    events = [
        ev(STARTED, 1, name="wf"), ev(SIGNAL, 2, name="s"), ev(SIGNAL, 3, name="s"),
        ev(TASK, 4, ref=2), ev(TIMER, 5, ref=1),
        ev(FIRED, 6, ref=1),
    ]
    # Marker 4 saw through event 2: signal 3 was not processed by any task yet.
    assert shape(split_activations(events)) == [([1, 2], 4, [5]), ([3, 6], None, [])]


def test_a_task_may_produce_no_commands() -> None:
    events = [ev(STARTED, 1, name="wf"), ev(TASK, 2, ref=1), ev(SIGNAL, 3, name="s"), ev(TASK, 4, ref=3)]
    assert shape(split_activations(events)) == [([1], 2, []), ([3], 4, []), ([], None, [])]


def test_empty_history_and_started_only() -> None:
    assert shape(split_activations([])) == [([], None, [])]
    assert shape(split_activations([ev(STARTED, 1, name="wf")])) == [([1], None, [])]


def test_terminal_events_are_not_inputs() -> None:
    for terminal in (codec.WORKFLOW_TERMINATED, codec.WORKFLOW_TIMED_OUT):
        events = [ev(STARTED, 1, name="wf"), ev(TASK, 2, ref=1), ev(SCHEDULED, 3, ref=1, name="a"),
                  ev(terminal, 4)]
        assert shape(split_activations(events)) == [([1], 2, [3]), ([], None, [])]


@pytest.mark.parametrize("events, bad_id", [
    pytest.param([ev(STARTED, 1, name="wf"), ev(SCHEDULED, 2, ref=1, name="a")], 2, id="before-any-marker"),
    pytest.param([ev(STARTED, 1, name="wf"), ev(TASK, 2, ref=1), ev(SCHEDULED, 3, ref=1, name="a"),
                  ev(COMPLETED, 4, ref=1, name="a"), ev(TIMER, 5, ref=2)], 5, id="after-an-input"),
    pytest.param([ev(STARTED, 1, name="wf"), ev(DONE, 2)], 2, id="completion-without-task"),
])
def test_commands_outside_a_workflow_task_are_rejected(events: list[Event], bad_id: int) -> None:
    with pytest.raises(NonDeterminismError, match=f"command event {bad_id} .*outside a workflow task") as info:
        split_activations(events)
    assert info.value.event_id == bad_id
    assert isinstance(info.value, DuroError)


@pytest.mark.parametrize("events, bad_id", [
    pytest.param([ev(STARTED, 1, name="wf"), ev(SIGNAL, 1, name="s")], 1, id="duplicate"),
    pytest.param([ev(STARTED, 2, name="wf"), ev(SIGNAL, 1, name="s")], 1, id="backwards"),
    pytest.param([ev(STARTED, 1, name="wf"), ev(TASK, 2, ref=1), ev(SCHEDULED, 3, ref=1, name="a"),
                  ev(COMPLETED, 3, ref=1, name="a")], 3, id="input-repeats-a-command-id"),
])
def test_out_of_order_history_is_rejected(events: list[Event], bad_id: int) -> None:
    with pytest.raises(NonDeterminismError, match="out of order") as info:
        split_activations(events)
    assert info.value.event_id == bad_id


# ------------------------------------------------------------------ match_commands

LOC = "/src/app/workflows.py:42"


def name_of(t: int) -> str:
    return codec.EVENT_NAMES[t]


def test_matching_commands_pass_and_payloads_times_attempts_do_not_matter() -> None:
    marker = ev(TASK, 5, ref=4)
    recorded = [ev(SCHEDULED, 6, ref=2, name="a", payload=b"[1]"), ev(TIMER, 7, ref=3, payload=b'{"duration":1}')]
    produced = [Event(SCHEDULED, 0, 0, 2, 9, "a", b"[2]"), Event(TIMER, 0, 0, 3, 0, "", b'{"duration":5}')]
    assert match_commands(produced, recorded, [LOC, LOC], "wf", marker) is None
    assert match_commands([], [], [], "wf", marker) is None


@pytest.mark.parametrize("produced, requested", [
    pytest.param(Event(TIMER, 0, 0, 2, 0, "", b""), f"{name_of(TIMER)}(seq=2)", id="type"),
    pytest.param(Event(SCHEDULED, 0, 0, 3, 0, "charge", b""), f"{name_of(SCHEDULED)}(seq=3, name='charge')",
                 id="seq"),
    pytest.param(Event(SCHEDULED, 0, 0, 2, 0, "refund", b""), f"{name_of(SCHEDULED)}(seq=2, name='refund')",
                 id="name"),
])
def test_a_mismatch_names_event_recorded_requested_and_location(produced: Event, requested: str) -> None:
    marker = ev(TASK, 5, ref=4)
    recorded = [ev(SCHEDULED, 6, ref=2, name="charge")]
    with pytest.raises(NonDeterminismError) as info:
        match_commands([produced], recorded, [LOC], "order", marker)
    err = info.value
    recorded_s = f"{name_of(SCHEDULED)}(seq=2, name='charge')"
    msg = str(err)
    assert "'order'" in msg
    assert "event 6" in msg
    assert recorded_s in msg
    assert requested in msg
    assert LOC in msg
    assert err.event_id == 6
    assert err.recorded == recorded_s
    assert err.requested == f"{requested} at {LOC}"


def test_the_mismatch_reports_the_first_diverging_command_and_its_own_location() -> None:
    marker = ev(TASK, 10, ref=9)
    recorded = [ev(SCHEDULED, 11, ref=4, name="a"), ev(SCHEDULED, 12, ref=5, name="b"),
                ev(SCHEDULED, 13, ref=6, name="c")]
    produced = [Event(SCHEDULED, 0, 0, 4, 0, "a", b""), Event(SCHEDULED, 0, 0, 5, 0, "x", b""),
                Event(SCHEDULED, 0, 0, 6, 0, "y", b"")]
    with pytest.raises(NonDeterminismError) as info:
        match_commands(produced, recorded, ["f.py:1", "f.py:2", "f.py:3"], "wf", marker)
    assert info.value.event_id == 12
    assert "name='b'" in info.value.recorded
    assert info.value.requested.endswith("name='x') at f.py:2")


def test_locations_may_be_any_object_formatted_by_str() -> None:
    class Where:
        def __str__(self) -> str:
            return "lazy.py:7"

    with pytest.raises(NonDeterminismError, match=r"at lazy\.py:7"):
        match_commands([Event(TIMER, 0, 0, 1, 0, "", b"")], [ev(SCHEDULED, 3, ref=1, name="a")], [Where()], "wf",
                       ev(TASK, 2, ref=1))


def test_extra_command_is_rejected() -> None:
    marker = ev(TASK, 5, ref=4)
    recorded = [ev(SCHEDULED, 6, ref=1, name="a")]
    produced = [Event(SCHEDULED, 0, 0, 1, 0, "a", b""), Event(TIMER, 0, 0, 2, 0, "", b"")]
    with pytest.raises(NonDeterminismError) as info:
        match_commands(produced, recorded, ["f.py:1", "f.py:9"], "wf", marker)
    err = info.value
    assert err.event_id == 5  # the marker of the task that recorded nothing more
    assert "after event 5" in str(err) and "nothing more was recorded" in str(err)
    assert err.recorded == "(nothing)"
    assert err.requested == f"{name_of(TIMER)}(seq=2) at f.py:9"


def test_missing_command_is_rejected() -> None:
    marker = ev(TASK, 5, ref=4)
    recorded = [ev(SCHEDULED, 6, ref=1, name="a"), ev(DONE, 7)]
    with pytest.raises(NonDeterminismError) as info:
        match_commands([Event(SCHEDULED, 0, 0, 1, 0, "a", b"")], recorded, ["f.py:1"], "wf", marker)
    err = info.value
    assert err.event_id == 7
    assert f"recorded {name_of(DONE)}(seq=0)" in str(err) and "asks for nothing more" in str(err)
    assert err.recorded == f"{name_of(DONE)}(seq=0)"
    assert err.requested == "(nothing)"
    with pytest.raises(NonDeterminismError, match="event 6"):
        match_commands([], recorded, [], "wf", marker)


# ------------------------------------------------------------------ CommandMatcher (commands checked as asked)


def test_command_matcher_checks_commands_one_by_one() -> None:
    m = CommandMatcher("wf")
    marker = ev(TASK, 5, ref=4)
    recorded = [ev(SCHEDULED, 6, ref=1, name="a"), ev(codec.MARKER, 7, ref=2, name="patch-1"), ev(TIMER, 8, ref=3)]
    m.begin(recorded, marker)
    assert m.matches(Event(SCHEDULED, 0, 0, 1, 0, "a", b""))
    assert not m.take_marker("other-patch")
    assert m.take_marker("patch-1")
    wrong = Event(SCHEDULED, 0, 0, 3, 0, "b", b"")
    assert not m.matches(wrong)
    err = m.mismatch(wrong, "g.py:12")
    assert isinstance(err, NonDeterminismError)
    assert err.event_id == 8 and err.recorded == f"{name_of(TIMER)}(seq=3)"
    assert err.requested == f"{name_of(SCHEDULED)}(seq=3, name='b') at g.py:12"
    with pytest.raises(NonDeterminismError, match="asks for nothing more"):
        m.finish()  # the timer was never asked for
    assert m.matches(Event(TIMER, 0, 0, 3, 0, "", b""))
    m.finish()
    # Past the recorded commands, anything is an extra command.
    extra = Event(TIMER, 0, 0, 4, 0, "", b"")
    assert not m.matches(extra)
    err = m.mismatch(extra, "g.py:20")
    assert err.event_id == 5 and err.recorded == "(nothing)" and err.requested.endswith("at g.py:20")


def legacy_cancel(event_id: int, ref: int, flags: int = 1) -> Event:
    """A cancel request to another run as recorded before RequestCancelExternal... existed (flags bit 0)."""
    return Event(codec.EXTERNAL_SIGNAL, event_id, 0, ref, 0, "", b"[]", flags)


@pytest.mark.parametrize("recorded", [legacy_cancel(6, 1), legacy_cancel(6, 1, flags=0x0101),
                                      Event(codec.EXTERNAL_CANCEL, 6, 0, 1, 0, "", b'{"id":"x"}')],
                         ids=["legacy", "legacy-with-headers-flag", "current"])
def test_a_cancel_request_matches_its_current_and_its_older_form(recorded: Event) -> None:
    m = CommandMatcher("wf")
    m.begin([recorded], ev(TASK, 5, ref=4))
    assert m.matches_parts(codec.EXTERNAL_CANCEL, 1, "")
    m.finish()
    m.begin([recorded], ev(TASK, 5, ref=4))
    assert m.matches(Event(codec.EXTERNAL_CANCEL, 0, 0, 1, 0, "", b""))
    match_commands([Event(codec.EXTERNAL_CANCEL, 0, 0, 1, 0, "", b"")], [recorded], ["w.py:1"], "wf", None)


def test_the_older_cancel_form_matches_nothing_but_a_cancel_request() -> None:
    m = CommandMatcher("wf")
    marker = ev(TASK, 5, ref=4)
    m.begin([legacy_cancel(6, 1)], marker)
    # A signal of the same (empty) name is not the cancel request the history holds.
    assert not m.matches_parts(codec.EXTERNAL_SIGNAL, 1, "")
    assert not m.matches_parts(codec.EXTERNAL_CANCEL, 2, "")
    err = m.mismatch(Event(codec.EXTERNAL_SIGNAL, 0, 0, 1, 0, "", b""), "w.py:3")
    assert err.recorded == f"{name_of(codec.EXTERNAL_SIGNAL)}(seq=1, a cancel request)"
    # And a cancel request is not a signal recorded without the flag.
    m.begin([Event(codec.EXTERNAL_SIGNAL, 6, 0, 1, 0, "go", b"[]")], marker)
    assert not m.matches_parts(codec.EXTERNAL_CANCEL, 1, "go")
    # The current form is a cancel request only.
    m.begin([Event(codec.EXTERNAL_CANCEL, 6, 0, 1, 0, "", b"")], marker)
    assert not m.matches_parts(codec.EXTERNAL_SIGNAL, 1, "")
    with pytest.raises(NonDeterminismError, match="RequestCancelExternalWorkflowExecutionInitiated"):
        m.finish()


# ------------------------------------------------------------------ replay_history, apply_inputs


class Recorder:
    """What replay drives, reduced to a log: each activation's input ids and the matcher's checks."""

    def __init__(self, matcher: CommandMatcher, asks: dict[int, list[tuple[int, int, str]]] | None = None) -> None:
        self.matcher = matcher
        self.asks = asks or {}  # the commands the code asks for, by activation number
        self.log: list[list[int]] = []
        self._divergence: NonDeterminismError | None = None

    def activate(self, inputs: list[Event]) -> None:
        self.log.append(ids(inputs))
        for type_, ref, name in self.asks.get(len(self.log), ()):
            assert self.matcher.matches_parts(type_, ref, name)


HISTORY = [
    ev(STARTED, 1, name="wf"), ev(SIGNAL, 2, name="s"),
    ev(TASK, 3, ref=1), ev(SCHEDULED, 4, ref=1, name="a"),
    ev(COMPLETED, 5, ref=1, name="a"),
    ev(TASK, 6, ref=5),
    ev(codec.WORKFLOW_TASK_FAILED, 7), ev(FIRED, 8, ref=9),
    ev(TASK, 9, ref=8), ev(TIMER, 10, ref=2), ev(SCHEDULED, 11, ref=3, name="b"),
    ev(SIGNAL, 12, name="late"),
]
ASKS = {1: [(SCHEDULED, 1, "a")], 3: [(TIMER, 2, ""), (SCHEDULED, 3, "b")]}


def test_replay_history_is_drive_over_split_activations() -> None:
    one, two = Recorder(CommandMatcher("wf"), ASKS), Recorder(CommandMatcher("wf"), ASKS)
    activations = split_activations(HISTORY)
    last = drive(one, activations, one.matcher)
    assert replay_history(two, HISTORY, two.matcher) == (last, len(activations) - 1, activations[-1][0])
    assert one.log == two.log == [[1], [2, 5], [8]]
    assert last == 11
    assert replay_history(Recorder(CommandMatcher("wf")), [], CommandMatcher("wf")) == (0, 0, [])


def test_replay_history_checks_each_task_and_the_whole_history_first() -> None:
    missing = Recorder(CommandMatcher("wf"), {1: ASKS[1]})  # the third task asks for nothing
    with pytest.raises(NonDeterminismError, match="asks for nothing more") as info:
        replay_history(missing, HISTORY, missing.matcher)
    assert info.value.event_id == 10 and missing.log == [[1], [2, 5], [8]]
    diverged = Recorder(CommandMatcher("wf"), ASKS)
    diverged._divergence = NonDeterminismError("found by the code")
    with pytest.raises(NonDeterminismError, match="found by the code"):
        replay_history(diverged, HISTORY, diverged.matcher)
    assert diverged.log == [[1]]
    broken = Recorder(CommandMatcher("wf"), ASKS)
    with pytest.raises(NonDeterminismError, match="out of order"):
        replay_history(broken, [*HISTORY, ev(SIGNAL, 12, name="again")], broken.matcher)
    assert broken.log == []  # nothing ran


class Inputs:
    """An instance reduced to what apply_inputs calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def _activity_completed(self, seq: int, payload: bytes) -> None:
        self.calls.append(("completed", (seq, payload)))

    def _apply(self, event: Event) -> None:
        self.calls.append(("apply", event.event_id))


def test_apply_inputs_applies_in_order_and_returns_the_latest_time_and_id() -> None:
    inst = Inputs()
    inputs = [Event(SIGNAL, 7, 2_500_000, 0, 0, "s", b"[]"), Event(COMPLETED, 9, 1_000_000, 3, 0, "a", b"42"),
              Event(FIRED, 8, 1_700_000_000_123_456, 1)]
    assert apply_inputs(inst, inputs, 5) == (1_700_000_000.123456, 9)
    assert inst.calls == [("apply", 7), ("completed", (3, b"42")), ("apply", 8)]
    assert apply_inputs(inst, [], 5) == (0.0, 5)
    assert apply_inputs(inst, [Event(SIGNAL, 2, 10, 0, 0, "s", b"[]")], 5) == (10 / 1e6, 5)


# ------------------------------------------------------------------ end to end: Replayer against changed code


@duro.workflow(name="order_workflow")
async def reordered_order_workflow(ctx: duro.WorkflowContext, order: Order) -> Receipt:
    """wfs.order_workflow with charge and reserve swapped: not replayable against its histories."""
    await ctx.execute_activity(validate, order, start_to_close_timeout=10,
                               retry_policy=duro.RetryPolicy(maximum_attempts=3))
    charged = await ctx.execute_activity(charge, order)  # DIVERGES
    await ctx.execute_activity(reserve, order)
    await ctx.wait_signal("approve")
    shipped = await ctx.execute_activity(ship, order)
    return Receipt(order_id=order.order_id, tracking=shipped["tracking"], charged=charged["charged"])


@duro.workflow(name="order_workflow")
async def order_workflow_shipping_twice(ctx: duro.WorkflowContext, order: Order) -> Receipt:
    """wfs.order_workflow plus one more activity at the end."""
    await ctx.execute_activity(validate, order, start_to_close_timeout=10)
    _, charged = await asyncio.gather(ctx.execute_activity(reserve, order), ctx.execute_activity(charge, order))
    await ctx.wait_signal("approve")
    shipped = await ctx.execute_activity(ship, order)
    await ctx.execute_activity(ship, order)  # DIVERGES
    return Receipt(order_id=order.order_id, tracking=shipped["tracking"], charged=charged["charged"])


@duro.workflow(name="order_workflow")
async def order_workflow_same_steps(ctx: duro.WorkflowContext, order: Order) -> Receipt:
    """wfs.order_workflow with other options and argument values: still the same commands."""
    await ctx.execute_activity(validate, Order("other", 1), start_to_close_timeout=99)
    _, charged = await asyncio.gather(ctx.execute_activity(reserve, order), ctx.execute_activity(charge, order))
    await ctx.wait_signal("approve")
    shipped = await ctx.execute_activity(ship, order, retry_policy=duro.RetryPolicy(maximum_attempts=1))
    return Receipt(order_id=order.order_id, tracking=shipped["tracking"], charged=charged["charged"])


def _marked_line(fn: object) -> int:
    """The line number of the "# DIVERGES" comment in ``fn``'s source."""
    lines, first = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    (offset,) = [i for i, line in enumerate(lines) if "# DIVERGES" in line]
    return first + offset


@pytest.fixture
async def order_history(client: duro.Client) -> AsyncIterator[duro.History]:
    async with duro.Worker(client, task_queue="t", workflows=[wfs.order_workflow], activities=wfs.ALL_ACTIVITIES):
        handle = await client.start_workflow(wfs.order_workflow, Order("R1", 3), id="replay-me", task_queue="t")
        await handle.signal("approve", {"by": "carol"})
        assert await handle.result() == Receipt(order_id="R1", tracking="T-R1", charged=3)
    yield await handle.fetch_history()


async def test_replayer_accepts_the_unchanged_code_and_the_same_steps(order_history: duro.History) -> None:
    await duro.testing.Replayer(workflows=[wfs.order_workflow]).replay(order_history)
    await duro.testing.Replayer(workflows=[order_workflow_same_steps]).replay(order_history)
    # Through JSON as well (histories are exported to files to be replayed in CI).
    again = duro.History.from_json(order_history.to_json())
    await duro.testing.Replayer(workflows=[wfs.order_workflow]).replay(again)


async def test_replayer_names_the_line_of_a_reordered_call(order_history: duro.History) -> None:
    scheduled = {e.ref: e.event_id for e in order_history if e.event_type == "ActivityTaskScheduled"}
    line = _marked_line(reordered_order_workflow)
    with pytest.raises(NonDeterminismError) as info:
        await duro.testing.Replayer(workflows=[reordered_order_workflow]).replay(order_history)
    err = info.value
    msg = str(err)
    assert f"{__file__}:{line}" in msg, msg
    assert "'order_workflow'" in msg
    assert err.event_id == scheduled[2]
    assert f"event {scheduled[2]}" in msg
    assert err.recorded == "ActivityTaskScheduled(seq=2, name='reserve')"
    assert err.requested == f"ActivityTaskScheduled(seq=2, name='charge') at {__file__}:{line}"


async def test_replayer_names_the_line_of_an_extra_call(order_history: duro.History) -> None:
    completed = [e.event_id for e in order_history if e.event_type == "WorkflowExecutionCompleted"]
    line = _marked_line(order_workflow_shipping_twice)
    with pytest.raises(NonDeterminismError) as info:
        await duro.testing.Replayer(workflows=[order_workflow_shipping_twice]).replay(order_history)
    err = info.value
    assert err.event_id == completed[0]
    assert err.recorded == "WorkflowExecutionCompleted(seq=0)"
    assert err.requested == f"ActivityTaskScheduled(seq=5, name='ship') at {__file__}:{line}"


async def test_replayer_refuses_a_history_of_an_unknown_type(order_history: duro.History) -> None:
    with pytest.raises(ValueError, match="order_workflow"):
        await duro.testing.Replayer(workflows=[wfs.long_workflow]).replay(order_history)
