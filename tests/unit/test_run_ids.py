"""Run ids: 32 hex digits, time-ordered, in the order one process made them, never repeated (not across fork)."""

from __future__ import annotations

import itertools
import os

import pytest

from duro.stores.base import new_run_id, run_key_of


def test_run_ids_are_hex_keys_in_the_order_made() -> None:
    ids = [new_run_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(run_key_of(i)) == 16 for i in ids)
    # Within a millisecond the sequence orders them (their keys are appended to the B-trees), but
    # for the one place in 65,536 where the 16-bit sequence wraps; the millisecond prefix orders
    # the rest unless the wall clock stepped back meanwhile.
    same_ms = [(a, b) for a, b in itertools.pairwise(ids) if a[:12] == b[:12] and a[12:16] != "ffff"]
    assert same_ms and all(a < b for a, b in same_ms)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_run_ids() -> None:
    new_run_id()  # the pool of random bits is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then exit at once
        try:
            os.write(write, "".join(new_run_id()[16:] for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child = {b"".join(chunks).decode()[i : i + 16] for i in range(0, 300 * 16, 16)}
    parent = {new_run_id()[16:] for _ in range(300)}
    assert len(child) == 300 and not child & parent
