"""Checks of an LMDB environment's files made before LMDB maps them, so damage is an error, not a SIGBUS.

LMDB maps ``data.mdb`` into memory and trusts it: a file cut short kills the process with SIGBUS
on the first access to a missing page, and a 0-byte file is silently initialized as a new, empty
environment. :func:`check_lmdb_files` reads the two meta pages with a few ``pread`` calls and
raises :class:`~duro.errors.StoreCorruptedError` before that can happen.

The layouts below are LMDB 0.9's (``libraries/liblmdb/mdb.c``: ``MDB_page``, ``MDB_meta``,
``MDB_db``, ``MDB_node``), in the machine's byte order, for 64-bit builds (``size_t``, ``pgno_t``
and ``txnid_t`` are 8 bytes); on a 32-bit build the checks are skipped. LMDB's 1.0 development
branch keeps these structures for its data version 1.

Never open ``lock.mdb`` here: LMDB holds POSIX record locks on it, and closing *any* descriptor of
that file in a process drops all of that process's locks on it. ``data.mdb`` carries no such locks.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from duro.errors import StoreCorruptedError, StoreError, StorePermissionError

__all__ = ["DATA_FILE", "LOCK_FILE", "LmdbDb", "LmdbMeta", "check_lmdb_files", "inspect_lmdb_files",
           "named_databases"]

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
# A 0-byte (or shorter than two pages) data.mdb next to a lock.mdb may be a new environment whose
# opener (in another process, under LMDB's own lock) has not written its meta pages yet: wait this
# long for them before calling the file damaged.
EMPTY_FILE_WAIT_S = 0.5
# Times the check is redone when the current meta changed while it read the free-page list.
_ATTEMPTS = 5

MDB_MAGIC = 0xBEEFC0DE
MDB_DATA_VERSION = 1
_SUPPORTED = struct.calcsize("P") == 8

# MDB_page header (PAGEHDRSZ = 16 bytes), at the start of every page (page N at offset N * page size):
#    0  u64  mp_pgno    the page's own number
#    8  u16  mp_pad
#   10  u16  mp_flags   P_BRANCH 0x01, P_LEAF 0x02, P_OVERFLOW 0x04, P_META 0x08, P_LEAF2 0x20
#   12  u16  mp_lower   end of the node-offset array: NUMKEYS = (mp_lower - 16) / 2
#   14  u16  mp_upper   start of the node data
#   (12 u32  mp_pages   instead of lower/upper on the first page of an overflow run: its page count)
#   16  u16  mp_ptrs[NUMKEYS]   offsets of the nodes from the start of the page
_PAGE = struct.Struct("=QHHHH")
_PAGES = struct.Struct("=I")
_U16 = struct.Struct("=H")
_U64 = struct.Struct("=Q")
PAGEHDRSZ = 16
P_BRANCH = 0x01
P_LEAF = 0x02
P_OVERFLOW = 0x04
P_META = 0x08

# MDB_meta (136 bytes), right after the page header of page 0 (file offset 16) and of page 1
# (offset page size + 16). Page 1's offset is page 0's mm_psize, as in LMDB's mdb_env_read_header.
#    0  u32     mm_magic      MDB_MAGIC
#    4  u32     mm_version    MDB_DATA_VERSION
#    8  ptr     mm_address
#   16  size_t  mm_mapsize
#   24  MDB_db  mm_dbs[0]     the free-page DB; its md_pad is the page size (mm_psize)
#   72  MDB_db  mm_dbs[1]     the main DB (its records are the named databases)
#  120  pgno_t  mm_last_pg    last page in use; the file may end earlier, but only on free pages
#                             (a page allocated and freed in one transaction is never written)
#  128  txnid_t mm_txnid      the transaction that wrote this meta; the higher of the two is current
_META = struct.Struct("=IIQQ48s48sQQ")
_META_BYTES = PAGEHDRSZ + _META.size  # 152

# MDB_db (48 bytes): 0 u32 md_pad, 4 u16 md_flags, 6 u16 md_depth, 8 md_branch_pages,
# 16 md_leaf_pages, 24 md_overflow_pages, 32 md_entries, 40 md_root (P_INVALID: an empty tree).
_DB = struct.Struct("=IHHQQQQQ")
P_INVALID = (1 << 64) - 1

# MDB_node: an 8-byte header, then the key, then the data (leaf) or nothing (branch):
#    0  u16  mn_lo      (mn_hi first on a big-endian machine)
#    2  u16  mn_hi
#    4  u16  mn_flags   leaf: F_BIGDATA 0x01 (data is the u64 number of the first overflow page;
#                       the value, mn_lo | mn_hi << 16 bytes, starts 16 bytes into that page),
#                       F_SUBDATA 0x02 (data is the MDB_db of a named database)
#    6  u16  mn_ksize
#   leaf data size = mn_lo | mn_hi << 16; branch child page = mn_lo | mn_hi << 16 | mn_flags << 32
#   The free-page DB's values are IDLs: a u64 count, then that many u64 page numbers.
_NODE = struct.Struct("=HHHH")
NODESIZE = 8
F_BIGDATA = 0x01
F_SUBDATA = 0x02
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True)
class LmdbDb:
    """One ``MDB_db`` record: the root and counters of a B-tree (the free list, the main DB, a named DB)."""

    flags: int
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int

    @classmethod
    def parse(cls, raw: bytes) -> LmdbDb:
        """Decode the 48 bytes of an ``MDB_db`` (the page size in ``md_pad`` is left out)."""
        _pad, flags, depth, branch, leaf, overflow, entries, root = _DB.unpack(raw)
        return cls(flags, depth, branch, leaf, overflow, entries, root)


@dataclass(frozen=True)
class LmdbMeta:
    """The current meta page of an LMDB environment: what LMDB uses when it opens the file.

    Attributes:
        page: 0 or 1, the meta page this came from.
        txnid: the id of the transaction that wrote it.
        page_size: the environment's page size in bytes.
        map_size: the map size the last writer used.
        last_pg: the last page in use; the data reaches ``(last_pg + 1) * page_size`` bytes.
        free_db: the free-page B-tree.
        main_db: the main B-tree, whose records are the named databases.
        file_size: the size of ``data.mdb`` when it was checked.
    """

    page: int
    txnid: int
    page_size: int
    map_size: int
    last_pg: int
    free_db: LmdbDb
    main_db: LmdbDb
    file_size: int


class _Damaged(Exception):
    """A page reached while walking a B-tree is missing or malformed (the message says which)."""


def _os_page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4096


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows has no pread; this descriptor is ours alone
    return os.read(fd, size)


def _meta_page_size(head: bytes) -> int:
    """The page size recorded in a meta page's free DB record, or 0 when it is not plausible."""
    if len(head) < _META_BYTES:
        return 0
    size: int = _PAGES.unpack_from(head, PAGEHDRSZ + 24)[0]  # mm_dbs[0].md_pad
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else 0


def _parse_meta(raw: bytes, page: int, file_size: int) -> LmdbMeta | str:
    """The meta in ``raw`` (152 bytes read at the start of meta page ``page``), or why it is not valid."""
    if len(raw) < _META_BYTES:
        return "it lies past the end of the file"
    _pgno, _pad, flags, _lower, _upper = _PAGE.unpack_from(raw)
    magic, version, _address, map_size, free_raw, main_raw, last_pg, txnid = _META.unpack_from(raw, PAGEHDRSZ)
    if not flags & P_META:
        return f"its page header is not a meta page's (flags {flags:#06x})"
    if magic != MDB_MAGIC:
        return f"it has no LMDB signature (magic {magic:#010x}, expected {MDB_MAGIC:#010x})"
    if version != MDB_DATA_VERSION:
        return f"it has LMDB data format version {version}, this build reads version {MDB_DATA_VERSION}"
    page_size = _meta_page_size(raw)
    if not page_size:
        return f"its page size ({_PAGES.unpack_from(raw, PAGEHDRSZ + 24)[0]}) is not a power of two in 512..65536"
    if last_pg < 1:
        return f"its last page number ({last_pg}) is impossible"
    return LmdbMeta(page, txnid, page_size, map_size, last_pg, LmdbDb.parse(free_raw), LmdbDb.parse(main_raw),
                    file_size)


class _Pages:
    """Reads whole pages of ``data.mdb`` by number, checking that each is there and says it is that page."""

    def __init__(self, fd: int, page_size: int) -> None:
        self.fd = fd
        self.page_size = page_size

    def page(self, pgno: int) -> bytes:
        raw = _pread(self.fd, self.page_size, pgno * self.page_size)
        if len(raw) < self.page_size:
            raise _Damaged(f"page {pgno} lies past the end of the file")
        if _U64.unpack_from(raw)[0] != pgno:
            raise _Damaged(f"page {pgno} holds the header of page {_U64.unpack_from(raw)[0]}")
        return raw

    def overflow(self, pgno: int, size: int) -> bytes:
        head = self.page(pgno)
        flags = _PAGE.unpack_from(head)[2]
        count = _PAGES.unpack_from(head, 12)[0]
        if not flags & P_OVERFLOW or PAGEHDRSZ + size > count * self.page_size:
            raise _Damaged(f"page {pgno} is not the overflow run of a {size}-byte value")
        raw = _pread(self.fd, size, pgno * self.page_size + PAGEHDRSZ)
        if len(raw) < size:
            raise _Damaged(f"the overflow pages from page {pgno} run past the end of the file")
        return raw


def _leaves(pages: _Pages, db: LmdbDb) -> Iterator[tuple[bytes, int, bytes]]:
    """Every (key, node flags, value) of a B-tree, values of overflow pages included; _Damaged on a bad page."""
    if db.root == P_INVALID:
        return
    budget = db.branch_pages + db.leaf_pages + 1  # pages a sound tree has: a cycle cannot loop forever
    stack = [(db.root, 1)]
    size = pages.page_size
    while stack:
        pgno, level = stack.pop()
        budget -= 1
        if budget < 0 or level > max(db.depth, 1):
            raise _Damaged("a B-tree has more pages or levels than its record says (a cycle?)")
        raw = pages.page(pgno)
        _pgno, _pad, flags, lower, _upper = _PAGE.unpack_from(raw)
        if not flags & (P_BRANCH | P_LEAF) or not PAGEHDRSZ <= lower <= size:
            raise _Damaged(f"page {pgno} is neither a branch nor a leaf page (flags {flags:#06x})")
        children = []
        for i in range((lower - PAGEHDRSZ) >> 1):
            off = _U16.unpack_from(raw, PAGEHDRSZ + 2 * i)[0]
            if off + NODESIZE > size:
                raise _Damaged(f"page {pgno}: node {i} lies outside the page")
            lo, hi, nflags, ksize = _NODE.unpack_from(raw, off)
            if _BIG_ENDIAN:
                lo, hi = hi, lo
            key_end = off + NODESIZE + ksize
            if key_end > size:
                raise _Damaged(f"page {pgno}: the key of node {i} runs past the page")
            key = raw[off + NODESIZE : key_end]
            if flags & P_BRANCH:
                children.append((lo | hi << 16 | nflags << 32, level + 1))
                continue
            dsize = lo | hi << 16
            if nflags & F_BIGDATA:
                if key_end + 8 > size:
                    raise _Damaged(f"page {pgno}: node {i} runs past the page")
                yield key, nflags, pages.overflow(_U64.unpack_from(raw, key_end)[0], dsize)
            else:
                if key_end + dsize > size:
                    raise _Damaged(f"page {pgno}: the value of node {i} runs past the page")
                yield key, nflags, raw[key_end : key_end + dsize]
        stack.extend(reversed(children))


def _all_free(pages: _Pages, meta: LmdbMeta, first: int, last: int) -> bool:
    """Whether pages ``first..last`` are all listed in the free-page DB (never written, so absent is fine)."""
    free: set[int] = set()
    for _key, _flags, value in _leaves(pages, meta.free_db):
        if len(value) < 8:
            raise _Damaged("a free-list record is shorter than its count")
        count = _U64.unpack_from(value)[0]
        if 8 + 8 * count > len(value):
            raise _Damaged("a free-list record is shorter than its count")
        free.update(struct.unpack_from(f"={count}Q", value, 8))
    return all(p in free for p in range(first, last + 1))


def _damaged(path: str, what: str) -> StoreCorruptedError:
    return StoreCorruptedError(
        f"the store file {path} is damaged: {what}. duro did not open it (LMDB would crash or start an empty "
        "store); restore the store directory from a backup, or move it away to start afresh", path=path)


def _permission(path: str, what: str) -> StorePermissionError:
    owner = _owner_note(path)
    return StorePermissionError(
        f"this process (user id {os.getuid() if hasattr(os, 'getuid') else '?'}) may not {what} {path}{owner}; "
        "run duro as the user that owns the store, or give this user read and write access to the store "
        "directory and its files")


def _read_metas(fd: int, size: int, head: bytes | None = None) -> tuple[LmdbMeta | str, LmdbMeta | str, int]:
    """Both meta pages (or why each is not valid) and the page size; ``head``: page 0's first bytes, if read."""
    if head is None:
        head = _pread(fd, _META_BYTES, 0)
    page_size = _meta_page_size(head) or _os_page_size()
    second = _pread(fd, _META_BYTES, page_size)
    return _parse_meta(head, 0, size), _parse_meta(second, 1, size), page_size


def _inspect(fd: int, path: str, lock_exists: bool) -> LmdbMeta | None:
    deadline = time.monotonic() + EMPTY_FILE_WAIT_S
    while True:
        size = os.fstat(fd).st_size
        page0 = _pread(fd, _META_BYTES, 0)
        page_size = _meta_page_size(page0) or _os_page_size()
        if size >= 2 * page_size:
            break
        if size == 0 and not lock_exists:
            return None  # a new environment: LMDB writes its meta pages when it opens the file
        if not lock_exists or time.monotonic() >= deadline:
            if size == 0:
                raise _damaged(path, f"it is empty (0 bytes) although {LOCK_FILE} is there: the data of "
                               "this store is lost (the file was truncated or replaced)")
            raise _damaged(path, f"it is {size} bytes long, shorter than LMDB's two meta pages "
                           f"({2 * page_size} bytes)")
        time.sleep(0.01)  # another process may be creating the environment right now

    head: bytes | None = page0  # a later attempt reads both metas afresh
    for attempt in range(_ATTEMPTS):
        m0, m1, page_size = _read_metas(fd, size, head)
        head = None
        size = os.fstat(fd).st_size  # after the metas: the pages a meta names were written before it
        if isinstance(m0, str) and isinstance(m1, str):
            raise _damaged(path, f"it is not an LMDB environment: meta page 0 is not valid ({m0}) and "
                           f"neither is meta page 1 ({m1})")
        for bad, page in ((m0, 0), (m1, 1)):
            if isinstance(bad, str):  # LMDB refuses a file with one bad meta page (MDB_INVALID)
                raise _damaged(path, f"meta page {page} is not valid ({bad})")
        assert isinstance(m0, LmdbMeta) and isinstance(m1, LmdbMeta)
        if m0.page_size != m1.page_size:
            raise _damaged(path, f"its meta pages disagree on the page size ({m0.page_size}, {m1.page_size})")
        meta = dataclasses.replace(m0 if m0.txnid >= m1.txnid else m1, file_size=size)
        need = (meta.last_pg + 1) * page_size
        if size >= need:
            return meta
        first = size // page_size  # the first page not wholly in the file
        if _missing_pages_free(fd, page_size, meta, first):
            return meta
        again = _read_metas(fd, size)[:2]
        latest = max((m for m in again if isinstance(m, LmdbMeta)), key=lambda m: m.txnid, default=None)
        if latest is not None and latest.txnid != meta.txnid and attempt + 1 < _ATTEMPTS:
            continue  # another process committed while we read: pages may have been reused; look again
        raise _damaged(path, f"it is truncated: it is {size} bytes long, but its last transaction "
                       f"({meta.txnid}) uses {need} bytes (pages {first} to {meta.last_pg} of {page_size} bytes "
                       "are missing)")
    raise AssertionError("unreachable")


def inspect_lmdb_files(directory: str) -> LmdbMeta | None:
    """Check the LMDB files in ``directory`` and return the current meta page (what LMDB will use).

    Reads ``data.mdb``'s two meta pages (two ``pread`` calls in the usual case) and compares the
    file's size with the pages the current meta says are in use. Only when the file ends a little
    early, which LMDB allows when the missing pages are free, does it read the free-page list too.

    Args:
        directory: the environment's directory (holding ``data.mdb`` and ``lock.mdb``).

    Returns:
        The current meta, or None when there is no ``data.mdb`` yet (or an empty one and no
        ``lock.mdb``): LMDB creates a new environment there. Also None on a 32-bit build.

    Raises:
        StoreCorruptedError: ``data.mdb`` is shorter than its meta pages, empty next to a
            ``lock.mdb`` (after waiting up to ``EMPTY_FILE_WAIT_S`` for a concurrent opener),
            has a damaged meta page, or is shorter than its current meta says (truncated).
        StorePermissionError: this process may not read or write ``data.mdb`` or ``lock.mdb``
            (or create them in ``directory``).
        StoreError: ``data.mdb`` could not be read for another reason (the message says which).
    """
    if not _SUPPORTED:
        return None
    data = os.path.join(directory, DATA_FILE)
    lock = os.path.join(directory, LOCK_FILE)
    lock_exists = os.path.exists(lock)
    if lock_exists and not os.access(lock, os.R_OK | os.W_OK):
        raise _permission(lock, "read and write")
    try:
        fd = os.open(data, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _permission(directory, "create files in") from None
        return None
    except PermissionError:
        raise _permission(data, "read") from None
    except IsADirectoryError:
        raise _damaged(data, "it is a directory, not a file") from None
    except OSError as e:
        raise StoreError(f"cannot read the store file {data}: {e.strerror or e}") from e
    try:
        if not os.access(data, os.W_OK):
            raise _permission(data, "write")
        try:
            return _inspect(fd, data, lock_exists)
        except OSError as e:
            raise StoreError(f"cannot read the store file {data}: {e.strerror or e}") from e
    finally:
        os.close(fd)


def check_lmdb_files(directory: str) -> None:
    """Refuse a damaged LMDB environment before LMDB maps it; call it before opening the environment.

    A missing ``data.mdb`` is a new store and passes. See :func:`inspect_lmdb_files` for what is
    checked.

    Args:
        directory: the environment's directory (holding ``data.mdb`` and ``lock.mdb``).

    Raises:
        StoreCorruptedError: the file is damaged; ``path`` names it.
        StorePermissionError: this process may not read or write the store's files.
        StoreError: ``data.mdb`` could not be read for another reason.
    """
    inspect_lmdb_files(directory)


def named_databases(directory: str, txnid: int) -> dict[bytes, LmdbDb] | None:
    """The named databases of the snapshot ``txnid``, read from the main B-tree in ``data.mdb``.

    Call it inside a read transaction whose id is ``txnid``: the transaction keeps that snapshot's
    pages from being reused, so the tree read here is the one the transaction sees.

    Args:
        directory: the environment's directory.
        txnid: the id of the open read transaction.

    Returns:
        Name -> B-tree record, or None when neither meta page is ``txnid``'s any more (two commits
        since the transaction began overwrote both: begin a new one and ask again).

    Raises:
        StoreCorruptedError: the main B-tree cannot be read.
    """
    data = os.path.join(directory, DATA_FILE)
    fd = os.open(data, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        m0, m1, _page_size = _read_metas(fd, os.fstat(fd).st_size)
        meta = next((m for m in (m0, m1) if isinstance(m, LmdbMeta) and m.txnid == txnid), None)
        if meta is None:
            return None
        found: dict[bytes, LmdbDb] = {}
        try:
            for key, flags, value in _leaves(_Pages(fd, meta.page_size), meta.main_db):
                if flags & F_SUBDATA and len(value) == _DB.size:
                    found[key] = LmdbDb.parse(value)
        except _Damaged as e:
            raise _damaged(data, f"its main B-tree (the list of named databases) is unreadable: {e}") from None
        return found
    finally:
        os.close(fd)


def _owner_note(path: str) -> str:
    """" (it belongs to USER)" for an error message, or "" where that cannot be told (no pwd module)."""
    try:
        import pwd

        return f" (it belongs to {pwd.getpwuid(os.stat(path).st_uid).pw_name})"
    except (ImportError, KeyError, OSError):
        return ""


def _missing_pages_free(fd: int, page_size: int, meta: LmdbMeta, first: int) -> bool:
    """Whether pages ``first`` .. ``meta.last_pg`` (past the end of a short file) are all free.

    False too when the free list itself lies (partly) in the missing part: then it cannot tell.
    """
    try:
        return _all_free(_Pages(fd, page_size), meta, first, meta.last_pg)
    except _Damaged:
        return False
