"""Append-only history of workflow runs in an LMDB database, one key per event."""

# Key layout (24 bytes): run_key (16 bytes, the run's UUID bytes) + event_id (u64 BIG-endian).
# Big-endian ids make LMDB's byte-wise key order equal to (run, event_id) order, so a cursor
# positioned at run_key walks one run's events in id order and stops at the first foreign key.
# Value: the event's codec envelope (see codec.pyx), whose event_id must equal the key's.
# This module is the only place that knows the layout; duro._core.mdb is a plain binding.
#
# LMDB access: through duro's own binding (mdb.pxd), on the transaction's MDB_txn* with raw
# cursors that every function closes before it returns. The GIL is held throughout, as the binding
# holds it for gets, puts and cursor steps (memory operations on the map).
#
# Buffer lifetime: a value LMDB returns points into its memory map, valid only until the
# transaction ends (or, in a write transaction, until its next write). `read` decodes each value
# where it lies, before the next cursor step; the resulting Event owns copies of its name and
# payload and never points into the map, so it outlives the transaction. `iter_raw` copies.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from duro._core.codec cimport Event, event_from_buffer
from duro._core.mdb cimport (
    MDB_cursor,
    MDB_cursor_op,
    MDB_KEYEXIST,
    MDB_LAST,
    MDB_NEXT,
    MDB_NOOVERWRITE,
    MDB_NOTFOUND,
    MDB_PREV,
    MDB_SET_RANGE,
    MDB_val,
    Database,
    Environment,
    Transaction,
    check,
    mdb_cursor_close,
    mdb_cursor_del,
    mdb_cursor_get,
    mdb_cursor_open,
    mdb_put,
)

from duro.errors import CorruptHistoryError


cdef enum:
    _RUN_KEY_SIZE = 16
    _KEY_SIZE = 24

# Results of _classify.
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


cdef inline void _fill_key(unsigned char* p, bytes run_key, uint64_t event_id) noexcept:
    """Write run_key + event_id as u64 big-endian into the 24 bytes at p; run_key is 16 bytes."""
    cdef int i
    memcpy(p, PyBytes_AS_STRING(run_key), _RUN_KEY_SIZE)
    for i in range(8):
        p[_RUN_KEY_SIZE + i] = <unsigned char>(event_id >> (56 - 8 * i))


cdef inline int _classify(const MDB_val* key, const unsigned char* run_key, uint64_t* event_id) noexcept:
    """Tell whether a key (in the map) belongs to run_key; read its event id when it does."""
    cdef const unsigned char* p = <const unsigned char*>key.mv_data
    cdef uint64_t result = 0
    cdef int i
    if key.mv_size < _RUN_KEY_SIZE or memcmp(p, run_key, _RUN_KEY_SIZE) != 0:
        return _OTHER_RUN
    if key.mv_size != _KEY_SIZE:
        return _MALFORMED_KEY
    for i in range(8):
        result = (result << 8) | p[_RUN_KEY_SIZE + i]
    event_id[0] = result
    return _EVENT_KEY


cdef int _in_run(const MDB_val* key, bytes run_key, uint64_t* event_id) except -1:
    """Like _classify, for readers: 1 for an event key of the run, 0 past it; raise if malformed."""
    cdef int kind = _classify(key, <const unsigned char*>PyBytes_AS_STRING(run_key), event_id)
    if kind == _MALFORMED_KEY:
        raise CorruptHistoryError(
            f"run {run_key.hex()}: history key "
            f"{PyBytes_FromStringAndSize(<const char*>key.mv_data, <Py_ssize_t>key.mv_size).hex()} "
            f"is {key.mv_size} bytes, expected {_KEY_SIZE}"
        )
    return kind


cdef Event _decode(const MDB_val* value, bytes run_key, uint64_t event_id):
    """Decode an envelope where it lies in the map; name the run and the key's event id in any error."""
    cdef Event event
    try:
        event = event_from_buffer(<const unsigned char*>value.mv_data, <Py_ssize_t>value.mv_size)
    except CorruptHistoryError as exc:
        raise CorruptHistoryError(f"run {run_key.hex()} event {event_id}: {exc}") from exc
    if event.event_id != event_id:
        raise CorruptHistoryError(
            f"run {run_key.hex()} event {event_id}: the stored envelope says event {event.event_id}"
        )
    return event


cdef inline MDB_cursor* _open_cursor(Transaction txn, Database db) except NULL:
    cdef MDB_cursor* cur = NULL
    txn.ensure_live()
    check(mdb_cursor_open(txn.txn, db.dbi, &cur), "mdb_cursor_open")
    return cur


cdef inline bint _step(MDB_cursor* cur, MDB_val* key, MDB_val* value, MDB_cursor_op op) except -1:
    """Move the cursor; False when there is no such item (MDB_NOTFOUND), raise on any other failure."""
    cdef int rc = mdb_cursor_get(cur, key, value, op)
    if rc == MDB_NOTFOUND:
        return False
    check(rc, "mdb_cursor_get")
    return True


cdef list _scan(Transaction txn, Database db, bytes run_key, uint64_t from_event_id, uint64_t to_event_id,
                bint decode):
    """The run's events (decode) or raw envelopes (not decode) with ids from..to (0: to the end)."""
    cdef list found = []
    cdef unsigned char start[_KEY_SIZE]
    cdef MDB_val k, v
    cdef MDB_cursor* cur
    cdef uint64_t event_id
    _check_run_key(run_key)
    if to_event_id and to_event_id < from_event_id:
        return found
    _fill_key(start, run_key, from_event_id)
    k.mv_size = _KEY_SIZE
    k.mv_data = <void*>start
    cur = _open_cursor(txn, db)
    try:
        if not _step(cur, &k, &v, MDB_SET_RANGE):
            return found
        while _in_run(&k, run_key, &event_id):
            if to_event_id and event_id > to_event_id:
                break
            if decode:
                found.append(_decode(&v, run_key, event_id))
            else:
                found.append(PyBytes_FromStringAndSize(<const char*>v.mv_data, <Py_ssize_t>v.mv_size))
            if not _step(cur, &k, &v, MDB_NEXT):
                break
    finally:
        mdb_cursor_close(cur)
    return found


def read_events(Transaction txn not None, Database db not None, bytes run_key not None,
                unsigned long long from_event_id=1, unsigned long long to_event_id=0):
    """Return a run's events with ids from ``from_event_id`` to ``to_event_id``, in id order.

    Each value is decoded where it lies in LMDB's map, without a copy; the returned events own
    their data and outlive the transaction.

    Args:
        txn: a read or write transaction of ``duro._core.mdb``.
        db: the history database (``env.open_db(b"history")``).
        run_key: the run's 16 UUID bytes.
        from_event_id: the first id wanted.
        to_event_id: the last id wanted (inclusive); 0 means up to the end of the run.

    Returns:
        The events, possibly none.

    Raises:
        ValueError: run_key is not 16 bytes.
        CorruptHistoryError: a stored key or value is not valid; the message names the run
            (hex) and the event id (for a malformed key: the key and its length).
    """
    return _scan(txn, db, run_key, from_event_id, to_event_id, True)


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
    cdef bytes key
    _check_run_key(run_key)
    if not 0 <= event_id <= _MAX_EVENT_ID:
        raise ValueError(f"event_id must be in 0..{_MAX_EVENT_ID}, got {event_id}")
    key = PyBytes_FromStringAndSize(NULL, _KEY_SIZE)
    _fill_key(<unsigned char*>PyBytes_AS_STRING(key), run_key, <uint64_t>event_id)
    return key


@cython.final
cdef class HistoryLog:
    """The histories of all workflow runs, in one LMDB database (``env.open_db(b"history")``).

    Every method works inside a transaction the caller owns, so appends commit atomically with the
    rest of a workflow task's writes. History is append-only: an event is never overwritten.

    Args:
        env: the ``duro._core.mdb.Environment``.
        db: the database handle returned by ``env.open_db(b"history")``.

    Attributes:
        env: the environment given at construction.
        db: the database handle given at construction.
    """

    cdef readonly Environment env
    cdef readonly Database db

    def __init__(self, Environment env not None, Database db not None):
        self.env = env
        self.db = db

    def append(self, Transaction txn not None, bytes run_key not None, list events not None):
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
        cdef bytes envelope
        cdef unsigned char key[_KEY_SIZE]
        cdef MDB_val k, v
        cdef int rc
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
        txn.ensure_live()
        memcpy(key, PyBytes_AS_STRING(run_key), _RUN_KEY_SIZE)
        k.mv_size = _KEY_SIZE
        k.mv_data = <void*>key
        for item in events:
            event = <Event>item
            envelope = event.encode()
            _fill_key(key, run_key, event.event_id)
            v.mv_size = <size_t>PyBytes_GET_SIZE(envelope)
            v.mv_data = <void*>PyBytes_AS_STRING(envelope)
            rc = mdb_put(txn.txn, self.db.dbi, &k, &v, MDB_NOOVERWRITE)
            if rc == MDB_KEYEXIST:
                raise ValueError(f"event id {event.event_id} already exists in run {run_key.hex()}")
            check(rc, "mdb_put")
            txn.count_write()

    def read(self, Transaction txn not None, bytes run_key not None, unsigned long long from_event_id=1,
             unsigned long long to_event_id=0):
        """Return a run's events with ids from ``from_event_id`` to ``to_event_id``, in id order.

        Each value is decoded where it lies in LMDB's map, without a copy (see ``read_events``);
        the returned events own their data and outlive the transaction.

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
        return _scan(txn, self.db, run_key, from_event_id, to_event_id, True)

    def iter_raw(self, Transaction txn not None, bytes run_key not None, unsigned long long from_event_id=1,
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
        return _scan(txn, self.db, run_key, from_event_id, to_event_id, False)

    def last_event_id(self, Transaction txn not None, bytes run_key not None):
        """Return the highest event id of a run, or 0 when the run has no events.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: the run's last key is malformed.
        """
        cdef unsigned char top[_KEY_SIZE]
        cdef MDB_val k, v
        cdef MDB_cursor* cur
        cdef uint64_t event_id = 0
        _check_run_key(run_key)
        _fill_key(top, run_key, _MAX_EVENT_ID)
        k.mv_size = _KEY_SIZE
        k.mv_data = <void*>top
        cur = _open_cursor(txn, self.db)
        try:
            # Land on the first key at or after the run's largest possible key, then step back once.
            if _step(cur, &k, &v, MDB_SET_RANGE):
                if _in_run(&k, run_key, &event_id):
                    return event_id
                if not _step(cur, &k, &v, MDB_PREV):
                    return 0
            elif not _step(cur, &k, &v, MDB_LAST):
                return 0
            if _in_run(&k, run_key, &event_id):
                return event_id
            return 0
        finally:
            mdb_cursor_close(cur)

    def count(self, Transaction txn not None, bytes run_key not None):
        """Return the number of events stored for a run.

        Args:
            txn: a read or write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
            CorruptHistoryError: a key of the run is malformed.
        """
        cdef Py_ssize_t n = 0
        cdef MDB_val k, v
        cdef MDB_cursor* cur
        cdef uint64_t event_id
        _check_run_key(run_key)
        k.mv_size = _RUN_KEY_SIZE
        k.mv_data = <void*>PyBytes_AS_STRING(run_key)
        cur = _open_cursor(txn, self.db)
        try:
            if not _step(cur, &k, &v, MDB_SET_RANGE):
                return 0
            while _in_run(&k, run_key, &event_id):
                n += 1
                if not _step(cur, &k, &v, MDB_NEXT):
                    break
        finally:
            mdb_cursor_close(cur)
        return n

    def delete_run(self, Transaction txn not None, bytes run_key not None):
        """Delete every key of a run (malformed ones included) and return how many were deleted.

        Args:
            txn: a write transaction.
            run_key: the run's 16 UUID bytes.

        Raises:
            ValueError: run_key is not 16 bytes.
        """
        cdef Py_ssize_t n = 0
        cdef MDB_val k, v
        cdef MDB_cursor* cur
        cdef uint64_t event_id
        cdef const unsigned char* rk
        _check_run_key(run_key)
        rk = <const unsigned char*>PyBytes_AS_STRING(run_key)
        k.mv_size = _RUN_KEY_SIZE
        k.mv_data = <void*>rk
        cur = _open_cursor(txn, self.db)
        try:
            if not _step(cur, &k, &v, MDB_SET_RANGE):
                return 0
            while _classify(&k, rk, &event_id) != _OTHER_RUN:
                check(mdb_cursor_del(cur, 0), "mdb_cursor_del")
                txn.count_write()
                n += 1
                # The deleted node's key pointer is stale, and where LMDB leaves the cursor after
                # deleting the last key (of a page, of the database) varies: seek the run again.
                k.mv_size = _RUN_KEY_SIZE
                k.mv_data = <void*>rk
                if not _step(cur, &k, &v, MDB_SET_RANGE):
                    break
        finally:
            mdb_cursor_close(cur)
        return n
