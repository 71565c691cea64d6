"""Running the UI: bind, print the address (with the token when there is one), serve until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from urllib.parse import quote

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "require_aiohttp", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8233  # Temporal's UI port, where a Temporal user looks first


def require_aiohttp() -> None:
    """Raise an ImportError that says how to install the UI's server when aiohttp is missing."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ImportError("the duro web UI needs aiohttp, which is not installed: pip install 'duro[ui]'",
                          name="aiohttp") from None


def serve(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None) -> None:
    """Serve the web UI over the store at ``url`` until interrupted (Ctrl-C, SIGTERM); what ``duro ui`` runs.

    On a loopback host (the default, 127.0.0.1) the UI answers requests addressed to this machine
    only. On any other host (``0.0.0.0``, an interface's address, a name) actions need a token:
    ``token``, or a random one made here; either way the URL printed at start carries it
    (``?token=``), and the page keeps it for the browser tab.

    Args:
        url: the store URL (``lmdb://PATH`` or ``postgresql://...``).
        host: the address to bind.
        port: the TCP port (0: any free port; the one chosen is printed).
        token: the token actions must carry (also enforced on a loopback host when given).

    Raises:
        ImportError: aiohttp is not installed (``pip install 'duro[ui]'``).
        OSError: the address cannot be bound (the port is taken, say).
        duro.StoreURLError, duro.StoreError: the store cannot be opened.
    """
    require_aiohttp()
    from duro.ui._app import is_loopback

    loopback = is_loopback(host)
    if not loopback and not token:
        token = secrets.token_urlsafe(24)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(url, host, port, token, require_token=not loopback))


async def _serve(url: str, host: str, port: int, token: str | None, *, require_token: bool) -> None:
    from aiohttp import web

    import duro
    from duro.ui._app import build_app

    async with duro.Client.connect(url) as client:
        app = build_app(client, token=token, require_token=require_token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_port = _bound_port(runner, port)
            shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
            shown = f"[{shown}]" if ":" in shown else shown
            link = f"http://{shown}:{bound_port}/" + (f"?token={quote(token)}" if token else "")
            print(f"duro ui: serving {url.split('://', 1)[0]} store on http://{host or '*'}:{bound_port}/\n"
                  f"open {link}", flush=True)
            if require_token:
                print("actions need the token in that link; anyone who can reach this port can read workflows",
                      file=sys.stderr, flush=True)
            stop = asyncio.Event()
            if sys.platform != "win32":  # a service manager's SIGTERM ends it as cleanly as Ctrl-C does
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()  # until SIGTERM, or Ctrl-C cancelling the main task
        finally:
            await runner.cleanup()


def _bound_port(runner: object, asked: int) -> int:
    """The port actually bound (``asked`` unless it was 0)."""
    for address in getattr(runner, "addresses", []):
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return asked
