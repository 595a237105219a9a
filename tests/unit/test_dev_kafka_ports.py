"""Dev clusters on one machine never pick each other's ports, even those of a node that is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lossproof.dev import kafka
from lossproof.dev.kafka import DevCluster, _PortClaims


@pytest.fixture
def claims_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(kafka.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    return tmp_path / "tmp" / "lossproof-dev-kafka-ports"


def test_a_port_claimed_by_another_cluster_is_not_picked(
    tmp_path: Path, claims_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = DevCluster(tmp_path / "a"), DevCluster(tmp_path / "b")
    a_ports = {a._pick_port(set()) for _ in range(40)}
    # cluster a's state lists its ports (its nodes may all be down: the ports are still its)
    (tmp_path / "a").mkdir()
    nodes = [{"id": i, "broker_port": p, "controller_port": p} for i, p in enumerate(sorted(a_ports))]
    (tmp_path / "a" / kafka.STATE_FILE).write_text(json.dumps({"nodes": nodes}))
    offered = iter([*sorted(a_ports), 1])

    def free_port(taken: set[int] | None = None) -> int:
        for p in offered:  # every port of a first, then one nobody holds
            if p not in (taken or set()):
                return p
        raise AssertionError("offered every port")

    monkeypatch.setattr(kafka, "_free_port", free_port)
    assert b._pick_port(set()) == 1
    assert json.loads((claims_dir / "1").read_text())["owner"] == str(tmp_path / "b")


def test_stale_claims_are_taken_over(tmp_path: Path, claims_dir: Path) -> None:
    claims = _PortClaims(tmp_path / "new")
    claims_dir.mkdir(parents=True)
    # a cluster that now lists other ports, and a creator that died before writing any state
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / kafka.STATE_FILE).write_text(
        json.dumps({"nodes": [{"broker_port": 7, "controller_port": 8}]})
    )
    (claims_dir / "5").write_text(json.dumps({"owner": str(tmp_path / "old"), "pid": 1}))
    (claims_dir / "6").write_text(json.dumps({"owner": str(tmp_path / "gone"), "pid": 2**22 + 12345}))
    (claims_dir / "7").write_text(json.dumps({"owner": str(tmp_path / "old"), "pid": 1}))
    (claims_dir / "9").write_text("not json")
    with claims.locked():
        assert not claims.held_elsewhere(5)
        assert not claims.held_elsewhere(6)
        assert claims.held_elsewhere(7)
        assert not claims.held_elsewhere(9)


def test_ports_of_one_cluster_are_distinct(tmp_path: Path, claims_dir: Path) -> None:
    c = DevCluster(tmp_path / "c")
    picked: set[int] = set()
    ports = [c._pick_port(picked) for _ in range(200)]
    assert len(set(ports)) == 200
