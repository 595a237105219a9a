"""Raw librdkafka producer throughput with KafkaLogWriter's settings: the ceiling for ingest on Kafka.

``raw_producer`` drives a bare ``confluent_kafka.Producer`` configured exactly like the writer
(idempotent, ``acks=all``, same linger, partitioner and delivery timeout) with ``concurrency``
records outstanding at any time (like ``concurrency`` agents each waiting for its OK), and counts
only records whose delivery report succeeded. ``writer`` does the same through
:class:`KafkaLogWriter` (asyncio futures resolved from the delivery callbacks), so the cost of the
wrapper is visible on its own. ``lossproof bench ingest --log kafka`` divides its acked MB/s by the
raw number measured in the same run (the ratio; target >= 0.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import click
from pydantic import ValidationError

from lossproof.bench.load import load_line
from lossproof.cliutil import finite_float
from lossproof.config import KafkaLogConfig
from lossproof.log.base import LogUnavailable
from lossproof.log.kafka.common import producer_conf


@dataclass
class ProducerRun:
    name: str
    records: int = 0
    bytes: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]

    def line(self) -> str:
        return (
            f"{self.name}: {self.records_per_s:,.0f} acked records/s, {self.mib_per_s:,.1f} MiB/s, "
            f"ack p50 {self.quantile(0.5) * 1e3:.1f} ms, p99 {self.quantile(0.99) * 1e3:.1f} ms, "
            f"errors {self.errors}"
        )


def _value(size: int, i: int) -> bytes:
    unit = f"<report {i}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def raw_producer(
    cfg: KafkaLogConfig,
    *,
    record_bytes: int = 50_000,
    seconds: float = 10.0,
    concurrency: int = 64,
    delivery_timeout: float = 8.0,
) -> ProducerRun:
    from confluent_kafka import KafkaError, Message, Producer

    run = ProducerRun(f"raw librdkafka producer ({concurrency} in flight, {record_bytes // 1000} KB records)")
    producer = Producer(producer_conf(cfg, delivery_timeout))
    values = [_value(record_bytes, i) for i in range(16)]
    outstanding = 0

    def on_delivery(err: KafkaError | None, msg: Message, *, started: float) -> None:
        nonlocal outstanding
        outstanding -= 1
        if err is None:
            run.records += 1
            run.bytes += record_bytes
            run.latencies.append(time.perf_counter() - started)
        else:
            run.errors += 1

    # One thread, the canonical librdkafka loop: keep ``concurrency`` records outstanding, serve
    # delivery reports with poll().
    begin = time.monotonic()
    deadline = begin + seconds
    i = 0
    while time.monotonic() < deadline:
        while outstanding < concurrency:
            try:
                producer.produce(
                    cfg.topic,
                    value=values[i % len(values)],
                    key=f"bench-agent-{i % concurrency}".encode(),
                    on_delivery=functools.partial(on_delivery, started=time.perf_counter()),
                )
            except BufferError:
                break
            outstanding += 1
            i += 1
        producer.poll(0.005)
    producer.flush(delivery_timeout + 1)
    run.seconds = time.monotonic() - begin
    return run


def writer(
    cfg: KafkaLogConfig,
    *,
    record_bytes: int = 50_000,
    seconds: float = 10.0,
    concurrency: int = 64,
    delivery_timeout: float = 8.0,
) -> ProducerRun:
    from lossproof.log.kafka import KafkaLogWriter

    run = ProducerRun(f"KafkaLogWriter.append ({concurrency} concurrent, {record_bytes // 1000} KB records)")
    values = [_value(record_bytes, i) for i in range(16)]

    async def main() -> None:
        w = KafkaLogWriter(
            cfg.model_copy(update={"delivery_timeout_seconds": delivery_timeout}),
            append_timeout=delivery_timeout + 2,
            retention_check_seconds=3600,
        )
        await w.start()
        begin = time.monotonic()
        deadline = begin + seconds

        async def task(a: int) -> None:
            i = a
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    await w.append(f"bench-agent-{a}".encode(), values[i % len(values)])
                except LogUnavailable:
                    run.errors += 1
                    await asyncio.sleep(0.05)
                    continue
                run.latencies.append(time.perf_counter() - started)
                run.records += 1
                run.bytes += record_bytes
                i += concurrency

        await asyncio.gather(*(task(a) for a in range(concurrency)))
        run.seconds = time.monotonic() - begin
        await w.close()

    asyncio.run(main())
    return run


class _LogSummary(logging.Handler):
    """Counts librdkafka's log lines instead of printing them (an unreachable cluster logs one
    FAIL line per connection attempt); the CLI prints one summary line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        lines = record.getMessage().strip().splitlines()
        self.last = lines[0][:300] if lines else ""

    def line(self) -> str | None:
        if not self.count:
            return None
        return f"librdkafka logged {self.count} warnings/errors (last: {self.last})"


@contextlib.contextmanager
def quiet_librdkafka() -> Iterator[_LogSummary]:
    """librdkafka's warnings are counted, not printed, while inside."""
    from lossproof.log.kafka.common import librdkafka_logger

    lg = librdkafka_logger()
    handler = _LogSummary()
    saved = lg.propagate
    lg.addHandler(handler)
    lg.propagate = False
    try:
        yield handler
    finally:
        lg.removeHandler(handler)
        lg.propagate = saved


def check_topic(cfg: KafkaLogConfig, timeout: float = 5.0) -> None:
    """A one-line error unless the cluster answers and the topic exists (before measuring anything)."""
    from confluent_kafka.admin import AdminClient

    from lossproof.log.base import LogError
    from lossproof.log.kafka import admin as kadmin
    from lossproof.log.kafka.common import admin_conf

    try:
        info = kadmin.describe_topic(AdminClient(admin_conf(cfg)), cfg.topic, timeout)
    except LogUnavailable as e:
        raise click.ClickException(f"Kafka at {cfg.bootstrap_servers}: {e.reason}") from None
    except LogError as e:
        raise click.ClickException(str(e)) from None
    if info is None:
        raise click.ClickException(
            f"topic {cfg.topic!r} does not exist at {cfg.bootstrap_servers} (create it: lossproof kafka init)"
        )


@click.command("kafka")
@click.option("--bootstrap-servers", required=True, envvar="LOSSPROOF_KAFKA_BOOTSTRAP")
@click.option("--topic", required=True, help="An existing topic (its records are kept: use a bench topic).")
@click.option("--record-bytes", type=click.IntRange(1, 16 * 2**20), default=50_000, show_default=True)
@click.option("--seconds", type=finite_float(1, 600), default=10.0, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option("--unsafe", is_flag=True, help="The topic is a 1-node/RF 1 dev topic.")
def kafka_bench_cmd(
    bootstrap_servers: str, topic: str, record_bytes: int, seconds: float, concurrency: int, unsafe: bool
) -> None:
    """Acked records/s and MiB/s of the raw librdkafka producer and of KafkaLogWriter, same settings."""
    from lossproof.log.base import LogError

    if not bootstrap_servers.strip():
        raise click.ClickException("--bootstrap-servers is empty")
    try:
        cfg = KafkaLogConfig(bootstrap_servers=bootstrap_servers, topic=topic, unsafe=unsafe)
    except ValidationError as e:
        first = e.errors()[0]
        field = "--" + ".".join(str(p) for p in first["loc"]).replace("_", "-")
        raise click.ClickException(f"{field}: {first['msg']} (got {first.get('input')!r})") from None
    with quiet_librdkafka() as logs:
        try:
            check_topic(cfg)
            raw = raw_producer(cfg, record_bytes=record_bytes, seconds=seconds, concurrency=concurrency)
            click.echo(raw.line())
            if not raw.records:
                raise click.ClickException(
                    f"the raw producer got no record acknowledged in {raw.seconds:.0f}s "
                    f"({raw.errors} delivery errors)"
                )
            w = writer(cfg, record_bytes=record_bytes, seconds=seconds, concurrency=concurrency)
            click.echo(w.line())
            if not w.records:
                raise click.ClickException(
                    f"KafkaLogWriter got no record acknowledged in {w.seconds:.0f}s ({w.errors} errors)"
                )
        except LogError as e:
            raise click.ClickException(f"Kafka at {cfg.bootstrap_servers}: {e}") from None
        except click.ClickException as e:
            if logs.count:  # still one line
                raise click.ClickException(f"{e.message} [{logs.line()}]") from None
            raise
    if logs.count:
        click.echo(logs.line(), err=True)
    click.echo(f"KafkaLogWriter / raw producer: {w.mib_per_s / raw.mib_per_s:.2f}")
    click.echo(load_line())
