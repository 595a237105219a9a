"""Ledger gauges on ``/metrics`` (``lossproof_ledger_reports{tenant,state}``, agents silent, dead
letters, damaged store rows set aside, log gaps), read from the store in the background so a scrape
never waits for it; ``deploy/alerts.yml`` alerts on them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lossproof.store.base import StoreReader

SILENT_AFTER_S = 300  # an agent not heard from for this long counts as silent


@dataclass
class LedgerSnapshot:
    at: float = 0.0
    per_tenant: dict[str, dict[str, int]] = field(default_factory=dict)
    silent: dict[str, int] = field(default_factory=dict)
    agents: dict[str, int] = field(default_factory=dict)
    last_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)  # per tenant: its cardinality
    dead_letters: int = 0
    set_aside_rows: int = 0  # damaged store rows moved into damaged_chunks
    set_aside_points: int = 0
    log_gaps: int = 0
    log_gap_records: int = 0


class LedgerCollector(Collector):
    """Gauges from the store, refreshed in the background (a scrape never waits for the store)."""

    def __init__(self) -> None:
        self.snap = LedgerSnapshot()

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        if not s.at:
            return
        reports = GaugeMetricFamily(
            "lossproof_ledger_reports",
            "Reports per tenant by ledger state: stored, delayed (in an agent's spool), missing "
            "(acknowledged, not stored: unaccounted loss until replayed), lost (given up, with a reason), "
            "conflict (a reused seq's other report, kept whole for an operator to apply).",
            labels=["tenant", "state"],
        )
        for tenant, counts in sorted(s.per_tenant.items()):
            for state in ("stored", "delayed", "missing", "lost", "conflict"):
                reports.add_metric([tenant, state], counts.get(state, 0))
        yield reports
        agents = GaugeMetricFamily("lossproof_agents", "Agents known to the ledger.", labels=["tenant"])
        silent = GaugeMetricFamily(
            "lossproof_agents_silent",
            f"Agents not heard from for more than {SILENT_AFTER_S} s.",
            labels=["tenant"],
        )
        for tenant in sorted(s.agents):
            agents.add_metric([tenant], s.agents[tenant])
            silent.add_metric([tenant], s.silent.get(tenant, 0))
        yield agents
        yield silent
        seen = GaugeMetricFamily(
            "lossproof_agent_last_seen_timestamp_seconds",
            "When the agent last reported (its last request the worker stored).",
            labels=["tenant", "agent"],
        )
        for (tenant, agent), ts in sorted(s.last_seen.items()):
            seen.add_metric([tenant, agent], ts)
        yield seen
        series = GaugeMetricFamily(
            "lossproof_store_series", "Series stored per tenant (cardinality).", labels=["tenant"]
        )
        for tenant, n in sorted(s.series.items()):
            series.add_metric([tenant], n)
        yield series
        yield GaugeMetricFamily(
            "lossproof_store_dead_letters", "Log records kept in the dead-letter table.", value=s.dead_letters
        )
        yield GaugeMetricFamily(
            "lossproof_store_damaged_rows",
            "Damaged chunks and parts the store set aside into its damaged_chunks table (their points are"
            " no longer stored until replayed; docs/store.md, 'A damaged chunk').",
            value=s.set_aside_rows,
        )
        yield GaugeMetricFamily(
            "lossproof_store_damaged_points",
            "Points in the damaged rows set aside (lossproof_store_damaged_rows).",
            value=s.set_aside_points,
        )
        yield GaugeMetricFamily("lossproof_store_log_gaps", "Missing log ranges recorded.", value=s.log_gaps)
        yield GaugeMetricFamily(
            "lossproof_store_log_gap_records", "Log records inside missing ranges.", value=s.log_gap_records
        )
        yield GaugeMetricFamily(
            "lossproof_ledger_refreshed_timestamp_seconds", "When these ledger gauges were read.", value=s.at
        )


def ledger_snapshot(store: StoreReader, tenants: list[str]) -> LedgerSnapshot:
    snap = LedgerSnapshot(at=time.time())
    now_ms = time.time() * 1000
    for tenant in tenants:
        counts = {"stored": 0, "delayed": 0, "missing": 0, "lost": 0, "conflict": 0}
        silent = 0
        agents = store.agents(tenant)
        for a in agents:
            counts["stored"] += a.stored_reports
            counts["delayed"] += a.delayed_reports
            counts["missing"] += a.missing_reports
            counts["lost"] += a.lost_reports
            seen = a.heard_ms
            if not a.one_shot and now_ms - seen > SILENT_AFTER_S * 1000:
                silent += 1
            counts["conflict"] += a.conflict_reports
            # one row per incarnation: the agent id was last seen by its latest one
            snap.last_seen[(tenant, a.agent)] = max(seen / 1000, snap.last_seen.get((tenant, a.agent), 0.0))
        snap.per_tenant[tenant] = counts
        snap.agents[tenant] = len({a.agent for a in agents})
        snap.silent[tenant] = silent
    snap.series = store.series_counts()
    snap.dead_letters = store.dead_letter_count()
    snap.set_aside_rows, snap.set_aside_points = store.set_aside_count()
    gaps = store.log_gaps()
    snap.log_gaps = len(gaps)
    snap.log_gap_records = sum(g.last - g.first + 1 for g in gaps)
    return snap
