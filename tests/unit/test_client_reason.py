"""A client's 503 names what failed, not where on the server's disk (httputil.client_reason)."""

from __future__ import annotations

import pytest

from lossproof.httputil import client_reason, unavailable


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        (
            "log roll failed on /var/lib/lp/log/p0/00000007.seg: [Errno 28] No space left on device",
            "log roll failed on <path>: [Errno 28] No space left on device",
        ),
        (
            "fsync failed: [Errno 5] Input/output error: '/d/log/p0/1.seg'",
            "fsync failed: [Errno 5] Input/output error: '<path>'",
        ),
        ("no durable confirmation within 10s", "no durable confirmation within 10s"),
        ("Kafka at http://127.0.0.1:9092/x: timed out", "Kafka at http://127.0.0.1:9092/x: timed out"),
        ("wrote 3/4 bytes", "wrote 3/4 bytes"),
    ],
)
def test_paths_are_replaced_and_nothing_else(reason: str, shown: str) -> None:
    assert client_reason(reason) == shown


def test_the_503_carries_no_path() -> None:
    e = unavailable("log", "segment /srv/lossproof/log/p0/00000001.seg is damaged", 1)
    assert e.status == 503 and "/srv" not in e.message and "<path>" in e.message
