# C-level interface of duro._core.mdb (a plain binding of liblmdb), cimported by log.pyx.
#
# What a sibling module may use: the liblmdb declarations below, the handles inside the binding's
# objects (Transaction.txn, Database.dbi), `check` to turn a return code into duro's exception, and
# Transaction.ensure_live / count_write. The binding knows nothing of duro's key layouts.
#
# Rules for code that works on a Transaction's MDB_txn* directly:
# - call txn.ensure_live() first: the handle is NULL once the transaction has ended;
# - a pointer LMDB returns (MDB_val.mv_data) points into the memory map, valid only until the
#   transaction ends or, in a write transaction, until its next write: copy or decode it at once;
# - close every MDB_cursor it opens before returning (the binding does not track them);
# - call txn.count_write() after each successful put or delete (the group commit reads `writes`);
# - hold the GIL, as the binding does for everything but begin-write, commit-write and env open:
#   reads and writes are memory operations on the map.

cdef extern from "lmdb.h" nogil:
    # Opaque handles: lmdb.h declares them only as incomplete structs.
    ctypedef struct MDB_env
    ctypedef struct MDB_txn
    ctypedef struct MDB_cursor
    ctypedef unsigned int MDB_dbi
    ctypedef struct MDB_val:
        size_t mv_size
        void* mv_data
    ctypedef struct MDB_envinfo:
        void* me_mapaddr
        size_t me_mapsize
        size_t me_last_pgno
        size_t me_last_txnid
        unsigned int me_maxreaders
        unsigned int me_numreaders
    ctypedef struct MDB_stat:
        unsigned int ms_psize
        unsigned int ms_depth
        size_t ms_branch_pages
        size_t ms_leaf_pages
        size_t ms_overflow_pages
        size_t ms_entries
    ctypedef enum MDB_cursor_op:
        MDB_FIRST
        MDB_LAST
        MDB_NEXT
        MDB_PREV
        MDB_SET_RANGE
        MDB_GET_CURRENT

    int MDB_RDONLY, MDB_NOTLS, MDB_NOSYNC, MDB_NOMETASYNC, MDB_NORDAHEAD, MDB_CREATE
    int MDB_NOOVERWRITE, MDB_NOTFOUND, MDB_KEYEXIST, MDB_MAP_FULL, MDB_MAP_RESIZED, MDB_BAD_VALSIZE
    int MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID, MDB_VERSION_MISMATCH, MDB_PANIC, MDB_BAD_TXN
    int MDB_TXN_FULL, MDB_READERS_FULL

    int mdb_env_create(MDB_env** env)
    int mdb_env_open(MDB_env* env, const char* path, unsigned int flags, int mode)
    int mdb_env_set_mapsize(MDB_env* env, size_t size)
    int mdb_env_set_maxreaders(MDB_env* env, unsigned int readers)
    int mdb_env_set_maxdbs(MDB_env* env, MDB_dbi dbs)
    int mdb_env_info(MDB_env* env, MDB_envinfo* stat)
    int mdb_env_get_maxkeysize(MDB_env* env)
    int mdb_reader_check(MDB_env* env, int* dead)
    void mdb_env_close(MDB_env* env)
    int mdb_env_sync(MDB_env* env, int force)
    int MDB_CP_COMPACT
    int mdb_env_copy2(MDB_env* env, const char* path, unsigned int flags)
    int mdb_txn_begin(MDB_env* env, MDB_txn* parent, unsigned int flags, MDB_txn** txn)
    int mdb_txn_commit(MDB_txn* txn)
    void mdb_txn_abort(MDB_txn* txn)
    size_t mdb_txn_id(MDB_txn* txn)
    int mdb_dbi_open(MDB_txn* txn, const char* name, unsigned int flags, MDB_dbi* dbi)
    int mdb_stat(MDB_txn* txn, MDB_dbi dbi, MDB_stat* stat)
    int mdb_get(MDB_txn* txn, MDB_dbi dbi, MDB_val* key, MDB_val* data)
    int mdb_put(MDB_txn* txn, MDB_dbi dbi, MDB_val* key, MDB_val* data, unsigned int flags)
    int mdb_del(MDB_txn* txn, MDB_dbi dbi, MDB_val* key, MDB_val* data)
    int mdb_cursor_open(MDB_txn* txn, MDB_dbi dbi, MDB_cursor** cursor)
    void mdb_cursor_close(MDB_cursor* cursor)
    int mdb_cursor_get(MDB_cursor* cursor, MDB_val* key, MDB_val* data, MDB_cursor_op op)
    int mdb_cursor_del(MDB_cursor* cursor, unsigned int flags)
    char* mdb_strerror(int err)


# Return 0 when rc is 0; otherwise raise the duro exception for an LMDB (or errno) return code,
# with `what` (the failed call) and LMDB's own explanation in the message.
cdef int check(int rc, str what) except -1


cdef class Database:
    cdef readonly MDB_dbi dbi
    cdef readonly bytes name


cdef class Environment:
    cdef MDB_env* env
    cdef readonly str path
    cdef bint closed
    cdef readonly int active      # open top-level transactions (exact under the GIL)
    cdef bint gate                # closed by resize(): new transactions wait
    cdef readonly int resizes

    cdef int _ensure_open(self) except -1
    cdef int _wait_gate(self) except -1


cdef class Transaction:
    cdef MDB_txn* txn             # NULL once committed or aborted
    cdef Environment env
    cdef Database db              # the default database of get/put/delete/cursor, or None
    cdef readonly bint write
    cdef bint nested
    cdef list _cursors
    # Successful puts and deletes so far: lets the group commit tell an operation that failed
    # before writing anything (the shared transaction is intact) from one that failed half-way.
    cdef readonly unsigned long long writes

    # Raise mdb.Error when the transaction has ended (txn is NULL then).
    cdef int ensure_live(self) except -1
    # Count one successful put or delete made on `txn` directly.
    cdef inline void count_write(self) noexcept:
        self.writes += 1
    cdef MDB_dbi _dbi(self, Database db) except? 0
    cdef void _ended(self) noexcept
    cdef void _close_cursors(self) noexcept


cdef class Cursor:
    cdef MDB_cursor* cur
    cdef Transaction txn
    cdef MDB_val k, v
    cdef bint positioned
    cdef bint started

    cdef void _close(self) noexcept
    cdef int _live(self) except -1
    cdef bint _op(self, MDB_cursor_op op) except -1
