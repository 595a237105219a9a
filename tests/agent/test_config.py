"""A bad agent config is one line naming the file and the key, a non-zero exit, and no traceback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel
from pytest import CaptureFixture

from lossproof.agent.config import AgentConfig, RelayConfig, load_config
from lossproof.config import ConfigError, check_path
from lptest import TESTS
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


# What a tester found the agent accepting (or dying on with a traceback): each must now be one line
# naming the setting, and a non-zero exit, from the real command.
PROCESS_GOOD = GOOD.replace("8080", "9") + "statsd_port = 0\nmetrics_port = 0\n"


@pytest.mark.process
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        # a NUL byte reached os.mkdir: "ValueError: embedded null byte" with a traceback
        ('spool_dir = "a\\u0000b"\n', "spool_dir: 'a\\x00b' contains a NUL byte"),
        ('spool_dir = ""\n', "spool_dir: must not be empty"),
        # accepted before: a busy loop, or a stop that never ends
        ("interval_seconds = 1e-300\n", "interval_seconds: Input should be greater than or equal to 0.01"),
        ("shutdown_drain_seconds = 1e308\n", "shutdown_drain_seconds: Input should be less than or equal"),
        ("request_timeout_seconds = 1e308\n", "request_timeout_seconds: Input should be less than or equal"),
        ("replay_window_seconds = 1e308\n", "replay_window_seconds: Input should be less than or equal"),
        ('[relay]\nlisten = "0.0.0.0:4318"\n', ": relay: listen '0.0.0.0:4318' is not a loopback address"),
    ],
)
def test_bad_value_is_one_line_from_the_process(tmp_path: Path, extra: str, needle: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(PROCESS_GOOD + extra)
    # the timeout turns an agent that starts anyway (the old behaviour) into a failure, not a hang
    r = subprocess.run(agent_argv(path), capture_output=True, text=True, timeout=30, cwd=tmp_path)
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert needle in err and str(path) in err, err
    assert "relay: relay:" not in err, err  # the location is said once


# (setting, least accepted, just below it, most accepted, just above it)
BOUNDS = [
    ("interval_seconds", 0.01, 0.009, 3600.0, 3600.5),
    ("request_timeout_seconds", 0.1, 0.09, 3600.0, 3601.0),
    ("backoff_max_seconds", 0.01, 0.0, 3600.0, 3601.0),
    ("probe_interval_seconds", 0.1, 0.01, 86400.0, 86401.0),
    ("fallback_after_seconds", 0.0, -1.0, 365 * 86400.0, 365 * 86400.0 + 1),
    ("shutdown_drain_seconds", 0.0, -0.1, 3600.0, 3601.0),
    ("replay_window_seconds", 0.0, -1.0, 365 * 86400.0, 366 * 86400.0),
    ("max_spool_bytes", 4096, 4095, 2**40, 2**40 + 1),
    ("replay_window_bytes", 0, -1, 2**40, 2**40 + 1),
    ("spool_segment_bytes", 4096, 4095, 2**30, 2**30 + 1),
    ("max_batch_bytes", 1024, 1023, 2**30, 2**30 + 1),
]


@pytest.mark.parametrize(("name", "least", "below", "most", "above"), BOUNDS)
def test_durations_and_sizes_are_bounded(
    name: str, least: float, below: float, most: float, above: float
) -> None:
    base = {"api_key": "k", "primary_url": "http://a", "backoff_initial_seconds": 0.01}
    for ok in (least, most):
        assert getattr(AgentConfig.model_validate({**base, name: ok}), name) == ok
    for bad in (below, above, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=name):
            AgentConfig.model_validate({**base, name: bad})


def test_backoff_initial_above_max_is_taken_as_max() -> None:
    """What the backoff always did (the cap wins); refusing it stopped agents whose file had worked."""
    base = {"api_key": "k", "primary_url": "http://a"}
    cfg = AgentConfig.model_validate({**base, "backoff_initial_seconds": 2, "backoff_max_seconds": 2})
    assert cfg.backoff_initial_seconds == cfg.backoff_max_seconds == 2
    cfg = AgentConfig.model_validate({**base, "backoff_initial_seconds": 60})  # the max is 30
    assert cfg.backoff_initial_seconds == cfg.backoff_max_seconds == 30


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_spool_bytes", 2**40 + 1),
        ("max_body_bytes", 2**30 + 1),
        ("max_decoded_bytes", 2**30 + 1),
    ],
)
def test_relay_sizes_and_durations_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RelayConfig.model_validate({field: value})


def test_check_path() -> None:
    for ok in ("spool", ".", "/var/lib/x", Path("sp"), 3):  # 3: left to the field's own type check
        assert check_path(ok) == ok
    for bad, msg in [
        ("a\x00b", "contains a NUL byte"),
        (Path("a\x00b"), "contains a NUL byte"),
        ("", "must not be empty"),
        ("  ", "must not be empty"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_path(bad)


def test_path_settings_are_checked_in_process_too(tmp_path: Path) -> None:
    """An in-process agent (Agent(AgentConfig(...))) gets the same check as the file."""
    with pytest.raises(ValueError, match="spool_dir"):
        AgentConfig(api_key="k", primary_url="http://a", spool_dir=Path("x\x00y"))
    path = tmp_path / "agent.toml"
    path.write_text(GOOD + 'spool_dir = "a\\u0000b"\n')
    with pytest.raises(ConfigError, match=r"agent\.toml: spool_dir: 'a\\x00b' contains a NUL byte"):
        load_config(path)


_UNITS = {"ms": 0.001, "s": 1, "h": 3600, "d": 86400, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_BOUND = re.compile(r"(≥|>|≤|<) ([0-9.]+)(?: (ms|s|h|d|KiB|MiB|GiB|TiB))?(?:,|$)")
_SIGNS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _model_bounds(model: type[BaseModel]) -> dict[str, set[tuple[str, float]]]:
    out: dict[str, set[tuple[str, float]]] = {}
    for name, info in model.model_fields.items():
        found = {
            (sign, round(float(v), 9))
            for m in info.metadata
            for attr, sign in _SIGNS.items()
            if (v := getattr(m, attr, None)) is not None
        }
        if found:
            out[name] = found
    return out


def test_docs_show_every_bound() -> None:
    """docs/agent.md's tables give each setting's bounds as the model has them (in readable units)."""
    rows = {}
    for line in (TESTS.parent / "docs" / "agent.md").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\| `([a-z_.]+)` \| [^|]* \| ([^|]*) \|", line):
            rows[m.group(1)] = m.group(2).strip()
    wanted = {
        **_model_bounds(AgentConfig),
        **{f"relay.{k}": v for k, v in _model_bounds(RelayConfig).items()},
    }
    for name, bounds in wanted.items():
        assert name in rows, f"docs/agent.md has no row for {name}"
        shown = {
            (sign, round(float(v) * _UNITS[unit or "s"], 9)) for sign, v, unit in _BOUND.findall(rows[name])
        }
        assert shown == bounds, f"{name}: docs say {rows[name]!r}, the model {sorted(bounds)}"
