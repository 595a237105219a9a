"""``lossproof send``: post points (one JSON object a line) to the native protocol.

Seqs must never repeat for an agent, so ``send`` reserves them in a small state file (under a
lock, fsync'd) before posting. A report the server did not acknowledge is retried, with the same
seq, until it is, or the command fails loudly. The seq of a report given up on that way is kept in
the state file and reported as ``dropped`` (with the reason) by the next ``send`` of the agent, so
the ledger counts it as lost, with why, instead of as missing in the pipeline.

The state file also holds the agent's incarnation (docs/protocol.md), made with the file: a fresh
state dir is a seq space of its own, so its seqs 1, 2, ... never collide with what an earlier state
dir sent for the same agent id. Answered 409 ``seq_conflict`` (the seq is stored with other content,
e.g. a state file copied to another machine), ``send`` starts a new incarnation and sends the report
again under it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import urllib3

from lossproof.durable import make_dirs
from lossproof.protocol.ack import (
    PROTOCOL_HEADER,
    NotAcknowledged,
    acknowledged,
    from_lossproof,
    is_seq_conflict,
)
from lossproof.protocol.compression import compress
from lossproof.protocol.native import MIN_POINT_TIME_MS
from lossproof.urls import check_base_url

MAX_AGENT = 256  # the protocol's limit on agent ids
MAX_REASON = 512


class SendError(Exception):
    pass


def check_url(url: str) -> str:
    """The pipeline's base URL, or a SendError saying what is wrong with it."""
    try:
        return check_base_url(url)
    except ValueError as e:
        raise SendError(f"--url: {e}") from None


def check_agent(agent: str) -> str:
    if not 1 <= len(agent) <= MAX_AGENT:
        raise SendError(f"--agent must be 1-{MAX_AGENT} characters")
    return agent


def parse_lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    now = int(time.time() * 1000)
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SendError(f"line {lineno}: not JSON: {e}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("metric"), str):
                raise SendError(f"line {lineno}: expected an object with a string 'metric'")
            if "v" not in obj and "value" in obj:
                obj["v"] = obj.pop("value")
            t = obj.setdefault("t", now)
            if isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t < MIN_POINT_TIME_MS:
                # refused here, not by the server: a refused report would be counted as lost
                raise SendError(
                    f"line {lineno}: t {t} is before 1973 as unix milliseconds: is it in seconds? "
                    "t is unix milliseconds (multiply by 1000)"
                )
            obj.setdefault("labels", {})
            yield obj
    except UnicodeDecodeError as e:
        raise SendError(f"line {lineno + 1}: not UTF-8 ({e.reason} at byte {e.start})") from None


@dataclass
class SeqState:
    """What ``send`` keeps per agent: the last seq handed out, seqs given up on and not yet reported,
    and the incarnation ("" in a file written before incarnations) with its first seq."""

    last: int = 0
    dropped: list[tuple[int, int, str]] = field(default_factory=list)
    incarnation: str = ""
    first_seq: int = 1

    @classmethod
    def parse(cls, text: str) -> SeqState:
        text = text.strip()
        if not text:
            return cls(incarnation=secrets.token_hex(16))  # a new state: a seq space of its own
        if text.isdigit():  # the format before dropped seqs were kept
            return cls(int(text))
        try:
            obj = json.loads(text)
            return cls(
                int(obj["last"]),
                [(int(a), int(b), str(r)) for a, b, r in obj.get("dropped", [])],
                str(obj.get("incarnation", "")),
                int(obj.get("first_seq", 1)),
            )
        except (ValueError, KeyError, TypeError) as e:
            # never start again from 0: a reused seq would be refused, or kept as a conflict
            raise SendError(f"unreadable seq state ({e}); fix it by hand, seqs must never go back") from None

    def dump(self) -> str:
        return json.dumps(
            {
                "last": self.last,
                "dropped": self.dropped,
                "incarnation": self.incarnation,
                "first_seq": self.first_seq,
            }
        )


@dataclass(frozen=True)
class Reserved:
    seq: int  # the first of the reserved seqs
    dropped: list[tuple[int, int, str]]  # given up on by earlier runs, not yet reported
    incarnation: str
    first_seq: int


class SeqConflict(SendError):
    """409 ``seq_conflict``: the server has this seq stored with other content."""


def state_path(state_dir: Path, agent: str) -> Path:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", agent.replace("/", "_")):
        return state_dir / f"{agent.replace('/', '_')}.seq"
    # any other id (long, or characters a file name cannot hold) gets a stable name of its own
    return state_dir / f"agent-{hashlib.sha256(agent.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}.seq"


@contextmanager
def seq_state(state_dir: Path, agent: str) -> Iterator[SeqState]:
    """The agent's state, locked against other ``send`` runs; written back (fsync'd) on exit."""
    make_dirs(state_dir)
    path = state_path(state_dir, agent)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            st = SeqState.parse(f.read())
        except SendError as e:
            raise SendError(f"{path}: {e}") from None
        yield st
        f.seek(0)
        f.truncate()
        f.write(st.dump())
        f.flush()
        os.fsync(f.fileno())


def reserve_seqs(state_dir: Path, agent: str, n: int) -> Reserved:
    """Reserve ``n`` consecutive seqs for ``agent``."""
    with seq_state(state_dir, agent) as st:
        first = st.last + 1
        st.last += n
        return Reserved(first, list(st.dropped), st.incarnation, st.first_seq)


def new_incarnation(state_dir: Path, agent: str, replacing: str, first_seq: int) -> tuple[str, int]:
    """Start a new incarnation whose seq space begins at ``first_seq`` (the report the server found
    in conflict keeps its seq), unless another run already replaced ``replacing``."""
    with seq_state(state_dir, agent) as st:
        if st.incarnation == replacing:
            st.incarnation = secrets.token_hex(16)
            st.first_seq = first_seq
        return st.incarnation, st.first_seq


def give_up(state_dir: Path, agent: str, first: int, last: int, reason: str) -> None:
    with seq_state(state_dir, agent) as st:
        st.dropped.append((first, last, reason[:MAX_REASON]))


def reported(state_dir: Path, agent: str, dropped: list[tuple[int, int, str]]) -> None:
    """The server acknowledged a request carrying ``dropped``: stop reporting them."""
    if dropped:
        with seq_state(state_dir, agent) as st:
            st.dropped = [d for d in st.dropped if d not in dropped]


def chunks(points: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    buf: list[dict[str, Any]] = []
    for p in points:
        buf.append(p)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def report_time(points: list[dict[str, Any]]) -> int:
    """The report's time: its newest point's, so that a backfill of old points sits where its data
    is (the dashboard places missing and lost reports by their neighbours' times)."""
    ts = [p["t"] for p in points if isinstance(p["t"], int | float) and not isinstance(p["t"], bool)]
    return int(max(ts)) if ts and math.isfinite(max(ts)) else 0  # a bad t is the server's to refuse


def request_body(
    agent: str,
    seq: int,
    points: list[dict[str, Any]],
    dropped: list[tuple[int, int, str]],
    incarnation: tuple[str, int] = ("", 1),
    time_ms: int = 0,
) -> dict[str, Any]:
    report: dict[str, Any] = {"seq": seq, "points": points}
    if time_ms:
        report["time"] = time_ms
    body: dict[str, Any] = {"agent": agent, "reports": [report]}
    inc, first_seq = incarnation
    if inc:
        body["incarnation"] = inc
    if first_seq != 1:
        body["first_seq"] = first_seq
    if dropped:
        body["dropped"] = [{"first": a, "last": b, "reason": r} for a, b, r in dropped]
    return body


def post(
    http: urllib3.PoolManager,
    url: str,
    key: str,
    body: dict[str, Any],
    encoding: str,
    attempts: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Post one request until it is acknowledged; ``progress`` hears of every failed attempt, so a
    person is not left waiting in silence for the retries."""
    # msgpack, not JSON: it carries NaN and infinities (e.g. Prometheus staleness markers) as they are.
    data = compress(msgspec.msgpack.encode(body), encoding)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
    if encoding != "identity":
        headers["Content-Encoding"] = encoding
    delay = 0.2
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            r = http.request("POST", url + "/v1/reports", body=data, headers=headers, retries=False)
        except urllib3.exceptions.HTTPError as e:
            last = f"cannot reach {url}: {e}"
        else:
            text = r.data.decode(errors="replace")
            # Only lossproof's own answers count (protocol/ack.py); another server's 200 or 4xx (a
            # proxy, a maintenance page, a wrong URL) is retried like a 5xx.
            if r.status == 200:
                seqs = [int(rep["seq"]) for rep in body["reports"]]
                try:
                    acked = acknowledged(r.headers, r.data, seqs)
                except NotAcknowledged as e:
                    last = f"{url} answered 200 but did not acknowledge: {e}"
                else:
                    if len(acked) < len(seqs):
                        raise SendError(f"{url} acknowledged seqs {sorted(acked)} of {seqs}")
                    return json.loads(text)  # type: ignore[no-any-return]
            elif is_seq_conflict(r.status, r.headers, r.data):
                raise SeqConflict(f"server refused the request ({r.status}): {text.strip()}")
            elif r.status < 500 and r.status != 429 and from_lossproof(r.headers):
                raise SendError(f"server refused the request ({r.status}): {text.strip()}")
            elif r.status < 500 and r.status != 429:
                last = f"{url} answered {r.status} without {PROTOCOL_HEADER} (not lossproof): {text.strip()}"
            else:
                last = f"server answered {r.status}: {text.strip()}"
            retry_after = r.headers.get("Retry-After")
            if retry_after and retry_after.isdigit():
                delay = max(delay, float(retry_after))
        if attempt == attempts:
            break
        progress(f"attempt {attempt}/{attempts} failed: {last}; trying again in {delay:.1f} s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    raise SendError(f"not acknowledged after {attempts} attempts: {last}")



def wait_stored(
    http: urllib3.PoolManager,
    url: str,
    key: str,
    agent: str,
    incarnation: str,
    seqs: list[int],
    timeout: float,
    progress: Callable[[str], None] = lambda _: None,
) -> None:
    """Wait until the worker has stored every one of ``seqs`` (the ledger says so). Acknowledged
    means durable in the log; stored means queryable: a moment later, or longer behind a backlog."""
    if not seqs:
        return
    path = f"{url}/v1/agents/{urllib.parse.quote(agent, safe='')}/ledger"
    query = "?" + urllib.parse.urlencode({"incarnation": incarnation})
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            r = http.request("GET", path + query, headers={"Authorization": f"Bearer {key}"}, retries=False)
            stored = json.loads(r.data)["stored"] if r.status == 200 else []
        except (urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError):
            stored = []
        if all(any(a <= s <= b for a, b in stored) for s in seqs):
            return
        if time.monotonic() >= deadline:
            raise SendError(
                f"acknowledged, but not stored within {timeout:g} s (the worker is behind, or down: "
                "see /healthz and the dashboard's health page); nothing is lost, it is in the log"
            )
        if not told:
            progress("acknowledged; waiting for the worker to store it …")
            told = True
        time.sleep(0.1)
