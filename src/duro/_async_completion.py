"""Completing an activity from outside: ``CompleteAsync``, task tokens and ``AsyncActivityHandle``."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duro.converter import encode_failure
from duro.errors import ApplicationError, CancelledError, TaskTokenError
from duro.stores.base import ActivityOutcome

if TYPE_CHECKING:
    from duro.client import Client

__all__ = ["AsyncActivityHandle", "CompleteAsync", "TaskToken", "decode_task_token", "encode_task_token"]

# A task token, version 1 (all integers big-endian):
#   u8 version (1) | 16 bytes run key | u64 activity seq | u32 attempt | task queue (UTF-8, 1-255 bytes)
#   | 4 bytes BLAKE2b digest of everything before it
# The digest catches truncated, garbled or hand-edited tokens (it is not a secret: a token is a
# capability only in that it names the attempt; anyone with store access may complete it).
TOKEN_VERSION = 1
_HEAD = struct.Struct(">B16sQI")
_DIGEST = 4
_MAX_QUEUE = 255


class CompleteAsync(BaseException):
    """Raise in an activity to end the attempt without a result; it is completed later from outside.

    A ``BaseException`` (as ``asyncio.CancelledError``), so ``except Exception`` in the activity does
    not swallow it.

    The attempt stays open: anyone with its task token (``ctx.info.task_token``) completes, fails
    or heartbeats it with ``client.get_async_activity_handle(token)``, from any process on the same
    store. Its timeouts still apply (start-to-close from the attempt's start, schedule-to-close,
    heartbeat); an attempt without a timeout waits 300 s after the hand-off or its last heartbeat.
    When one runs out the attempt times out and is retried per its retry policy (with a new token).
    """

    def __init__(self) -> None:
        super().__init__("the activity will be completed from outside (duro.CompleteAsync)")


@dataclass(frozen=True, slots=True)
class TaskToken:
    """What a task token names: one attempt of one activity of one run."""

    run_key: bytes
    task_queue: str
    seq: int
    attempt: int


def encode_task_token(run_key: bytes, task_queue: str, seq: int, attempt: int) -> bytes:
    """The task token of an activity attempt (see the layout above)."""
    body = _HEAD.pack(TOKEN_VERSION, run_key, seq, attempt) + task_queue.encode()
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def decode_task_token(token: object) -> TaskToken:
    """The attempt a task token names; checks its form only (the store checks the attempt).

    Raises:
        TypeError: ``token`` is not bytes.
        duro.TaskTokenError: not a duro task token (reason "malformed") or a version this duro does
            not read (reason "version").
    """
    if isinstance(token, (bytearray, memoryview)):
        token = bytes(token)
    if not isinstance(token, bytes):
        raise TypeError(f"a task token is bytes (ActivityInfo.task_token), not {type(token).__name__}")
    if not token:
        raise TaskTokenError("the task token is empty; pass ActivityInfo.task_token as it is", reason="malformed")
    body, digest = token[:-_DIGEST], token[-_DIGEST:]
    if token[0] != TOKEN_VERSION:
        if body and hashlib.blake2b(body, digest_size=_DIGEST).digest() == digest:
            raise TaskTokenError(f"task token version {token[0]} is not one this duro reads (it reads version "
                                 f"{TOKEN_VERSION}): the token comes from another duro release", reason="version")
        raise TaskTokenError(f"not a duro task token (its first byte, {token[0]}, is no token version this duro "
                             f"reads, and it does not check out); pass ActivityInfo.task_token as it is",
                             reason="malformed")
    if not _HEAD.size < len(body) <= _HEAD.size + _MAX_QUEUE:
        raise TaskTokenError(f"the task token is {len(token)} bytes, which no task token is: it was cut or padded",
                             reason="malformed")
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise TaskTokenError("the task token does not check out (its digest does not match): it was altered or "
                             "damaged on its way", reason="malformed")
    _, run_key, seq, attempt = _HEAD.unpack_from(body)
    try:
        queue = body[_HEAD.size :].decode()
    except UnicodeDecodeError:
        raise TaskTokenError("the task token's task queue is not UTF-8", reason="malformed") from None
    if attempt < 1 or "\x00" in queue:
        raise TaskTokenError("the task token names no possible attempt", reason="malformed")
    return TaskToken(run_key, queue, seq, attempt)


class AsyncActivityHandle:
    """An activity attempt to complete from outside, made by ``client.get_async_activity_handle(token)``.

    Each call is one durable write (or none: a bad or used token raises ``duro.TaskTokenError``
    and writes nothing). Usable from any process on the store, with or without a worker.

    Attributes:
        task_token: the token this handle was made from.
    """

    __slots__ = ("_client", "_target", "task_token")

    def __init__(self, client: Client, task_token: bytes) -> None:
        self._target = decode_task_token(task_token)
        self._client = client
        self.task_token = bytes(task_token)

    def __repr__(self) -> str:
        t = self._target
        return f"AsyncActivityHandle(run_id={t.run_key.hex()!r}, activity_id={t.seq}, attempt={t.attempt})"

    async def complete(self, result: Any = None) -> None:
        """Complete the attempt with ``result``: the workflow's ``execute_activity`` returns it.

        Raises:
            duro.TaskTokenError: the token names no attempt that waits (unknown run, already
                completed, superseded by a retry, timed out, run closed); nothing is written.
            duro.CancelledError: the workflow no longer wants the result (it cancelled the
                activity): the attempt is ended, the result is dropped.
            TypeError, ValueError, duro.PayloadTooLargeError: ``result`` cannot be encoded;
                nothing is written.
        """
        payload = self._client.converter.encode(result)
        await self._finish(ActivityOutcome(run_key=self._target.run_key, task_queue=self._target.task_queue,
                                           seq=self._target.seq, attempt=self._target.attempt, result=payload))

    async def fail(self, error: BaseException | str) -> None:
        """Fail the attempt, as if the activity had raised ``error`` (a message is an ``ApplicationError``).

        The activity's retry policy applies: the activity is retried (a new attempt, with a new
        token, runs on a worker) unless the policy is exhausted, the error's type is listed as
        non-retryable, or it is an ``ApplicationError(non_retryable=True)``; then the workflow's
        ``execute_activity`` raises ``duro.ActivityError`` with this error as its cause.

        Raises:
            TypeError: ``error`` is neither an exception nor a str.
            duro.TaskTokenError, duro.CancelledError: as for ``complete``.
        """
        if isinstance(error, str):
            error = ApplicationError(error)
        if not isinstance(error, BaseException):
            raise TypeError(f"fail() takes an exception or a message, not {type(error).__name__}")
        non_retryable = isinstance(error, ApplicationError) and error.non_retryable
        etype = error.type if isinstance(error, ApplicationError) else type(error).__name__
        t = self._target
        await self._finish(ActivityOutcome(run_key=t.run_key, task_queue=t.task_queue, seq=t.seq, attempt=t.attempt,
                                           failure=encode_failure(error), error_type=etype,
                                           non_retryable=non_retryable))

    async def heartbeat(self, details: Any = None) -> None:
        """Report that the work goes on: records ``details`` and restarts the heartbeat timeout.

        The attempt's start-to-close and schedule-to-close deadlines do not move. An attempt with
        no timeout at all waits another 300 s from this heartbeat.

        Raises:
            duro.CancelledError: the workflow cancelled the activity; stop the work (a later
                ``complete`` also raises it).
            duro.TaskTokenError: as for ``complete``.
            TypeError, ValueError, duro.PayloadTooLargeError: ``details`` cannot be encoded.
        """
        payload = self._client.converter.encode(details) if details is not None else None
        t = self._target
        cancelled = await self._client.store.heartbeat_activity_by_token(t.run_key, t.task_queue, t.seq, t.attempt,
                                                                        payload)
        if cancelled:
            raise CancelledError(f"the workflow cancelled activity {t.seq} (attempt {t.attempt}) of run "
                                 f"{t.run_key.hex()}; stop working on it")

    async def _finish(self, outcome: ActivityOutcome) -> None:
        status = await self._client.store.complete_activity_by_token(outcome)
        if status == "canceled":
            raise CancelledError(f"the workflow cancelled activity {outcome.seq} of run {outcome.run_key.hex()} "
                                 "before this call; the attempt is ended and its result dropped")
