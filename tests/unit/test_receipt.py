"""Acknowledged means durable, by construction: a 2xx is built only from the log's durable receipt.

A receipt cannot be made by hand; the ack builders refuse anything else; an ingest whose log writer
returns anything but a receipt (a position, ``None``) answers no 2xx, for the native protocol and
the third-party ones alike; and the early acknowledgement of chaos scenario 5 lives in a writer
handed in from outside (chaos/early_ack.py), not in a branch of the ingest path.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import dataclasses
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import lossproof
from lossproof import config as config_mod
from lossproof.chaos.early_ack import EARLY_ACK, EarlyAckWriter
from lossproof.faults import Faults, write_faults
from lossproof.log.base import LogWriter, Position, Receipt
from lossproof.receipt import ReceiptIssuer, acked, checked, covers_a_record, nothing_to_keep
from lossproof.server import build_app
from lossproof.store.access import StoreAccess
from lossproof.store.factory import open_store
from lptest.pipeline import report
from lptest.proto import rw_body

SRC = Path(lossproof.__file__).parent


def test_a_receipt_cannot_be_made_by_hand() -> None:
    with pytest.raises(TypeError, match="issued only by a durable writer"):
        Receipt("log", 0, 1, ((1, 3),))
    with pytest.raises(TypeError):
        Receipt("log", 0, 1, ((1, 3),), 1, object())

    class Issuer(ReceiptIssuer):
        pass

    genuine = Issuer()._receipt(0, 1, [(1, 3)])
    with pytest.raises((TypeError, ValueError)):  # nor made from a genuine one with other seqs
        dataclasses.replace(genuine, seqs=((1, 1000),))


def test_a_receipt_is_not_copied_pickled_or_restored_into_another() -> None:
    genuine = ReceiptIssuer()._receipt(0, 1, [(1, 3)])
    assert copy.copy(genuine) is genuine and copy.deepcopy(genuine) is genuine
    with pytest.raises(TypeError):
        pickle.dumps(genuine)
    with pytest.raises(TypeError):
        nothing_to_keep().__setstate__(("log", 0, 0, ((1, 2),), 1))
    assert covers_a_record(genuine) is genuine
    with pytest.raises(TypeError, match="nothing durable"):
        covers_a_record(nothing_to_keep())  # a writer's answer for data must hold a record


def test_an_ack_needs_a_receipt() -> None:
    for fake in (Position(0, 1), None, [[1, 3]], {"acked": [[1, 3]]}):
        with pytest.raises(TypeError, match="Receipt"):
            acked(fake)
        with pytest.raises(TypeError):
            checked(fake)

    class Issuer(ReceiptIssuer):
        pass

    receipt = Issuer()._receipt(2, 40, [(1, 3), (5, 5)])
    assert (receipt.partition, receipt.offset, receipt.records) == (2, 40, 1)
    assert acked(receipt) == [[1, 3], [5, 5]]
    assert acked(nothing_to_keep()) == []  # a request with nothing to keep acknowledges nothing


class _Writer(LogWriter):
    """Holds appends in memory; ``answer`` decides what ``append`` returns."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.records: list[bytes] = []

    async def start(self) -> None:
        pass

    async def append(self, key: bytes, value: bytes, seqs: Sequence[tuple[int, int]] = ()) -> Any:
        self.records.append(value)
        if self.answer == "position":
            return Position(0, len(self.records))
        if self.answer == "none":
            return None
        if self.answer == "nothing":
            return nothing_to_keep()
        return self._receipt(0, len(self.records), seqs)

    def healthy(self) -> tuple[bool, str]:
        return True, ""

    async def close(self) -> None:
        pass


def _answers(tmp_path: Path, writer: LogWriter) -> dict[str, tuple[int, str]]:
    key = "lp_receipt_test_key_0123456789abcdef"
    cfg, _ = config_mod.init_data_dir(tmp_path / "data", key)
    open_store(cfg).close()  # a store to read from (the ingest checks stored seqs)
    store = StoreAccess(lambda: open_store(cfg, readonly=True))
    auth = {"Authorization": f"Bearer {key}"}
    native = json.dumps({"agent": "a", "reports": [report(1), report(2)]}).encode()
    rw = rw_body([({"__name__": "up", "job": "j"}, [(1_767_225_600_000, 1.0)])])
    gauge = {"dataPoints": [{"asDouble": 1.0, "timeUnixNano": "1767225600000000000"}]}
    otlp = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", "gauge": gauge}]}]}]}
    requests = {
        "native": ("/v1/reports", native, {**auth, "Content-Type": "application/json"}),
        "prom-rw": (
            "/api/v1/write",
            rw,
            {
                **auth,
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        ),
        "otlp": ("/v1/metrics", json.dumps(otlp).encode(), {**auth, "Content-Type": "application/json"}),
        "influx": ("/api/v2/write?org=o&bucket=b", b"cpu,host=a v=1 1767225600000000000\n", auth),
    }

    async def run() -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        client = TestClient(TestServer(build_app(cfg, writer, store, CollectorRegistry())))
        await client.start_server()
        try:
            for name, (path, body, headers) in requests.items():
                async with client.post(path, data=body, headers=headers) as r:
                    out[name] = (r.status, await r.text())
        finally:
            await client.close()
            store.close()
        return out

    return asyncio.run(run())


def test_ingest_answers_2xx_from_a_receipt(tmp_path: Path) -> None:
    writer = _Writer("receipt")
    answers = _answers(tmp_path, writer)
    assert {name: status for name, (status, _) in answers.items()} == {
        "native": 200,
        "prom-rw": 204,
        "otlp": 200,
        "influx": 204,
    }
    assert json.loads(answers["native"][1])["acked"] == [[1, 2]]
    assert len(writer.records) == 4


@pytest.mark.parametrize("answer", ["position", "none", "nothing"])
def test_ingest_without_a_receipt_answers_no_2xx(tmp_path: Path, answer: str) -> None:
    answers = _answers(tmp_path, _Writer(answer))
    for name, (status, body) in answers.items():
        assert status >= 500, (name, status, body)


def test_the_early_ack_is_a_writer_handed_in(tmp_path: Path) -> None:
    """Scenario 5's lie drops the append and still issues a receipt, only while switched on."""
    faults = tmp_path / "faults.json"
    inner = _Writer("receipt")
    writer = EarlyAckWriter(inner, Faults(str(faults)))

    async def run() -> tuple[Receipt, Receipt]:
        before = await writer.append(b"k", b"kept", [(1, 1)])
        write_faults(str(faults), {EARLY_ACK: {}})
        lie = await writer.append(b"k", b"dropped", [(2, 2)])
        return before, lie

    before, lie = asyncio.run(run())
    assert acked(before) == [[1, 1]] and acked(lie) == [[2, 2]]
    assert inner.records == [b"kept"]


def test_no_fault_branch_in_the_ack_path() -> None:
    """Ingest reads no fault switch: faults come in as wrappers. (The fallback receiver's come in
    through the journal writer that its composition root, ``serve``, makes.)"""
    for path in [*sorted((SRC / "ingest").glob("*.py")), SRC / "server.py"]:
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "Faults" not in names | attrs and "lossproof.faults" not in mods, path
        assert "ack_before_durable" not in path.read_text(), path
