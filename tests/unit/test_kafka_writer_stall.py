"""The Kafka writer's stall (LogWriter.stalled_seconds): records waiting past the delivery timeout
with no delivery report served mean the producer's poll thread is stuck; any report is progress."""

from __future__ import annotations

import asyncio
from typing import Any

from lossproof.config import KafkaLogConfig
from lossproof.log.kafka.writer import KafkaLogWriter


class _Msg:
    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class _Producer:
    """Takes records and serves no delivery report until told: a poll thread that hangs."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.callbacks.append(on_delivery)


def test_stalled_only_past_the_delivery_timeout_and_until_a_report() -> None:
    w = KafkaLogWriter(KafkaLogConfig(delivery_timeout_seconds=0.2), append_timeout=5.0)
    producer = _Producer()
    w._producer, w._started, w._invalid = producer, True, None  # type: ignore[assignment]

    async def main() -> None:
        assert w.stalled_seconds() == 0.0  # idle
        append = asyncio.create_task(w.append(b"k", b"v"))
        await asyncio.sleep(0.5)
        assert w.stalled_seconds() == 0.0  # within the delivery timeout (and the report's way)
        await asyncio.sleep(1.0)
        assert w.stalled_seconds() > 0.0
        producer.callbacks[0](None, _Msg())
        receipt = await append
        assert receipt.offset == 7
        assert w.stalled_seconds() == 0.0

    asyncio.run(main())
