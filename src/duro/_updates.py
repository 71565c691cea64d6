"""Waiting for an update's outcome, in this process or from another one's commits.

An update is *accepted* once a worker has validated it and committed
``WorkflowExecutionUpdateAccepted`` (the update id in its metadata), and *completed* once the
workflow has committed ``WorkflowExecutionUpdateCompleted`` (named by the id) with the handler's
result or failure. Whoever waits for the outcome registers an in-process waiter (a commit of this
process resolves it at once, ``Store.wait_update``) and reads the run's history each time the
store reports another process's commit, with a slow look as the safety net: the workflow task
that completes the update may run in any process.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import weakref
from typing import Any

import orjson

from duro._core import codec
from duro._core.codec import Event
from duro.errors import DuroError
from duro.stores.base import Store, run_key_of, unpack, update_key

__all__ = ["WorkflowUpdateStage", "accepted_id", "check_stage", "recorded_outcome", "wait_outcome"]

# Another process's commit is noticed through the store's change signal; this is the safety net.
_SAFETY_LOOK_S = 1.0

_CLOSE_TYPES = frozenset((codec.WORKFLOW_COMPLETED, codec.WORKFLOW_FAILED, codec.WORKFLOW_CANCELED,
                          codec.WORKFLOW_TERMINATED, codec.WORKFLOW_CONTINUED_AS_NEW, codec.WORKFLOW_TIMED_OUT))


class WorkflowUpdateStage(enum.StrEnum):
    """How far an update must have got before ``start_update`` returns (Temporal's names).

    ``ADMITTED`` is refused: in duro a worker validates an update and records it in one step, so
    there is no moment when it is admitted but not yet accepted.
    """

    ADMITTED = "admitted"
    ACCEPTED = "accepted"
    COMPLETED = "completed"


def check_stage(value: Any) -> WorkflowUpdateStage:
    """``value`` as a stage that ``start_update`` supports (ACCEPTED or COMPLETED).

    Raises:
        ValueError: ADMITTED, or not a stage.
    """
    try:
        stage = WorkflowUpdateStage(value)
    except ValueError:
        raise ValueError(f"wait_for_stage must be WorkflowUpdateStage.ACCEPTED or .COMPLETED (or 'accepted', "
                         f"'completed'), got {value!r}") from None
    if stage is WorkflowUpdateStage.ADMITTED:
        raise ValueError("wait_for_stage=ADMITTED is not supported: duro has no admitted-but-not-accepted stage "
                         "(a worker validates an update and records it in one commit before start_update "
                         "returns); use WorkflowUpdateStage.ACCEPTED")
    return stage


def accepted_id(ev: Event) -> str:
    """The update id recorded in a WorkflowExecutionUpdateAccepted event's metadata."""
    meta_b = unpack(ev.payload)[0]
    update_id: str = orjson.loads(meta_b)["id"]
    return update_id


class _Fanout:
    """Several waiters of one update key in this process, over the store's single waiter per key."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waiting: dict[str, list[asyncio.Future[bytes]]] = {}

    def add(self, key: str) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting = self.waiting.get(key)
        if waiting is None:
            waiting = self.waiting[key] = []
            self.store.wait_update(key).add_done_callback(functools.partial(self._done, key))
        waiting.append(fut)
        return fut

    def _done(self, key: str, done: asyncio.Future[bytes]) -> None:
        for fut in self.waiting.pop(key, ()):
            if not fut.done() and not done.cancelled() and done.exception() is None:
                fut.set_result(done.result())

    def discard(self, key: str, fut: asyncio.Future[bytes]) -> None:
        waiting = self.waiting.get(key)
        if waiting is not None and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self.waiting[key]
                self.store.drop_update_waiter(key)


# Per store and event loop: the store resolves a waiter on the loop that registered it.
_FANOUTS: weakref.WeakKeyDictionary[Any, dict[asyncio.AbstractEventLoop, _Fanout]] = weakref.WeakKeyDictionary()


def _fanout(store: Store) -> _Fanout:
    per_loop = _FANOUTS.setdefault(store, {})
    loop = asyncio.get_running_loop()
    fanout = per_loop.get(loop)
    if fanout is None:
        for old in [lp for lp in per_loop if lp.is_closed()]:
            del per_loop[old]
        fanout = per_loop[loop] = _Fanout(store)
    return fanout


def _scan(events: list[Event], update_id: str, accepted: bool) -> tuple[bytes | None, bool, Event | None]:
    """(the outcome, whether the update was seen accepted, the run's close event) in ``events``."""
    close = None
    for ev in events:
        t = ev.type
        if t == codec.UPDATE_COMPLETED and ev.name == update_id:
            return ev.payload, True, None
        if t == codec.UPDATE_ACCEPTED and not accepted and accepted_id(ev) == update_id:
            accepted = True
        elif t in _CLOSE_TYPES:
            close = ev  # an outcome recorded later in the same commit still counts
    return None, accepted, close


async def recorded_outcome(store: Store, run_id: str, update_id: str) -> bytes | None:
    """The outcome of update ``update_id`` as recorded in the run's history, or None."""
    events = await store.aread_history(run_key_of(run_id))
    outcome = _scan(events, update_id, True)[0]
    if outcome is not None:
        await store.adurable()  # read from a commit that may not be durable yet (another process's)
    return outcome


async def wait_outcome(store: Store, workflow_id: str, run_id: str, update_id: str, *, from_event_id: int = 1,
                       timeout: float | None = None, known_accepted: bool = True) -> bytes:
    """Wait for the outcome of update ``update_id`` of a run: pack({"ok": bool}, result or failure).

    Args:
        store: the store of the run.
        workflow_id: the run's workflow id (for messages).
        run_id: the run the update was sent to.
        update_id: the update's id.
        from_event_id: where in the history to look from (the update's accepted event, when known).
        timeout: seconds; None waits without limit.
        known_accepted: False when the caller does not know the update was accepted on the run
            (``get_update_handle``): then a history without it raises instead of waiting.

    Raises:
        DuroError: the run closed before the update completed, or (``known_accepted`` False) no
            update with that id was accepted on the run.
        TimeoutError: ``timeout`` seconds passed first.
    """
    run_key = run_key_of(run_id)
    key = update_key(run_key, update_id)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    fanout = _fanout(store)
    local = fanout.add(key)
    changed = asyncio.Event()
    unsubscribe = store.on_foreign_change(changed.set)
    accepted = known_accepted
    next_id = 1 if not known_accepted else max(1, from_event_id)
    try:
        while True:
            changed.clear()
            if local.done():
                return local.result()
            events = await store.aread_history(run_key, next_id)
            if next_id == 1 and not events:
                raise DuroError(f"workflow {workflow_id!r} has no run {run_id}")
            outcome, accepted, close = _scan(events, update_id, accepted)
            if outcome is not None:
                await store.adurable()  # read from a commit that may not be durable yet (another process's)
                return outcome
            if not accepted:
                raise DuroError(f"no update with id {update_id!r} was accepted on workflow {workflow_id!r} "
                                f"(run {run_id})")
            if close is not None:
                raise DuroError(f"workflow {workflow_id!r} (run {run_id}) closed ({close.type_name}) before "
                                f"update {update_id!r} completed")
            if events:
                next_id = events[-1].event_id + 1
            wait = _SAFETY_LOOK_S
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(f"update {update_id!r} of workflow {workflow_id!r} did not complete within "
                                       f"{timeout}s")
                wait = min(wait, left)
            change = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait((local, change), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
    finally:
        unsubscribe()
        fanout.discard(key, local)
