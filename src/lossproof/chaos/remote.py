"""What a running pipeline says about an agent: its ledger and the chaos markers in the store.

Chaos agents put one marker point in every report: metric ``chaos.seq``, label ``agent=<id>``,
``t = MARKER_EPOCH_MS + seq`` and ``v = seq``. Counting the markers the query API returns tells
how many times each seq's report is in the store, independently of what the ledger claims.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from lossproof.chaos.audit import AgentTruth, AuditReport, PipelineView, audit_agent

MARKER_METRIC = "chaos.seq"
MARKER_LABEL = "agent"
# 2026-01-01T00:00:00Z; marker timestamps are this plus the seq (one ms apart).
MARKER_EPOCH_MS = 1_767_225_600_000

_HTTP = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=3, read=60), retries=False)


class RemoteError(Exception):
    pass


def marker_time(seq: int) -> int:
    return MARKER_EPOCH_MS + seq


class PipelineClient:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def get(self, path: str, missing_ok: bool = False) -> Any:
        try:
            r = _HTTP.request("GET", self.url + path, headers=self.headers)
        except urllib3.exceptions.HTTPError as e:
            raise RemoteError(f"GET {path}: {e}") from None
        if r.status == 404 and missing_ok:
            return None
        if r.status != 200:
            raise RemoteError(f"GET {path}: HTTP {r.status}: {r.data[:300]!r}")
        return json.loads(r.data)

    def ledger(self, agent: str) -> dict[str, Any]:
        """The agent's ledger; empty when the pipeline never heard of the agent (404)."""
        body: dict[str, Any] | None = self.get(f"/v1/agents/{quote(agent, safe='')}/ledger", missing_ok=True)
        return body or {}

    def marker_seqs(self, agent: str, last_seq: int) -> list[int]:
        """Every marker value in the store for ``agent`` (one per stored sample)."""
        if last_seq < 1:
            return []
        q = urlencode(
            {
                "metric": MARKER_METRIC,
                "label": f"{MARKER_LABEL}:{agent}",
                "from": marker_time(1),
                "to": marker_time(last_seq),
            }
        )
        body = self.get(f"/v1/query?{q}")
        seqs: list[int] = []
        for s in body.get("series", []):
            if s.get("labels", {}).get(MARKER_LABEL) != agent:
                continue
            seqs.extend(int(v) for _, v in s.get("points", []))
        return seqs

    def view(self, agent: str, last_seq: int) -> PipelineView:
        led = self.ledger(agent)
        stored = [(int(a), int(b)) for a, b in led.get("stored", [])]
        lost = [(int(e["range"][0]), int(e["range"][1]), str(e["reason"])) for e in led.get("lost", [])]
        counts: dict[int, int] = {}
        for s in self.marker_seqs(agent, last_seq):
            counts[s] = counts.get(s, 0) + 1
        return PipelineView(stored, lost, counts)

    def unsettled(self, agent: str, created_last: int = 0) -> int:
        """Reports the ledger still calls missing or delayed, plus those up to ``created_last`` (the
        agent's last seq) it has not heard of at all: 0 once everything has settled. A report whose
        record the log lost after acknowledging it is unknown to the pipeline until the agent's next
        request names its last seq, so an agent that fell silent right after it needs one more word."""
        led = self.ledger(agent)
        n = sum(int(b) - int(a) + 1 for a, b in led.get("missing", []))
        n += sum(int(d["range"][1]) - int(d["range"][0]) + 1 for d in led.get("delayed", []))
        ends = [int(r[1]) for r in [*led.get("stored", []), *led.get("missing", [])]]
        ends += [int(d["range"][1]) for d in [*led.get("lost", []), *led.get("delayed", [])]]
        ends.append(int((led.get("spool") or {}).get("last_seq", 0)))
        return n + max(0, created_last - max(ends))


def run_audit(client: PipelineClient, truths: list[AgentTruth]) -> AuditReport:
    audits = []
    for t in truths:
        last = max((b for _, b in t.created), default=0)
        audits.append(audit_agent(t, client.view(t.agent, last)))
    return AuditReport(audits)
