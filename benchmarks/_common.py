"""Shared helpers of duro's benchmarks: the W1 workflow, percentiles, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import duro


@duro.activity
async def validate(ctx: duro.ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


@duro.activity
async def charge(ctx: duro.ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": order["amount"]}


@duro.activity
async def ship(ctx: duro.ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    return {"tracking": "T-" + order["order_id"]}


@duro.workflow
async def order(ctx: duro.WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    await ctx.execute_activity(validate, order)
    await ctx.execute_activity(charge, order)
    shipped = await ctx.execute_activity(ship, order)
    return {"order_id": order["order_id"], "tracking": shipped["tracking"]}


@duro.activity
async def echo(ctx: duro.ActivityContext, i: int) -> int:
    return i


@duro.workflow
async def long(ctx: duro.WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.execute_activity(echo, i)
    return total


@duro.workflow
async def fanout(ctx: duro.WorkflowContext, k: int) -> int:
    import asyncio

    return sum(await asyncio.gather(*(ctx.execute_activity(echo, i) for i in range(k))))


@duro.workflow
async def approval(ctx: duro.WorkflowContext) -> Any:
    return await ctx.wait_signal("approve")


# The group commit's counters a store keeps (where it keeps them: LMDB): batches, ops, seconds from a
# batch's start to its commit (ops, plus the wait for LMDB's write lock, also given alone), seconds
# in commit (pages written and data synced, under the lock) and in meta-page syncs (outside it).
# What "durable" means for every duro figure on LMDB (each benchmark's JSON says it).
LMDB_DURABLE = ("LMDB: each group commit's data pages, then its meta page (after LMDB's write lock is released), "
                "fsynced before any caller or result waiter is answered (this process's worker goes on from the "
                "applied commit)")

STORE_COUNTERS = {"commits": "commits", "ops": "ops_committed", "ops_s": "time_in_ops", "commit_s": "time_in_commit",
                  "lock_wait_s": "time_waiting_lock", "meta_sync_s": "time_in_sync"}


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a count of runs, repetitions, workflows)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer of at least 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def store_counters(store: Any) -> dict[str, float]:
    """The store's group-commit counters now (``STORE_COUNTERS``; those it does not keep are left out)."""
    return {k: float(getattr(store, a)) for k, a in STORE_COUNTERS.items() if hasattr(store, a)}


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    # numpy is imported here, not with this module: bench_parked measures its process's memory and
    # takes no percentiles (numpy adds ~9 MB to a process).
    import numpy as np

    arr = np.asarray(samples_s) * 1000.0
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in (50, 90, 99)}


def emit(result: dict[str, Any], out: str | None) -> None:
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    result.setdefault("machine", machine)
    text = json.dumps(result)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
