"""``lossproof bench dashboard``: how fast the dashboard and the Prometheus API answer on the embedded store.

Stores 10,000 series of ``bench.cpu`` (``host`` h0000..h9999) over the last 24 h: the 100 charted
ones (``group="charted"``) every 10 s (864,000 points), the 9,900 others every 60 s (14.3 M points), once per
``--dir`` (kept for the next run); starts ``lossproof up`` on it and measures, with the machine's load:

- the chart endpoint for a 24 h chart of the 100 series, 1,000 px wide (HTTP round trip, server time);
- the same selector as a Prometheus ``query_range`` (24 h, step 86.4 s), and ``rate(...[5m])``;
- in headless chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium, when both are
  installed): first contentful paint of ``/`` and the time until the 24 h chart is drawn.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import urllib3

from lossproof import config as config_mod
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore

DAY = 86_400_000
MATCH = 'bench_cpu{group="charted"}'
KEY_FILE = "bench.key"
MADE_FILE = "made.json"  # what the data dir holds: {"end_ms", "series", "charted", "layout"}
LAYOUT = 2  # bump when generate() changes: the kept data is then made anew
_HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=120), retries=False)

Say = Callable[[str], None]


def generate(cfg: config_mod.Config, series: int, charted: int, end: int, say: Say) -> int:
    """The bench's day of data, written straight into the store (the write path has its own bench)."""
    start = end - DAY
    store = SqliteStore(cfg.store_path)
    batch = WriteBatch(now_ms=start)
    made = 0
    steps = DAY // 10_000
    last_say = time.monotonic()
    for k in range(steps):
        t = start + k * 10_000
        for h in range(charted):
            batch.samples.append(
                ("default", Point("bench.cpu", {"host": f"h{h:04d}", "group": "charted"}, t, (k + h) % 97))
            )
        if k % 6 == 0:
            for h in range(charted, series):
                batch.samples.append(
                    ("default", Point("bench.cpu", {"host": f"h{h:04d}", "group": "rest"}, t, h % 13))
                )
        if len(batch.samples) >= 50_000:
            made += len(batch.samples)
            store.write_batch(batch)
            batch = WriteBatch(now_ms=t)
            if time.monotonic() - last_say > 5:
                last_say = time.monotonic()
                say(f"storing the day of data: {100 * k // steps}% ({made:,} points)")
    made += len(batch.samples)
    store.write_batch(batch)
    store.close()
    return made


def timed(url: str, key: str, n: int = 7) -> tuple[float, float, dict[str, Any]]:
    """Median and best wall time (ms) of n GETs, and the last body."""
    times = []
    body: dict[str, Any] = {}
    for _ in range(n):
        t0 = time.perf_counter()
        r = _HTTP.request("GET", url, headers={"Authorization": f"Bearer {key}"})
        times.append((time.perf_counter() - t0) * 1000)
        if r.status != 200:
            raise click.ClickException(f"GET {url}: HTTP {r.status}: {r.data[:300]!r}")
        body = json.loads(r.data)
    return statistics.median(times), min(times), body


def browser_unavailable() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install chromium chromium-driver)"
    return None


def browser(url: str, key: str, runs: int = 3) -> dict[str, float]:
    """First contentful paint of the series page, and the page's own measure of a 24 h chart (request,
    JSON, holes and drawing), median of ``runs``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    with tempfile.TemporaryDirectory(prefix="lossproof-bench-chromium-") as profile:
        for f in [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,1000",
        ]:  # fmt: skip
            opts.add_argument(f)
        d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
        try:
            d.get(url + "/")
            d.execute_script("sessionStorage.setItem('lossproof.key', arguments[0])", key)
            fcps, charts = [], []
            for _ in range(runs):
                d.get(url + "/?" + str(time.time()) + "#/series?match=" + urllib.parse.quote(MATCH))
                _wait(d, "return document.body.dataset.loaded === 'series'")
                fcps.append(
                    float(
                        d.execute_script(
                            "return performance.getEntriesByType('paint')"
                            ".find(p => p.name === 'first-contentful-paint').startTime"
                        )
                    )
                )
                d.execute_script(
                    "document.getElementById('chart').dataset.ms = '';"
                    "const r = document.getElementById('range'); r.value = '86400000';"
                    "r.dispatchEvent(new Event('change'))"
                )
                _wait(d, "return document.getElementById('chart').dataset.ms")
                charts.append(float(d.execute_script("return document.getElementById('chart').dataset.ms")))
        finally:
            d.quit()
    return {
        "first contentful paint": statistics.median(fcps),
        "24 h chart of 100 series drawn (in the page)": statistics.median(charts),
    }


def _wait(d: Any, script: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.execute_script(script):
            return
        time.sleep(0.02)
    raise click.ClickException(f"the page did not get there within {timeout:g} s: {script}")


def run_dashboard_bench(work: Path, series: int, charted: int, use_browser: bool, say: Say) -> list[str]:
    from lossproof.bench.spawn import spawned_pipeline

    data = work / "data"
    key_file, made_file = work / KEY_FILE, work / MADE_FILE
    try:
        made_before = json.loads(made_file.read_text())
    except (OSError, ValueError):
        made_before = {}
    wanted = {"series": series, "charted": charted, "layout": LAYOUT}
    if {k: made_before.get(k) for k in wanted} != wanted:
        shutil.rmtree(data, ignore_errors=True)
        key = config_mod.new_key()
        cfg, _ = config_mod.init_data_dir(data, key)
        end = int(time.time() * 1000) // 10_000 * 10_000
        t0 = time.monotonic()
        made = generate(cfg, series, charted, end, say)
        say(f"stored {made:,} points of {series:,} series in {time.monotonic() - t0:.0f} s")
        key_file.write_text(key)
        made_file.write_text(json.dumps({**wanted, "end_ms": end}))
    key, end = key_file.read_text().strip(), int(json.loads(made_file.read_text())["end_ms"])
    lines = []
    with spawned_pipeline(data, key=key) as (url, _):
        load = os.getloadavg()
        lines.append(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
        q = urllib.parse.urlencode({"match": MATCH, "from": end - DAY, "to": end, "width": 1000})
        say("chart endpoint …")
        med, best, body = timed(f"{url}/ui/api/chart?{q}", key)
        n = len(body.get("series", []))
        lines.append(
            f"chart endpoint, 24 h x {n} series, 1000 px: median {med:.0f} ms, best {best:.0f} ms, "
            f"server {body.get('took_ms')} ms (store thread CPU {body.get('store_cpu_ms')} ms)"
        )
        for label, query in ((MATCH, MATCH), ("rate(...[5m])", f"rate({MATCH}[5m])")):
            say(f"query_range {label} …")
            span = {"start": (end - DAY) / 1000, "end": end / 1000, "step": 86.4}
            q = urllib.parse.urlencode({"query": query, **span})
            med, best, _ = timed(f"{url}/api/v1/query_range?{q}", key, n=3)
            lines.append(f"query_range {label}, 24 h, step 86.4 s: median {med:.0f} ms, best {best:.0f} ms")
        if time.time() * 1000 - end > 3_600_000:
            lines.append(f"(the data ends {(time.time() * 1000 - end) / 3.6e6:.1f} h ago: use a fresh --dir)")
        why_not = None if use_browser else "--no-browser"
        why_not = why_not or browser_unavailable()
        if why_not:
            lines.append(f"browser: not measured ({why_not})")
        else:
            say("headless chromium …")
            for k, v in browser(url, key).items():
                lines.append(f"browser, {k}: median {v:.0f} ms")
    return lines


@click.command("dashboard")
@click.option(
    "--dir",
    "work",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()) / "lossproof-bench-dashboard",
    show_default=True,
    help="Where the day of data is generated once and kept for the next run.",
)
@click.option("--series", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--charted", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option(
    "--browser/--no-browser", "use_browser", default=True, help="Also measure in headless chromium."
)
def dashboard_bench_cmd(work: Path, series: int, charted: int, use_browser: bool) -> None:
    """Chart endpoint, query_range and in-browser paint/chart times with 10,000 series stored."""
    if charted > series:
        raise click.ClickException("--charted cannot exceed --series")
    work.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        click.echo(f"  {msg}", err=True)

    for line in run_dashboard_bench(work, series, charted, use_browser, say):
        click.echo(line)
