"""What third-party clients may have dropped: their requests that got no 2xx, read live from the
ingest counters of this process (third-party requests carry no seqs, so the ledger cannot tell)."""

from __future__ import annotations

from typing import Any

from prometheus_client.registry import Collector

UNCONFIRMED = ("lossproof_ingest_unconfirmed_requests", "lossproof_ingest_unconfirmed_points")
UNCONFIRMED_KINDS = ("refused", "unavailable", "unanswered", "answer_lost")


def unconfirmed(registry: Collector, tenant: str, since_ms: int) -> dict[str, Any]:
    """The third-party requests of ``tenant`` whose client got no 2xx, per protocol and sender, read
    live from this process's ingest counters (``lossproof_ingest_unconfirmed_*``). They carry no seqs,
    so the ledger cannot account for them: this is what a client may have dropped. Kinds: refused
    (4xx, the client drops the batch), unavailable (5xx, it retries for a while, then drops),
    unanswered (the connection ended before an answer reached it, and the data is not durable) and
    answer_lost (durable, stored, but the client never heard the 2xx: its retry is harmless)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for family in registry.collect():
        if family.name not in UNCONFIRMED:
            continue
        unit = "requests" if family.name == UNCONFIRMED[0] else "points"
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.endswith("_total") or labels.get("tenant") != tenant or not sample.value:
                continue
            status, kind = labels["status"], labels["outcome"]
            if kind == "unanswered" and status.startswith("2"):
                kind = "answer_lost"
            row = rows.setdefault(
                (labels["protocol"], labels["sender"]),
                {
                    "protocol": labels["protocol"],
                    "sender": labels["sender"],
                    **{k: {"requests": 0, "points": 0, "by_status": {}} for k in UNCONFIRMED_KINDS},
                },
            )
            part = row[kind]
            part[unit] += int(sample.value)
            if unit == "requests":
                part["by_status"][status] = part["by_status"].get(status, 0) + int(sample.value)
    senders = sorted(rows.values(), key=lambda r: (r["protocol"], r["sender"]))
    totals = {
        k: {u: sum(r[k][u] for r in senders) for u in ("requests", "points")} for k in UNCONFIRMED_KINDS
    }
    return {"since_ms": since_ms, "senders": senders, "totals": totals}
