"""Testing tools: ``Replayer`` re-runs recorded histories against current workflow code."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from duro._instance import WorkflowInstance
from duro.converter import DataConverter, default_converter
from duro.errors import NonDeterminismError
from duro.history import History
from duro.stores.base import run_key_of
from duro.workflow import WorkflowDefinition, get_workflow_definition

__all__ = ["Replayer"]


class Replayer:
    """Replays histories against workflow code to prove that a code change is still deterministic.

    Args:
        workflows: the ``@duro.workflow`` functions the histories may name.
        converter: the data converter the histories were written with.
    """

    def __init__(self, *, workflows: Sequence[Callable[..., Any]], converter: DataConverter | None = None) -> None:
        self._defs: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            d = get_workflow_definition(wf)
            self._defs[d.name] = d
        self._converter = converter or default_converter

    async def replay(self, history: History) -> None:
        """Replay one history; raises ``duro.NonDeterminismError`` if the code diverges from it."""
        events = history.core_events
        if not events:
            raise ValueError("the history has no events")
        started = events[0]
        defn = self._defs.get(started.name)
        if defn is None:
            raise ValueError(f"the history is of workflow type {started.name!r}, which this Replayer does not "
                             f"know; pass it in workflows= (known: {sorted(self._defs)})")
        inst = WorkflowInstance(defn, run_key_of(history.run_id), started, self._converter)
        try:
            inst.replay(events)
        except NonDeterminismError:
            raise
        finally:
            inst.close()
