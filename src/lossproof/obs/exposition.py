"""``/metrics`` for the world and for operators.

The unauthenticated scrape must not show one tenant's names, agents or senders to anyone who can reach
the port. So :func:`public` keeps every series that carries none of the :data:`PRIVATE_LABELS`, and
folds those that do into pipeline-wide totals: counters and histograms are summed over the private
labels (the sum is the pipeline's total), gauges only where the sum means something
(:data:`ADDITIVE_GAUGES`); the others (a per-agent timestamp) are left out. An operator credential
(``[operator] key_hashes``, ``lossproof keys create --operator``) gets every series as it is.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from lossproof.config import hash_key

PRIVATE_LABELS = frozenset({"tenant", "agent", "sender"})
# Gauges whose values add up across tenants: counts of reports and agents.
ADDITIVE_GAUGES = frozenset({"lossproof_ledger_reports", "lossproof_agents", "lossproof_agents_silent"})


def public_families(families: Iterable[Metric]) -> Iterator[Metric]:
    for family in families:
        if not any(PRIVATE_LABELS.intersection(s.labels) for s in family.samples):
            yield family
            continue
        if family.type == "gauge" and family.name not in ADDITIVE_GAUGES:
            continue
        if family.type not in ("counter", "gauge", "histogram", "summary"):
            continue
        totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for s in family.samples:
            if s.name.endswith("_created"):
                continue  # a creation time per tenant: no total of those means anything
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in PRIVATE_LABELS))
            totals[(s.name, labels)] = totals.get((s.name, labels), 0.0) + s.value
        folded = Metric(family.name, family.documentation, family.type, family.unit)
        for (name, labels), value in totals.items():
            folded.add_sample(name, dict(labels), value)
        yield folded


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(registry: Collector, extra_text: bytes = b"", *, operator: bool) -> bytes:
    """The text exposition of ``registry`` followed by ``extra_text`` (another process's scrape, e.g.
    the co-located worker's): everything for an operator, :func:`public_families` for anyone else."""
    if operator:
        return generate_latest(registry) + extra_text
    families: list[Metric] = list(registry.collect())
    if extra_text:
        families += text_string_to_metric_families(extra_text.decode("utf-8", "replace"))
    return generate_latest(_Families(public_families(families)))


def is_operator(authorization: str, operator_key_hashes: Iterable[str]) -> bool:
    """Whether ``Authorization`` presents an operator key (``Bearer <key>``, as Prometheus'
    ``authorization`` scrape setting sends it). No header: False (the public view). A header with
    any other key: :class:`OperatorKeyRequired`, so that a scrape set up with the wrong key fails
    loudly instead of quietly getting the folded view."""
    if not authorization.strip():
        return False
    scheme, _, cred = authorization.partition(" ")
    cred = cred.strip()
    try:
        presented = hash_key(cred) if scheme.lower() == "bearer" and cred else None
    except UnicodeError:
        presented = None
    if presented is not None and any(secrets.compare_digest(presented, h) for h in operator_key_hashes):
        return True
    raise OperatorKeyRequired(
        "/metrics takes no key (per-tenant series folded into totals) or an operator key "
        "(lossproof keys create --operator) as Authorization: Bearer <key>"
    )


class OperatorKeyRequired(Exception):
    pass
