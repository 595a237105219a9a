"""Which API key an HTTP request presents: one rule for ingest, the query API, the fallback receiver
and the agent's relay (``Authorization: Bearer``, Influx's ``Token`` and Basic, and where a protocol
allows it the query string). Light on purpose: the fallback receiver loads it without any protocol."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web


def presented_key(request: web.Request, query: bool = False) -> str | None:
    """The key a request presents, or None. A key that is not valid UTF-8 (aiohttp keeps such
    header bytes as lone surrogates) cannot be any configured key: None, so a 401, never a 500."""
    key = _presented_key(request, query)
    if key is None:
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return key


def _presented_key(request: web.Request, query: bool) -> str | None:
    scheme, _, cred = request.headers.get("Authorization", "").partition(" ")
    scheme, cred = scheme.lower(), cred.strip()
    if cred:
        if scheme == "bearer":
            return cred
        if scheme == "token":  # InfluxDB: "Token <token>" or, 1.x compatible, "Token user:password"
            return cred.rpartition(":")[2] or None
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(cred, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return password or user or None
    if query:
        return request.query.get("p") or request.query.get("token") or None
    return None
