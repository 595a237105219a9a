"""Markers for the test tiers (see DEVELOPING.md) and the ``pipeline`` fixtures.

``./scripts/test fast`` runs what carries none of the markers below: every package, in this process.
A test is marked by where it lives (``kafka/``, ``postgres/``), by the backend it is
parametrized with (``kafka``, ``postgres``), by a fixture that starts processes, or explicitly
(``pytestmark = pytest.mark.process`` in a module that starts its own).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest import TESTS, require
from lptest.pipeline import Pipeline, free_port

DIRECTORY_MARKS = {"kafka": "kafka", "postgres": "postgres"}
BACKEND_MARKS = {"kafka", "postgres"}
# Fixtures that start processes: lossproof up, the fallback receiver, the shared dashboard pipeline.
PROCESS_FIXTURES = {"pipeline", "pipeline_factory", "fallback", "fallback_factory", "dash"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        top = Path(item.path).resolve().relative_to(TESTS).parts[0]
        marks = {DIRECTORY_MARKS[top]} if top in DIRECTORY_MARKS else set()
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            marks |= {v for v in callspec.params.values() if isinstance(v, str) and v in BACKEND_MARKS}
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            marks.add("process")
        for m in marks:
            item.add_marker(m)
        if item.get_closest_marker("kafka"):
            # One worker runs every Kafka test: they share one 3-node cluster per worker process, and
            # two clusters at once would starve a 2-core machine.
            item.add_marker(pytest.mark.xdist_group("kafka"))
        elif item.get_closest_marker("chaos"):
            # Whole topologies under timed faults, one at a time (and the network namespaces' subnets
            # are picked at random per run).
            item.add_marker(pytest.mark.xdist_group("chaos"))


@pytest.fixture
def pipeline_factory(tmp_path: Path) -> Iterator[type[Pipeline]]:
    started: list[Pipeline] = []

    def make(name: str = "data") -> Pipeline:
        p = Pipeline(tmp_path / name, free_port(), "lp_test_" + secrets.token_hex(16))
        started.append(p)
        return p

    yield make  # type: ignore[misc]
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.kill9()


@pytest.fixture
def pipeline(pipeline_factory) -> Pipeline:  # type: ignore[no-untyped-def]
    p: Pipeline = pipeline_factory()
    p.start()
    return p


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/tiny``: a real file system that fills up (a 2 MiB tmpfs, as in the disk-full test
    of the pipeline; needs root), unmounted afterwards. (tests/fallback: name a fallback ``tiny`` to
    put its data dir there; its logs and fault file stay in ``tmp_path``.)"""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode == 0
    require(mounted, "a small tmpfs mount (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
