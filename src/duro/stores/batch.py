"""What both stores' group commits share: queued operations, and answering them after the commit.

A store queues an ``Op`` per state change, runs a batch of them in one transaction, and once the
commit is durable calls ``answer_batch``: every op's future is resolved, result waiters and update
waiters are released, and the remaining effects go to the process's dispatch, all on the loops
they belong to, with one wake-up per loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from duro import _metrics
from duro.errors import DuroError, StoreError
from duro.stores.base import Conflict, Dispatch, Effect, RunClosed, RunInfo, UpdateCompleted

__all__ = ["Op", "answer_batch", "resolve", "run_callbacks", "store_error"]

Callbacks = dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., None], tuple[Any, ...]]]]


class Op:
    """One queued state change: ``fn(txn_or_tx, effects, *args)``, answered on ``loop`` through ``future``.

    ``internal``: the caller is this process's own worker, which may go on from the op's result
    before the commit is durable (the LMDB store answers it when the commit is applied and answers
    callers outside, result waiters and update waiters after the sync); anything it then records
    goes in a later commit of the same writer, so it is durable only after this one.
    """

    __slots__ = ("args", "fn", "future", "internal", "loop")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop | None,
                 future: asyncio.Future[Any] | None, internal: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future = future
        self.internal = internal


def resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Set a future's result (``ok``) or exception, unless it is done already (its caller gave up)."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def run_callbacks(items: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    """Run queued callbacks in order (on the loop they were posted to)."""
    for fn, args in items:
        fn(*args)


def store_error(e: Exception, what: str = "the store") -> Exception:
    """The error an op's caller sees: duro's own errors as they are, anything else wrapped."""
    if isinstance(e, DuroError | Conflict | ValueError | TypeError):
        return e
    err = StoreError(f"{what} could not carry out the operation: {type(e).__name__}: {e}; nothing of it was written")
    err.__cause__ = e
    return err


def answer_batch(ops: list[Op], results: list[tuple[bool, Any]], effects: list[Effect],
                 waiters: dict[bytes, list[asyncio.Future[RunInfo]]],
                 update_waiters: dict[str, asyncio.Future[bytes]], dispatch: Dispatch | None) -> None:
    """After a batch's commit (or its failure): answer its ops and apply its effects.

    Runs on the thread that committed; everything reaches the event loops through
    ``call_soon_threadsafe``, one call per loop.
    """
    per_loop: Callbacks = {}
    for op, (ok, value) in zip(ops, results, strict=True):
        if op.future is not None and op.loop is not None:
            per_loop.setdefault(op.loop, []).append((resolve, (op.future, ok, value)))
    rest: list[Effect] = []
    for eff in effects:
        if isinstance(eff, RunClosed):
            if _metrics.ENABLED:  # every close (any status) is in exactly one durable batch of one process
                _metrics.RECORDER.workflow_closed(eff.info.workflow_type, eff.info.status)
            # Released with the op futures of the same loop: one wake-up per loop and batch.
            for fut in waiters.pop(eff.run_key, ()):
                per_loop.setdefault(fut.get_loop(), []).append((resolve, (fut, True, eff.info)))
        elif isinstance(eff, UpdateCompleted):
            ufut = update_waiters.pop(eff.update_id, None)
            if ufut is not None:
                per_loop.setdefault(ufut.get_loop(), []).append((resolve, (ufut, True, eff.payload)))
        else:
            rest.append(eff)
    if rest and dispatch is not None and dispatch.loop is not None:
        per_loop.setdefault(dispatch.loop, []).append((dispatch.deliver, (rest,)))
    for loop, items in per_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(run_callbacks, items)
