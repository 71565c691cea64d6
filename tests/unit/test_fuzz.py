"""Fuzzing of everything duro reads back from disk or from users (issue 7, the fuzz suite).

What is fuzzed, and against what:

- the event codec (``duro._core.codec``): mutated envelopes (bit flips, truncations, insertions,
  splices, header fields overwritten) must decode exactly as an independent ``struct``-based
  reference decoder says, or raise ``CorruptHistoryError`` with the reference's reason;
- the history decoder (``duro._core.log.read_events``) and every read path of ``HistoryLog``, on
  duro's own LMDB binding (the one that ships), with garbage values, mutated envelopes, envelopes
  under the wrong key and keys of the wrong length: each result is compared with a model of LMDB's
  key order (a sorted dict), and each ``CorruptHistoryError`` must name the run and the event (for a
  malformed key: the run and the key's length);
- ``History.from_json`` on arbitrary and mutated documents;
- payload framing (``duro.stores.base.pack`` / ``unpack``);
- the JSON converter's decoders on arbitrary bytes.

``tests/unit/test_codec.py`` and ``test_log.py`` hold the example-based tests and the basic
properties; nothing here repeats them. Quick by default (Hypothesis' 100-example budget, scaled per
property); ``make fuzz`` runs the ``fuzz`` profile of ``conftest.py`` (``FUZZ_EXAMPLES``).

A property that found a real bug is marked ``xfail(strict=True)`` with the bug in its reason and a
minimal ``@example``: the fix makes it pass, and strict turns that into a failure to remove the mark.
"""

from __future__ import annotations

import array
import dataclasses
import datetime
import random
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import msgspec
import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from duro._cli_output import json_safe
from duro._core import mdb
from duro._core.codec import EVENT_NAMES, HEADER_SIZE, Event, decode_event, encode_event
from duro._core.log import HistoryLog, read_events
from duro.converter import decode_failure, default_converter
from duro.errors import CorruptHistoryError
from duro.history import History
from duro.stores.base import pack, unpack

U8, U16, U32, U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# The example budget of the loaded profile relative to Hypothesis' default of 100: 1 normally,
# FUZZ_EXAMPLES / 100 under `make fuzz`.
_SCALE = settings().max_examples / 100


def budget(examples: int, *, known_bug: bool = False) -> settings:
    """Settings of one property: ``examples`` examples in the quick profile, scaled by the loaded one.

    ``known_bug``: the property is an xfail for a reported bug; its failure is not shrunk again on every
    run (the reason names a minimal example), it only has to keep failing until the fix.
    """
    phases = (Phase.explicit, Phase.reuse, Phase.generate) if known_bug else settings().phases
    return settings(
        max_examples=max(1, round(examples * _SCALE)),
        deadline=None,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------
# The reference decoder: the documented version-1 layout, written independently with struct.
# ---------------------------------------------------------------------------------------------

_HEADER = struct.Struct("<BBHIQqQHI")  # version type flags attempt event_id timestamp_us ref name_len payload_len
assert _HEADER.size == HEADER_SIZE


@dataclasses.dataclass(frozen=True)
class Invalid:
    """The reference decoder's verdict on bytes that are no envelope; ``reason`` is a regex of the message."""

    kind: str
    reason: str


def reference_decode(data: bytes) -> Event | Invalid:
    """Decode one envelope the slow, obvious way, or say why it is not one."""
    if not data:
        return Invalid("empty", "empty event envelope")
    if data[0] != 1:
        return Invalid("version", f"unsupported event envelope version {data[0]} ")
    if len(data) < HEADER_SIZE:
        return Invalid("truncated", re.escape(
            f"truncated event envelope: expected at least {HEADER_SIZE} header bytes, got {len(data)}"
        ))
    _, kind, flags, attempt, event_id, timestamp_us, ref, name_len, payload_len = _HEADER.unpack_from(data)
    expected = HEADER_SIZE + name_len + payload_len
    if expected != len(data):
        return Invalid("length", re.escape(
            f"length mismatch: expected {expected} bytes ({HEADER_SIZE} header + {name_len} name + "
            f"{payload_len} payload), got {len(data)}"
        ))
    try:
        name = data[HEADER_SIZE : HEADER_SIZE + name_len].decode("utf-8")
    except UnicodeDecodeError:
        return Invalid("utf-8", "event name is not valid UTF-8")
    return Event(kind, event_id, timestamp_us, ref=ref, attempt=attempt, name=name,
                 payload=bytes(data[HEADER_SIZE + name_len :]), flags=flags)


def assert_decodes_like_reference(data: bytes) -> None:
    """decode_event agrees with the reference both ways: no crash, no false alarm, no silent acceptance."""
    expected = reference_decode(data)
    hypothesis.event(f"envelope: {expected.kind if isinstance(expected, Invalid) else 'valid'}")
    if isinstance(expected, Invalid):
        with pytest.raises(CorruptHistoryError, match=expected.reason):
            decode_event(data)
    else:
        decoded = decode_event(data)
        assert decoded == expected
        assert decoded.encode() == data


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

ids = st.one_of(
    st.integers(0, 16),
    st.sampled_from([U32, U32 + 1, I64_MAX, I64_MAX + 1, U64 - 1, U64]),
    st.integers(0, U64),
)
types = st.one_of(st.sampled_from(sorted(EVENT_NAMES)), st.integers(0, U8))
timestamps = st.one_of(st.sampled_from([I64_MIN, -1, 0, 1, I64_MAX]), st.integers(I64_MIN, I64_MAX))
attempts = st.one_of(st.integers(0, 3), st.just(U32), st.integers(0, U32))
flag_values = st.one_of(st.just(0), st.just(U16), st.integers(0, U16))

# Names: any text (non-ASCII and astral included), and long ones up to the 65535-byte limit.
long_names = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", "é", "€", "\U0001d11e"]),  # 1, 2, 3 and 4 bytes in UTF-8
    st.integers(0, 16383),  # at most 4 * 16383 = 65532 bytes
)
names = st.one_of(
    st.text(max_size=24),
    st.text(st.characters(min_codepoint=0x80, codec="utf-8"), max_size=8),  # no lone surrogates
    long_names,
    st.sampled_from(["a" * U16, "é" * (U16 // 2) + "a", "€" * (U16 // 3)]),  # exactly 65535 bytes
)


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Large payloads cost Hypothesis two small draws (a size and a seed), not megabytes of choices.
big_payloads = st.builds(
    _random_bytes, st.sampled_from([255, 256, 4096, U16, U16 + 1, 1 << 20, (1 << 22) + 3]), st.integers(0, U32)
)
payloads = st.one_of(st.binary(max_size=48), big_payloads)

events = st.builds(
    Event, type=types, event_id=ids, timestamp_us=timestamps, ref=ids, attempt=attempts,
    name=names, payload=payloads, flags=flag_values,
)
small_events = st.builds(
    Event, type=types, event_id=ids, timestamp_us=timestamps, ref=ids, attempt=attempts,
    name=st.text(max_size=12), payload=st.binary(max_size=32), flags=flag_values,
)
small_envelopes = small_events.map(Event.encode)

_FIELD_SLOTS = {  # offset, size of each header field
    "version": (0, 1), "type": (1, 1), "flags": (2, 2), "attempt": (4, 4), "event_id": (8, 8),
    "timestamp_us": (16, 8), "ref": (24, 8), "name_len": (32, 2), "payload_len": (34, 4),
}
_OPS = ("flip", "set_byte", "truncate", "extend", "insert", "delete", "field", "resplit", "splice")


def apply_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three damages of ``data``: what a bad disk, a bad copy or a bad actor does to bytes."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(_OPS))
        if op == "flip" and buf:
            buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set_byte" and buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, U8))
        elif op == "truncate":  # often right at a boundary: inside the header, just after it, one byte short
            boundaries = [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(buf) - 1]
            cut = draw(st.one_of(st.sampled_from(boundaries), st.integers(0, len(buf))))
            del buf[max(cut, 0) :]
        elif op == "extend":
            buf += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            at = draw(st.integers(0, len(buf)))
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            at = draw(st.integers(0, len(buf) - 1))
            del buf[at : at + draw(st.integers(1, 8))]
        elif op == "field":  # overwrite one header field with a boundary or any value
            offset, size = _FIELD_SLOTS[draw(st.sampled_from(sorted(_FIELD_SLOTS)))]
            if len(buf) >= offset + size:
                top = 2 ** (8 * size) - 1
                special = [0, 1, top, top - 1, top // 2, top // 2 + 1, len(buf), len(buf) - HEADER_SIZE]
                value = draw(st.one_of(st.sampled_from(special), st.integers(0, top)))
                buf[offset : offset + size] = (value & top).to_bytes(size, "little")
        elif op == "resplit" and len(buf) >= HEADER_SIZE:  # consistent lengths, another name/payload border
            body = len(buf) - HEADER_SIZE
            name_len = draw(st.integers(0, min(body, U16)))
            buf[32:34] = name_len.to_bytes(2, "little")
            buf[34:38] = (body - name_len).to_bytes(4, "little")
        elif op == "splice":  # the head of this envelope glued to the tail of another
            other = draw(small_envelopes)
            buf = buf[: draw(st.integers(0, len(buf)))] + other[draw(st.integers(0, len(other))) :]
    return bytes(buf)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Bytes drawn from ``base``, then damaged."""
    return apply_mutations(draw, draw(base))


# JSON values that orjson can write (its integers are 64-bit).
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(I64_MIN, U64),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
# What a damaged or hand-edited document puts in a field: edge numbers, numeric strings, wrong types.
field_values = st.one_of(
    json_values,
    st.sampled_from([
        -1, 0, 1, 255, 256, U16 + 1, U32 + 1, I64_MAX, I64_MIN, U64, 1.5, 1e300, -0.0,
        "7", " 7 ", "1_0", "x", "", "AA==", "A", "!!", "\u00e9", True, False, None, [], {},
    ]),
)


# ---------------------------------------------------------------------------------------------
# The codec
# ---------------------------------------------------------------------------------------------


@budget(60)
@given(events)
def test_any_valid_event_round_trips_through_every_buffer_kind(e: Event) -> None:
    """Extremes test_codec.py does not reach: 64 KiB names, multi-MiB payloads, u64/i64 bounds."""
    data = e.encode()
    assert reference_decode(data) == e
    for buffer in (data, bytearray(data), memoryview(data), array.array("B", data)):
        assert decode_event(buffer) == e
    if e.flags == 0:
        fields = (e.type, e.event_id, e.timestamp_us, e.ref, e.attempt, e.name, e.payload)
        assert encode_event(*fields) == data


@budget(400)
@given(mutated(st.one_of(small_envelopes, events.map(Event.encode))))
def test_damaged_envelope_decodes_exactly_like_the_reference(data: bytes) -> None:
    assert_decodes_like_reference(data)


@st.composite
def headers_with_tails(draw: st.DrawFn) -> bytes:
    """A header of arbitrary field values over an arbitrary tail; half the time its lengths fit the tail."""
    tail = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        name_len = draw(st.integers(0, len(tail)))
        lengths = (name_len, len(tail) - name_len)
    else:
        lengths = (draw(st.integers(0, U16)), draw(st.integers(0, U32)))
    version = draw(st.one_of(st.just(1), st.integers(0, U8)))
    head = (version, draw(types), draw(flag_values), draw(attempts), draw(ids), draw(timestamps), draw(ids))
    return _HEADER.pack(*head, *lengths) + tail


@budget(300)
@given(headers_with_tails())
def test_any_header_over_any_tail_decodes_exactly_like_the_reference(data: bytes) -> None:
    assert_decodes_like_reference(data)


@budget(100)
@given(st.one_of(st.binary(max_size=120), mutated(small_envelopes)))
def test_every_contiguous_buffer_kind_decodes_the_same(data: bytes) -> None:
    """bytes take a fast path; bytearray, memoryview slices and arrays the buffer protocol: same verdict."""
    expected = reference_decode(data)
    padded = b"\xff" * 3 + data + b"\x01" * 5
    buffers = (bytearray(data), memoryview(padded)[3 : 3 + len(data)], array.array("B", data))
    for buffer in buffers:
        if isinstance(expected, Invalid):
            with pytest.raises(CorruptHistoryError, match=expected.reason):
                decode_event(buffer)
        else:
            assert decode_event(buffer) == expected


anything = st.one_of(
    st.integers(), st.integers(-(2**70), 2**70), st.booleans(), st.floats(), st.text(max_size=4),
    st.binary(max_size=4), st.none(), st.builds(bytearray, st.binary(max_size=4)),
)
int_fields = st.one_of(st.integers(-(2**66), 2**66), ids, anything)
name_fields = st.one_of(names, st.sampled_from(["\ud800", "a\udfff", "\udc80b"]), anything)  # lone surrogates
payload_fields = st.one_of(st.binary(max_size=16), anything)


@budget(300)
@given(int_fields, int_fields, int_fields, int_fields, int_fields, name_fields, payload_fields, int_fields)
def test_event_fields_are_accepted_or_refused_with_value_or_type_error(
    kind: Any, event_id: Any, timestamp_us: Any, ref: Any, attempt: Any, name: Any, payload: Any, flags: Any
) -> None:
    """Event() and encode_event() agree, refuse only with ValueError/TypeError and never overflow."""
    fields = (kind, event_id, timestamp_us, ref, attempt, name, payload)
    try:
        plain = Event(*fields)
    except (ValueError, TypeError):
        with pytest.raises((ValueError, TypeError)):
            encode_event(*fields)
    else:
        assert encode_event(*fields) == plain.encode()
        assert decode_event(plain.encode()) == plain
    try:
        e = Event(*fields, flags=flags)
    except (ValueError, TypeError):
        pass  # anything else (OverflowError, SystemError) fails the test
    else:
        assert reference_decode(e.encode()) == e


# ---------------------------------------------------------------------------------------------
# The history decoder: log.read_events and HistoryLog, on duro's LMDB binding
# ---------------------------------------------------------------------------------------------

RUN = bytes.fromhex("0190a1b2c3d4e5f60718293a4b5c6d10")
RUN_BEFORE = RUN[:-1] + b"\x0f"  # byte-wise neighbours: a read must never bleed into them
RUN_AFTER = RUN[:-1] + b"\x11"
RUNS = (RUN, RUN_BEFORE, RUN_AFTER)


def key_of(run: bytes, event_id: int) -> bytes:
    return run + event_id.to_bytes(8, "big")


# Values big enough to sit on LMDB overflow pages are read from there, not from a leaf node.
stored_payloads = st.one_of(
    st.binary(max_size=24), st.builds(lambda size, byte: bytes([byte]) * size,
                                      st.sampled_from([2000, 4096, 70_000]), st.integers(0, U8))
)


def stored_events(event_id: int) -> st.SearchStrategy[Event]:
    return st.builds(Event, type=types, event_id=st.just(event_id), timestamp_us=timestamps,
                     ref=ids, attempt=attempts, name=st.text(max_size=8), payload=stored_payloads)


def stored_values(event_id: int) -> st.SearchStrategy[bytes]:
    """What a key's value may hold: mostly its event, else a damaged one, another id's, or garbage."""
    valid = stored_events(event_id).map(Event.encode)
    wrong_id = st.tuples(stored_events(event_id), ids).map(lambda t: t[0].with_id(t[1]).encode())
    return st.one_of(valid, valid, valid, wrong_id, mutated(valid), st.binary(max_size=48))


malformed_keys = st.one_of(  # start with RUN but are not 24 bytes long
    st.tuples(ids, st.integers(16, 23)).map(lambda t: key_of(RUN, t[0])[: t[1]]),
    st.tuples(ids, st.binary(min_size=1, max_size=8)).map(lambda t: key_of(RUN, t[0]) + t[1]),
    st.binary(max_size=12).filter(lambda suffix: len(suffix) != 8).map(lambda suffix: RUN + suffix),
)
foreign_keys = st.one_of(  # share a prefix with RUN, or anything (both may happen to be RUN's keys)
    st.tuples(st.integers(1, 15), st.binary(max_size=12)).map(lambda t: RUN[: t[0]] + t[1]),
    st.binary(min_size=1, max_size=30),
)
any_values = st.one_of(small_envelopes, st.binary(max_size=48))


@st.composite
def entries(draw: st.DrawFn) -> tuple[bytes, bytes]:
    kind = draw(st.sampled_from(["event", "event", "event", "neighbour", "malformed", "foreign"]))
    if kind in ("event", "neighbour"):
        run = RUN if kind == "event" else draw(st.sampled_from(RUNS[1:]))
        event_id = draw(ids)
        return key_of(run, event_id), draw(stored_values(event_id))
    key = draw(malformed_keys if kind == "malformed" else foreign_keys)
    return key, draw(any_values)


@st.composite
def layouts(draw: st.DrawFn) -> dict[bytes, bytes]:
    """The whole content of the history database: a healthy start of RUN, then anything on top."""
    layout = {key_of(RUN, i): draw(stored_events(i)).encode() for i in range(1, draw(st.integers(0, 5)) + 1)}
    layout.update(draw(st.lists(entries(), max_size=10)))
    return layout


query_runs = st.one_of(st.just(RUN), st.sampled_from(RUNS))
from_ids = st.one_of(st.just(1), st.just(0), ids)
to_ids = st.one_of(st.just(0), ids)


@dataclasses.dataclass(frozen=True)
class Corrupt:
    """The model's verdict: CorruptHistoryError naming ``run`` (and ``event_id`` unless a key is malformed)."""

    run: bytes
    event_id: int | None
    reason: str


def _keys_from(layout: dict[bytes, bytes], start: bytes) -> list[bytes]:
    # LMDB's default order: memcmp over the common length, then the shorter key first = bytes order.
    return sorted(k for k in layout if k >= start)


def _malformed(run: bytes, key: bytes) -> Corrupt:
    return Corrupt(run, None, rf"history key .*\b{len(key)} bytes")


def model_read(
    layout: dict[bytes, bytes], run: bytes, from_id: int, to_id: int, *, decode: bool = True, log: bool = False
) -> list[Any] | Corrupt:
    """The run's events (or raw values) with ids from..to (0: to the end), walking keys in LMDB order."""
    if log and to_id and to_id < from_id:  # HistoryLog answers an empty range without looking
        return []
    found: list[Any] = []
    for key in _keys_from(layout, key_of(run, from_id)):
        if not key.startswith(run):
            break
        if len(key) != 24:
            return _malformed(run, key)
        event_id = int.from_bytes(key[16:], "big")
        if to_id and event_id > to_id:
            break
        if not decode:
            found.append(layout[key])
            continue
        event = reference_decode(layout[key])
        if isinstance(event, Invalid):
            return Corrupt(run, event_id, event.reason)
        if event.event_id != event_id:
            return Corrupt(run, event_id, f"the stored envelope says event {event.event_id}$")
        found.append(event)
    return found


def model_count(layout: dict[bytes, bytes], run: bytes) -> int | Corrupt:
    count = 0
    for key in _keys_from(layout, run):
        if not key.startswith(run):
            break
        if len(key) != 24:
            return _malformed(run, key)
        count += 1
    return count


def model_last_event_id(layout: dict[bytes, bytes], run: bytes) -> int | Corrupt:
    """The id in the run's last key: the first key at or after the run's largest, else the one before."""
    top = key_of(run, U64)
    keys = sorted(layout)
    after = [k for k in keys if k >= top]
    before = [k for k in keys if k < top]
    if after and after[0].startswith(run):
        last = after[0]
    elif before:
        last = before[-1]
    else:
        return 0
    if not last.startswith(run):
        return 0
    if len(last) != 24:
        return _malformed(run, last)
    return int.from_bytes(last[16:], "big")


def check(call: Callable[[], Any], expected: Any) -> None:
    """``call()`` returns ``expected``, or raises the CorruptHistoryError the model predicts and nothing else."""
    if isinstance(expected, Corrupt):
        hypothesis.event("corrupt key" if expected.event_id is None else "corrupt value")
        with pytest.raises(CorruptHistoryError) as info:
            call()
        message = str(info.value)
        assert f"run {expected.run.hex()}" in message
        if expected.event_id is not None:
            assert f"run {expected.run.hex()} event {expected.event_id}: " in message
        assert re.search(expected.reason, message), (expected.reason, message)
    else:
        hypothesis.event(f"{min(len(expected), 3)} items" if isinstance(expected, list) else "a number")
        assert call() == expected


@dataclasses.dataclass(frozen=True)
class Backend:
    """duro's LMDB binding with its history database."""

    env: mdb.Environment
    db: mdb.Database

    def begin(self, write: bool = False) -> mdb.Transaction:
        return self.env.begin(write=write)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    env = mdb.Environment(str(tmp_path_factory.mktemp("mdb")), map_size=1 << 30, max_dbs=4, sync=False)
    yield Backend(env, env.open_db(b"history"))
    env.close()


def _is_empty(backend: Backend, txn: Any) -> bool:
    with txn.cursor(db=backend.db) as cursor:
        return not cursor.first()


def with_layout(backend: Backend, layout: dict[bytes, bytes], body: Callable[[Any], None]) -> None:
    """Run ``body`` in the write transaction that stores ``layout`` (dirty pages), then in a read one
    after the commit (the memory map), then empty the database again."""
    txn = backend.begin(write=True)
    try:
        assert _is_empty(backend, txn), "a previous example left keys behind"
        for key, value in layout.items():
            txn.put(key, value, db=backend.db)
        body(txn)
    except BaseException:
        txn.abort()
        raise
    txn.commit()
    try:
        with backend.begin() as reader:
            body(reader)
    finally:
        with backend.begin(write=True) as cleaner:
            for key in layout:
                cleaner.delete(key, db=backend.db)


@budget(150)
@given(layout=layouts(), run=query_runs, from_id=from_ids, to_id=to_ids)
def test_read_events_matches_the_model(
    backend: Backend, layout: dict[bytes, bytes], run: bytes, from_id: int, to_id: int
) -> None:
    expected = model_read(layout, run, from_id, to_id, log=True)
    with_layout(backend, layout, lambda txn: check(lambda: read_events(txn, backend.db, run, from_id, to_id), expected))


@budget(60)
@given(layout=layouts(), run=query_runs, from_id=from_ids, to_id=to_ids)
def test_history_log_reads_match_the_model(
    backend: Backend, layout: dict[bytes, bytes], run: bytes, from_id: int, to_id: int
) -> None:
    log = HistoryLog(backend.env, backend.db)

    def body(txn: Any) -> None:
        check(lambda: log.read(txn, run, from_id, to_id), model_read(layout, run, from_id, to_id, log=True))
        check(lambda: log.read(txn, run), model_read(layout, run, 1, 0, log=True))
        check(lambda: log.iter_raw(txn, run, from_id, to_id),
              model_read(layout, run, from_id, to_id, decode=False, log=True))
        check(lambda: log.count(txn, run), model_count(layout, run))
        check(lambda: log.last_event_id(txn, run), model_last_event_id(layout, run))

    with_layout(backend, layout, body)


_EVENT = Event(1, 1, 0).encode()


@budget(40)
@example(layout={key_of(RUN, 1): _EVENT}, run=RUN)
@given(layout=layouts(), run=query_runs)
def test_delete_run_removes_exactly_the_runs_keys(backend: Backend, layout: dict[bytes, bytes], run: bytes) -> None:
    log = HistoryLog(backend.env, backend.db)
    txn = backend.begin(write=True)
    try:
        for key, value in layout.items():
            txn.put(key, value, db=backend.db)
        assert log.delete_run(txn, run) == sum(key.startswith(run) for key in layout)
        with txn.cursor(db=backend.db) as cursor:
            remaining = {bytes(k): bytes(v) for k, v in cursor}
        assert remaining == {k: v for k, v in layout.items() if not k.startswith(run)}
    finally:
        txn.abort()  # nothing of an example is ever committed


# ---------------------------------------------------------------------------------------------
# duro.History: from_json, the readable events
# ---------------------------------------------------------------------------------------------

# datetime covers years 1..9999; one day of margin keeps clear of the platform's edge cases.
_DAY_US = 86_400_000_000
MIN_DATETIME_US = -62_135_596_800_000_000 + _DAY_US
MAX_DATETIME_US = 253_402_300_799_000_000 - _DAY_US


def _in_datetime_range(timestamp_us: int) -> bool:
    return MIN_DATETIME_US <= timestamp_us <= MAX_DATETIME_US


history_events = st.builds(
    Event, type=types, event_id=ids, timestamp_us=st.integers(MIN_DATETIME_US, MAX_DATETIME_US), ref=ids,
    attempt=attempts, name=st.text(max_size=16), payload=st.binary(max_size=40),
    flags=st.one_of(st.just(0), st.integers(0, 0xFFFF)),
)
histories = st.builds(History, st.text(max_size=16), st.text(max_size=16), st.lists(history_events, max_size=4))
_TOP_FIELDS = ("format", "version", "workflow_id", "run_id", "events")
_EVENT_FIELDS = ("event_id", "type", "type_code", "time", "time_us", "ref", "attempt", "name", "payload", "flags")


@st.composite
def history_documents(draw: st.DrawFn) -> bytes:
    """A valid to_json() document with fields removed, retyped or set to edge values, maybe byte-damaged."""
    doc: Any = orjson.loads(draw(histories).to_json())
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(["top", "event", "event", "events", "whole"]))
        if target == "whole":
            doc = draw(json_values)
        elif not isinstance(doc, dict):
            continue
        elif target == "top":
            field = draw(st.sampled_from(_TOP_FIELDS))
            if draw(st.booleans()):
                doc.pop(field, None)
            else:
                doc[field] = draw(field_values)
        elif target == "events":
            doc["events"] = draw(st.one_of(field_values, st.lists(field_values, max_size=3)))
        elif isinstance(doc.get("events"), list) and doc["events"]:
            index = draw(st.integers(0, len(doc["events"]) - 1))
            event = doc["events"][index]
            if not isinstance(event, dict):
                doc["events"][index] = draw(field_values)
            elif draw(st.booleans()):
                event.pop(draw(st.sampled_from(_EVENT_FIELDS)), None)
            else:
                event[draw(st.sampled_from(_EVENT_FIELDS))] = draw(field_values)
    text = orjson.dumps(doc)
    return apply_mutations(draw, text) if draw(st.booleans()) else text


@budget(400)
@given(st.one_of(
    history_documents(), st.binary(max_size=200), st.text(max_size=200), json_values.map(orjson.dumps),
    st.sampled_from(['"\ud800"', '{"format": "duro-history\udfff"}']),  # str input with lone surrogates
))
def test_from_json_returns_a_history_or_raises_corrupt_history_error(text: str | bytes) -> None:
    """Its docstring: "raises CorruptHistoryError on anything else" (no KeyError, TypeError, ...)."""
    try:
        history = History.from_json(text)
    except CorruptHistoryError as exc:
        assert str(exc).startswith(("cannot read history JSON", "not a duro history document")), str(exc)
    else:
        assert isinstance(history, History)
        assert all(isinstance(e, Event) for e in history.core_events)


@budget(300)
@given(history_documents())
def test_a_history_read_from_json_is_readable_and_round_trips(text: bytes) -> None:
    try:
        history = History.from_json(text)
    except CorruptHistoryError:
        return
    # Timestamps outside datetime's range: see test_out_of_range_timestamps_are_refused_or_readable.
    assume(all(_in_datetime_range(e.timestamp_us) for e in history.core_events))
    readable = list(history)
    assert len(readable) == len(history) == len(history.core_events)
    for entry, event in zip(readable, history.core_events, strict=True):
        assert (entry.event_id, entry.type_code, entry.ref, entry.attempt, entry.name, entry.payload,
                entry.timestamp_us, entry.flags) == (
            event.event_id, event.type, event.ref, event.attempt, event.name, event.payload, event.timestamp_us,
            event.flags
        )
        assert entry.timestamp.tzinfo is datetime.UTC
    again = History.from_json(history.to_json())
    assert (again.workflow_id, again.run_id, again.core_events) == (
        history.workflow_id, history.run_id, history.core_events
    )


@budget(100)
@given(histories)
def test_to_json_from_json_round_trip(history: History) -> None:
    again = History.from_json(history.to_json())
    assert (again.workflow_id, again.run_id, again.core_events) == (
        history.workflow_id, history.run_id, history.core_events
    )
    assert again.to_json() == history.to_json()


@budget(100)
@given(histories)
def test_the_cli_history_json_round_trips(history: History) -> None:
    """``duro history --json`` prints ``json_safe(to_json())``: its text reads back to the same events
    (every field) and, exported again, is the same text."""
    printed = json_safe(history.to_json())
    again = History.from_json(printed)
    assert (again.workflow_id, again.run_id, again.core_events) == (
        history.workflow_id, history.run_id, history.core_events
    )
    assert json_safe(again.to_json()) == printed


def _history_document(time_us: int) -> bytes:
    event = {"event_id": 1, "type": "WorkflowExecutionStarted", "type_code": 1, "time": "", "time_us": time_us,
             "ref": 0, "attempt": 0, "name": "", "payload": ""}
    return orjson.dumps({"format": "duro-history", "version": 1, "workflow_id": "w", "run_id": "r",
                         "events": [event]})


@budget(30, )
@example(time_us=2**62)
@given(time_us=st.one_of(
    st.integers(MAX_DATETIME_US + _DAY_US, I64_MAX), st.integers(I64_MIN, MIN_DATETIME_US - _DAY_US)
))
def test_out_of_range_timestamps_are_refused_or_readable(time_us: int) -> None:
    try:
        history = History.from_json(_history_document(time_us))
    except CorruptHistoryError:
        return
    list(history)
    History.from_json(history.to_json())


@budget(100, )
@example(event=Event(1, 1, 2_250_893_279_929_083))
@given(event=history_events)
def test_history_event_to_event_is_exact(event: Event) -> None:
    assert History("w", "r", [event])[0].to_event() == event


packed_json = st.builds(pack, json_values.map(orjson.dumps), json_values.map(orjson.dumps))


@budget(200)
@given(st.one_of(st.binary(max_size=80), json_values.map(orjson.dumps), packed_json, mutated(packed_json)))
def test_history_event_data_never_raises(payload: bytes) -> None:
    value = History("w", "r", [Event(1, 1, 0, payload=payload)])[0].data()
    try:
        as_json = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if payload:
        assert value == as_json


# ---------------------------------------------------------------------------------------------
# Payload framing
# ---------------------------------------------------------------------------------------------

part_lists = st.lists(st.one_of(st.binary(max_size=40), st.just(b"")), max_size=6)


@budget(100)
@given(part_lists)
def test_pack_unpack_round_trip(parts: list[bytes]) -> None:
    data = pack(*parts)
    assert len(data) == 4 * len(parts) + sum(map(len, parts))
    assert unpack(data) == parts
    assert unpack(memoryview(b"##" + data)[2:]) == parts


@budget(300)
@given(st.one_of(st.binary(max_size=64), mutated(part_lists.map(lambda parts: pack(*parts)))))
def test_unpack_of_any_bytes_is_exact_or_a_value_error(data: bytes) -> None:
    try:
        parts = unpack(data)
    except ValueError as exc:
        assert str(exc) == "truncated packed record"
    else:
        assert pack(*parts) == data  # the framing is canonical: what unpacks, packs back to the same bytes


# ---------------------------------------------------------------------------------------------
# The JSON converter's decoders
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


class Item(msgspec.Struct):
    name: str
    qty: int = 0


class Model(pydantic.BaseModel):
    name: str
    tags: list[str] = []


HINTS: list[Any] = [
    None, Any, int, float, str, bool, list[int], tuple[int, str], tuple[float, ...], dict[str, float],
    Point, list[Point], Point | None, dict[str, Point], tuple[Point, int], Item, list[Item], Model,
]
shaped_values = st.fixed_dictionaries(
    {}, optional={"x": field_values, "y": field_values, "name": field_values, "qty": field_values,
                  "tags": field_values},
)
json_payloads = st.one_of(
    st.binary(max_size=60),
    json_values.map(orjson.dumps),
    mutated(json_values.map(orjson.dumps)),
    shaped_values.map(orjson.dumps),
    st.lists(shaped_values, max_size=3).map(orjson.dumps),
)
# A TypeError is a clear answer only when it says what was wrong with the payload.
_CLEAR_TYPE_ERRORS = re.compile(r"missing \d+ required|must be a JSON array")


def assert_clear(exc: Exception) -> None:
    if isinstance(exc, ValueError):  # orjson.JSONDecodeError, pydantic and msgspec ValidationError
        return
    assert isinstance(exc, TypeError) and _CLEAR_TYPE_ERRORS.search(str(exc)), repr(exc)


@budget(300)
@given(data=json_payloads, hint=st.sampled_from(HINTS))
def test_converter_decode_returns_or_raises_a_clear_error(data: bytes, hint: Any) -> None:
    try:
        default_converter.decode(data, hint)
    except Exception as exc:
        assert_clear(exc)


@budget(200)
@given(data=json_payloads, hints=st.lists(st.sampled_from(HINTS), max_size=3))
def test_converter_decode_args_returns_a_list_or_raises_a_clear_error(data: bytes, hints: list[Any]) -> None:
    try:
        values = default_converter.decode_args(data, hints)
    except Exception as exc:
        assert_clear(exc)
    else:
        assert isinstance(values, list)


_FAILURE_FIELDS = {
    "kind": st.one_of(st.sampled_from(["application", "activity", "timeout", "cancelled", "terminated"]), field_values),
    "message": field_values, "type": field_values, "non_retryable": field_values, "details": json_values,
    "stack": field_values, "activity_type": field_values, "activity_id": field_values, "attempt": field_values,
    "timeout_type": field_values,
}
failure_objects = st.recursive(
    st.fixed_dictionaries({}, optional=_FAILURE_FIELDS),
    lambda inner: st.fixed_dictionaries({"cause": inner}, optional=_FAILURE_FIELDS),
    max_leaves=5,
)


@budget(200)
@given(failure_objects)
def test_decode_failure_of_any_failure_shaped_object_returns_an_exception(doc: dict[str, Any]) -> None:
    exc = decode_failure(orjson.dumps(doc))
    assert isinstance(exc, BaseException)
    depth = 0
    while doc.get("cause"):
        doc, depth = doc["cause"], depth + 1
    while exc.__cause__ is not None:
        exc, depth = exc.__cause__, depth - 1
    assert depth == 0


@budget(200, )
@example(data=b"[]")
@given(st.one_of(
    st.binary(max_size=40), json_values.map(orjson.dumps), failure_objects.map(orjson.dumps),
    st.tuples(failure_objects, json_values).map(lambda t: orjson.dumps({**t[0], "cause": t[1]})),
))
def test_decode_failure_of_any_bytes_returns_an_exception_or_raises_value_error(data: bytes) -> None:
    try:
        exc = decode_failure(data)
    except ValueError:
        return
    assert isinstance(exc, BaseException)


@pytest.mark.parametrize("depth", [1000, 1023])
def test_decode_failure_of_a_deep_cause_chain(depth: int) -> None:
    # Not a Hypothesis test: Hypothesis raises the recursion limit while it runs one, hiding the bug.
    exc = decode_failure(b'{"cause":' * depth + b'{"message":"root"}' + b"}" * depth)
    assert isinstance(exc, BaseException)
