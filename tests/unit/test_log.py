"""Tests of the LMDB history log (duro._core.log) on duro's own LMDB binding (duro._core.mdb), as it ships."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duro._core import codec, mdb
from duro._core.codec import Event
from duro._core.log import KEY_SIZE, RUN_KEY_SIZE, HistoryLog, event_key, read_events
from duro.errors import CorruptHistoryError

# Runs whose keys are byte-wise neighbours: a run must never see its neighbours' events.
RUN_A = bytes(15) + b"\x01"
RUN_BEFORE_A = bytes(15) + b"\x00"
RUN_AFTER_A = bytes(15) + b"\x02"
MAX_ID = 2**64 - 1


@pytest.fixture
def env(tmp_path: Path) -> Iterator[mdb.Environment]:
    environment = mdb.Environment(str(tmp_path), max_dbs=8, map_size=2**30)
    yield environment
    environment.close()


@pytest.fixture
def log(env: mdb.Environment) -> HistoryLog:
    return HistoryLog(env, env.open_db(b"history"))


def make(event_id: int, name: str = "", payload: bytes = b"", kind: int = codec.ACTIVITY_COMPLETED) -> Event:
    timestamp_us = 1_700_000_000_000_000 + event_id % 1_000_000
    return Event(kind, event_id, timestamp_us, ref=event_id // 2, name=name, payload=payload)


def batch(first: int, last: int, tag: str = "") -> list[Event]:
    return [make(i, name=f"{tag}{i}", payload=f"{tag}:{i}".encode()) for i in range(first, last + 1)]


def append(log: HistoryLog, run_key: bytes, events: list[Event]) -> None:
    with log.env.begin(write=True) as txn:
        log.append(txn, run_key, events)


def read(log: HistoryLog, run_key: bytes, from_event_id: int = 1, to_event_id: int = 0) -> list[Event]:
    with log.env.begin() as txn:
        return log.read(txn, run_key, from_event_id, to_event_id)


def test_key_layout() -> None:
    run_key = uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
    assert RUN_KEY_SIZE == 16 and KEY_SIZE == 24
    assert event_key(run_key, 0x0102) == run_key + bytes(6) + b"\x01\x02"
    assert event_key(run_key, MAX_ID) == run_key + b"\xff" * 8
    with pytest.raises(ValueError, match="16 bytes"):
        event_key(b"short", 1)
    with pytest.raises(ValueError, match="event_id"):
        event_key(run_key, -1)


@pytest.mark.parametrize("write", [False, True])
def test_append_read_round_trip(log: HistoryLog, write: bool) -> None:
    events = batch(1, 5, "x")
    append(log, RUN_A, events)
    with log.env.begin(write=write) as txn:
        assert log.read(txn, RUN_A) == events
        assert read_events(txn, log.db, RUN_A) == events
        assert read_events(txn, log.db, RUN_A, 2, 3) == events[1:3]
        assert log.iter_raw(txn, RUN_A) == [e.encode() for e in events]
        assert log.iter_raw(txn, RUN_A, 2, 3) == [e.encode() for e in events[1:3]]
    assert log.env is not None and log.db is not None


def test_ids_sort_numerically_not_lexically_by_decimal(log: HistoryLog) -> None:
    ids = [1, 2, 255, 256, 65_535, 65_536, 2**32, 2**63, MAX_ID]
    append(log, RUN_A, [make(i) for i in ids])
    assert [e.event_id for e in read(log, RUN_A)] == ids


def test_interleaved_runs_do_not_bleed(log: HistoryLog) -> None:
    runs = [RUN_BEFORE_A, RUN_A, RUN_AFTER_A, uuid.uuid4().bytes, uuid.uuid4().bytes]
    # Several small commits per run, interleaved across runs; RUN_BEFORE_A holds the largest id.
    for round_ in range(4):
        for index, run_key in enumerate(runs):
            first = round_ * 3 + 1
            append(log, run_key, batch(first, first + 2, tag=f"r{index}-"))
    append(log, RUN_BEFORE_A, [make(MAX_ID)])
    for index, run_key in enumerate(runs):
        expected = batch(1, 12, tag=f"r{index}-")
        if run_key == RUN_BEFORE_A:
            expected.append(make(MAX_ID))
        with log.env.begin() as txn:
            assert log.read(txn, run_key) == expected
            assert log.count(txn, run_key) == len(expected)
            assert log.last_event_id(txn, run_key) == expected[-1].event_id


def test_from_to_ranges(log: HistoryLog) -> None:
    append(log, RUN_BEFORE_A, batch(1, 30, "b"))
    append(log, RUN_A, batch(1, 20))
    append(log, RUN_AFTER_A, batch(1, 30, "a"))

    def ids(from_event_id: int = 1, to_event_id: int = 0) -> list[int]:
        return [e.event_id for e in read(log, RUN_A, from_event_id, to_event_id)]

    assert ids() == list(range(1, 21))
    assert ids(5) == list(range(5, 21))
    assert ids(5, 9) == [5, 6, 7, 8, 9]
    assert ids(7, 7) == [7]
    assert ids(0, 3) == [1, 2, 3]
    assert ids(1, 100) == list(range(1, 21))
    assert ids(21) == []
    assert ids(9, 5) == []
    assert ids(MAX_ID) == []


def test_last_event_id_and_count(log: HistoryLog) -> None:
    with log.env.begin() as txn:
        assert log.last_event_id(txn, RUN_A) == 0
        assert log.count(txn, RUN_A) == 0
    append(log, RUN_AFTER_A, batch(1, 3))
    with log.env.begin() as txn:  # the run sorts before every key in the database
        assert log.last_event_id(txn, RUN_A) == 0
    append(log, RUN_BEFORE_A, batch(1, 4))
    with log.env.begin() as txn:  # the run sorts between two others
        assert log.last_event_id(txn, RUN_A) == 0
        assert log.last_event_id(txn, RUN_AFTER_A) == 3  # the last run in the database
        assert log.last_event_id(txn, RUN_BEFORE_A) == 4
    append(log, RUN_A, [make(2), make(10), make(11)])
    with log.env.begin() as txn:
        assert log.last_event_id(txn, RUN_A) == 11
        assert log.count(txn, RUN_A) == 3
    append(log, RUN_A, [make(MAX_ID)])
    with log.env.begin() as txn:
        assert log.last_event_id(txn, RUN_A) == MAX_ID
        assert log.count(txn, RUN_A) == 4


def test_duplicate_id_is_rejected(log: HistoryLog) -> None:
    append(log, RUN_A, batch(1, 3))
    with pytest.raises(ValueError, match=f"event id 3 already exists in run {RUN_A.hex()}"):
        append(log, RUN_A, [make(3, name="again")])
    with pytest.raises(ValueError, match="event id 2 already exists"):
        append(log, RUN_A, [make(2), make(4)])
    assert read(log, RUN_A) == batch(1, 3)  # the aborted transactions wrote nothing
    append(log, RUN_AFTER_A, [make(3)])  # the same id in another run is fine


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([0], "event ids start at 1"),
        ([2, 2], "strictly increasing, got 2 after 2"),
        ([3, 1], "strictly increasing, got 1 after 3"),
    ],
)
def test_batch_ids_must_increase(log: HistoryLog, ids: list[int], message: str) -> None:
    with log.env.begin(write=True) as txn:
        with pytest.raises(ValueError, match=message):
            log.append(txn, RUN_A, [make(i) for i in ids])
        assert log.count(txn, RUN_A) == 0  # checked before anything is written


def test_bad_arguments(log: HistoryLog) -> None:
    with log.env.begin(write=True) as txn:
        for run_key in (b"", b"x" * 15, b"x" * 17):
            with pytest.raises(ValueError, match="run_key must be exactly 16 bytes"):
                log.append(txn, run_key, [make(1)])
            with pytest.raises(ValueError, match="run_key must be exactly 16 bytes"):
                log.read(txn, run_key)
            with pytest.raises(ValueError, match="run_key must be exactly 16 bytes"):
                log.last_event_id(txn, run_key)
        with pytest.raises(TypeError, match="Event"):
            log.append(txn, RUN_A, [b"not an event"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            log.read(txn, "not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            log.read(object(), RUN_A)  # type: ignore[arg-type]


def test_writes_are_counted_and_a_finished_transaction_is_refused(log: HistoryLog) -> None:
    """The group commit reads ``txn.writes``; a transaction that ended has no handle to use."""
    with log.env.begin(write=True) as txn:
        log.append(txn, RUN_A, batch(1, 3))
        assert txn.writes == 3
        assert log.delete_run(txn, RUN_A) == 3
        assert txn.writes == 6
    for call in (
        lambda: log.append(txn, RUN_A, batch(1, 1)),
        lambda: log.read(txn, RUN_A),
        lambda: log.iter_raw(txn, RUN_A),
        lambda: log.count(txn, RUN_A),
        lambda: log.last_event_id(txn, RUN_A),
        lambda: log.delete_run(txn, RUN_A),
    ):
        with pytest.raises(mdb.Error, match="already finished"):
            call()


def test_delete_run(log: HistoryLog) -> None:
    append(log, RUN_BEFORE_A, batch(1, 5, "b"))
    append(log, RUN_A, batch(1, 7))
    append(log, RUN_AFTER_A, batch(1, 5, "a"))
    with log.env.begin(write=True) as txn:
        assert log.delete_run(txn, RUN_A) == 7
        assert log.delete_run(txn, RUN_A) == 0
        assert log.read(txn, RUN_A) == []
        assert log.last_event_id(txn, RUN_A) == 0
    assert read(log, RUN_BEFORE_A) == batch(1, 5, "b")
    assert read(log, RUN_AFTER_A) == batch(1, 5, "a")
    with log.env.begin(write=True) as txn:  # the last run of the database
        assert log.delete_run(txn, RUN_AFTER_A) == 5
    append(log, RUN_A, batch(1, 2))  # ids can be reused after a delete
    assert read(log, RUN_A) == batch(1, 2)


def test_read_your_writes_in_a_write_transaction(log: HistoryLog) -> None:
    with log.env.begin(write=True) as txn:
        log.append(txn, RUN_A, batch(1, 3))
        assert log.read(txn, RUN_A) == batch(1, 3)
        log.append(txn, RUN_A, batch(4, 6))
        assert log.read(txn, RUN_A, 3) == batch(3, 6)
        assert log.last_event_id(txn, RUN_A) == 6


def test_events_outlive_their_transaction(log: HistoryLog) -> None:
    """Events are decoded from the map but own their data: ending the transaction and rewriting the pages
    changes nothing."""
    append(log, RUN_A, batch(1, 50, "keep"))
    with log.env.begin() as txn:
        events = log.read(txn, RUN_A)
    with log.env.begin(write=True) as txn:
        log.delete_run(txn, RUN_A)
        log.append(txn, RUN_A, batch(1, 50, "overwritten"))
    assert events == batch(1, 50, "keep")


def test_ten_thousand_events(log: HistoryLog) -> None:
    events = [make(i, name="step", payload=i.to_bytes(8, "little")) for i in range(1, 10_001)]
    append(log, RUN_A, events[:5_000])
    append(log, RUN_A, events[5_000:])
    with log.env.begin() as txn:
        assert log.read(txn, RUN_A) == events
        assert log.read(txn, RUN_A, 9_990, 10_000) == events[9_989:]
        assert log.count(txn, RUN_A) == 10_000
        assert log.last_event_id(txn, RUN_A) == 10_000
    with log.env.begin(write=True) as txn:  # across many pages, down to an empty database
        assert log.delete_run(txn, RUN_A) == 10_000
        assert txn.writes == 10_000
        assert log.count(txn, RUN_A) == 0


def test_corrupt_value_names_the_run_and_event(log: HistoryLog) -> None:
    run_key = uuid.uuid4().bytes
    append(log, run_key, batch(1, 3))
    with log.env.begin(write=True) as txn:
        txn.put(event_key(run_key, 4), b"\x01garbage", db=log.db)
    with pytest.raises(CorruptHistoryError, match=f"run {run_key.hex()} event 4: .*at least 38"):
        read(log, run_key)
    assert read(log, run_key, 1, 3) == batch(1, 3)  # the range before it still reads


def test_value_under_the_wrong_key_is_corrupt(log: HistoryLog) -> None:
    with log.env.begin(write=True) as txn:
        txn.put(event_key(RUN_A, 2), make(7).encode(), db=log.db)
    with pytest.raises(CorruptHistoryError, match=f"run {RUN_A.hex()} event 2: .*says event 7"):
        read(log, RUN_A)


def test_malformed_key_is_corrupt_and_deletable(log: HistoryLog) -> None:
    append(log, RUN_A, batch(1, 2))
    with log.env.begin(write=True) as txn:
        txn.put(event_key(RUN_A, 1) + b"\x00", b"stray", db=log.db)  # sorts between events 1 and 2
    with log.env.begin() as txn:
        with pytest.raises(CorruptHistoryError, match=f"run {RUN_A.hex()}: history key .* is 25 bytes"):
            log.read(txn, RUN_A)
        with pytest.raises(CorruptHistoryError):
            log.count(txn, RUN_A)
    with log.env.begin(write=True) as txn:
        assert log.delete_run(txn, RUN_A) == 3


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from([RUN_BEFORE_A, RUN_A, RUN_AFTER_A]), st.integers(1, 4)),
        max_size=12,
    )
)
def test_matches_a_dict_model(log: HistoryLog, appends: list[tuple[bytes, int]]) -> None:
    model: dict[bytes, list[Event]] = {RUN_BEFORE_A: [], RUN_A: [], RUN_AFTER_A: []}
    txn = log.env.begin(write=True)
    try:
        for run_key, size in appends:
            first = len(model[run_key]) + 1
            new = batch(first, first + size - 1, run_key.hex()[-2:])
            log.append(txn, run_key, new)
            model[run_key].extend(new)
        for run_key, expected in model.items():
            assert log.read(txn, run_key) == expected
            assert log.count(txn, run_key) == len(expected)
            assert log.last_event_id(txn, run_key) == len(expected)
    finally:
        txn.abort()  # every example starts from an empty database
