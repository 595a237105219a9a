"""The dev cluster's KRaft cluster id must never look like a command-line option to kafka-storage."""

from __future__ import annotations

import base64
import uuid

from lossproof.dev.kafka import new_cluster_id


def test_cluster_id_never_starts_with_a_dash() -> None:
    dashed = uuid.UUID(bytes=base64.urlsafe_b64decode("-" + "A" * 21 + "=="))
    fine = uuid.uuid4()
    while base64.urlsafe_b64encode(fine.bytes).startswith(b"-"):  # 1 in 64: the test's own flake
        fine = uuid.uuid4()
    # handed in, not patched: uuid.uuid4 is global, and other threads of the test process use it too
    cid = new_cluster_id(iter([dashed, dashed, fine]).__next__)
    assert not cid.startswith("-")
    assert cid == base64.urlsafe_b64encode(fine.bytes).decode().rstrip("=")
    assert all(not new_cluster_id().startswith("-") for _ in range(2000))
