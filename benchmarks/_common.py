"""Shared helpers of duro's benchmarks: the W1 workflow, percentiles, JSON output."""

from __future__ import annotations

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
