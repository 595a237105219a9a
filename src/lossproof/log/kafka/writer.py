"""The Kafka log writer: ``append`` returns only after the broker's acks=all delivery report.

How an append travels
    ``append`` hands the record to librdkafka's idempotent producer (``enable.idempotence=true``,
    ``acks=all``) and awaits an asyncio future. A dedicated thread polls the producer; the delivery
    callback (on that thread) resolves the future on the event loop's thread with
    ``loop.call_soon_threadsafe``. Success needs a delivery report without error, which with
    ``acks=all`` means every in-sync replica has the record and ``min.insync.replicas`` was met.
    Everything else raises :class:`LogUnavailable`: a full local queue (``BufferError``), an
    error from ``produce``, a delivery error (``NOT_ENOUGH_REPLICAS``, ``_MSG_TIMED_OUT`` after
    ``delivery.timeout.ms``, which is below the HTTP append timeout, ...), a fatal producer error,
    a writer that is closing. A timed-out record may still have been written ("possibly
    persisted"): the client retries and the store's idempotency makes the duplicate harmless.

Safety checks
    ``start`` reads the topic's settings and refuses to run (:class:`KafkaTopicUnsafe`) when they
    are weaker than the contract (see :mod:`lossproof.log.kafka.admin`) unless
    ``log.kafka.unsafe`` is set. If the cluster cannot be reached (or the topic does not exist
    yet), the writer starts but refuses appends until a background check succeeds.

Stalled
    Every record handed to the producer gets its delivery report within ``delivery.timeout.ms``
    (an error, if no broker answers), served by the poll thread. Appends waiting longer than that
    with no report served meanwhile mean that thread (or librdkafka) is stuck: ``stalled_seconds``
    counts from there, and ingest stops beating its heartbeat on it, as on a stuck fsync of the
    embedded log.

Retention
    A background thread deletes (``delete_records``) records every lossproof consumer group of the
    topic has committed past and that are older than ``log.retention_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from lossproof.config import KafkaLogConfig
from lossproof.log.base import LogError, LogUnavailable, LogWriter, Position, Receipt
from lossproof.log.kafka import admin as kadmin
from lossproof.log.kafka.common import KafkaTopicUnsafe, admin_conf, delivery_timeout, producer_conf
from lossproof.log.kafka.metrics import KafkaWriterMetrics
from lossproof.obs.logging import get

log = get(__name__)

# A delivery failure makes healthy() false for this long unless an append succeeds meanwhile.
FAILURE_WINDOW = 10.0
VALIDATE_RETRY = 2.0

_REASONS = {
    KafkaError.NOT_ENOUGH_REPLICAS: "not_enough_replicas",
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND: "not_enough_replicas",
    KafkaError._MSG_TIMED_OUT: "timeout",
    KafkaError._QUEUE_FULL: "queue_full",
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",
    KafkaError._PURGE_QUEUE: "closing",
    KafkaError._PURGE_INFLIGHT: "closing",
}


class KafkaLogWriter(LogWriter):
    def __init__(
        self,
        cfg: KafkaLogConfig,
        *,
        append_timeout: float = 10.0,
        retention_seconds: float = 3600.0,
        retention_check_seconds: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self.topic = cfg.topic
        self.delivery_timeout = delivery_timeout(cfg, append_timeout)
        if self.delivery_timeout >= append_timeout:
            raise LogError(
                f"log.kafka.delivery_timeout_seconds ({self.delivery_timeout}) must be below "
                f"server.append_timeout_seconds ({append_timeout})"
            )
        self.retention_seconds = retention_seconds
        self.retention_check_seconds = (
            cfg.retention_check_seconds if retention_check_seconds is None else retention_check_seconds
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self._m = KafkaWriterMetrics(self.registry)
        self._m.healthy.set(0)
        self._producer_conf = self._make_producer_conf()
        self._admin_conf = admin_conf(cfg)
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        # topic validation: None = not checked yet; "" = safe (or accepted as unsafe)
        self._invalid: str | None = "topic settings not checked yet"
        self._refused: str | None = None  # unsafe topic found after start: refuse for good
        self._fatal = False
        self._last_ok = 0.0
        self._last_fail = 0.0
        self._last_fail_reason = ""
        self._brokers_up: int | None = None
        self._in_flight = 0
        # (monotonic) since when records wait with no delivery report settled; None: none in flight
        self._waiting_since: float | None = None

    def _make_producer_conf(self) -> dict[str, Any]:
        conf = producer_conf(self.cfg, self.delivery_timeout)
        conf.update({"statistics.interval.ms": 1000, "stats_cb": self._on_stats, "error_cb": self._on_error})
        return conf

    # --- LogWriter ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        try:
            self._admin = AdminClient(self._admin_conf)
            self._producer = Producer(self._producer_conf)
        except KafkaException as e:
            raise LogError(f"invalid Kafka client settings: {e.args[0].str()}") from None
        self._started = True
        # A topic created a moment ago may not be in every broker's metadata yet: retry briefly.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                await asyncio.to_thread(self._validate, max(1.0, deadline - time.monotonic()))
                break
            except LogUnavailable as e:
                if time.monotonic() >= deadline:
                    log.warning("log.kafka.not_validated", topic=self.topic, reason=e.reason)
                    break
                await asyncio.sleep(0.25)
            except KafkaTopicUnsafe:
                await self.close()
                raise
        self._spawn(self._poll_loop, "kafka-producer-poll")
        self._spawn(self._maintenance_loop, "kafka-writer-maintenance")
        log.info(
            "log.kafka.writer_started",
            topic=self.topic,
            bootstrap=self.cfg.bootstrap_servers,
            delivery_timeout=self.delivery_timeout,
            validated=self._invalid is None,
        )

    async def append(self, key: bytes, value: bytes, seqs: Sequence[tuple[int, int]] = ()) -> Receipt:
        if self._closed or not self._started:
            raise LogUnavailable("Kafka writer is not running")
        if self._refused:
            raise LogUnavailable(self._refused, retry_after=30.0)
        if self._invalid is not None:
            self._m.append_errors.labels("not_validated").inc()
            raise LogUnavailable(self._invalid)
        producer = self._producer
        assert producer is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Position] = loop.create_future()
        started = time.perf_counter()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:  # the poll thread
            partition, offset = msg.partition() or 0, msg.offset()
            offset = -1 if offset is None else offset
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(self._settle, fut, err, partition, offset, started)

        try:
            producer.produce(self.topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError:
            self._failed("queue_full", "the local producer queue is full")
            raise LogUnavailable("the Kafka producer's local queue is full") from None
        except KafkaException as e:
            err = e.args[0]
            reason = _REASONS.get(err.code(), "produce_error")
            self._failed(reason, err.str())
            raise LogUnavailable(f"Kafka refused the record: {err.str()}") from None
        with self._lock:
            self._in_flight += 1
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
        pos = await fut
        return self._receipt(pos.partition, pos.offset, seqs)

    def healthy(self) -> tuple[bool, str]:
        ok, why = self._health()
        self._m.healthy.set(1 if ok else 0)
        return ok, why

    def _health(self) -> tuple[bool, str]:
        if self._closed or not self._started:
            return False, "Kafka writer is not running"
        if self._refused:
            return False, self._refused
        if self._invalid is not None:
            return False, self._invalid
        if self._brokers_up == 0:
            return False, f"no Kafka broker reachable ({self.cfg.bootstrap_servers})"
        if self._last_fail > self._last_ok and time.monotonic() - self._last_fail < FAILURE_WINDOW:
            return False, f"recent Kafka delivery failure: {self._last_fail_reason}"
        return True, ""

    def stalled_seconds(self) -> float:
        since = self._waiting_since
        if since is None:
            return 0.0
        # a working producer answers every record within the delivery timeout (1 s for the report's
        # way to the event loop)
        return max(0.0, time.monotonic() - since - self.delivery_timeout - 1.0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        producer = self._producer
        if producer is not None and self._started:
            # Let in-flight appends finish (or fail) within their delivery timeout.
            remaining = await asyncio.to_thread(producer.flush, self.delivery_timeout + 1.0)
            if remaining:
                await asyncio.to_thread(producer.purge)
                await asyncio.to_thread(producer.flush, 1.0)
        self._stop.set()
        for t in self._threads:
            await asyncio.to_thread(t.join, 5.0)
        await asyncio.sleep(0)  # run the futures' last call_soon_threadsafe callbacks
        self._m.healthy.set(0)

    # --- delivery reports -------------------------------------------------------------------------

    def _settle(
        self,
        fut: asyncio.Future[Position],
        err: KafkaError | None,
        partition: int,
        offset: int,
        started: float,
    ) -> None:
        with self._lock:
            self._in_flight -= 1
            # a report came: the producer moves; what is still in flight waits only from now
            self._waiting_since = time.monotonic() if self._in_flight > 0 else None
        if fut.done():
            return
        if err is None and offset >= 0:
            self._last_ok = time.monotonic()
            self._m.append_seconds.observe(time.perf_counter() - started)
            fut.set_result(Position(partition, offset))
            return
        if err is None:  # acknowledged without an offset: cannot happen with acks=all; never report success
            reason, text = "no_offset", "the broker acknowledged the record without an offset"
        else:
            reason, text = _REASONS.get(err.code(), "delivery_error"), err.str()
            if reason == "timeout":
                text = f"not acknowledged by the in-sync replicas within {self.delivery_timeout:g}s ({text})"
        self._failed(reason, text)
        fut.set_exception(LogUnavailable(f"Kafka did not confirm the record: {text}"))

    def _failed(self, reason: str, text: str) -> None:
        self._last_fail = time.monotonic()
        self._last_fail_reason = text
        self._m.append_errors.labels(reason).inc()

    # --- librdkafka callbacks (on the poll thread) -------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("log.kafka.producer_fatal", error=err.str())
            self._fatal = True
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_up = 0
            log.warning("log.kafka.all_brokers_down", error=err.str())
        else:
            log.info("log.kafka.producer_error", error=err.str())

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
            up = sum(
                1
                for b in stats.get("brokers", {}).values()
                if b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
            )
        except (ValueError, AttributeError):
            return
        self._brokers_up = up
        self._m.brokers_up.set(up)
        self._m.in_flight.set(self._in_flight)

    # --- threads ----------------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            assert producer is not None
            try:
                producer.poll(0.05)
            except Exception as e:  # a callback raised: never let the thread die
                log.error("log.kafka.poll_failed", error=f"{type(e).__name__}: {e}")
            if self._fatal:
                self._replace_producer()

    def _replace_producer(self) -> None:
        """After a fatal (idempotence) error the producer is unusable: fail its records, make another."""
        old = self._producer
        self._fatal = False
        try:
            self._producer = Producer(self._producer_conf)
        except KafkaException as e:
            log.error("log.kafka.producer_recreate_failed", error=e.args[0].str())
            time.sleep(1.0)
            self._fatal = True
            return
        self._m.producer_restarts.inc()
        if old is not None:
            with contextlib.suppress(KafkaException):
                old.purge()
            with contextlib.suppress(KafkaException):
                old.flush(1.0)  # serves the purged records' failing delivery reports

    def _maintenance_loop(self) -> None:
        next_retention = time.monotonic() + min(self.retention_check_seconds, 5.0)
        while not self._stop.is_set():
            if self._invalid is not None and not self._refused:
                try:
                    self._validate(5.0)
                except LogUnavailable as e:
                    self._invalid = e.reason
                except KafkaTopicUnsafe as e:
                    self._refused = str(e)
                    log.error("log.kafka.topic_unsafe", topic=self.topic, error=str(e))
                if self._invalid is not None:
                    self._stop.wait(VALIDATE_RETRY)
                    continue
            if time.monotonic() >= next_retention and self._invalid is None:
                next_retention = time.monotonic() + self.retention_check_seconds
                self._retention()
            self._stop.wait(min(0.5, max(0.01, next_retention - time.monotonic())))

    def _retention(self) -> None:
        assert self._admin is not None
        try:
            deleted = kadmin.delete_committed(self._admin, self.topic, self.retention_seconds)
        except (KafkaException, TimeoutError, OSError) as e:
            log.warning("log.kafka.retention_failed", topic=self.topic, error=str(e))
            # A fresh client next time: after leader changes librdkafka's admin client can keep
            # answering FENCED_LEADER_EPOCH from stale metadata for minutes.
            self._admin = AdminClient(self._admin_conf)
            return
        except Exception as e:  # never let retention take the writer down
            log.warning("log.kafka.retention_failed", topic=self.topic, error=f"{type(e).__name__}: {e}")
            return
        if deleted:
            log.info("log.kafka.retention_deleted", topic=self.topic, low_watermarks=deleted)

    def _validate(self, timeout: float) -> None:
        """Check the topic's settings. Raises LogUnavailable (cannot tell) or KafkaTopicUnsafe."""
        assert self._admin is not None
        try:
            info = kadmin.describe_topic(self._admin, self.topic, timeout)
        except LogUnavailable as e:
            self._invalid = f"cannot check topic {self.topic!r}: {e.reason}"
            raise LogUnavailable(self._invalid) from None
        if info is None:
            self._invalid = f"topic {self.topic!r} does not exist: run `lossproof kafka init`"
            raise LogUnavailable(self._invalid)
        problems = kadmin.safety_problems(info, self.cfg)
        for w in kadmin.availability_warnings(info, self.cfg):
            log.warning("log.kafka.topic_warning", topic=self.topic, warning=w)
        if problems and not self.cfg.unsafe:
            msg = (
                f"topic {self.topic!r} is not safe: {'; '.join(problems)}. Fix it (`lossproof kafka init` "
                "creates a safe topic) or set log.kafka.unsafe = true to accept weaker durability"
            )
            self._refused = msg
            raise KafkaTopicUnsafe(msg)
        if problems:
            log.warning("log.kafka.topic_unsafe_accepted", topic=self.topic, problems=problems)
        self._invalid = None
