"""A StatsD / DogStatsD UDP listener on 127.0.0.1, aggregated into one set of points per interval.

Line format (several per packet, separated by newlines)::

    <name>:<value>[:<value>...]|<type>[|@<sample rate>][|#<tag>[:<value>],...][|c:<container>][|T<ts>]

==========  ==================================================================================
type        points per flush (``t`` = flush time)
==========  ==================================================================================
``c``       ``name``: the sum of the values, each divided by its sample rate
``g``       ``name``: the last value; ``+N`` / ``-N`` add to the current value (kept across flushes)
``ms h d``  ``name.count`` ``name.sum`` (both scaled by 1/sample rate), ``name.min`` ``name.max``
            ``name.p50`` ``name.p90`` ``name.p99`` (nearest rank over the samples)
``s``       ``name``: the number of distinct values
==========  ==================================================================================

Tags become labels (``#env:prod,canary`` → ``{"env": "prod", "canary": ""}``). A malformed line is
counted in ``lossproof_agent_statsd_malformed_total`` and skipped; nothing a client sends can stop
the listener. Events (``_e{``) and service checks (``_sc|``) are not metrics and are skipped.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lossproof.agent.report import MAX_LABELS, Point
from lossproof.obs.logging import get

log = get(__name__)

TYPES = frozenset({"c", "g", "ms", "h", "d", "s"})
TIMER_TYPES = frozenset({"ms", "h", "d"})
# Percentiles come from at most this many samples per series and interval (reservoir sampling);
# count, sum, min and max stay exact.
MAX_SAMPLES = 10_000
MAX_SET = 100_000
PERCENTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))

Key = tuple[str, tuple[tuple[str, str], ...]]


class Malformed(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    type: str
    values: tuple[float, ...]  # empty for sets
    set_value: str
    rate: float
    tags: tuple[tuple[str, str], ...]
    delta: bool  # gauge: the value is added to the current one


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise Malformed(f"not a number: {text!r:.40}") from None
    if not math.isfinite(v):
        raise Malformed("value must be finite")
    return v


def _tags(section: str, max_tags: int) -> tuple[tuple[str, str], ...]:
    pairs = []
    for tag in section.split(","):
        if not tag:
            continue
        k, _, v = tag.partition(":")
        if not k or len(k) > 1024 or len(v) > 4096:
            raise Malformed(f"bad tag {tag!r:.40}")
        pairs.append((k, v))
    if len(pairs) > max_tags:
        raise Malformed(f"more than {max_tags} tags")
    return tuple(sorted(dict(pairs).items()))


# Clients send the same few tag sets over and over: parse each once (bounded, cleared when full).
_TAG_CACHE: dict[tuple[str, int], tuple[tuple[str, str], ...]] = {}
_TAG_CACHE_MAX = 10_000


def parse_line(line: str, max_tags: int = MAX_LABELS) -> Sample | None:
    """One line → a sample; None for lines that are valid but not metrics (events, service checks).
    Raises :class:`Malformed` for anything else."""
    if line.startswith(("_e{", "_sc|")):
        return None
    head, *sections = line.split("|")
    if not sections:
        raise Malformed("no |type")
    name, sep, raw_values = head.partition(":")
    if not sep or not name or not raw_values:
        raise Malformed("expected name:value")
    # room for the longest suffix (".count") within the protocol's 1024 characters
    if len(name) > 1018:
        raise Malformed("name longer than 1018 characters")
    mtype = sections[0]
    if mtype not in TYPES:
        raise Malformed(f"unknown type {mtype!r:.10}")
    rate = 1.0
    tags: tuple[tuple[str, str], ...] = ()
    for sec in sections[1:]:
        first = sec[:1]
        if first == "#":
            key = (sec, max_tags)
            cached = _TAG_CACHE.get(key)
            if cached is None:
                cached = _tags(sec[1:], max_tags)
                if len(_TAG_CACHE) >= _TAG_CACHE_MAX:
                    _TAG_CACHE.clear()
                _TAG_CACHE[key] = cached
            tags = cached
        elif first == "@":
            rate = _number(sec[1:])
            if not 0 < rate <= 1:
                raise Malformed("sample rate must be in (0, 1]")
        elif first == "T" or not sec or sec.startswith("c:"):
            continue  # client timestamp / container id: not used
        else:
            raise Malformed(f"unknown section {sec!r:.20}")
    if mtype == "s":
        return Sample(name, mtype, (), raw_values, rate, tags, False)
    if ":" not in raw_values:
        v = _number(raw_values)
        return Sample(name, mtype, (v,), "", rate, tags, mtype == "g" and raw_values[0] in "+-")
    return Sample(name, mtype, tuple(_number(p) for p in raw_values.split(":")), "", rate, tags, False)


@dataclass(slots=True)
class _Timer:
    count: float = 0.0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    seen: int = 0
    samples: list[float] = field(default_factory=list)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Aggregator:
    """Folds samples into per-interval values; thread-safe."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Key, float] = {}
        self._gauges: dict[Key, float] = {}
        self._touched: set[Key] = set()
        self._timers: dict[Key, _Timer] = {}
        self._sets: dict[Key, set[str]] = {}
        self._rng = rng or random.Random()

    def add(self, s: Sample) -> None:
        key = (s.name, s.tags)
        with self._lock:
            if s.type == "c":
                self._counters[key] = self._counters.get(key, 0.0) + sum(s.values) / s.rate
            elif s.type == "g":
                v = s.values[0]
                self._gauges[key] = self._gauges.get(key, 0.0) + v if s.delta else v
                self._touched.add(key)
            elif s.type == "s":
                members = self._sets.setdefault(key, set())
                if len(members) < MAX_SET:
                    members.add(s.set_value)
            else:
                t = self._timers.get(key)
                if t is None:
                    t = self._timers[key] = _Timer()
                for v in s.values:
                    t.count += 1 / s.rate
                    t.sum += v / s.rate
                    t.min = min(t.min, v)
                    t.max = max(t.max, v)
                    t.seen += 1
                    if len(t.samples) < MAX_SAMPLES:
                        t.samples.append(v)
                    else:
                        j = self._rng.randrange(t.seen)
                        if j < MAX_SAMPLES:
                            t.samples[j] = v

    def flush(self, t_ms: int, base: dict[str, str]) -> list[Point]:
        """Everything since the last flush as points; gauges keep their value for later deltas."""
        with self._lock:
            counters, self._counters = self._counters, {}
            timers, self._timers = self._timers, {}
            sets, self._sets = self._sets, {}
            gauges = [(k, self._gauges[k]) for k in self._touched]
            self._touched = set()
        out: list[Point] = []

        def point(name: str, tags: tuple[tuple[str, str], ...], v: float) -> None:
            # valid by construction: parse_line checked the name length and the tags
            out.append(Point(name, {**base, **dict(tags)} if tags else dict(base), t_ms, v))

        for (name, tags), v in counters.items():
            point(name, tags, v)
        for (name, tags), v in gauges:
            point(name, tags, v)
        for (name, tags), members in sets.items():
            point(name, tags, float(len(members)))
        for (name, tags), t in timers.items():
            point(name + ".count", tags, t.count)
            point(name + ".sum", tags, t.sum)
            point(name + ".min", tags, t.min)
            point(name + ".max", tags, t.max)
            ordered = sorted(t.samples)
            for q, suffix in PERCENTILES:
                point(f"{name}.{suffix}", tags, _percentile(ordered, q))
        return out


# <asm-generic/socket.h> (x86, arm, riscv, ...): Python's socket module does not name it
SO_RXQ_OVFL = 40


class StatsdListener:
    """Receives UDP packets in a background thread and feeds the aggregator."""

    def __init__(
        self,
        port: int,
        aggregator: Aggregator,
        on_lines: Callable[[int], None],
        on_malformed: Callable[[], None],
        max_tags: int = MAX_LABELS,
        host: str = "127.0.0.1",
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.aggregator = aggregator
        self._on_lines = on_lines
        self._on_malformed = on_malformed
        self._on_dropped = on_dropped
        self._max_tags = max_tags
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # A large receive buffer absorbs bursts while the thread is busy: UDP drops otherwise.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise OSError(f"cannot listen for StatsD on {host}:{port}: {e.strerror or e}") from None
        # Linux counts the packets it drops on a full receive buffer and, asked to, hands the count
        # over with every packet received: the agent's only way to know of them.
        self._drops_seen = 0
        self._counts_drops = False
        if sys.platform == "linux":  # (other systems give the number other meanings)
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                self._counts_drops = True
        self._sock.settimeout(0.25)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-statsd", daemon=True)
        self._last_warn = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _run(self) -> None:
        ancillary = socket.CMSG_SPACE(4) if self._counts_drops else 0
        while not self._stop.is_set():
            try:
                data, cmsgs, _, _ = self._sock.recvmsg(65535, ancillary)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            for level, kind, value in cmsgs:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    self._dropped_so_far(int.from_bytes(value[:4], sys.byteorder))
            self.handle_packet(data)

    def _dropped_so_far(self, total: int) -> None:
        """The socket's count of dropped packets, as a received packet carried it (a u32 that wraps)."""
        new = (total - self._drops_seen) % 2**32
        if new:
            self._drops_seen = total
            if self._on_dropped is not None:
                self._on_dropped(new)

    def handle_packet(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._malformed("packet is not UTF-8")
            return
        good = 0
        for line in text.split("\n"):
            line = line.strip("\r ")
            if not line:
                continue
            try:
                sample = parse_line(line, self._max_tags)
            except Malformed as e:
                self._malformed(str(e), line)
                continue
            if sample is not None:
                self.aggregator.add(sample)
                good += 1
        if good:
            self._on_lines(good)

    def _malformed(self, why: str, line: str = "") -> None:
        self._on_malformed()
        now = time.monotonic()
        if now - self._last_warn >= 10:  # a noisy client must not flood the agent's log
            self._last_warn = now
            log.warning("statsd.malformed", error=why, line=line[:200])
