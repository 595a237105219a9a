"""The health page's fallback backlog: a real `lossproof fallback` scraped by a real `lossproof up`
configured with ``[health] fallback_urls`` (here through LOSSPROOF_HEALTH_FALLBACK_URLS)."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lossproof import config
from lptest.fallback import Fallback, kill_quietly
from lptest.pipeline import HTTP, Pipeline, free_port, report


@pytest.fixture
def fb(tmp_path: Path) -> Iterator[Fallback]:
    f = Fallback(tmp_path / "fb", "lp_test_" + secrets.token_hex(16))
    try:
        yield f
    finally:
        kill_quietly(f.proc)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def health(p: Pipeline) -> tuple[int, Any, float]:
    t0 = time.monotonic()
    r = HTTP.request("GET", p.url + "/ui/api/health", headers=p.headers())
    return r.status, json.loads(r.data), time.monotonic() - t0


def wait_health(p: Pipeline, ok: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body, took = health(p)
        assert status == 200, body
        assert took < 4, f"health took {took:.1f} s"
        if ok(body["fallback"]):
            return body["fallback"]
        time.sleep(0.3)
    raise AssertionError(f"health never showed the expected fallback state: {body.get('fallback')}")


def test_health_shows_each_fallback_receivers_backlog(
    fb: Fallback, pipeline_factory: Callable[[], Pipeline], silent_port: int
) -> None:
    fb.start()
    for seq in (1, 2, 3):
        r = fb.post("agent-fb", [report(seq)])
        assert r.status == 200, r.data
    pending = next(
        float(line.split()[-1])
        for line in fb.metrics().splitlines()
        if line.startswith("lossproof_fallback_pending_replay_bytes ")
    )
    assert pending > 0

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    hung = f"http://127.0.0.1:{silent_port}/"  # connects, never answers: the 2 s timeout
    p = pipeline_factory()
    p.start(extra_env={"LOSSPROOF_HEALTH_FALLBACK_URLS": f"{fb.url}, {dead},{hung}"})
    hung = hung.rstrip("/")

    f = wait_health(p, lambda f: len(f["receivers"]) == 3)
    assert f["configured"] == [fb.url, dead, hung]
    by_url = {r["url"]: r for r in f["receivers"]}
    assert by_url[fb.url]["reachable"] is True and by_url[fb.url]["error"] == ""
    assert by_url[fb.url]["pending_replay_bytes"] == pending
    assert by_url[fb.url]["healthy"] == 1 and by_url[fb.url]["journal_bytes"] >= pending
    for url in (dead, hung):
        assert by_url[url]["reachable"] is False and by_url[url]["pending_replay_bytes"] is None
        assert by_url[url]["error"]
    assert "2 s" in by_url[hung]["error"]
    # the sum over the receivers that answered; not the whole backlog, and the page says so
    assert f["pending_replay_bytes"] == pending and f["known"] is False
    assert "2 of 3" in f["note"]

    status, body, _ = health(p)
    assert status == 200 and body["log"]["healthy"] == 1  # the pipeline's own fields are unaffected

    # the receiver goes away: unreachable, still 200 (wait_health checks every answer); and while
    # one receiver hangs, a health request that samples takes at most the 2 s scrape timeout
    kill_quietly(fb.proc)
    f = wait_health(p, lambda f: not f["receivers"][0]["reachable"])
    assert f["receivers"][0]["url"] == fb.url and f["receivers"][0]["error"]
    assert f["pending_replay_bytes"] is None and f["known"] is False


def test_health_without_fallback_urls_explains_the_setting(dash: Any) -> None:
    status, body = dash.p.get("/ui/api/health")
    assert status == 200
    f = body["fallback"]
    assert f["configured"] == [] and f["receivers"] == [] and f["pending_replay_bytes"] is None
    assert f["known"] is False and "[health] fallback_urls" in f["note"] and "lossproof.toml" in f["note"]


@pytest.mark.parametrize("bad", ["10.0.0.5:8081", "ftp://h/", "http://", "http://h:99999", "http://h/?x=1"])
def test_fallback_urls_must_be_http_urls(tmp_path: Path, bad: str) -> None:
    config.init_data_dir(tmp_path, "k")
    with pytest.raises(config.ConfigError) as e:
        config.load(tmp_path, env={"LOSSPROOF_HEALTH_FALLBACK_URLS": f'["http://ok:1", "{bad}"]'})
    msg = str(e.value)
    assert "health.fallback_urls" in msg and "http(s)" in msg and "lossproof.toml" in msg


def test_fallback_urls_from_file_and_env(tmp_path: Path) -> None:
    (tmp_path / "lossproof.toml").write_text(
        '[health]\nfallback_urls = ["https://fb.example:8443/lossproof/"]\n'
    )
    assert config.load(tmp_path, env={}).health.fallback_urls == ["https://fb.example:8443/lossproof"]
    env = {"LOSSPROOF_HEALTH_FALLBACK_URLS": "http://a:1, http://b:2,"}
    assert config.load(tmp_path, env=env).health.fallback_urls == ["http://a:1", "http://b:2"]
    assert config.load(tmp_path, env={"LOSSPROOF_HEALTH_FALLBACK_URLS": ""}).health.fallback_urls == []
    with pytest.raises(config.ConfigError, match="LOSSPROOF_HEALTH_FALLBACK_URLS"):
        config.load(tmp_path, env={"LOSSPROOF_HEALTH_FALLBACK_URLS": "[oops"})
