"""Append-only history of workflow runs in an LMDB database, one key per event."""

# Key layout (24 bytes): run_key (16 bytes, the run's UUID bytes) + event_id (u64 BIG-endian).
# Big-endian ids make LMDB's byte-wise key order equal to (run, event_id) order, so a cursor
# positioned at run_key walks one run's events in id order and stops at the first foreign key.
# Value: the event's codec envelope (see codec.pyx), whose event_id must equal the key's.
#
# GIL: this module only calls py-lmdb's Python API. py-lmdb releases the GIL around every LMDB
# call itself; the code here holds it, since everything it does between those calls builds or
# inspects Python objects.
#
# Buffer lifetime: in a transaction opened with buffers=True, py-lmdb hands out memoryviews that
# point into LMDB's memory map. They are valid only until the transaction ends (or, in a write
# transaction, until its next write). Every value is therefore decoded as soon as the cursor yields
# it, and the resulting Event owns its name and payload; no memoryview is kept or returned.
# Transactions opened without buffers=True work too: values then arrive as bytes copies.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from duro._core.codec cimport Event, decode_event

from duro.errors import CorruptHistoryError


cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char* data, Py_ssize_t size)


cdef enum:
    _RUN_KEY_SIZE = 16
    _KEY_SIZE = 24

# Results of _classify_key.
cdef enum:
    _OTHER_RUN = 0      # the key does not start with the run key
    _EVENT_KEY = 1      # a well-formed key of this run; its event id was stored
    _MALFORMED_KEY = 2  # starts with the run key but is not 24 bytes long

cdef uint64_t _MAX_EVENT_ID = 0xFFFFFFFFFFFFFFFFULL

RUN_KEY_SIZE = _RUN_KEY_SIZE
KEY_SIZE = _KEY_SIZE


cdef inline int _check_run_key(bytes run_key) except -1:
    if PyBytes_GET_SIZE(run_key) != _RUN_KEY_SIZE:
        raise ValueError(
            f"run_key must be exactly {_RUN_KEY_SIZE} bytes (the run's UUID bytes), "
            f"got {PyBytes_GET_SIZE(run_key)}"
        )
    return 0


cdef bytes _make_key(bytes run_key, uint64_t event_id):
    """Return run_key + event_id as u64 big-endian; run_key is known to be 16 bytes."""
    cdef bytes key = PyBytes_FromStringAndSize(NULL, _KEY_SIZE)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(key)
    cdef int i
    memcpy(p, PyBytes_AS_STRING(run_key), _RUN_KEY_SIZE)
    for i in range(8):
        p[_RUN_KEY_SIZE + i] = <unsigned char>(event_id >> (56 - 8 * i))
    return key


cdef int _classify_key(object key, bytes run_key, uint64_t* event_id) except -1:
    """Tell whether a cursor key (bytes or a map memoryview) belongs to run_key; read its id."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef uint64_t result = 0
    cdef int i
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        if view.len < _RUN_KEY_SIZE or memcmp(p, PyBytes_AS_STRING(run_key), _RUN_KEY_SIZE) != 0:
            return _OTHER_RUN
        if view.len != _KEY_SIZE:
            return _MALFORMED_KEY
        for i in range(8):
            result = (result << 8) | p[_RUN_KEY_SIZE + i]
        event_id[0] = result
        return _EVENT_KEY
    finally:
        PyBuffer_Release(&view)


cdef int _in_run(object key, bytes run_key, uint64_t* event_id) except -1:
    """Like _classify_key, for readers: 1 for an event key of the run, 0 past it; raise if malformed."""
    cdef int kind = _classify_key(key, run_key, event_id)
    if kind == _MALFORMED_KEY:
        raise CorruptHistoryError(
            f"run {run_key.hex()}: history key {bytes(key).hex()} is {len(key)} bytes, "
            f"expected {_KEY_SIZE}"
        )
    return kind


cdef Event _decode(object value, bytes run_key, uint64_t event_id):
    """Decode a stored envelope; name the run and the key's event id in any corruption error."""
    cdef Event event
    try:
        event = decode_event(value)
    except CorruptHistoryError as exc:
        raise CorruptHistoryError(f"run {run_key.hex()} event {event_id}: {exc}") from exc
    if event.event_id != event_id:
        raise CorruptHistoryError(
            f"run {run_key.hex()} event {event_id}: the stored envelope says event {event.event_id}"
        )
    return event


def event_key(bytes run_key not None, event_id):
    """Return the LMDB key of one event: run_key + event_id as u64 big-endian.

    Args:
        run_key: the run's 16 UUID bytes.
        event_id: the event's id, 0..2**64-1.

    Returns:
        The 24-byte key.

    Raises:
        ValueError: run_key is not 16 bytes or event_id is out of range.
    """
    _check_run_key(run_key)
    if not 0 <= event_id <= _MAX_EVENT_ID:
        raise ValueError(f"event_id must be in 0..{_MAX_EVENT_ID}, got {event_id}")
    return _make_key(run_key, <uint64_t>event_id)


@cython.final
cdef class HistoryLog:
    """The histories of all workflow runs, in one LMDB database (``env.open_db(b"history")``).

    Every method works inside a transaction the caller owns, so appends commit atomically with the
    rest of a workflow task's writes. History is append-only: an event is never overwritten.

    Args:
        env: the ``lmdb.Environment``.
        db: the database handle returned by ``env.open_db(b"history")``.

    Attributes:
        env: the environment given at construction.
        db: the database handle given at construction.
    """

    cdef readonly object env
    cdef readonly object db

    def __init__(self, env, db):
        self.env = env
        self.db = db

    def append(self, txn, bytes run_key not None, list events not None):
        """Store events at the end of a run's history.

        The batch is checked before anything is written. If an id already exists the error is
        raised part-way through the batch; abort the transaction then (leaving a ``with
        env.begin(write=True)`` block by the exception does).

        Args:
            txn: a write transaction.
            run_key: the run's 16 UUID bytes.
            events: Event objects with strictly increasing ids, the first at least 1.

        Raises:
            ValueError: run_key is not 16 bytes, ids are not strictly increasing from at least 1,
                or an event id already exists in the run.
            TypeError: an item of ``events`` is not an Event.
        """
        cdef uint64_t previous = 0
        cdef Event event
        _check_run_key(run_key)
        for item in events:
            if not isinstance(item, Event):
                raise TypeError(f"events must hold Event objects, got {type(item).__name__}")
            event = <Event>item
            if event.event_id == 0:
                raise ValueError("event ids start at 1, got an event with id 0")
            if event.event_id <= previous:
                raise ValueError(
                    f"event ids must be strictly increasing, got {event.event_id} after {previous}"
                )
            previous = event.event_id
        db = self.db
        put = txn.put
        for item in events:
            event = <Event>item
            if not put(_make_key(run_key, event.event_id), event.encode(), db=db, overwrite=False):
                raise ValueError(f"event id {event.event_id} already exists in run {run_key.hex()}")

    def read(self, txn, bytes run_key not None, unsigned long long from_event_id=1,
             unsigned long long to_event_id=0):
        """Return a run's events with ids from ``from_event_id`` to ``to_event_id``, in id order.

        Zero-copy when ``txn`` was opened with ``buffers=True``: each value is decoded straight
        from LMDB's map. The returned events own their data and outlive the transaction.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.
            from_event_id: the first id wanted.
            to_event_id: the last id wanted (inclusive); 0 means up to the end of the run.

        Returns:
            The events, possibly none.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: a stored key or value is not valid; the message names the run
                (hex) and the event id.
        """
        cdef list events = []
        cdef uint64_t event_id
        _check_run_key(run_key)
        if to_event_id and to_event_id < from_event_id:
            return events
        read_run = getattr(txn, "read_run", None)
        if read_run is not None:  # duro's own LMDB binding: decode in place, no copies, no cursor objects
            return read_run(self.db, run_key, from_event_id, to_event_id)
        with txn.cursor(db=self.db) as cursor:
            if not cursor.set_range(_make_key(run_key, from_event_id)):
                return events
            for key, value in cursor.iternext(keys=True, values=True):
                if not _in_run(key, run_key, &event_id):
                    break
                if to_event_id and event_id > to_event_id:
                    break
                events.append(_decode(value, run_key, event_id))
        return events

    def iter_raw(self, txn, bytes run_key not None, unsigned long long from_event_id=1,
                 unsigned long long to_event_id=0):
        """Return a run's raw envelopes (bytes copies, for export), in id order.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.
            from_event_id: the first id wanted.
            to_event_id: the last id wanted (inclusive); 0 means up to the end of the run.

        Returns:
            The envelopes as bytes, undecoded.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: a stored key of the run is malformed.
        """
        cdef list envelopes = []
        cdef uint64_t event_id
        _check_run_key(run_key)
        if to_event_id and to_event_id < from_event_id:
            return envelopes
        with txn.cursor(db=self.db) as cursor:
            if not cursor.set_range(_make_key(run_key, from_event_id)):
                return envelopes
            for key, value in cursor.iternext(keys=True, values=True):
                if not _in_run(key, run_key, &event_id):
                    break
                if to_event_id and event_id > to_event_id:
                    break
                envelopes.append(value if type(value) is bytes else bytes(value))
        return envelopes

    def last_event_id(self, txn, bytes run_key not None):
        """Return the highest event id of a run, or 0 when the run has no events.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: the run's last key is malformed.
        """
        cdef uint64_t event_id = 0
        _check_run_key(run_key)
        with txn.cursor(db=self.db) as cursor:
            # Land on the first key after the run's largest possible key, then step back once.
            if cursor.set_range(_make_key(run_key, _MAX_EVENT_ID)):
                if _in_run(cursor.key(), run_key, &event_id):
                    return event_id
                if not cursor.prev():
                    return 0
            elif not cursor.last():
                return 0
            if _in_run(cursor.key(), run_key, &event_id):
                return event_id
            return 0

    def count(self, txn, bytes run_key not None):
        """Return the number of events stored for a run.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: a key of the run is malformed.
        """
        cdef Py_ssize_t n = 0
        cdef uint64_t event_id
        _check_run_key(run_key)
        with txn.cursor(db=self.db) as cursor:
            if not cursor.set_range(run_key):
                return 0
            for key in cursor.iternext(keys=True, values=False):
                if not _in_run(key, run_key, &event_id):
                    break
                n += 1
        return n

    def delete_run(self, txn, bytes run_key not None):
        """Delete every key of a run (malformed ones included) and return how many were deleted.

        Args:
            txn: a write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
        """
        cdef Py_ssize_t n = 0
        cdef uint64_t event_id
        _check_run_key(run_key)
        with txn.cursor(db=self.db) as cursor:
            if not cursor.set_range(run_key):
                return 0
            # Cursor.delete() moves to the next key; past the last one, key() is empty.
            while _classify_key(cursor.key(), run_key, &event_id) != _OTHER_RUN:
                cursor.delete()
                n += 1
        return n
