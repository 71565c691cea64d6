"""Shared fixtures: every engine test runs against each store through the ``store`` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import duro

pytest_plugins = ["tests.pg"]

STORES = ["lmdb", "postgresql"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of each kind (PostgreSQL: a new schema, dropped afterwards).

    A test marked ``lmdb_only`` reaches into LMDB itself (its environment, its files) and runs on
    LMDB alone.
    """
    if request.param == "lmdb":
        return f"lmdb://{tmp_path / 'store'}"
    if request.node.get_closest_marker("lmdb_only") is not None:
        pytest.skip("this test reaches into the LMDB store itself")
    url: str = request.getfixturevalue("pg_url")
    return url


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
