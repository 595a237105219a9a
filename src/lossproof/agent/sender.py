"""Sends pending reports (and requested replays) in batches; only ``acked`` removes one from pending.

One dispatcher thread builds batches (oldest pending first, then replays) and hands them to at most
``max_in_flight`` sender threads. Outcomes:

* 200 that is a lossproof acknowledgement (:mod:`lossproof.protocol.ack`): the ``acked`` seqs stop
  being pending (they stay on disk for the replay window); the ``dropped`` ranges the request carried
  are known to the server; ``replay`` ranges are scheduled.
* 200 that is not (no protocol header, no well-formed ``acked``: a proxy, a maintenance page, a wrong
  URL), and a 400/413 without the protocol header: a protocol error, counted as
  ``status="protocol_error"``; nothing is deleted or given up and the destination counts as failing,
  like a 5xx.
* 413 / 400 with several reports: the batch is split (the next batches are half as large) until the
  culprit is alone; a single report the server still refuses is dropped with the reason
  ``rejected: <status> <message>`` and reported, never retried byte-for-byte forever.
* 409 ``seq_conflict``: the server has one of these seqs stored with other content (another agent
  uses this agent id, or the spool was copied). The agent starts a new incarnation (its own seq
  space, see docs/protocol.md) and sends the same reports again under it: nothing is lost.
* 401/403: logged as errors, retried slowly; the data stays in the spool.
* 429, 5xx, no answer: retried with exponential backoff and full jitter, at least ``Retry-After``;
  they count as the destination failing (see :mod:`.route` for the fallback).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3

from lossproof.agent import ranges as rg
from lossproof.agent.backoff import Backoff, parse_retry_after
from lossproof.agent.config import AgentConfig
from lossproof.agent.metrics import AgentMetrics
from lossproof.agent.ranges import Tagged
from lossproof.agent.request import CONTENT_TYPE, encode_request
from lossproof.agent.route import FALLBACK, PRIMARY, Router, Target
from lossproof.agent.spool import Spool, SpoolError
from lossproof.obs.logging import get
from lossproof.protocol.ack import (
    PROTOCOL_HEADER,
    NotAcknowledged,
    acknowledged,
    from_lossproof,
    is_seq_conflict,
)
from lossproof.protocol.compression import compress

log = get(__name__)

PROTOCOL_ERROR = "protocol_error"  # a 200 that is not a lossproof acknowledgement

# The server asks for a hole on every response until the resent report is stored; resending it
# again within this long would only duplicate work already in the pipeline.
REPLAY_MIN_INTERVAL = 10.0
# While a server refuses the `dropped`/`spool` fields (an older server), send without them this long.
EXTRAS_OFF_SECONDS = 600.0
READ_CHUNK = 64


@dataclass(slots=True)
class Batch:
    target: Target
    pending: list[int] = field(default_factory=list)
    replay: list[int] = field(default_factory=list)
    reports: list[bytes] = field(default_factory=list)
    dropped: list[Tagged] = field(default_factory=list)
    with_spool: bool = True
    incarnation: str = ""  # the one the request was sent under

    @property
    def seqs(self) -> list[int]:
        return self.pending + self.replay


@dataclass(slots=True)
class Outcome:
    status: int  # 0: no HTTP answer
    body: bytes = b""
    retry_after: float | None = None
    error: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


def _error_message(body: bytes) -> str:
    try:
        msg = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        msg = body[:200].decode(errors="replace")
    return str(msg).replace("\n", " ")[:300]


class Sender:
    def __init__(
        self,
        cfg: AgentConfig,
        spool: Spool,
        metrics: AgentMetrics,
        clock: Any = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.metrics = metrics
        self.clock = clock
        self._key = cfg.key()
        self.router = Router(
            cfg.primary_url, cfg.fallback_urls, cfg.fallback_after_seconds, cfg.probe_interval_seconds, clock
        )
        self._backoff = {
            k: Backoff(cfg.backoff_initial_seconds, cfg.backoff_max_seconds) for k in (PRIMARY, FALLBACK)
        }
        self._not_before = {PRIMARY: 0.0, FALLBACK: 0.0}
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=cfg.max_in_flight,
            timeout=urllib3.Timeout(
                connect=min(5.0, cfg.request_timeout_seconds), read=cfg.request_timeout_seconds
            ),
            retries=False,
        )
        self._cv = threading.Condition()
        self._in_flight: set[int] = set()
        self._requests = 0
        self._drops_in_flight = False
        self._work = 0  # bumped by wake(): a wake-up between building and waiting is not lost
        self._replay: dict[int, None] = {}  # ordered set of seqs to send again
        self._replayed_at: dict[int, float] = {}
        self._batch_reports = cfg.max_batch_reports
        self._extras_until = 0.0
        self._drops_blocked_until = 0.0
        self._stop = False
        self._last_log: dict[tuple[str, int], float] = {}
        self.last_error: str | None = None
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._dispatch, name="agent-sender", daemon=True)]
        self._threads += [
            threading.Thread(target=self._worker, name=f"agent-send-{i}", daemon=True)
            for i in range(cfg.max_in_flight)
        ]

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        """New reports are in the spool."""
        with self._cv:
            self._work += 1
            self._cv.notify_all()

    def stop(self, drain_seconds: float) -> None:
        """Keep sending for up to ``drain_seconds`` while anything is pending, then stop."""
        deadline = self.clock() + drain_seconds
        while self.clock() < deadline:
            with self._cv:
                idle = self._requests == 0
            if idle and self.spool.stats().pending_reports == 0 and not self._replay:
                break
            time.sleep(0.05)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for _ in range(self.cfg.max_in_flight):
            self._queue.put(None)
        # Requests still out are abandoned: their reports stay pending in the spool for next time.
        for t in self._threads:
            t.join(timeout=0.5)

    # -- building batches ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                if self._requests >= self.cfg.max_in_flight:
                    self._cv.wait(1.0)
                    continue
                target = self.router.choose()
                self.metrics.set_destination(self.router.mode)
                wait = 0.0 if target.probe else self._not_before[target.kind] - self.clock()
                if wait > 0:
                    event = self.router.seconds_to_next_event()
                    self._cv.wait(max(0.01, min(wait, 1.0, event if event is not None else 1.0)))
                    continue
                work = self._work
                exclude = set(self._in_flight)
                replay = [s for s in self._replay if s not in exclude]
                drops_busy = self._drops_in_flight
            try:
                batch = self._build(target, exclude, replay, drops_busy)
            except SpoolError as e:
                log.error("agent.spool_read_failed", error=str(e))
                batch = None
            with self._cv:
                if batch is None:
                    if self._work == work and not self._stop:
                        self._cv.wait(1.0)
                    continue
                self._in_flight.update(batch.seqs)
                self._requests += 1
                self._drops_in_flight = self._drops_in_flight or bool(batch.dropped)
                self.router.sending(target)
            self._queue.put(batch)

    def _build(self, target: Target, exclude: set[int], replay: list[int], drops_busy: bool) -> Batch | None:
        limit = self._batch_reports
        batch = Batch(target)
        total = 0
        candidates = [(s, False) for s in self.spool.pending_seqs(limit, exclude)]
        candidates += [(s, True) for s in replay[: max(0, limit - len(candidates))]]
        full = False
        for i in range(0, len(candidates), READ_CHUNK):
            chunk = candidates[i : i + READ_CHUNK]
            is_replay = dict(chunk)
            got = self.spool.read(s for s, _ in chunk)
            readable = {s for s, _ in got}
            for seq, _ in chunk:
                if is_replay[seq] and seq not in readable:
                    with self._cv:  # left the window since it was asked for
                        self._replay.pop(seq, None)
            for seq, data in got:
                if batch.reports and total + len(data) > self.cfg.max_batch_bytes:
                    full = True
                    break
                batch.reports.append(data)
                (batch.replay if is_replay[seq] else batch.pending).append(seq)
                total += len(data)
            if full:
                break
        now = self.clock()
        if now >= self._extras_until:
            batch.dropped = self.spool.unreported_drops()
        else:
            batch.with_spool = False
        # A request only to report drops: one at a time, and not while the server refuses them.
        if not batch.reports and (not batch.dropped or drops_busy or now < self._drops_blocked_until):
            return None
        return batch

    # -- sending ------------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                outcome = self._post(batch)
                self._handle(batch, outcome)
            except SpoolError as e:
                if not self._stop:  # after stop() the spool may be closed: the ack waits for next time
                    log.error("agent.spool_failed", error=str(e))
            except Exception:
                log.exception("agent.sender_bug")  # never let a sender thread die silently
            finally:
                with self._cv:
                    self._in_flight.difference_update(batch.seqs)
                    self._requests -= 1
                    if batch.dropped:
                        self._drops_in_flight = False
                    self._cv.notify_all()

    def _post(self, batch: Batch) -> Outcome:
        stats = self.spool.stats() if batch.with_spool else None
        incarnation = self.spool.incarnation
        batch.incarnation = incarnation[0]
        body = encode_request(self.cfg.agent_id, batch.reports, batch.dropped, stats, incarnation)
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": CONTENT_TYPE}
        if self.cfg.compression != "identity":
            body = compress(body, self.cfg.compression)
            headers["Content-Encoding"] = self.cfg.compression
        try:
            r = self._http.request("POST", batch.target.url + "/v1/reports", body=body, headers=headers)
        except urllib3.exceptions.HTTPError as e:
            return Outcome(0, error=f"{type(e).__name__}: {e}")
        return Outcome(r.status, r.data, parse_retry_after(r.headers.get("Retry-After")), headers=r.headers)

    def _handle(self, batch: Batch, out: Outcome) -> None:
        target, kind = batch.target, batch.target.kind
        status = str(out.status) if out.status else "connection"  # 0: no answer at all
        if out.status == 200:
            try:
                acked = acknowledged(out.headers, out.body, batch.seqs)
            except NotAcknowledged as e:
                self._not_acknowledged(batch, str(e))
                return
            self.metrics.requests.labels(kind, status).inc()
            self._succeeded(batch, out, acked)
            return
        if out.status in (400, 409, 413) and not from_lossproof(out.headers):
            # only a lossproof refusal may make the agent split a batch, give a report up or start a
            # new incarnation
            why = f"a {out.status} without {PROTOCOL_HEADER}: not lossproof's refusal"
            self._not_acknowledged(batch, why)
            return
        self.metrics.requests.labels(kind, status).inc()
        self.metrics.send_errors.labels(status).inc()
        msg = _error_message(out.body) if out.body else out.error
        self.last_error = f"{target.url}: {out.status or 'no answer'} {msg}"
        if is_seq_conflict(out.status, out.headers, out.body):
            self._conflict(batch, msg)
            self.router.result(target, ok=False, failed=False)
            return
        if out.status in (400, 413) and batch.reports:
            self._refused(batch, out.status, msg)
            self.router.result(target, ok=False, failed=False)
            return
        if out.status == 400:
            # Only drops/spool state were carried and this server will not take them (an older one).
            self._drops_blocked_until = self.clock() + self.cfg.backoff_max_seconds
            self._log_failure(target, out.status, "the server refused a request carrying only drops: " + msg)
            self.router.result(target, ok=False, failed=False)
            return
        slow = out.status in (401, 403, 415)
        unavailable = out.status == 0 or out.status == 429 or out.status >= 500 or out.status in (404, 405)
        delay = self._backoff[kind].next_delay(out.retry_after, self.cfg.backoff_max_seconds if slow else 0.0)
        if not target.probe:
            self._not_before[kind] = self.clock() + delay
        if slow:
            log.error(
                "agent.unauthorized" if out.status in (401, 403) else "agent.refused",
                url=target.url,
                status=out.status,
                error=msg,
                retry_in=round(delay, 1),
                hint="check api_key / api_key_env; reports stay in the spool meanwhile",
            )
        else:
            self._log_failure(target, out.status, msg, retry_in=round(delay, 2))
        self.router.result(target, ok=False, failed=unavailable)

    def _conflict(self, batch: Batch, msg: str) -> None:
        """409 seq_conflict: these seqs are stored with other content. Loud (two agents sharing an id
        is a configuration error an operator must see), then recover: a new incarnation, and the
        same reports are sent again at once under it."""
        self.metrics.seq_conflicts.inc()
        inc, first = self.spool.new_incarnation(batch.incarnation)
        log.error(
            "agent.seq_conflict",
            agent=self.cfg.agent_id,
            error=msg,
            old_incarnation=batch.incarnation,
            incarnation=inc,
            first_seq=first,
            hint="another agent uses this agent_id (set a unique one), or this spool was copied or"
            " reset; the reports are sent again under a new incarnation",
        )
        self._not_before[batch.target.kind] = 0.0

    def _not_acknowledged(self, batch: Batch, why: str) -> None:
        """A 200 that nothing durable stands behind: keep everything, and fail over like for a 5xx."""
        target, kind = batch.target, batch.target.kind
        self.metrics.requests.labels(kind, PROTOCOL_ERROR).inc()
        self.metrics.send_errors.labels(PROTOCOL_ERROR).inc()
        self.last_error = f"{target.url}: {why}"
        delay = self._backoff[kind].next_delay(None, 0.0)
        if not target.probe:
            self._not_before[kind] = self.clock() + delay
        log.error(
            "agent.not_acknowledged",
            url=target.url,
            error=why,
            retry_in=round(delay, 2),
            hint="is the URL lossproof's ingest API? reports stay in the spool meanwhile",
        )
        self.router.result(target, ok=False, failed=True)

    def _succeeded(self, batch: Batch, out: Outcome, acked: set[int]) -> None:
        target = batch.target
        parsed = json.loads(out.body)  # checked by acknowledged()
        if len(acked) < len(batch.seqs):
            log.warning("agent.partial_ack", url=target.url, sent=len(batch.seqs), acked=len(acked))
        n = self.spool.ack(s for s in batch.pending if s in acked)
        self.metrics.acked.labels(target.kind).inc(n)
        replayed = [s for s in batch.replay if s in acked]
        if replayed:
            self.metrics.replayed.inc(len(replayed))
            with self._cv:
                for s in replayed:
                    self._replay.pop(s, None)
        if batch.dropped:
            self.spool.drops_reported(batch.dropped)
        self._backoff[target.kind].reset()
        self._not_before[target.kind] = 0.0
        self._batch_reports = min(self.cfg.max_batch_reports, self._batch_reports * 2)
        self.last_error = None
        self.router.result(target, ok=True, failed=False)
        wanted = parsed.get("replay")
        # Only the primary's ledger knows what the pipeline is missing; a fallback has no opinion.
        if target.kind == PRIMARY and isinstance(wanted, list) and wanted:
            self._schedule_replay(wanted)

    def _refused(self, batch: Batch, status: int, msg: str) -> None:
        """400/413 for a request with reports: split, or give up on the one report that is refused."""
        if len(batch.reports) > 1:
            self._batch_reports = max(1, len(batch.reports) // 2)
            log.warning("agent.batch_split", status=status, reports=len(batch.reports), error=msg)
            return
        if "$.dropped" in msg or "$.spool" in msg:
            # The envelope, not the report, is what the server refuses: never drop data for that.
            self._extras_until = self.clock() + EXTRAS_OFF_SECONDS
            log.error("agent.extras_refused", status=status, error=msg)
            return
        seq = batch.seqs[0]
        log.error("agent.report_rejected", seq=seq, status=status, error=msg)
        # a refused replay is as lost to the server as a refused first send
        self.spool.drop([seq], f"rejected: {status} {msg}")
        with self._cv:
            self._replay.pop(seq, None)

    def _schedule_replay(self, wanted: list[Any]) -> None:
        try:
            ranges = [(int(a), int(b)) for a, b in wanted]
        except (TypeError, ValueError):
            log.warning("agent.bad_replay_field", replay=str(wanted)[:200])
            return
        resend = self.spool.plan_replay(ranges)
        now = self.clock()
        added = 0
        with self._cv:
            for s in resend:
                if now - self._replayed_at.get(s, -1e18) >= REPLAY_MIN_INTERVAL:
                    self._replay[s] = None
                    self._replayed_at[s] = now
                    added += 1
            if len(self._replayed_at) > 4 * len(self._replay) + 1000:
                self._replayed_at = {
                    s: t for s, t in self._replayed_at.items() if now - t < REPLAY_MIN_INTERVAL
                }
            self._work += 1
            self._cv.notify_all()
        if added:
            log.info(
                "agent.replay_requested", ranges=[list(r) for r in rg.normalize(ranges)][:20], resend=added
            )

    def _log_failure(self, target: Target, status: int, msg: str, **extra: Any) -> None:
        # One line per destination and status every 10 s: an outage must not flood the log.
        key = (target.kind, status)
        now = self.clock()
        if now - self._last_log.get(key, -1e18) < 10.0:
            return
        self._last_log[key] = now
        log.warning("agent.send_failed", url=target.url, status=status or None, error=msg, **extra)

    def in_flight(self) -> int:
        with self._cv:
            return self._requests
