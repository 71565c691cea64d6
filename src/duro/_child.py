"""The handle of a child workflow, as the parent's workflow code holds it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from duro.converter import decode_failure
from duro.errors import WorkflowFailedError

if TYPE_CHECKING:
    from duro._instance import WorkflowInstance

__all__ = ["ChildWorkflowHandle"]


class ChildWorkflowHandle:
    """A child workflow started by this workflow: ``await handle.result()``, ``signal``, ``cancel``."""

    def __init__(self, inst: WorkflowInstance, seq: int, workflow_id: str, run_id: str, hint: Any) -> None:
        self._inst = inst
        self.seq = seq
        self.id = workflow_id
        self.run_id = run_id
        self._hint = hint
        self._result: asyncio.Future[Any] = inst.loop.create_future()

    def __repr__(self) -> str:
        return f"ChildWorkflowHandle(id={self.id!r}, run_id={self.run_id!r})"

    def _resolve(self, ok: bool, payload: bytes) -> None:
        if self._result.done():
            return
        if ok:
            self._result.set_result(self._inst.converter.decode(payload, self._hint))
            return
        cause = decode_failure(payload)
        err = WorkflowFailedError(f"child workflow {self.id!r} did not complete: {cause}", workflow_id=self.id,
                                  run_id=self.run_id)
        err.__cause__ = cause
        self._result.set_exception(err)

    async def result(self) -> Any:
        """Wait for the child to close; its result, or WorkflowFailedError with the cause chained."""
        return await asyncio.shield(self._result)

    async def signal(self, name: str, *args: Any) -> None:
        """Send a signal to the child (delivered when this workflow task commits)."""
        self._inst.signal_external(self.id, self.run_id, name, args)

    async def cancel(self) -> None:
        """Ask the child to cancel (it sees asyncio.CancelledError at its current await)."""
        self._inst.request_external("cancel", self.id, self.run_id, "", ())
