# cython: language_level=3
"""A small binding of the LMDB C library (liblmdb), shaped like the parts of py-lmdb duro uses.

Why not py-lmdb: py-lmdb releases the GIL around *every* call (get, put, cursor step). With the
group-commit writer thread doing tens of small puts per op while the event-loop thread runs
Python, each re-acquisition waits for the other thread to yield: measured here, 20,000 puts took
23 ms alone and 3.4 s beside one busy Python thread. Gets and puts are memory operations on the
map; they run with the GIL held. The GIL is released only around calls that can block: opening
the environment, beginning a write transaction (it waits for LMDB's cross-process writer lock),
and committing one (fsync).

Buffer lifetime: values are copied into ``bytes`` when returned, so nothing handed to Python
points into the map. This module knows no key layout: log.pyx cimports it (mdb.pxd) and decodes
history straight from the map on the transaction's own handle.
"""

from libc.errno cimport ENOSPC, EIO, EACCES, EROFS, EPERM

cdef extern from *:
    """
    #include <errno.h>
    /* MSVC's errno.h has no EDQUOT (disk quota exceeded): there it can never be returned. */
    #ifndef EDQUOT
    #define EDQUOT (-1)
    #endif
    """
    int EDQUOT
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import time as _time

from duro.errors import (
    StoreCorruptedError,
    StoreError,
    StoreFullError,
    StoreLimitError,
    StorePermissionError,
)

class Error(StoreError):
    """An LMDB call failed; the message carries LMDB's own explanation and what to do."""


class MapFullError(Error, StoreFullError):
    """The environment's map is exhausted (the store grows it; past ``max_map_size`` this is raised)."""


class DiskFullError(Error, StoreFullError):
    """The disk under the store is full (or the user's quota is spent)."""


class CorruptedError(Error, StoreCorruptedError):
    """LMDB found a damaged page or meta page."""


class PermissionDeniedError(Error, StorePermissionError):
    """The operating system refused access to the store's files."""


class LimitError(Error, StoreLimitError):
    """A key or value is larger than LMDB accepts."""


class MapResizedError(Error):
    """Another process grew the map; the environment adopts the new size and the call is retried."""


class TxnBrokenError(Error):
    """An earlier call in this transaction failed; LMDB requires it to be aborted."""


cdef int check(int rc, str what) except -1:
    if rc == 0:
        return 0
    msg = f"{what}: {mdb_strerror(rc).decode('utf-8', 'replace')}"
    if rc == MDB_MAP_FULL:
        raise MapFullError(msg + " (the store's map is full: open it with a larger ?max_map_size=BYTES)")
    if rc == ENOSPC or rc == EDQUOT:
        raise DiskFullError(msg + " (the disk under the store is full: free space; nothing of this operation "
                            "was written, and it can be retried)")
    if rc == EIO:
        raise DiskFullError(msg + " (the disk reported an I/O error: usually a full disk; free space and retry. "
                            "Nothing of this operation was written)")
    if rc == EACCES or rc == EPERM or rc == EROFS:
        raise PermissionDeniedError(msg + " (this process may not read or write the store's files: check their "
                                    "owner and mode, or the mount)")
    if rc == MDB_BAD_VALSIZE:
        raise LimitError(msg + " (a key is longer than LMDB's limit of 511 bytes: use a shorter workflow id, task "
                         "queue or name)")
    if rc == MDB_CORRUPTED or rc == MDB_PAGE_NOTFOUND or rc == MDB_INVALID or rc == MDB_VERSION_MISMATCH \
            or rc == MDB_PANIC:
        raise CorruptedError(msg + " (the store's files are damaged: run `duro check` and restore from a backup)")
    if rc == MDB_MAP_RESIZED:
        raise MapResizedError(msg)
    if rc == MDB_BAD_TXN:
        raise TxnBrokenError(msg + " (an earlier call in this transaction failed)")
    raise Error(msg)


cdef inline void _val(bytes b, MDB_val* v):
    v.mv_size = <size_t>PyBytes_GET_SIZE(b)
    v.mv_data = <void*>PyBytes_AS_STRING(b)


cdef inline bytes _bytes(MDB_val* v):
    return PyBytes_FromStringAndSize(<const char*>v.mv_data, <Py_ssize_t>v.mv_size)


cdef class Database:
    """A named database inside an environment (an LMDB dbi handle)."""

    def __repr__(self):
        return f"Database({self.name!r})"


cdef class Environment:
    """An LMDB environment (a directory holding data.mdb and lock.mdb).

    Map size changes: LMDB lets a process change its map only while it has no transaction open.
    Every transaction of this binding is counted in ``active`` (the GIL makes the count exact), and
    ``resize`` closes a gate that holds new transactions back until the open ones finished, so the
    map can grow in a running store (and adopt a size grown by another process).
    """
    def __cinit__(self):
        self.env = NULL
        self.closed = True
        self.active = 0
        self.gate = False
        self.resizes = 0

    def __init__(self, str path, size_t map_size=1 << 36, unsigned int max_dbs=16, unsigned int max_readers=512,
                 bint sync=True, bint metasync=True):
        cdef int rc
        cdef unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD
        cdef bytes bpath = path.encode()
        cdef const char* cpath = bpath
        if not sync:
            flags |= MDB_NOSYNC
        elif not metasync:
            # A commit syncs its data pages but only writes its meta page; ``sync()`` makes that
            # durable later, outside the write lock. LMDB keeps its integrity (ACI) this way: the
            # next commit's data sync flushes the previous meta page before writing its own.
            flags |= MDB_NOMETASYNC
        self.path = path
        check(mdb_env_create(&self.env), "mdb_env_create")
        self.closed = False
        check(mdb_env_set_mapsize(self.env, map_size), "mdb_env_set_mapsize")
        check(mdb_env_set_maxdbs(self.env, max_dbs), "mdb_env_set_maxdbs")
        check(mdb_env_set_maxreaders(self.env, max_readers), "mdb_env_set_maxreaders")
        with nogil:
            # Owner-only: the store holds business data (arguments, results, failures).
            rc = mdb_env_open(self.env, cpath, flags, 0o600)
        if rc != 0:
            mdb_env_close(self.env)
            self.env = NULL
            self.closed = True
            check(rc, f"cannot open LMDB environment at {path}")

    def __dealloc__(self):
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL

    cdef int _ensure_open(self) except -1:
        if self.closed:
            raise Error(f"the LMDB environment at {self.path} is closed")
        return 0

    def open_db(self, bytes name):
        """Open (creating if needed) the named database ``name``."""
        cdef MDB_txn* txn
        cdef Database db = Database.__new__(Database)
        cdef int rc
        self._ensure_open()
        with nogil:
            rc = mdb_txn_begin(self.env, NULL, 0, &txn)
        check(rc, "mdb_txn_begin")
        rc = mdb_dbi_open(txn, name, MDB_CREATE, &db.dbi)
        if rc != 0:
            mdb_txn_abort(txn)
            check(rc, f"mdb_dbi_open({name!r})")
        with nogil:
            rc = mdb_txn_commit(txn)
        check(rc, "mdb_txn_commit")
        db.name = name
        return db

    def begin(self, bint write=False, Database db=None, bint buffers=False, Transaction parent=None):
        """Start a transaction; use as a context manager (commit on success, abort on error).

        ``parent`` (a live write transaction) makes a nested write transaction: its changes join
        the parent's when it commits and vanish when it aborts, leaving the parent as it was.
        ``buffers`` is accepted for py-lmdb compatibility; values are always returned as bytes.
        """
        cdef Transaction t = Transaction.__new__(Transaction)
        cdef int rc
        cdef unsigned int flags = 0 if write else MDB_RDONLY
        cdef MDB_txn* ptxn = NULL
        self._ensure_open()
        if parent is not None:
            parent.ensure_live()
            if not parent.write or not write:
                raise Error("a nested transaction needs write=True and a write parent")
            ptxn = parent.txn
            rc = mdb_txn_begin(self.env, ptxn, flags, &t.txn)
            check(rc, "mdb_txn_begin(nested)")
            t.env = self
            t.write = True
            t.db = db if db is not None else parent.db
            t.nested = True
            return t
        for _ in range(3):
            if self.gate:
                self._wait_gate()
            if write:
                # May wait for another process's write transaction: never hold the GIL meanwhile.
                with nogil:
                    rc = mdb_txn_begin(self.env, NULL, flags, &t.txn)
            else:
                rc = mdb_txn_begin(self.env, NULL, flags, &t.txn)
            if rc != MDB_MAP_RESIZED:
                break
            # Another process grew the map: adopt its size (no transaction of ours may be open).
            self.resize(0)
        check(rc, "mdb_txn_begin")
        self.active += 1
        t.env = self
        t.write = write
        t.db = db
        return t

    cdef int _wait_gate(self) except -1:
        deadline = _time.monotonic() + 10.0
        while self.gate:
            if _time.monotonic() > deadline:
                raise Error(f"the LMDB environment at {self.path} is being resized and did not finish in 10 s")
            _time.sleep(0.0002)
        self._ensure_open()
        return 0

    def resize(self, size_t map_size=0, double timeout=5.0):
        """Set the map size (0: adopt the size another process set), once no transaction is open.

        New transactions wait meanwhile; returns False (nothing changed) when the open ones did
        not finish within ``timeout`` seconds. Call it with no transaction of the calling thread
        open.
        """
        cdef int rc
        self._ensure_open()
        if self.gate:
            self._wait_gate()
            if map_size == 0:
                return True  # someone else just adopted the new size
        self.gate = True
        try:
            deadline = _time.monotonic() + timeout
            while self.active > 0:
                if _time.monotonic() > deadline:
                    return False
                _time.sleep(0.0002)
            rc = mdb_env_set_mapsize(self.env, map_size)
            check(rc, "mdb_env_set_mapsize")
            self.resizes += 1
            return True
        finally:
            self.gate = False

    def reader_check(self):
        """Free the reader slots of processes that died (kill -9) holding a read snapshot; how many.

        A stale slot pins the old pages its snapshot saw, so the file would grow without bound.
        """
        cdef int dead = 0
        self._ensure_open()
        check(mdb_reader_check(self.env, &dead), "mdb_reader_check")
        return dead

    def copy(self, str path not None, bint compact=True):
        """Write a consistent copy of the environment into the empty directory ``path``.

        ``compact``: leave out free pages and renumber the rest (``MDB_CP_COMPACT``), so the copy
        is as small as the live data. Runs on a read snapshot: writers go on meanwhile. The GIL is
        released while LMDB writes the copy.
        """
        cdef bytes encoded = path.encode()
        cdef const char* c_path = encoded
        cdef unsigned int flags = MDB_CP_COMPACT if compact else 0
        cdef int rc
        self._ensure_open()
        with nogil:
            rc = mdb_env_copy2(self.env, c_path, flags)
        check(rc, "mdb_env_copy2")

    def max_key_size(self):
        """The longest key LMDB accepts, in bytes (511 for the default build)."""
        self._ensure_open()
        return mdb_env_get_maxkeysize(self.env)

    def info(self):
        """Environment facts; ``last_txnid`` moves with every commit by any process."""
        cdef MDB_envinfo st
        self._ensure_open()
        check(mdb_env_info(self.env, &st), "mdb_env_info")
        return {"map_size": st.me_mapsize, "last_pgno": st.me_last_pgno, "last_txnid": st.me_last_txnid,
                "max_readers": st.me_maxreaders, "num_readers": st.me_numreaders}

    def sync(self):
        """Flush everything committed so far (by any process) to disk: an fdatasync without the write lock.

        With ``metasync=False`` this is what makes the last commit durable.
        """
        cdef int rc
        self._ensure_open()
        with nogil:
            rc = mdb_env_sync(self.env, 1)
        check(rc, "mdb_env_sync")

    def last_txnid(self):
        """The id of the last committed write transaction (any process)."""
        cdef MDB_envinfo st
        self._ensure_open()
        mdb_env_info(self.env, &st)
        return st.me_last_txnid

    def forget(self):
        """Drop the handle without closing it: in a forked child, whose parent still uses it.

        mdb_env_close in a child would clear the parent's reader slots (they carry the pid that
        opened the environment). The child's copy of the map is simply left to the exit.
        """
        self.env = NULL
        self.closed = True

    def close(self):
        """Close the environment; every transaction must be finished before."""
        if self.env != NULL:
            mdb_env_close(self.env)
            self.env = NULL
        self.closed = True


cdef class Transaction:
    """A read or write transaction. Not shareable between threads while in use."""

    def __cinit__(self):
        self.txn = NULL
        self._cursors = None
        self.nested = False

    def __dealloc__(self):
        if self.txn != NULL:
            mdb_txn_abort(self.txn)
            self.txn = NULL
            self._ended()

    cdef void _ended(self) noexcept:
        if not self.nested and self.env is not None:
            self.env.active -= 1

    cdef int ensure_live(self) except -1:
        if self.txn == NULL:
            raise Error("the transaction is already finished")
        return 0

    cdef MDB_dbi _dbi(self, Database db) except? 0:
        if db is None:
            db = self.db
            if db is None:
                raise Error("no database given (pass db=) and the transaction has no default")
        return db.dbi

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def id(self):
        """The transaction id (for a write transaction, the id it commits as)."""
        self.ensure_live()
        return mdb_txn_id(self.txn)

    def stat(self, Database db=None, bint free_pages=False):
        """The shape of a database's B-tree as this transaction sees it.

        ``free_pages=True``: LMDB's own database of freed pages (its records are the page lists of
        past transactions, kept until no reader can see them; large ones take overflow pages that
        are rewritten as the lists are used up).
        """
        cdef MDB_stat st
        self.ensure_live()
        check(mdb_stat(self.txn, 0 if free_pages else self._dbi(db), &st), "mdb_stat")
        return {"depth": st.ms_depth, "branch_pages": st.ms_branch_pages, "leaf_pages": st.ms_leaf_pages,
                "overflow_pages": st.ms_overflow_pages, "entries": st.ms_entries}

    def get(self, bytes key, default=None, Database db=None):
        """The value stored under ``key`` (a copy), or ``default``."""
        cdef MDB_val k, v
        cdef int rc
        self.ensure_live()
        _val(key, &k)
        rc = mdb_get(self.txn, self._dbi(db), &k, &v)
        if rc == MDB_NOTFOUND:
            return default
        check(rc, "mdb_get")
        return _bytes(&v)

    def put(self, bytes key, bytes value, Database db=None, bint overwrite=True):
        """Store ``value`` under ``key``; returns False when overwrite=False and the key exists."""
        cdef MDB_val k, v
        cdef int rc
        self.ensure_live()
        _val(key, &k)
        _val(value, &v)
        rc = mdb_put(self.txn, self._dbi(db), &k, &v, 0 if overwrite else MDB_NOOVERWRITE)
        if rc == MDB_KEYEXIST:
            return False
        check(rc, "mdb_put")
        self.writes += 1
        return True

    def delete(self, bytes key, Database db=None):
        """Delete ``key``; returns whether it existed."""
        cdef MDB_val k
        cdef int rc
        self.ensure_live()
        _val(key, &k)
        rc = mdb_del(self.txn, self._dbi(db), &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        check(rc, "mdb_del")
        self.writes += 1
        return True

    def cursor(self, Database db=None):
        """A cursor over one database, valid until the transaction ends."""
        cdef Cursor c = Cursor.__new__(Cursor)
        cdef int rc
        self.ensure_live()
        rc = mdb_cursor_open(self.txn, self._dbi(db), &c.cur)
        check(rc, "mdb_cursor_open")
        c.txn = self
        if self._cursors is None:
            self._cursors = []
        self._cursors.append(c)
        return c

    cdef void _close_cursors(self) noexcept:
        cdef Cursor c
        if self._cursors is not None:
            for c in self._cursors:
                c._close()
            self._cursors = None

    def commit(self):
        """Commit; for a write transaction this returns after the data is fsynced (sync=True)."""
        cdef int rc
        cdef MDB_txn* txn = self.txn
        self.ensure_live()
        self._close_cursors()
        self.txn = NULL
        if self.nested:  # no I/O: the changes join the parent's
            rc = mdb_txn_commit(txn)
        elif not self.write:
            # A read transaction only gives its reader slot back: no I/O, so the GIL is kept. (Released
            # here, the event loop's thread waited at the end of every read for the writer thread to
            # hand the GIL back: a fifth of its time while resuming 50,000 parked workflows.)
            rc = mdb_txn_commit(txn)
            self._ended()
        else:
            with nogil:
                rc = mdb_txn_commit(txn)
            self._ended()
        check(rc, "mdb_txn_commit")

    def abort(self):
        """Discard the transaction."""
        if self.txn != NULL:
            self._close_cursors()
            mdb_txn_abort(self.txn)
            self.txn = NULL
            self._ended()


cdef class Cursor:
    """A position in one database. Iterating yields (key, value) copies from the current position."""

    def __cinit__(self):
        self.cur = NULL
        self.positioned = False
        self.started = False

    def __dealloc__(self):
        # A cursor of a write transaction is freed with it; read-txn cursors must be closed.
        if self.cur != NULL and self.txn is not None and self.txn.txn != NULL:
            mdb_cursor_close(self.cur)
        self.cur = NULL

    cdef void _close(self) noexcept:
        if self.cur != NULL:
            mdb_cursor_close(self.cur)
            self.cur = NULL
        self.positioned = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()
        return False

    def close(self):
        """Release the cursor before its transaction ends."""
        self._close()

    cdef int _live(self) except -1:
        if self.cur == NULL:
            raise Error("the cursor is closed (its transaction ended)")
        return 0

    cdef bint _op(self, MDB_cursor_op op) except -1:
        cdef int rc
        self._live()
        rc = mdb_cursor_get(self.cur, &self.k, &self.v, op)
        if rc == MDB_NOTFOUND:
            self.positioned = False
            return False
        check(rc, "mdb_cursor_get")
        self.positioned = True
        return True

    def set_range(self, bytes key):
        """Move to the first key >= ``key``; False when there is none."""
        _val(key, &self.k)
        self.started = True
        return self._op(MDB_SET_RANGE)

    def first(self):
        """Move to the first key; False when the database is empty."""
        self.started = True
        return self._op(MDB_FIRST)

    def last(self):
        """Move to the last key; False when the database is empty."""
        self.started = True
        return self._op(MDB_LAST)

    def next(self):
        """Move to the next key; False past the end."""
        self.started = True
        return self._op(MDB_NEXT)

    def prev(self):
        """Move to the previous key; False before the start."""
        self.started = True
        return self._op(MDB_PREV)

    def key(self):
        """The current key (a copy); b"" when unpositioned."""
        return _bytes(&self.k) if self.positioned else b""

    def value(self):
        """The current value (a copy); b"" when unpositioned."""
        return _bytes(&self.v) if self.positioned else b""

    def delete(self):
        """Delete the current item; the cursor then points at the next one."""
        cdef int rc
        self._live()
        check(mdb_cursor_del(self.cur, 0), "mdb_cursor_del")
        self.txn.writes += 1
        # The deleted node's key and value pointers are stale now: read where the cursor stands
        # (the next item), or mark it unpositioned past the end.
        rc = mdb_cursor_get(self.cur, &self.k, &self.v, MDB_GET_CURRENT)
        self.positioned = rc == 0

    def iternext(self, bint keys=True, bint values=True):
        """Iterate from the current item (or the first, when never positioned) forwards."""
        if not self.started:
            if not self.first():
                return
        elif not self.positioned:
            return
        while self.positioned:
            if keys and values:
                yield (_bytes(&self.k), _bytes(&self.v))
            elif keys:
                yield _bytes(&self.k)
            else:
                yield _bytes(&self.v)
            self._op(MDB_NEXT)

    def __iter__(self):
        return self.iternext(True, True)
