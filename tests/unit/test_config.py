from __future__ import annotations

from pathlib import Path

import pytest

from lossproof import config


def test_first_start_creates_config_with_a_hashed_key(tmp_path: Path) -> None:
    cfg, key = config.init_data_dir(tmp_path / "d", None)
    assert key is not None
    text = (tmp_path / "d" / "lossproof.toml").read_text()
    assert key not in text and config.hash_key(key) in text
    assert cfg.tenant_for_key(key) == "default"
    again, key2 = config.init_data_dir(tmp_path / "d", None)
    assert key2 is None and again.tenant_for_key(key) == "default"


def test_explicit_key_is_not_printed_and_env_key_works(tmp_path: Path) -> None:
    _, key = config.init_data_dir(tmp_path, "lp_mine")
    assert key is None
    cfg = config.load(tmp_path, env={"LOSSPROOF_API_KEY": "lp_other"})
    assert cfg.tenant_for_key("lp_mine") == "default"
    assert cfg.tenant_for_key("lp_other") == "default"
    assert cfg.tenant_for_key("lp_nope") is None


def test_env_overrides(tmp_path: Path) -> None:
    config.init_data_dir(tmp_path, "k")
    cfg = config.load(tmp_path, env={"LOSSPROOF_SERVER_PORT": "9123", "LOSSPROOF_LOG_DIR": "/x/log"})
    assert cfg.server.port == 9123
    assert cfg.log_dir == Path("/x/log")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nport = 'many'\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nbogus = 1\n", "server.bogus"),
        ("[server\n", "invalid TOML"),
        ("[ledger]\nreplay_grace_seconds = inf\n", "ledger.replay_grace_seconds"),
        ("[ledger]\nreplay_grace_seconds = 1e300\n", "ledger.replay_grace_seconds"),
        ("[server]\nappend_timeout_seconds = nan\n", "server.append_timeout_seconds"),
        ("[server]\nhost = 'a..b'\n", "server.host"),
        ("[server]\ningest_processes = 0\n", "server.ingest_processes"),
        ("[server]\ningest_processes = 2\n", "server.ingest_processes = 2 needs log.partitions >= 2"),
        ("[query]\nwindows = 'prometheus4'\n", "query.windows: Input should be 'prometheus3' or"),
        ('[store]\npath = "a\\u0000b"\n', "store.path: 'a\\x00b' contains a NUL byte: not a usable path"),
        ('[log]\ndir = "a\\u0000b"\n', "log.dir: 'a\\x00b' contains a NUL byte"),
        ("[log]\ndir = ' '\n", "log.dir: must not be empty"),
        ("[log.kafka]\nretention_check_seconds = 1e-300\n", "log.kafka.retention_check_seconds"),
    ],
)
def test_bad_config_names_the_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "lossproof.toml").write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(tmp_path, env={})
    msg = str(e.value)
    assert needle in msg and "lossproof.toml" in msg and "\n" not in msg


def test_query_windows_default_to_prometheus3(tmp_path: Path) -> None:
    config.init_data_dir(tmp_path, "k")
    assert config.load(tmp_path, env={}).query.windows == "prometheus3"
    cfg = config.load(tmp_path, env={"LOSSPROOF_QUERY_WINDOWS": "prometheus2"})
    assert cfg.query.windows == "prometheus2"


def test_ingest_processes_share_kafka_or_need_a_partition_each(tmp_path: Path) -> None:
    (tmp_path / "lossproof.toml").write_text("[server]\ningest_processes = 2\n[log]\npartitions = 2\n")
    assert config.load(tmp_path, env={}).server.ingest_processes == 2
    (tmp_path / "lossproof.toml").write_text("[server]\ningest_processes = 3\n[log]\nbackend = 'kafka'\n")
    assert config.load(tmp_path, env={}).server.ingest_processes == 3


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "none", env={})


def test_env_values_are_bounded_too(tmp_path: Path) -> None:
    config.init_data_dir(tmp_path, "k")
    with pytest.raises(config.ConfigError, match="replay_grace_seconds"):
        config.load(tmp_path, env={"LOSSPROOF_LEDGER_REPLAY_GRACE_SECONDS": "inf"})
    with pytest.raises(config.ConfigError, match=r"server\.host"):
        config.load(tmp_path, env={"LOSSPROOF_SERVER_HOST": "\udcff"})  # a non-UTF-8 byte


def test_a_key_that_is_not_utf8_hashes_to_no_tenant(tmp_path: Path) -> None:
    config.init_data_dir(tmp_path, "k")
    cfg = config.load(tmp_path, env={})
    assert cfg.tenant_for_key("\udcff\udcfe") is None  # how a non-UTF-8 header arrives


@pytest.mark.process
def test_concurrent_key_creation_keeps_every_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    config.init_data_dir(tmp_path, "k")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lossproof",
                "keys",
                "create",
                "--data-dir",
                str(tmp_path),
                "--tenant",
                f"t{i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    keys = {}
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        keys[f"t{i}"] = out.strip()
    cfg = config.load(tmp_path, env={})
    assert {t: cfg.tenant_for_key(k) for t, k in keys.items()} == {t: t for t in keys}
