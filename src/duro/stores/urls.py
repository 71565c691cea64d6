"""Store URLs as they may be shown: without the password they can carry."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["display_url"]

# Query options of a postgresql:// URL that hold a secret (libpq's names).
_SECRET_OPTIONS = ("password", "sslpassword")
# user:password@ after the scheme (to the last "@" before the path: a password may hold one), for a
# URL that urlsplit cannot read.
_USERINFO_PASSWORD = re.compile(r"(//[^/@:]*):[^/]*@")


def display_url(url: str) -> str:
    """``url`` without its password (in the user part or as a ``password=`` option), for reports and messages.

    Anything without a secret comes back unchanged (``lmdb:///abs/path`` keeps its three slashes).

    Args:
        url: a store URL (``postgresql://USER:PASSWORD@HOST/DB?...``; an ``lmdb://`` one has none).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urlsplit reads (a stray "[" in the host): cut any password out by pattern
        return _USERINFO_PASSWORD.sub(r"\1@", url)
    shown = url
    if parts.password is not None:
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        shown = shown.replace(f"//{parts.netloc}", f"//{user}@{hosts}" if user else f"//{hosts}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k in _SECRET_OPTIONS for k, _ in pairs):
            query = urlencode([(k, v) for k, v in pairs if k not in _SECRET_OPTIONS], safe="/,:")
            head, _, rest = shown.partition("?")
            fragment = rest.partition("#")[2]
            shown = head + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    return shown
