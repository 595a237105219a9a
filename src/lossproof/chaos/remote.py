"""What a running pipeline says about an agent: its ledgers and the chaos markers in the store.

Chaos agents put one marker point in every report: metric ``chaos.marker``, labels ``agent=<id>``
and ``run=<driver process>``, ``t = MARKER_EPOCH_MS + n`` (``n``: the process's report count; see
:mod:`lossproof.chaos.driver`). Counting the markers the query API returns tells how many times each
report is in the store, independently of what the ledger claims and of the seq the report had.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from lossproof.chaos.audit import (
    AgentTruth,
    AuditReport,
    LedgerView,
    MarkerKey,
    PipelineView,
    audit_agent,
    marker_counts,
)
from lossproof.store import ledger as lg

MARKER_METRIC = "chaos.marker"
MARKER_LABEL = "agent"
RUN_LABEL = "run"
# 2026-01-01T00:00:00Z; marker timestamps are this plus the report's number in its run (1 ms apart).
MARKER_EPOCH_MS = 1_767_225_600_000

_HTTP = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=3, read=60), retries=False)


class RemoteError(Exception):
    pass


def marker_time(n: int) -> int:
    return MARKER_EPOCH_MS + n


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

    def ledger_of(self, agent: str, incarnation: str) -> dict[str, Any]:
        """One incarnation's ledger; empty when the pipeline never heard of it."""
        q = urlencode({"incarnation": incarnation})
        path = f"/v1/agents/{quote(agent, safe='')}/ledger?{q}"
        body: dict[str, Any] | None = self.get(path, missing_ok=True)
        return body or {}

    def markers(self, agent: str, last_n: int) -> list[MarkerKey]:
        """Every marker point in the store for ``agent`` as ``(run, n)`` (one per stored sample)."""
        if last_n < 1:
            return []
        q = urlencode(
            {
                "metric": MARKER_METRIC,
                "label": f"{MARKER_LABEL}:{agent}",
                "from": marker_time(1),
                "to": marker_time(last_n),
            }
        )
        body = self.get(f"/v1/query?{q}")
        out: list[MarkerKey] = []
        for s in body.get("series", []):
            labels = s.get("labels", {})
            if labels.get(MARKER_LABEL) != agent:
                continue
            run = str(labels.get(RUN_LABEL, ""))
            out.extend((run, int(t) - MARKER_EPOCH_MS) for t, _ in s.get("points", []))
        return out

    def view(self, truth: AgentTruth, counts: Mapping[MarkerKey, int]) -> PipelineView:
        ledgers: dict[str, LedgerView] = {}
        for inc in {i for _, i in truth.incarnations} or {""}:
            ledgers[inc] = ledger_view(self.ledger_of(truth.agent, inc))
        return PipelineView(ledgers, counts)

    def unsettled(self, agent: str, created_last: int = 0, incarnation: str | None = None) -> int:
        """Reports the ledger still calls missing or delayed, plus those up to ``created_last`` (the
        agent's last seq) it has not heard of at all: 0 once everything has settled. A report whose
        record the log lost after acknowledging it is unknown to the pipeline until the agent's next
        request names its last seq, so an agent that fell silent right after it needs one more word.
        ``incarnation``: that incarnation's ledger (two agents may share an id); None: the latest."""
        led = self.ledger(agent) if incarnation is None else self.ledger_of(agent, incarnation)
        n = sum(int(b) - int(a) + 1 for a, b in led.get("missing", []))
        n += sum(int(d["range"][1]) - int(d["range"][0]) + 1 for d in led.get("delayed", []))
        ends = [int(r[1]) for r in [*led.get("stored", []), *led.get("missing", [])]]
        ends += [int(d["range"][1]) for d in [*led.get("lost", []), *led.get("delayed", [])]]
        ends.append(int((led.get("spool") or {}).get("last_seq", 0)))
        return n + max(0, created_last - max(ends))


def ledger_view(led: Mapping[str, Any]) -> LedgerView:
    stored = lg.normalize([(int(a), int(b)) for a, b in led.get("stored", [])])
    lost = [(int(e["range"][0]), int(e["range"][1]), str(e["reason"])) for e in led.get("lost", [])]
    conflicts = [int(c["seq"]) for c in led.get("conflicts", [])]
    ends = [b for _, b in stored] + [int(r[1]) for r in led.get("missing", [])]
    ends += [b for _, b, _ in lost] + [int(d["range"][1]) for d in led.get("delayed", [])]
    ends.append(int((led.get("spool") or {}).get("last_seq", 0)))
    return LedgerView(stored, lost, conflicts, heard=max(ends))


def run_audit(client: PipelineClient, truths: list[AgentTruth]) -> AuditReport:
    # One query per agent id: spools sharing an id share its marker series (told apart by run).
    counts: dict[str, dict[MarkerKey, int]] = {}
    for agent in dict.fromkeys(t.agent for t in truths):
        last_n = max((m.n for t in truths if t.agent == agent for m in t.markers), default=0)
        counts[agent] = marker_counts(client.markers(agent, last_n))
    return AuditReport([audit_agent(t, client.view(t, counts[t.agent])) for t in truths])
