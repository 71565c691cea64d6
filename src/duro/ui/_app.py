"""The web application: static page, JSON API, and the security rules every request passes."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

import duro
from duro.errors import DuroError, PayloadTooLargeError, ScheduleNotFoundError, StoreError, WorkflowNotFoundError
from duro.ui._api import Api, json_response

__all__ = ["CSP", "STATIC", "TOKEN_HEADER", "build_app", "is_loopback"]

log = logging.getLogger("duro.ui")

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "X-Duro-Token"

#: Only the page's own files may run or style anything: a payload that slipped into the DOM as markup
#: still could not execute a script (no inline scripts, no eval, no third-party origins).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The first URL carries ?token=: no Referer may take it to another site.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8233`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _origin_host(origin: str) -> str | None:
    """The ``host[:port]`` of an ``Origin`` header, or None when it names no web origin ("null")."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        return None
    return rest.split("/", 1)[0].lower()


def _refuse(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def _security(token: str | None, *, token_required: bool,
              loopback_only: bool) -> Middleware:
    @web.middleware
    async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = _check(request, token, token_required=token_required, loopback_only=loopback_only)
        response = refusal if refusal is not None else await handler(request)
        response.headers.update(_SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        else:  # the page's files change with an upgrade: always revalidate
            response.headers.setdefault("Cache-Control", "no-cache")
        return response

    return security


def _check(request: web.Request, token: str | None, *, token_required: bool,
           loopback_only: bool) -> web.Response | None:
    """Why ``request`` is refused (a response), or None when it may go on."""
    host = request.headers.get("Host", "")
    if loopback_only and not is_loopback(_host_name(host)):
        # Serving loopback only: a page of another site that got its name resolved to 127.0.0.1 (DNS
        # rebinding) sends its own name as Host. Without this it could read every payload.
        return _refuse(403, f"this server answers to localhost / 127.0.0.1 only, not to Host {host!r}; "
                            "serve other names with `duro ui --host` (actions then need a token)")
    # A browser says where a request comes from (Sec-Fetch-Site). Another site cannot read this API's
    # answers (no CORS), but its page could still make the user's browser send requests that cost
    # work here (the stack and state reads ask workers, or replay runs): refused for every API call.
    site = request.headers.get("Sec-Fetch-Site")
    cross_site = site is not None and site not in ("same-origin", "none")
    if request.method in ("GET", "HEAD", "OPTIONS"):
        if cross_site and request.path.startswith("/api/"):
            return _refuse(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        return None
    # An action. A form on another site can POST here with the user's browser; a browser says where the
    # request comes from (Sec-Fetch-Site, Origin) and cannot send application/json cross-site without a
    # CORS preflight, which this server never grants.
    if cross_site:
        return _refuse(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) != host.lower():
        return _refuse(403, f"cross-site request refused: Origin {origin!r} is not this server ({host!r})")
    if request.content_type != "application/json":
        return _refuse(415, f"actions take a JSON body: send Content-Type: application/json "
                            f"(got {request.content_type or 'none'!r})")
    if token_required:
        given = request.headers.get(TOKEN_HEADER, "")
        if not given:
            return _refuse(401, f"this server needs its token for actions: open the URL it printed (with ?token=), "
                                f"or send the {TOKEN_HEADER} header")
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _refuse(401, "wrong token: open the URL the server printed at start (with ?token=)")
    return None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors of the API as ``{"error": message}`` with a status that says whose fault it is."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _refuse(e.status, e.reason if e.status != 404 else f"no such API path: {request.path}")
    except (WorkflowNotFoundError, ScheduleNotFoundError) as e:
        return _refuse(404, str(e))
    except PayloadTooLargeError as e:
        return _refuse(413, str(e))
    except (ValueError, TypeError) as e:  # a bad argument, as the client API says it
        return _refuse(400, str(e))
    except NotImplementedError as e:
        # A store without the operation (reset, schedules). An AttributeError is a bug, not this: it
        # goes on to the server's 500 and its log.
        log.warning("not supported by this store: %s %s", request.method, request.path, exc_info=True)
        return _refuse(501, f"this store does not support that: {e}")
    except StoreError as e:
        return _refuse(503, f"store error: {e}")
    except DuroError as e:  # the run's state refuses it (closed, no such event...): a conflict, clearly said
        return _refuse(409, str(e))
    except Exception as e:
        log.exception("duro ui: %s %s failed", request.method, request.path)
        return _refuse(500, f"internal error: {type(e).__name__}: {e}")


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


def build_app(client: duro.Client, *, token: str | None, require_token: bool,
              query_timeout: float = 2.0) -> web.Application:
    """The application (see ``duro.ui.create_app``)."""
    if require_token and not token:
        raise ValueError("require_token=True needs a token (serve() makes one when none is given)")
    # A token given is a token required, even on loopback: whoever set one expects it to be checked.
    required = require_token or token is not None
    # Without a token the server is meant for this machine alone (serve() binds loopback then) and answers
    # loopback names only. With one, other names are fine (a reverse proxy's, say): the token guards actions.
    security = _security(token, token_required=required, loopback_only=not required)
    app = web.Application(middlewares=[security, _errors], client_max_size=4 * 1024 * 1024)
    Api(client, token_required=required, query_timeout=query_timeout).add_routes(app)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app
