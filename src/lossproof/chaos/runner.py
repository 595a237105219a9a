"""Run scenarios: topology up → load + seeded faults for ``duration`` → heal, drain → audit → verdict."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lossproof.chaos.audit import AuditReport
from lossproof.chaos.scenarios import Ctx, Scenario
from lossproof.chaos.topology import Topology, TopologySpec


@dataclass
class Result:
    scenario: Scenario
    verdict: str  # PASS | FAIL | SKIP
    why: str = ""
    faults: int = 0
    seconds: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    lost_reasons: dict[str, int] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    rss_growth: dict[str, int] = field(default_factory=dict)  # per role, for processes living >= 60 s
    audit: AuditReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict != "FAIL"


def run_scenario(
    scn: Scenario,
    *,
    duration: float,
    seed: int,
    agents: int,
    say: Callable[[str], None],
    keep: bool = False,
    spec: TopologySpec | None = None,
) -> Result:
    started = time.monotonic()

    def tagged(msg: str) -> None:
        say(f"[{scn.number}:{scn.name} {time.monotonic() - started:6.1f}s] {msg}")

    base = spec or TopologySpec()
    reason = scn.skip_reason(base.log)
    if reason:
        tagged(f"SKIP: {reason}")
        return Result(scn, "SKIP", reason)
    topo_spec = replace(base, agents=max(agents, scn.min_agents), **scn.spec)
    root = Path(tempfile.mkdtemp(prefix=f"lossproof-chaos-{scn.number}-"))
    topo = Topology(root, topo_spec, progress=tagged)
    result = Result(scn, "FAIL")
    try:
        topo.start()
        ctx = Ctx(topo, random.Random(seed * 1000 + scn.number), time.monotonic() + duration, tagged)
        tagged(f"load + faults for {duration:g}s (seed {seed})")
        last = time.monotonic()
        while ctx.left() > 0:
            scn.step(ctx)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                tagged(f"{topo.counters()['created']} reports created so far")
        tagged("faults off; healing and draining")
        drained = topo.drain(timeout=max(60.0, duration * 2), keep_agents=not scn.stop_agents_before_drain)
        report = topo.audit()
        for line in report.table():
            tagged(line)
        for a in report.agents:
            if a.unaccounted or a.ledger_disagrees:
                tagged(f"{a.agent}: unaccounted {a.unaccounted}, ledger claims stored {a.ledger_disagrees}")
        totals = report.totals()
        lost: dict[str, int] = {}
        for a in report.agents:
            for k, v in a.lost_accounted.items():
                lost[k] = lost.get(k, 0) + v
        result = Result(
            scn,
            "FAIL",
            faults=topo.faults_injected,
            totals=totals,
            lost_reasons=lost,
            peak_rss=dict(topo.peak_rss),
            audit=report,
            notes=ctx.notes,
        )
        if scn.expect_silent_loss:
            if totals["unaccounted"] > 0:
                result.verdict, result.why = "PASS", "the audit detected the silent loss, as it must"
            else:
                result.why = "the audit did NOT detect the deliberate silent loss"
        elif not report.ok:
            result.why = "duplicates or unaccounted loss"
        elif totals["delayed"] or not drained:
            result.why = "did not drain: reports still delayed"
        elif topo.faults_injected == 0:
            result.why = "no fault was injected"
        elif grown := memory_grown(topo.rss_growth()):
            result.why = f"memory keeps growing: {grown}"
        else:
            result.verdict = "PASS"
    except Exception as e:  # a harness failure is a failed scenario, with the reason
        result.why = f"harness error: {type(e).__name__}: {e}"
        tagged(result.why)
    finally:
        topo.close()
        result.seconds = time.monotonic() - started
        result.faults = topo.faults_injected
        result.peak_rss = dict(topo.peak_rss)
        result.rss_growth = topo.rss_growth()
        if result.ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            tagged(f"kept {root} for inspection")
    tagged(f"{result.verdict} {result.why}".rstrip())
    return result


# A lossproof process whose RSS grows by more than this from the first to the last quarter of its
# life fails the scenario. Brokers are left out: a JVM's heap grows towards -Xmx by design.
MAX_RSS_GROWTH = 64 * 2**20


def memory_grown(growth: dict[str, int]) -> str:
    grown = {role: g for role, g in growth.items() if role != "broker" and g > MAX_RSS_GROWTH}
    return ", ".join(f"{role} +{g / 2**20:.0f} MB" for role, g in sorted(grown.items()))


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def table(results: list[Result]) -> list[str]:
    roles = ["ingest", "worker", "fallback", "agent"]
    if any("broker" in r.peak_rss for r in results):
        roles.append("broker")
    rss_head = f"max RSS MB ({'/'.join(roles)})"
    head = (
        f"{'scenario':<22} {'result':<6} {'faults':>6} {'created':>8} {'stored':>8} {'dup':>4} "
        f"{'lost-acct':>9} {'UNACCT':>6}  {rss_head:<40} {'secs':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        t = r.totals
        rss = "/".join(_mb(r.peak_rss.get(k, 0)) for k in roles)
        name = f"{r.scenario.number}. {r.scenario.name}"
        if r.verdict == "SKIP":
            lines.append(f"{name:<22} {'SKIP':<6}  {r.why}")
            continue
        lines.append(
            f"{name:<22} {r.verdict:<6} {r.faults:>6} {t.get('created', 0):>8} {t.get('stored_once', 0):>8} "
            f"{t.get('duplicated', 0):>4} {t.get('lost_accounted', 0):>9} {t.get('unaccounted', 0):>6}  "
            f"{rss:<40} {r.seconds:>5.0f}"
        )
        if r.lost_reasons:
            lines.append(f"{'':<22}        lost with reasons: {r.lost_reasons}")
        if r.rss_growth:
            grew = ", ".join(f"{k} {v / 2**20:+.1f}" for k, v in sorted(r.rss_growth.items()))
            lines.append(f"{'':<22}        RSS growth MB (first to last quarter of a life): {grew}")
        for n in r.notes[-2:]:
            lines.append(f"{'':<22}        {n}")
        if r.verdict == "FAIL" or r.scenario.expect_silent_loss:
            lines.append(f"{'':<22}        {r.why}")
    return lines
