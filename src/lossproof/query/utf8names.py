"""Metric names with dots (``system.load.1``) in a selector, as the series list shows them.

PromQL names cannot hold a dot; Prometheus 3 writes such a name quoted inside the braces:
``{"system.load.1"}``, ``{"system.load.1", host="a"}`` (the parser reads that as
``__name__="system.load.1"``). This module writes that form, and turns a selector typed the way a
name is listed (``system.load.1`` or ``system.load.1{host="a"}``: never valid PromQL, since a dot
cannot appear outside a string or a number) into it.
"""

from __future__ import annotations

import re

# A name as stored by lossproof's own agents and senders: letters, digits, "_", ":", ".", "-", with
# at least one "." or "-" (a name without one is plain PromQL already and is left alone).
_BARE = re.compile(r"\s*([A-Za-z_:][A-Za-z0-9_:.\-]*[.\-][A-Za-z0-9_:.\-]*)\s*(?:\{(.*)\})?\s*", re.S)
_PLAIN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_PLAIN_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(text: str) -> str:
    """``text`` as a PromQL double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def equals(label: str, value: str) -> str:
    """The matcher ``label="value"``, the label name quoted when it is not a PromQL name
    (``"service.name"="shop"``, as Prometheus 3 writes it)."""
    name = label if _PLAIN_LABEL.fullmatch(label) else quote(label)
    return f"{name}={quote(value)}"


def selector(metric: str, matchers: list[str]) -> str:
    """The selector of ``metric`` with label ``matchers`` (``host="a"``, ...): the plain form for a
    PromQL name, the quoted form of Prometheus 3 for any other."""
    if _PLAIN.fullmatch(metric):
        return f"{metric}{{{','.join(matchers)}}}" if matchers else metric
    return "{" + ",".join([quote(metric), *matchers]) + "}"


def quote_bare_name(text: str) -> str:
    """``system.load.1{host="a"}`` -> ``{"system.load.1", host="a"}``; anything else unchanged."""
    m = _BARE.fullmatch(text)
    if m is None:
        return text
    name, inner = m.group(1), (m.group(2) or "").strip()
    return "{" + quote(name) + (", " + inner if inner else "") + "}"
