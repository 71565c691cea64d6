"""``duro ui``: a web UI over a store — workflows, their histories and timelines, actions, schedules.

``serve(url)`` runs it (what the ``duro ui`` command calls); ``create_app(client)`` builds the
aiohttp application for embedding or tests. The page is plain HTML, CSS and JavaScript shipped in
``duro/ui/static/`` (no build step); it talks to a JSON API under ``/api/``. Needs the ``ui`` extra
(``pip install 'duro[ui]'``, which brings aiohttp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from duro.ui._server import DEFAULT_HOST, DEFAULT_PORT, serve

if TYPE_CHECKING:
    from aiohttp import web

    import duro

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "serve"]


async def create_app(client: duro.Client, *, token: str | None = None, require_token: bool = False,
                     query_timeout: float = 2.0) -> web.Application:
    """The UI's aiohttp application over ``client`` (the caller runs it and closes the client).

    Args:
        client: a connected ``duro.Client``; every page and action goes through its public API.
        token: the token actions (POST) must carry in the ``X-Duro-Token`` header; the page takes
            it from a ``?token=`` query parameter once. Giving one makes actions require it, and
            requests addressed to any ``Host`` are answered. Without a token, only requests addressed
            to a loopback name (localhost, 127.0.0.1, ::1) are, which stops DNS rebinding.
        require_token: the server is reachable from other machines, so ``token`` must be given.
        query_timeout: how long the workflow page waits for a worker to answer the
            ``__stack_trace`` query ("where the workflow is waiting now").

    Raises:
        ImportError: aiohttp is not installed (``pip install 'duro[ui]'``).
        ValueError: ``require_token`` without a ``token``.
    """
    from duro.ui._server import require_aiohttp

    require_aiohttp()
    from duro.ui._app import build_app

    return build_app(client, token=token, require_token=require_token, query_timeout=query_timeout)
