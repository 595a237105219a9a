"""A bad agent config is one line naming the file and the key, a non-zero exit, and no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pytest import CaptureFixture

from lossproof.agent.config import load_config
from lossproof.config import ConfigError
from lptest.agent import agent_argv
from lptest.cli import run_cli

GOOD = 'api_key = "k"\nprimary_url = "http://127.0.0.1:8080"\n'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD + "max_in_flight = 'two'\n", "max_in_flight"),
        (GOOD + "max_in_flight = 0\n", "max_in_flight"),
        (GOOD + "fallback_url = 'http://x'\n", "fallback_url: unknown key"),
        (GOOD + "fallback_urls = ['ftp://x']\n", "fallback_urls"),
        (GOOD + "statsd_port = 70000\n", "statsd_port"),
        (GOOD + "compression = 'lz4'\n", "compression"),
        (GOOD + "[labels]\nhost = 3\n", "labels.host"),
        ('api_key = "k"\n', "primary_url: required key is missing"),
        ('api_key = "k"\nprimary_url = "localhost:8080"\n', "primary_url"),
        ('api_key = "k"\nprimary_url = "http://127.0.0.1:99999"\n', "primary_url"),
        (GOOD + "fallback_urls = ['http://127.0.0.1:0']\n", "fallback_urls"),
        (GOOD + "fallback_urls = ['http://exa mple:80']\n", "fallback_urls"),
        (GOOD + "interval_seconds = nan\n", "interval_seconds"),
        ('primary_url = "http://a"\n', "api_key"),
        ('primary_url = "http://a"\napi_key_env = "LOSSPROOF_TEST_SURELY_UNSET"\n', "api_key_env"),
        (GOOD + "interval_seconds = \n", "invalid TOML"),
    ],
)
def test_bad_config_cli(
    tmp_path: Path, text: str, needle: str, monkeypatch: pytest.MonkeyPatch, capsys: CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    r = run_cli(monkeypatch, capsys, "agent", "--config", str(path))
    assert r.code != 0
    err = r.err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert needle in err and str(path) in err, err


def test_missing_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: CaptureFixture[str]
) -> None:
    r = run_cli(monkeypatch, capsys, "agent", "--config", str(tmp_path / "nope.toml"))
    assert r.code != 0
    assert "nope.toml: not found" in r.err


def test_good_config_and_relative_spool_dir(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD + 'agent_id = "X"\nspool_dir = "sp"\n')
    cfg = load_config(path)
    assert cfg.spool_dir == tmp_path / "sp"
    assert cfg.agent_id == "X"
    path.write_text('api_key_env = "MY_KEY"\nprimary_url = "http://a/"\n')
    assert load_config(path, env={"MY_KEY": "secret"}).key({"MY_KEY": "secret"}) == "secret"
    assert load_config(path, env={"MY_KEY": "secret"}).primary_url == "http://a"
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        load_config(path, env={})


@pytest.mark.process
def test_spool_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    """As a process: the spool's lock is held by another process, as when two agents share a dir."""
    from lossproof.agent.spool import Spool

    path = tmp_path / "agent.toml"
    path.write_text(GOOD + "spool_dir = 'sp'\nstatsd_port = 0\nmetrics_port = 0\n")
    with Spool(tmp_path / "sp"):
        r = subprocess.run(agent_argv(path), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "in use by another agent" in r.stderr.strip().splitlines()[-1]
