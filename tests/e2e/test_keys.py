"""Keys while the pipeline runs: `keys create`, `keys rotate` and `keys list` on the real command line,
a running app that takes a new key at its first use and drops a rotated one, SIGHUP through `up`."""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossproof import config as config_mod
from lptest.cli import run_cli
from lptest.inproc import InProcess
from lptest.pipeline import Pipeline, report


@pytest.fixture
def p(tmp_path: Path) -> Iterator[InProcess]:
    pl = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    pl.start(worker=False)
    yield pl
    pl.stop()


def _cli(mp: pytest.MonkeyPatch, cap: pytest.CaptureFixture[str], p: InProcess, *args: str) -> str:
    r = run_cli(mp, cap, "keys", *args, "--data-dir", str(p.data_dir))
    assert r.code == 0, r
    return r.out.strip()


def test_a_created_key_works_at_once_and_a_rotated_one_stops(
    p: InProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _cli(monkeypatch, capsys, p, "create", "--tenant", "team")
    # no restart, no wait: the unknown key makes the process look at the config again
    assert p.post_reports("a", [report(1)], key=key).status == 200
    new = _cli(monkeypatch, capsys, p, "rotate", "--tenant", "team")
    assert new != key
    assert p.post_reports("a", [report(2)], key=new).status == 200
    # the old key is gone once the file changed: within the poll interval at the latest
    deadline = time.monotonic() + 5
    while p.post_reports("a", [report(3)], key=key).status != 401:
        assert time.monotonic() < deadline, "the rotated key still works"
        time.sleep(0.1)
    assert p.post_reports("a", [report(3)], key=p.key).status == 200  # others untouched


def test_a_config_that_does_not_load_keeps_the_keys_in_use(p: InProcess) -> None:
    path = p.data_dir / config_mod.CONFIG_NAME
    good = path.read_text()
    path.write_text(good + "\n[server\n")
    assert p.reloader is not None
    assert p.reloader.check(force=True) is False
    assert p.post_reports("a", [report(1)]).status == 200
    assert "keys.reload_failed" in p.logs()


def test_keys_list_shows_ids_tenants_and_times_never_the_key(
    p: InProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    team = _cli(monkeypatch, capsys, p, "create", "--tenant", "team")
    _cli(monkeypatch, capsys, p, "create", "--replay")
    out = _cli(monkeypatch, capsys, p, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "TENANT", "CREATED"]
    rows = [line.split() for line in lines[1:]]
    team_id = config_mod.key_id(config_mod.hash_key(team))
    assert [team_id, "tenant", "team"] == next(r[:3] for r in rows if r[2] == "team")
    assert any(r[1] == "replay" and r[2] == "-" for r in rows)
    assert any(r[1] == "operator" for r in rows)
    created = next(r[3] for r in rows if r[0] == team_id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    assert team not in out and p.key not in out and config_mod.hash_key(team) not in out


def test_rotate_names_the_key_when_there_are_several(
    p: InProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _cli(monkeypatch, capsys, p, "create", "--tenant", "team")
    b = _cli(monkeypatch, capsys, p, "create", "--tenant", "team")
    r = run_cli(monkeypatch, capsys, "keys", "rotate", "--tenant", "team", "--data-dir", str(p.data_dir))
    assert r.code == 1 and r.err.startswith("Error: 2 keys here") and "--id" in r.err
    a_id = config_mod.key_id(config_mod.hash_key(a))
    new = _cli(monkeypatch, capsys, p, "rotate", "--tenant", "team", "--id", a_id)
    assert p.post_reports("a", [report(1)], key=new).status == 200
    assert p.post_reports("a", [report(2)], key=b).status == 200
    for args, needle in [
        (["--tenant", "nobody"], "no tenant 'nobody'"),
        (["--tenant", "team", "--id", "nope"], "no key with id 'nope'"),
        ([], "exactly one of"),
    ]:
        r = run_cli(monkeypatch, capsys, "keys", "rotate", *args, "--data-dir", str(p.data_dir))
        assert r.code == 1 and needle in r.err and len(r.err.strip().splitlines()) == 1, r


def test_keys_list_of_a_missing_data_dir_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run_cli(monkeypatch, capsys, "keys", "list", "--data-dir", str(tmp_path / "none"))
    assert r.code == 1 and "not found" in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.process
def test_sighup_reaches_the_ingest_process_and_stops_nothing(pipeline: Pipeline) -> None:
    assert pipeline.proc is not None
    os.kill(pipeline.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while '"keys.reloaded"' not in pipeline.logs():
        assert time.monotonic() < deadline, pipeline.logs()[-2000:]
        time.sleep(0.1)
    assert pipeline.proc.poll() is None
    assert "up.child_exited" not in pipeline.logs()  # the worker was not hung up on
    assert pipeline.post_reports("a", [report(1)]).status == 200
