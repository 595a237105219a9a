"""The one check of an http(s) base URL given in a config or on a command line (a pipeline, a
fallback receiver): refused with the reason at startup, never found out at the first request."""

from __future__ import annotations

from urllib.parse import urlsplit


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash, or ValueError saying what is wrong with it."""
    stripped = url.strip().rstrip("/")
    try:
        parts = urlsplit(stripped)
        port = parts.port  # raises ValueError when out of range or not a number
        host = parts.hostname
    except ValueError as e:
        raise ValueError(f"{url!r} is not a usable http(s) base URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{url!r} is not an http(s) URL (e.g. http://10.0.0.5:8080)")
    if port == 0 or any(c.isspace() for c in stripped) or parts.query or parts.fragment:
        raise ValueError(
            f"{url!r} is not a usable http(s) base URL (port 1-65535, no spaces, query or fragment)"
        )
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{url!r}: {host!r} is not a host name") from None
    return stripped
