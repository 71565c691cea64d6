"""Loggers for user code: ``ctx.logger`` in workflows (silent while replaying) and ``actx.logger`` in activities."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from duro import _loop

if TYPE_CHECKING:
    from duro._instance import WorkflowInstance
    from duro.activity import ActivityInfo

__all__ = ["ACTIVITY_LOGGER", "WORKFLOW_LOGGER", "ActivityLogger", "WorkflowLogger"]

WORKFLOW_LOGGER = logging.getLogger("duro.workflow")
ACTIVITY_LOGGER = logging.getLogger("duro.activity")

_ExcInfo: TypeAlias = (
    bool | BaseException | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None] | None
)


class _IdsLogger(logging.LoggerAdapter[logging.Logger]):
    """A LoggerAdapter whose records carry ids as attributes (``extra``) and as a message prefix.

    The caller's ``extra`` is merged over the ids (3.11's LoggerAdapter would drop it). The
    prefix is added with ``%`` doubled when the message is formatted with arguments, so an id
    holding ``%`` does not break formatting. Records name the caller's file and line, not this one.
    """

    def __init__(self, logger: logging.Logger, ids: dict[str, Any]) -> None:
        super().__init__(logger, ids)
        head = " ".join(f"{k}={v}" for k, v in ids.items())
        self._prefix = f"[{head}] "
        self._prefix_escaped = self._prefix.replace("%", "%%")

    def log(self, level: int, msg: object, *args: object, exc_info: _ExcInfo = None, stack_info: bool = False,
            stacklevel: int = 1, extra: Mapping[str, object] | None = None, **kwargs: object) -> None:
        """Log ``msg % args`` at ``level`` with the ids, unless the logger is off for that level."""
        if not self.isEnabledFor(level):
            return
        ids = self.extra if self.extra is not None else {}
        merged = {**ids, **extra} if extra else ids
        prefix = self._prefix_escaped if args else self._prefix
        with self._emitting():
            # +1: this frame is not logging's own, so findCaller would name it instead of the caller.
            self.logger.log(level, f"{prefix}{msg}", *args, exc_info=exc_info, stack_info=stack_info,
                            stacklevel=stacklevel + 1, extra=merged)

    @contextmanager
    def _emitting(self) -> Iterator[None]:
        yield


class WorkflowLogger(_IdsLogger):
    """``ctx.logger``: logger ``duro.workflow``, silent while the workflow's code is replayed.

    Records carry ``workflow_id``, ``run_id``, ``workflow_type`` and ``task_queue``. Handlers run
    with the workflow loop's I/O guard lifted (a handler may write to a file or a socket).
    """

    def __init__(self, inst: WorkflowInstance) -> None:
        info = inst.info
        super().__init__(WORKFLOW_LOGGER, {"workflow_type": info.workflow_type, "workflow_id": info.workflow_id,
                                           "run_id": info.run_id, "task_queue": info.task_queue})
        self._inst = inst

    def isEnabledFor(self, level: int) -> bool:
        """False while replaying (the code re-runs recorded history); else what the logger says."""
        return not self._inst.replaying and self.logger.isEnabledFor(level)

    @contextmanager
    def _emitting(self) -> Iterator[None]:
        ident = _loop._get_ident()
        depth = _loop._armed_threads.pop(ident, 0)
        try:
            yield
        finally:
            if depth:
                _loop._armed_threads[ident] = depth


class ActivityLogger(_IdsLogger):
    """``actx.logger``: logger ``duro.activity``; records carry the workflow's ids and the attempt's."""

    def __init__(self, info: ActivityInfo) -> None:
        super().__init__(ACTIVITY_LOGGER, {
            "activity_type": info.activity_type, "activity_id": info.activity_id, "attempt": info.attempt,
            "workflow_type": info.workflow_type, "workflow_id": info.workflow_id, "run_id": info.workflow_run_id,
            "task_queue": info.task_queue})
