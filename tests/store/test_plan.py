"""plan_batch, the store's idempotency and ledger rules, property-tested once against an in-memory
store that applies plans the way the SQL backends do (hypothesis). The contract tests
(tests/contract/test_store_contract.py) check the same rules end to end on both backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof.points import Point, report_digest
from lossproof.store import ledger as lg
from lossproof.store.base import Incarnation, Ledger, LostRange, ReportWrite, SpoolState, WriteBatch
from lossproof.store.plan import AgentKey, Plan, Prior, Summary, digests_wanted, plan_batch

T = "t1"


@dataclass
class Model:
    """What the backends keep, as dicts: agent rows, ledger rows, report digests, kept conflicts."""

    agents: dict[AgentKey, tuple[object, ...]] = field(default_factory=dict)
    ledgers: dict[AgentKey, set[lg.LedgerRow]] = field(default_factory=dict)
    reports: dict[AgentKey, dict[int, bytes]] = field(default_factory=dict)
    conflicts: set[tuple[AgentKey, int, bytes]] = field(default_factory=set)

    def prior(self, work: dict[AgentKey, lg.AgentWork]) -> Prior:
        prior = Prior()
        new_ids = {k[:2] for k in work if k not in self.agents}
        for key, row in self.agents.items():
            # every incarnation of an agent id with a new one, delayed or not: plan_batch picks
            if key in work or key[:2] in new_ids:
                prior.agents[key] = Summary.of((row[7], *row[9:15], row[15], row[16], row[17]))
                prior.ledgers[key] = sorted(self.ledgers.get(key, ()), key=lambda r: (r[0], r[1]))
        for key, seqs in digests_wanted(work, prior).items():
            stored = self.reports.get(key, {})
            prior.digests[key] = {s: stored[s] for s in seqs if s in stored}
        return prior

    def write(self, batch: WriteBatch) -> Plan:
        work = lg.group_batch(batch)
        plan = plan_batch(work, self.prior(work), batch.now_ms)
        for key, r, d in plan.reports:
            assert r.seq not in self.reports.get(key, {}), "a stored seq planned again"
            self.reports.setdefault(key, {})[r.seq] = d
        for key, r, d in plan.conflicts:
            self.conflicts.add((key, r.seq, d))
        for u in plan.agents:
            rows = self.ledgers.setdefault(u.key, set())
            for kind, first in u.gone:
                hit = [r for r in rows if r[:2] == (kind, first)]
                assert len(hit) == 1, f"deleting a ledger row not there: {kind} {first}"
                rows.discard(hit[0])
            for r in u.added:
                assert all(x[:2] != r[:2] for x in rows), f"ledger row twice: {r}"
                rows.add(r)
            row = u.row
            if u.recount_conflicts:
                row = u.row_with(sum(1 for k, _, _ in self.conflicts if k == u.key))
            self.agents[u.key] = row
        return plan

    def ledger(self, key: AgentKey) -> Ledger:
        return lg.from_rows(sorted(self.ledgers.get(key, ()), key=lambda r: (r[0], r[1])))


def seqs_of(ranges: Iterable[tuple[int, int]]) -> set[int]:
    return {s for a, b in ranges for s in range(a, b + 1)}


def seqs_tagged(ranges: Iterable[tuple[int, int, object]]) -> set[int]:
    return {s for a, b, _ in ranges for s in range(a, b + 1)}


def report(agent: str, inc: str, seq: int, content: int) -> ReportWrite:
    return ReportWrite(T, agent, seq, [Point("m", {"c": str(content)}, seq, 1.0)], inc, time_ms=seq * 10)


AGENTS = st.sampled_from(["a", "b"])
SEQS = st.integers(min_value=1, max_value=24)
reports_st = st.lists(
    st.builds(report, AGENTS, st.just(""), SEQS, st.integers(min_value=0, max_value=1)), max_size=30
)
lost_st = st.lists(
    st.tuples(AGENTS, SEQS, SEQS, st.sampled_from(["spool_full", "expired"])).map(
        lambda x: LostRange(T, x[0], min(x[1], x[2]), max(x[1], x[2]), x[3])
    ),
    max_size=3,
)


@st.composite
def spool_st(draw: st.DrawFn) -> list[SpoolState]:
    out = []
    for agent in draw(st.sets(AGENTS)):
        last = draw(st.integers(min_value=0, max_value=30))
        first_pending = draw(st.integers(min_value=0, max_value=last)) if last else 0
        out.append(SpoolState(T, agent, 3, 100, 5_000, first_pending, last, 6_000))
    return out


@st.composite
def batches(draw: st.DrawFn, incarnations: bool = False) -> WriteBatch:
    reports = draw(reports_st)
    if incarnations:
        for r in reports:
            r.incarnation = draw(st.sampled_from(["", "x"]))
    firsts = [Incarnation(T, a, "", draw(st.integers(min_value=1, max_value=3))) for a in ("a", "b")]
    return WriteBatch(
        reports=reports,
        lost=draw(lost_st),
        spool=draw(spool_st()),
        incarnations=firsts,
        now_ms=draw(st.integers(min_value=10_000, max_value=20_000)),
    )


def assert_disjoint(ledger: Ledger) -> None:
    parts = [
        seqs_of(ledger.stored),
        seqs_tagged(ledger.missing),
        seqs_tagged(ledger.lost),
        seqs_tagged(ledger.delayed),
    ]
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b, f"a seq in two states: {ledger}"


@settings(max_examples=300, deadline=None)
@given(batches(incarnations=True), batches(incarnations=True))
def test_applying_a_batch_again_plans_nothing_new(before: WriteBatch, batch: WriteBatch) -> None:
    store = Model()
    store.write(before)
    first = store.write(batch)
    state = (dict(store.agents), {k: set(v) for k, v in store.ledgers.items()}, set(store.conflicts))
    again = store.write(dataclasses.replace(batch, now_ms=batch.now_ms + 1_000))  # later: nothing moves
    assert again.reports == [] and again.stored == 0
    # what was stored is now a duplicate; a conflict is the same conflict again
    assert again.duplicates == first.duplicates + first.stored
    assert again.conflicted == first.conflicted
    assert all(u.gone == [] and u.added == [] for u in again.agents), "the ledger moved on a replay"
    assert (dict(store.agents), {k: set(v) for k, v in store.ledgers.items()}, set(store.conflicts)) == state


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_two_consecutive_batches_end_like_one(batch: WriteBatch, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(batch.reports)))
    j = data.draw(st.integers(min_value=0, max_value=len(batch.lost)))  # in order: the first reason stays
    spool_first = data.draw(st.booleans())
    b1 = WriteBatch(
        reports=batch.reports[:k],
        lost=batch.lost[:j],
        spool=batch.spool if spool_first else [],
        incarnations=batch.incarnations,
        now_ms=batch.now_ms,
    )
    b2 = WriteBatch(
        reports=batch.reports[k:],
        lost=batch.lost[j:],
        spool=[] if spool_first else batch.spool,
        incarnations=batch.incarnations,
        now_ms=batch.now_ms,
    )
    one, two = Model(), Model()
    p = one.write(batch)
    p1, p2 = two.write(b1), two.write(b2)
    assert one.reports == two.reports
    assert one.conflicts == two.conflicts
    for key in one.agents:
        assert one.ledger(key) == two.ledger(key)
        assert one.agents[key] == two.agents[key]
    assert (p.stored, p.duplicates, p.conflicted) == (
        p1.stored + p2.stored,
        p1.duplicates + p2.duplicates,
        p1.conflicted + p2.conflicted,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=3))
def test_first_write_wins_and_the_ledger_accounts_for_every_seq(batches_: list[WriteBatch]) -> None:
    store = Model()
    first: dict[tuple[str, int], bytes] = {}
    contents: dict[tuple[str, int], set[bytes]] = {}
    lost: dict[str, set[int]] = {}
    spool: dict[str, SpoolState] = {}
    firsts: dict[str, int] = {}
    for b in batches_:
        for inc in b.incarnations:
            firsts.setdefault(inc.agent, inc.first_seq)
        store.write(b)
        for r in b.reports:
            d = report_digest(r.points)
            first.setdefault((r.agent, r.seq), d)
            contents.setdefault((r.agent, r.seq), set()).add(d)
        for lr in b.lost:
            lost.setdefault(lr.agent, set()).update(range(lr.first, lr.last + 1))
        for sp in b.spool:
            spool[sp.agent] = sp
    for (agent, seq), d in first.items():
        key = (T, agent, "")
        assert store.reports[key][seq] == d, "first write wins"
        for other in contents[(agent, seq)] - {d}:
            assert (key, seq, other) in store.conflicts, "a reused seq's other content is kept"
    for key in store.agents:
        agent = key[1]
        ledger = store.ledger(key)
        assert_disjoint(ledger)
        stored = {s for (a, s) in first if a == agent}
        assert seqs_of(ledger.stored) == stored
        assert seqs_tagged(ledger.lost) == lost.get(agent, set()) - stored, "lost unless stored"
        sp = spool.get(agent)
        pending: set[int] = set()
        if sp and sp.first_pending_seq > 0:
            pending = set(range(sp.first_pending_seq, sp.last_seq + 1))
        done = stored | seqs_tagged(ledger.lost)
        assert seqs_tagged(ledger.delayed) == pending - done, "delayed = still in the agent's spool"
        top = max([*done, sp.last_seq if sp else 0, 0])
        base = firsts.get(agent, 1)
        assert seqs_tagged(ledger.missing) == set(range(base, top + 1)) - done - pending
        row = store.agents[key]
        assert row[17] == sum(1 for k, _, _ in store.conflicts if k == key)


def test_a_new_incarnation_makes_what_the_others_had_delayed_lost() -> None:
    store = Model()
    store.write(WriteBatch(reports=[report("a", "y", 1, 0)], now_ms=9_000))  # nothing delayed
    plan = store.write(
        WriteBatch(
            reports=[report("a", "", 1, 0)],
            spool=[SpoolState(T, "a", 2, 10, 5_000, 2, 3, 6_000)],
            now_ms=10_000,
        )
    )
    # only incarnations with seqs still delayed are reset: "y" has none, it is left as it is
    assert [u.key for u in plan.agents] == [(T, "a", "")]
    assert store.ledger((T, "a", "")).delayed == [(2, 3, 5_000)]
    plan = store.write(WriteBatch(reports=[report("a", "x", 1, 0)], now_ms=11_000))
    assert {u.key for u in plan.agents} == {(T, "a", ""), (T, "a", "x")}
    old = store.ledger((T, "a", ""))
    assert old.delayed == [] and old.lost == [(2, 3, lg.SPOOL_RESET)] and old.stored == [(1, 1)]
    assert store.agents[(T, "a", "")][7] == 10_000, "last stored: unchanged by the reset"
    # a batch that writes to the old incarnation too keeps it alive: nothing of it is reset
    store2 = Model()
    store2.write(
        WriteBatch(
            reports=[report("a", "", 1, 0)],
            spool=[SpoolState(T, "a", 2, 10, 5_000, 2, 3, 6_000)],
            now_ms=10_000,
        )
    )
    store2.write(WriteBatch(reports=[report("a", "x", 1, 0), report("a", "", 2, 0)], now_ms=11_000))
    assert store2.ledger((T, "a", "")).delayed == [(3, 3, 5_000)]
    assert store2.ledger((T, "a", "")).lost == []


def test_a_stored_seq_without_a_digest_counts_as_a_duplicate() -> None:
    store = Model()
    store.write(WriteBatch(reports=[report("a", "", 1, 0)], now_ms=10_000))
    del store.reports[(T, "a", "")][1]  # stored before digests were kept
    plan = store.write(WriteBatch(reports=[report("a", "", 1, 1)], now_ms=11_000))
    assert (plan.stored, plan.duplicates, plan.conflicted) == (0, 1, 0)
