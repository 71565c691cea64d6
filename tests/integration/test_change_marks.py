"""LMDB change marks: another process's commit wakes only the listeners of what it changed.

Each batch writes a mark per topic it changed (a claimable workflow or activity task of a queue, a
timer, a closed run); a process's watcher wakes a listener registered with topics only when one of
them moved. Without this, every worker process woke at every commit of every other process (its
own steps included) and paid a read or a claim for each.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

import duro
from duro.stores.base import CLOSED, TIMERS, atask_topic, wtask_topic
from tests.processes import run_command
from tests.waiting import eventually

START = """
import asyncio, sys
import pytest

import duro

async def main() -> None:
    async with duro.Client.connect(sys.argv[1]) as client:
        await client.start_workflow("anything", 1, id=sys.argv[2], task_queue=sys.argv[3])

asyncio.run(main())
"""


async def _start_elsewhere(url: str, workflow_id: str, task_queue: str) -> None:
    result = await run_command([sys.executable, "-c", START, url, workflow_id, task_queue])
    assert result.code == 0, result.err


async def test_a_foreign_commit_wakes_only_the_listeners_of_what_it_changed(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 's'}"
    async with duro.Client.connect(url) as client:
        store = client.store
        calls: collections.Counter[str] = collections.Counter()

        def listen(name: str, topics: frozenset[str] | None) -> None:
            store.on_foreign_change(lambda: calls.update([name]), topics)

        listen("any", None)
        listen("wtask q", frozenset({wtask_topic("q")}))
        listen("wtask other", frozenset({wtask_topic("other")}))
        listen("atask q", frozenset({atask_topic("q")}))
        listen("timers or closes", frozenset({TIMERS, CLOSED}))

        # A start in another process, no worker there: a workflow task of q that anyone may claim.
        await _start_elsewhere(url, "first", "q")
        await eventually(lambda: calls["wtask q"] == 1, "the listener of q's workflow tasks to be woken")
        # The watcher decides for every listener in the same pass.
        assert calls["any"] >= 1
        assert calls["wtask other"] == calls["atask q"] == calls["timers or closes"] == 0

        # Terminating in this process closes the run: its own commit wakes nobody here ...
        await client.get_handle("first").terminate("done")
        # ... and a start on the other queue from another process wakes only that queue's listener.
        await _start_elsewhere(url, "second", "other")
        await eventually(lambda: calls["wtask other"] == 1, "the listener of the other queue to be woken")
        assert calls["wtask q"] == 1 and calls["atask q"] == 0


async def test_topics_must_be_a_set_of_names(tmp_path: Path) -> None:
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        # A bare string would be read letter by letter (and, before, killed the watcher thread).
        with pytest.raises(ValueError, match=r"not the string 'wtask:q': wrap it"):
            client.store.on_foreign_change(lambda: None, wtask_topic("q"))
        with pytest.raises(ValueError, match="non-empty set of topic names, or None"):
            client.store.on_foreign_change(lambda: None, set())
        # A name no commit ever marks would never wake its listener: refused, naming the helpers.
        for wrong in ({"timers"}, {"q"}, {"wtask:"}, {wtask_topic("q"), 5}):
            with pytest.raises(ValueError, match=r"unknown topic\(s\) .*wtask_topic\(queue\)"):
                client.store.on_foreign_change(lambda: None, wrong)  # type: ignore[arg-type]
        unsubscribe = client.store.on_foreign_change(lambda: None, [wtask_topic("q"), TIMERS])  # any iterable
        unsubscribe()
