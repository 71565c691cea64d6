"""The LMDB writer's RunCache: records in use stay, the others age out after two generations."""

from __future__ import annotations

import pytest

from duro.engine.records import RunRecord, RunStatus
from duro.stores import lmdb_tx
from duro.stores.lmdb_tx import RunCache


def _rec(i: int) -> RunRecord:
    return RunRecord(workflow_id=f"w{i}", workflow_type="t", task_queue="q", status=RunStatus.RUNNING, start_us=i)


def test_records_in_use_stay_and_the_others_age_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_tx, "_CACHE_LIMIT", 4)
    cache = RunCache()
    recs = {i: _rec(i) for i in range(12)}
    for i in range(4):
        cache.put(bytes([i]), recs[i])  # the 4th put starts a new generation
    assert all(cache.get(bytes([i])) is recs[i] for i in range(4))  # read back: the same objects
    for i in range(4, 12):
        cache.put(bytes([i]), recs[i])
        assert cache.get(bytes([0])) is recs[0]  # in use: kept however many others come
    assert cache.get(bytes([1])) is None  # not used for two generations: read from the store again
    assert cache.get(bytes([11])) is recs[11]
    cache.drop(bytes([0]))
    assert cache.get(bytes([0])) is None
    cache.clear()
    assert cache.get(bytes([11])) is None and cache.builds is None
