"""The README works pasted in order: its first line's ``lossproof up`` in one terminal, the "Try it"
block in a second one, in a fresh directory. No 401, the point is stored, nothing counted lost; then
the dashboard, logged in with the key the block printed, as a person would: the point on the chart,
nothing red on any page. Screenshots of every page go to the artifacts directory (the ones in docs/
are taken from this run)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lptest import readme
from lptest.browser import chromium, errors, loaded, require_chromium, wait
from lptest.pipeline import free_port

pytestmark = pytest.mark.process

# The lost colour of app.css (--lost): nothing may be drawn in it but the legend's swatches.
RED = "rgb(198, 40, 40)"
RED_ON_SCREEN = f"""
return [...document.querySelectorAll('body *')]
  .filter((e) => e.offsetParent !== null && !e.classList.contains('sw'))
  .filter((e) => {{
    const s = getComputedStyle(e);
    return s.color === '{RED}' || s.backgroundColor === '{RED}';
  }})
  .filter((e) => e.textContent.trim() || getComputedStyle(e).backgroundColor === '{RED}')
  .map((e) => e.outerHTML.slice(0, 200));
"""


@dataclass
class Tried:
    url: str
    out: str
    err: str
    up_log: Path

    @property
    def key(self) -> str:
        return self.out.strip().splitlines()[-1]  # the block's last line echoes the key


@pytest.fixture(scope="module")
def tried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tried]:
    tmp = tmp_path_factory.mktemp("readme")
    port = free_port()
    env = readme.user_env(tmp / "home", port)
    work = tmp / "work"
    work.mkdir()
    up_log = tmp / "up.log"
    with up_log.open("w") as log:
        up = subprocess.Popen(
            ["bash", "-c", "exec " + readme.with_port(readme.up_command(), port)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        script = readme.with_port(readme.try_it(), port)
        # the user waits for "lossproof is up" before pasting; so does the test
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait_up = f"for i in $(seq 300); do curl -sf {healthz} >/dev/null && break; sleep 0.1; done\n"
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", wait_up + script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, (r.stdout, r.stderr, up_log.read_text()[-3000:])
        yield Tried(f"http://127.0.0.1:{port}", r.stdout, r.stderr, up_log)
    finally:
        up.terminate()
        up.wait(30)


def test_try_it_works_pasted_after_the_first_line(tried: Tried) -> None:
    assert "API key for tenant 'default': lp_" in tried.up_log.read_text()
    assert "1 points in 1 reports acknowledged durable and stored" in tried.out, tried.out
    docs = [json.loads(line) for line in tried.out.splitlines() if line.startswith("{")]
    query, agents = docs[0], docs[1]
    assert [p[1] for p in query["series"][0]["points"]] == [1.5], query
    (agent,) = agents["agents"]
    assert agent["lost"] == 0 and agent["missing"] == 0 and agent["one_shot"] is True, agent
    assert "lossproof_ingest_requests_total" in tried.out
    assert "401" not in tried.err and tried.key.startswith("lp_")


def _point_drawn(d: Any) -> bool:
    """Whether the canvas is painted in the series' colour (#1f77b4) where its one data point is (a
    grid line may run there: grey does not count)."""
    pixel = d.execute_script(
        "const u = window.lossproof.chart; const i = u.data[1].findIndex((v) => v != null);"
        "const x = Math.round(u.valToPos(u.data[0][i], 'x', true));"
        "const y = Math.round(u.valToPos(u.data[1][i], 'y', true));"
        "return i < 0 ? null : Array.from(u.ctx.getImageData(x, y, 1, 1).data);"
    )
    return pixel is not None and pixel[3] > 0 and pixel[2] > 120 and pixel[0] < 100 and pixel[1] < 160


def _red(d: Any) -> list[str]:
    return list(d.execute_script(RED_ON_SCREEN))


def test_the_dashboard_after_try_it(tried: Tried) -> None:
    require_chromium()
    shots = Path(os.environ.get("LOSSPROOF_ARTIFACTS", "/tmp/lossproof-artifacts")) / "readme"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium() as d:
        d.get(tried.url + "/")
        loaded(d, "login")
        d.find_element("id", "key").send_keys(tried.key)  # pasted, as the block says
        d.find_element("css selector", "#login-form button").click()
        loaded(d, "series")
        wait(d, "return document.querySelectorAll('#metrics li').length")
        next(li for li in d.find_elements("css selector", "#metrics li") if li.text == "cpu.user").click()
        wait(d, "return document.getElementById('chart').dataset.series === '1'")
        assert _point_drawn(d), "the sent point is not drawn on the chart"
        assert d.find_element("id", "selector").get_attribute("value") == "{\"cpu.user\"}"
        rows = [r.text for r in d.find_elements("css selector", "#series-list tr.series-row")]
        assert rows and rows[0].startswith('cpu.user{host="a"}'), rows
        assert _red(d) == [], _red(d)
        d.save_screenshot(str(shots / "dashboard-series.png"))

        d.execute_script("document.body.dataset.loaded = ''")
        d.get(tried.url + "/#/completeness")
        loaded(d, "completeness")
        row = wait(d, "return document.querySelector('tr.agent-row')")
        assert row is not None
        assert _red(d) == [], _red(d)
        assert "one-shot sender" in d.find_element("css selector", "tr.agent-row").text
        d.save_screenshot(str(shots / "dashboard-completeness.png"))

        d.execute_script("document.body.dataset.loaded = ''")
        d.get(tried.url + "/#/health")
        loaded(d, "health")
        assert _red(d) == [], _red(d)
        d.save_screenshot(str(shots / "dashboard-health.png"))
        assert not [e for e in errors(d) if "401" in e], errors(d)
        assert errors(d) == []
