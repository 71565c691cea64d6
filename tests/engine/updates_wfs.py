"""Workflows of tests.engine.test_updates (importable by the worker process update_worker.py)."""

from __future__ import annotations

from typing import Any

import duro

QUEUE = "updates"


@duro.workflow
async def counter(ctx: duro.WorkflowContext) -> int:
    """Updates ``add`` (applied at once) and ``slow_add`` (waits for the signal "release")."""
    state = {"n": 0, "open": False, "done": False}

    def check(k: int) -> None:
        if k < 0:
            raise duro.ApplicationError("negative amounts are rejected")

    def add(k: int) -> int:
        if k == 13:
            raise duro.ApplicationError("13 is unlucky")
        state["n"] += k
        return state["n"]

    async def slow_add(k: int) -> int:
        await ctx.wait_condition(lambda: bool(state["open"]))
        state["n"] += k
        return state["n"]

    ctx.set_update_handler("add", add, check)
    ctx.set_update_handler("slow_add", slow_add)
    ctx.set_signal_handler("release", lambda: state.__setitem__("open", True))
    ctx.set_signal_handler("finish", lambda: state.__setitem__("done", True))
    ctx.set_query_handler("n", lambda: state["n"])
    await ctx.wait_condition(lambda: bool(state["done"]))
    return int(state["n"])


@duro.workflow
async def dynamic(ctx: duro.WorkflowContext) -> dict[str, Any]:
    """Dynamic signal, query and update handlers next to named ones, waiters and the buffer."""
    seen: list[Any] = []
    checks: dict[str, bool] = {}
    done = {"v": False}

    def named(v: Any) -> None:
        seen.append(["by-name", v])

    def catch_all(name: str, *args: Any) -> None:
        seen.append([name, *args])

    def dyn_query(name: str, *args: Any) -> Any:
        return {"query": name, "args": list(args), "seen": len(seen)}

    def dyn_validate(name: str, *args: Any) -> None:
        if name.startswith("bad"):
            raise duro.ApplicationError(f"{name} is refused")

    async def dyn_update(name: str, *args: Any) -> Any:
        seen.append([f"update:{name}", *args])
        return [name, *args]

    await ctx.wait_signal("start")  # "x", "y", "x" sent before it wait in the buffer
    ctx.set_signal_handler("named", named)
    ctx.set_signal_handler("finish", lambda: done.__setitem__("v", True))
    ctx.set_dynamic_signal_handler(catch_all)  # takes the buffered ones, oldest first
    checks["get_named"] = ctx.get_signal_handler("named") is named
    checks["get_unknown"] = ctx.get_signal_handler("x") is None
    checks["get_dynamic"] = ctx.get_dynamic_signal_handler() is catch_all
    seen.append(["waited", await ctx.wait_signal("w")])  # a waiter takes "w" before the dynamic handler
    ctx.set_dynamic_query_handler(dyn_query)
    ctx.set_dynamic_update_handler(dyn_update, validator=dyn_validate)
    checks["get_query"] = ctx.get_query_handler("anything") is None and ctx.get_dynamic_query_handler() is dyn_query
    checks["get_update"] = (ctx.get_update_handler("anything") is None
                            and ctx.get_dynamic_update_handler() is dyn_update)
    await ctx.wait_signal("phase2")
    ctx.set_dynamic_signal_handler(None)  # from now on unnamed signals wait in the buffer
    checks["removed"] = ctx.get_dynamic_signal_handler() is None
    seen.append(["buffered", await ctx.wait_signal("late")])
    ctx.set_signal_handler("named", None)
    checks["named_removed"] = ctx.get_signal_handler("named") is None
    await ctx.wait_condition(lambda: done["v"])
    await ctx.wait_condition(ctx.all_handlers_finished)
    return {"seen": seen, "checks": checks}


WORKFLOWS = [counter, dynamic]
