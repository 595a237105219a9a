"""Fallback routing and backoff, with a fake clock."""

from __future__ import annotations

import random
from email.utils import formatdate

from lossproof.agent.backoff import Backoff, parse_retry_after
from lossproof.agent.route import FALLBACK, PRIMARY, Router


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_switches_after_continuous_failure_probes_and_returns() -> None:
    c = Clock()
    r = Router("http://p", ["http://f1", "http://f2"], fallback_after=30, probe_interval=10, clock=c)
    t = r.choose()
    assert (t.url, t.kind) == ("http://p", PRIMARY)
    r.result(t, ok=False, failed=True)
    c.t += 29
    assert r.choose().kind == PRIMARY
    assert r.seconds_to_next_event() == 1
    # a success in between restarts the count
    r.result(r.choose(), ok=True, failed=False)
    r.result(r.choose(), ok=False, failed=True)
    c.t += 29.9
    assert r.choose().kind == PRIMARY
    c.t += 0.2
    t = r.choose()
    assert (t.url, t.kind, r.mode) == ("http://f1", FALLBACK, FALLBACK)
    r.result(t, ok=False, failed=True)  # a failing fallback passes the turn to the next one
    assert r.choose().url == "http://f2"
    c.t += 10
    probe = r.choose()
    assert probe.kind == PRIMARY and probe.probe
    r.sending(probe)
    assert r.choose().url == "http://f2"  # one probe at a time
    assert r.seconds_to_next_event() is None
    r.result(probe, ok=False, failed=True)
    assert r.mode == FALLBACK and r.choose().kind == FALLBACK
    c.t += 10
    probe = r.choose()
    r.sending(probe)
    r.result(probe, ok=True, failed=False)
    assert r.mode == PRIMARY and r.choose() == type(probe)("http://p", PRIMARY)


def test_no_fallback_configured_stays_on_primary() -> None:
    c = Clock()
    r = Router("http://p", [], fallback_after=0, probe_interval=1, clock=c)
    r.result(r.choose(), ok=False, failed=True)
    c.t += 100
    assert r.choose().kind == PRIMARY and r.seconds_to_next_event() is None


def test_401_does_not_count_as_unavailable() -> None:
    c = Clock()
    r = Router("http://p", ["http://f"], fallback_after=1, probe_interval=1, clock=c)
    r.result(r.choose(), ok=False, failed=False)
    c.t += 100
    assert r.choose().kind == PRIMARY


def test_full_jitter_backoff_and_retry_after() -> None:
    b = Backoff(0.5, 30, random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    caps = [min(30, 0.5 * 2**i) for i in range(12)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(delays[8:]) > 5  # it does grow
    assert b.next_delay(retry_after=120) >= 120  # the server may ask for more than the cap
    assert b.next_delay(retry_after=10**9) == 3600  # but not for days
    assert b.next_delay(floor=30) >= 30
    b.reset()
    assert b.next_delay() <= 0.5


def test_parse_retry_after() -> None:
    import time

    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 60, usegmt=True))
    assert later is not None and 55 < later <= 60
