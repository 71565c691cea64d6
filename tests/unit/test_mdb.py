"""The liblmdb binding's environment options and diagnostics: metasync, sync(), stat()."""

from __future__ import annotations

from pathlib import Path

import pytest

from duro._core import mdb


def test_a_commit_without_its_meta_sync_is_durable_after_sync(tmp_path: Path) -> None:
    env = mdb.Environment(str(tmp_path), map_size=2**24, metasync=False)
    db = env.open_db(b"d")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=db)
    env.sync()  # what makes the commit durable with metasync=False (the store does it after each batch)
    env.close()
    again = mdb.Environment(str(tmp_path), map_size=2**24)
    db = again.open_db(b"d")
    with again.begin() as txn:
        assert txn.get(b"k", db=db) == b"v"
    again.close()


def test_stat_shows_the_shape_of_a_tree(tmp_path: Path) -> None:
    env = mdb.Environment(str(tmp_path), map_size=2**26)
    db = env.open_db(b"d")
    with env.begin(write=True) as txn:
        assert txn.stat(db)["entries"] == 0
        for i in range(5000):
            txn.put(i.to_bytes(8, "big"), b"x" * 100, db=db)
    with env.begin() as txn:
        st = txn.stat(db)
        assert st["entries"] == 5000 and st["depth"] >= 2
        assert st["leaf_pages"] >= 5000 * 100 // 4096 and st["branch_pages"] >= 1
        assert set(txn.stat(free_pages=True)) == set(st)
    env.close()
    with pytest.raises(mdb.Error, match="is closed"):
        env.sync()
