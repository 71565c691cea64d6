"""Tests of the compiled event codec (duro._core.codec)."""

from __future__ import annotations

import enum
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duro._core import codec
from duro._core.codec import (
    EVENT_NAMES,
    HEADER_SIZE,
    VERSION,
    Event,
    decode_event,
    encode_event,
)
from duro.errors import CorruptHistoryError

U8, U16, U32, U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

events = st.builds(
    Event,
    type=st.integers(0, U8),
    event_id=st.integers(0, U64),
    timestamp_us=st.integers(I64_MIN, I64_MAX),
    ref=st.integers(0, U64),
    attempt=st.integers(0, U32),
    name=st.text(max_size=40),
    payload=st.binary(max_size=300),
    flags=st.integers(0, U16),
)


def reference_encode(e: Event) -> bytes:
    """The documented layout, written independently with struct (little-endian, 38-byte header)."""
    name = e.name.encode()
    header = struct.pack(
        "<BBHIQqQHI",
        1,
        e.type,
        e.flags,
        e.attempt,
        e.event_id,
        e.timestamp_us,
        e.ref,
        len(name),
        len(e.payload),
    )
    return header + name + e.payload


def test_constants() -> None:
    assert VERSION == 1
    assert HEADER_SIZE == 38 == struct.calcsize("<BBHIQqQHI")
    expected = {
        "WORKFLOW_STARTED": (1, "WorkflowExecutionStarted"),
        "WORKFLOW_TASK_COMPLETED": (2, "WorkflowTaskCompleted"),
        "WORKFLOW_TASK_FAILED": (15, "WorkflowTaskFailed"),
        "WORKFLOW_COMPLETED": (3, "WorkflowExecutionCompleted"),
        "WORKFLOW_FAILED": (4, "WorkflowExecutionFailed"),
        "WORKFLOW_TERMINATED": (5, "WorkflowExecutionTerminated"),
        "WORKFLOW_CANCEL_REQUESTED": (6, "WorkflowExecutionCancelRequested"),
        "WORKFLOW_CANCELED": (7, "WorkflowExecutionCanceled"),
        "WORKFLOW_CONTINUED_AS_NEW": (8, "WorkflowExecutionContinuedAsNew"),
        "WORKFLOW_TIMED_OUT": (9, "WorkflowExecutionTimedOut"),
        "ACTIVITY_SCHEDULED": (10, "ActivityTaskScheduled"),
        "ACTIVITY_COMPLETED": (11, "ActivityTaskCompleted"),
        "ACTIVITY_FAILED": (12, "ActivityTaskFailed"),
        "ACTIVITY_CANCEL_REQUESTED": (13, "ActivityTaskCancelRequested"),
        "ACTIVITY_CANCELED": (14, "ActivityTaskCanceled"),
        "TIMER_STARTED": (20, "TimerStarted"),
        "TIMER_FIRED": (21, "TimerFired"),
        "TIMER_CANCELED": (22, "TimerCanceled"),
        "SIGNAL_RECEIVED": (30, "WorkflowExecutionSignaled"),
        "UPDATE_ACCEPTED": (31, "WorkflowExecutionUpdateAccepted"),
        "UPDATE_COMPLETED": (32, "WorkflowExecutionUpdateCompleted"),
        "CHILD_STARTED": (40, "StartChildWorkflowExecutionInitiated"),
        "CHILD_COMPLETED": (41, "ChildWorkflowExecutionCompleted"),
        "CHILD_FAILED": (42, "ChildWorkflowExecutionFailed"),
        "EXTERNAL_SIGNAL": (43, "SignalExternalWorkflowExecutionInitiated"),
        "EXTERNAL_CANCEL": (44, "RequestCancelExternalWorkflowExecutionInitiated"),
        "CHILD_CANCELED": (45, "ChildWorkflowExecutionCanceled"),
        "MARKER": (50, "MarkerRecorded"),
    }
    for constant, (number, name) in expected.items():
        assert getattr(codec, constant) == number
        assert EVENT_NAMES[number] == name
    assert len(EVENT_NAMES) == len(expected)


def test_golden_layout() -> None:
    """Pin the on-disk bytes of one event: changing them breaks every stored history."""
    e = Event(
        codec.ACTIVITY_COMPLETED, 5, 1_700_000_000_123_456, ref=2, attempt=1, name="charge", payload=b"ok"
    )
    assert (
        e.encode()
        == bytes.fromhex(
            "01"  # version
            "0b"  # type 11
            "0000"  # flags
            "01000000"  # attempt
            "0500000000000000"  # event_id
            "40222018240a0600"  # timestamp_us
            "0200000000000000"  # ref
            "0600"  # name_len
            "02000000"  # payload_len
        )
        + b"charge"
        + b"ok"
    )


@given(events)
def test_round_trip(e: Event) -> None:
    data = e.encode()
    assert data == reference_encode(e)
    assert len(data) == HEADER_SIZE + len(e.name.encode()) + len(e.payload)
    for buffer in (data, bytearray(data), memoryview(data)):
        decoded = decode_event(buffer)
        assert decoded == e
        for field in ("type", "flags", "attempt", "event_id", "timestamp_us", "ref", "name", "payload"):
            assert getattr(decoded, field) == getattr(e, field)


@given(events, st.binary(max_size=20), st.binary(max_size=20))
def test_decode_memoryview_slice_of_larger_buffer(e: Event, before: bytes, after: bytes) -> None:
    data = before + e.encode() + after
    view = memoryview(data)[len(before) : len(data) - len(after)]
    assert decode_event(view) == e


@given(events)
def test_encode_event_matches_event_encode(e: Event) -> None:
    plain = Event(e.type, e.event_id, e.timestamp_us, e.ref, e.attempt, e.name, e.payload)
    assert (
        encode_event(e.type, e.event_id, e.timestamp_us, e.ref, e.attempt, e.name, e.payload)
        == plain.encode()
    )


def _decode_or_corrupt(data: bytes) -> None:
    """Decoding gives a valid Event (which re-encodes to the same bytes) or CorruptHistoryError."""
    try:
        decoded = decode_event(data)
    except CorruptHistoryError:
        return
    assert decoded.encode() == data


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_corrupt(data: bytes) -> None:
    _decode_or_corrupt(data)


@given(st.binary(min_size=HEADER_SIZE - 1, max_size=120))
def test_arbitrary_version_1_bytes_decode_or_raise_corrupt(tail: bytes) -> None:
    _decode_or_corrupt(b"\x01" + tail)


@given(events, st.data())
def test_mutated_encoding_decodes_or_raises_corrupt(e: Event, data: st.DataObject) -> None:
    encoded = bytearray(e.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    _decode_or_corrupt(bytes(encoded))


@given(events)
def test_every_truncation_is_corrupt(e: Event) -> None:
    data = e.encode()
    for size in range(len(data)):
        with pytest.raises(CorruptHistoryError):
            decode_event(data[:size])


@given(events, st.binary(min_size=1, max_size=10))
def test_trailing_bytes_are_corrupt(e: Event, extra: bytes) -> None:
    data = e.encode() + extra
    with pytest.raises(
        CorruptHistoryError, match=f"expected {len(data) - len(extra)} bytes.*got {len(data)}"
    ):
        decode_event(data)


@pytest.mark.parametrize("version", [v for v in range(256) if v != 1])
def test_wrong_version_is_corrupt(version: int) -> None:
    data = bytearray(Event(1, 1, 0, name="x", payload=b"y").encode())
    data[0] = version
    with pytest.raises(CorruptHistoryError, match=f"version {version}"):
        decode_event(bytes(data))


def test_invalid_utf8_name_is_corrupt() -> None:
    data = bytearray(Event(1, 1, 0, name="ab").encode())
    data[HEADER_SIZE] = 0xFF
    with pytest.raises(CorruptHistoryError, match="UTF-8"):
        decode_event(bytes(data))


def test_empty_and_header_only_truncations_say_so() -> None:
    with pytest.raises(CorruptHistoryError, match="empty"):
        decode_event(b"")
    with pytest.raises(CorruptHistoryError, match="at least 38 header bytes, got 10"):
        decode_event(Event(1, 1, 0).encode()[:10])


def test_decode_rejects_non_buffers() -> None:
    with pytest.raises(TypeError):
        decode_event("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", range(256))
def test_every_type_number_decodes(kind: int) -> None:
    e = decode_event(Event(kind, 1, 0).encode())
    assert e.type == kind
    assert e.type_name == EVENT_NAMES.get(kind, f"Unknown({kind})")


def test_limits_are_accepted() -> None:
    e = Event(U8, U64, I64_MIN, ref=U64, attempt=U32, name="n" * U16, payload=b"p", flags=U16)
    assert decode_event(e.encode()) == e
    assert decode_event(Event(0, 0, I64_MAX, name="é" * (U16 // 2)).encode()).name == "é" * (U16 // 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": -1}, "event type must not be negative"),
        ({"type": 256}, "event type must be at most 255"),
        ({"event_id": -1}, "event_id must not be negative"),
        ({"event_id": 2**64}, "event_id must be at most"),
        ({"ref": -5}, "ref must not be negative"),
        ({"attempt": -1}, "attempt must not be negative"),
        ({"attempt": 2**32}, "attempt must be at most"),
        ({"timestamp_us": 2**63}, "timestamp_us must fit in a signed 64-bit integer"),
        ({"flags": 2**16}, "flags must be at most"),
        ({"name": "n" * (U16 + 1)}, "name must be at most 65535 bytes as UTF-8, got 65536"),
        ({"name": "é" * 32768}, "name must be at most 65535 bytes as UTF-8, got 65536"),
    ],
)
def test_event_rejects_out_of_range(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"type": 1, "event_id": 1, "timestamp_us": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        Event(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"payload": "text"}, "payload must be bytes, not str"),
        ({"payload": bytearray(b"x")}, "payload must be bytes, not bytearray"),
        ({"payload": None}, "payload must be bytes, not NoneType"),
        ({"name": b"raw"}, "name must be a str, not bytes"),
        ({"event_id": 1.0}, "event_id must be an int, not float"),
        ({"timestamp_us": 1.5}, "timestamp_us must be an int"),
    ],
)
def test_event_rejects_wrong_types(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"type": 1, "event_id": 1, "timestamp_us": 0, **kwargs}
    with pytest.raises(TypeError, match=message):
        Event(**fields)  # type: ignore[arg-type]


def test_encode_event_validates_like_event() -> None:
    with pytest.raises(ValueError, match="event_id must not be negative"):
        encode_event(1, -1, 0, 0, 0, "", b"")
    with pytest.raises(ValueError, match="ref must not be negative"):
        encode_event(1, 1, 0, -1, 0, "", b"")
    with pytest.raises(ValueError, match="name must be at most 65535"):
        encode_event(1, 1, 0, 0, 0, "x" * 70_000, b"")
    with pytest.raises(TypeError, match="payload must be bytes"):
        encode_event(1, 1, 0, 0, 0, "", memoryview(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # a lone surrogate has no UTF-8 form
        encode_event(1, 1, 0, 0, 0, "\ud800", b"")


def test_repr_and_properties() -> None:
    e = Event(codec.ACTIVITY_COMPLETED, 5, 1_500_000, ref=2, attempt=1, name="charge", payload=b"x" * 12)
    assert repr(e) == "Event(ActivityTaskCompleted id=5 ref=2 attempt=1 name='charge' payload=12B)"
    assert repr(Event(99, 1, 0)) == "Event(Unknown(99) id=1 ref=0 attempt=0 name='' payload=0B)"
    assert e.timestamp == 1.5
    assert e.type_name == "ActivityTaskCompleted"


def test_with_id_copies_everything_else() -> None:
    e = Event(codec.TIMER_FIRED, 0, 7, ref=3, attempt=2, name="t", payload=b"p", flags=4)
    moved = e.with_id(42)
    assert moved.event_id == 42 and e.event_id == 0
    assert moved == Event(codec.TIMER_FIRED, 42, 7, ref=3, attempt=2, name="t", payload=b"p", flags=4)
    with pytest.raises(ValueError, match="event_id must not be negative"):
        e.with_id(-1)


def test_events_are_immutable() -> None:
    e = Event(1, 1, 0)
    with pytest.raises(AttributeError):
        e.event_id = 2  # type: ignore[misc]


@given(events)
def test_equality_hash_and_pickle(e: Event) -> None:
    same = decode_event(e.encode())
    assert e == same and hash(e) == hash(same)
    assert e != e.with_id((e.event_id + 1) % 2**64)
    assert e != "not an event"
    assert pickle.loads(pickle.dumps(e)) == e


def test_int_likes_and_subclasses_are_accepted() -> None:
    class Name(enum.StrEnum):
        CHARGE = "charge"

    class Payload(bytes):
        pass

    class Id:
        def __index__(self) -> int:
            return 7

    e = Event(codec.MARKER, Id(), Id(), name=Name.CHARGE, payload=Payload(b"p"))  # type: ignore[arg-type]
    assert (e.event_id, e.timestamp_us) == (7, 7)
    assert type(e.name) is str and type(e.payload) is bytes  # stored as exact types
    assert e == Event(codec.MARKER, 7, 7, name="charge", payload=b"p")
    assert encode_event(codec.MARKER, 7, 7, 0, 0, Name.CHARGE, Payload(b"p")) == e.encode()
