"""Store URLs as they may be shown: without the password they can carry."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["display_url"]

# Query options of a postgresql:// URL that hold a secret (libpq's names).
_SECRET_OPTIONS = ("password", "sslpassword")


def display_url(url: str) -> str:
    """``url`` without its password (in the user part or as a ``password=`` option), for reports and messages.

    Args:
        url: a store URL (``postgresql://USER:PASSWORD@HOST/DB?...``; an ``lmdb://`` one has none).
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k in _SECRET_OPTIONS for k, _ in pairs):
            query = urlencode([(k, v) for k, v in pairs if k not in _SECRET_OPTIONS], safe="/,:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
