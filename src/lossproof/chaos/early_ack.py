"""Chaos scenario 5's ingest process: the product's own ingest, with a log writer that can lie.

The first post-mortem's bug was an API that answered OK before (without) the log's write. The
scenario reproduces it to prove the audit catches it, and does so from outside the product: the
ingest path has no branch for it. This module runs ``lossproof ingest`` with its log writer wrapped
in :class:`EarlyAckWriter`, which, while the topology's fault file holds ``ingest.ack_before_durable``,
drops each append and issues a receipt for it all the same.

Run as ``python -m lossproof.chaos.early_ack --data-dir D [--port P] [--host H]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from lossproof.cli import data_dir_option, log_format_option, run_ingest
from lossproof.faults import Faults
from lossproof.log.base import LogWriter, Receipt

EARLY_ACK = "ingest.ack_before_durable"


class EarlyAckWriter(LogWriter):
    """``inner``, except that while ``switch`` holds :data:`EARLY_ACK` an append is dropped and
    acknowledged as durable: the loss is unrecoverable, which the audit must report."""

    def __init__(self, inner: LogWriter, switch: Faults | None = None) -> None:
        self.inner = inner
        self.switch = switch if switch is not None else Faults()

    async def start(self) -> None:
        await self.inner.start()

    async def append(self, key: bytes, value: bytes, seqs: Sequence[tuple[int, int]] = ()) -> Receipt:
        if self.switch.get(EARLY_ACK) is not None:
            return self._receipt(-1, -1, seqs)
        return await self.inner.append(key, value, seqs)

    def healthy(self) -> tuple[bool, str]:
        return self.inner.healthy()

    def stalled_seconds(self) -> float:
        return self.inner.stalled_seconds()

    async def close(self) -> None:
        await self.inner.close()


@click.command()
@data_dir_option
@click.option("--port", type=click.IntRange(0, 65535), default=None)
@click.option("--host", default=None)
@log_format_option
def main(data_dir: Path, port: int | None, host: str | None, log_format: str) -> None:
    """``lossproof ingest`` with :class:`EarlyAckWriter` around its log writer."""
    run_ingest(data_dir, port, host, log_format, EarlyAckWriter)


if __name__ == "__main__":
    main()
