"""Shared fixtures: every engine test runs against each store through the ``store`` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import duro

STORES = ["lmdb"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of each kind."""
    if request.param == "lmdb":
        return f"lmdb://{tmp_path / 'store'}"
    raise AssertionError(request.param)


@pytest.fixture
async def client(store: str) -> AsyncIterator[duro.Client]:
    async with duro.Client.connect(store) as c:
        yield c


@pytest.fixture(autouse=True)
def _fail_on_loop_errors() -> None:
    """An unhandled exception inside an event loop fails the test (asyncio would only log it)."""
    errors: list[dict[str, object]] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        errors.append(context)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.set_exception_handler(handler)
