"""HTTP plumbing shared by every route: JSON errors, body limits, request accounting.

The helpers live in :mod:`lossproof.httputil` (also used by the fallback receiver, which shares
nothing else with ingest); re-exported here for the ingest and query routes.
"""

from __future__ import annotations

from lossproof.httputil import ApiError, Handler, accounted, errors_as_json, json_response, read_body

__all__ = ["ApiError", "Handler", "accounted", "errors_as_json", "json_response", "read_body"]
