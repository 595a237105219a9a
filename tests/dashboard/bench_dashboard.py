"""Dashboard speed on the embedded store (a benchmark, not a test: run it by hand).

    python tests/dashboard/bench_dashboard.py --dir /tmp/lossproof-bench

Stores 10,000 series of ``bench.cpu`` (``host`` h0000..h9999) over the last 24 h: the 100 charted
ones (h0000..h0099) every 10 s (864,000 points), the 9,900 others every 60 s (14.3 M points); starts
``lossproof up`` on it and measures, with the other load of the machine noted:

- the chart endpoint for a 24 h chart of the 100 series, 1,000 px wide (HTTP round trip, server time);
- the same selector as a Prometheus ``query_range`` (24 h, step 86.4 s) and ``rate(...[5m])``;
- in headless chromium: first contentful paint of ``/`` and the time until the 24 h chart is drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from lossproof import config as config_mod
from lossproof.store.base import Point, WriteBatch
from lossproof.store.sqlite import SqliteStore
from pipeline import HTTP, Pipeline, free_port

KEY = "lp_bench_dashboard_key_0123456789"
DAY = 86_400_000


def generate(cfg: config_mod.Config, series: int, charted: int, end: int) -> None:
    start = end - DAY
    store = SqliteStore(cfg.store_path)
    batch = WriteBatch(now_ms=start)
    made = 0
    t0 = time.monotonic()
    for k in range(DAY // 10_000):
        t = start + k * 10_000
        for h in range(charted):
            batch.samples.append(
                ("default", Point("bench.cpu", {"host": f"h{h:04d}", "dc": "eu"}, t, (k + h) % 97))
            )
        if k % 6 == 0:
            for h in range(charted, series):
                batch.samples.append(
                    ("default", Point("bench.cpu", {"host": f"h{h:04d}", "dc": "eu"}, t, h % 13))
                )
        if len(batch.samples) >= 50_000:
            made += len(batch.samples)
            store.write_batch(batch)
            batch = WriteBatch(now_ms=t)
    made += len(batch.samples)
    store.write_batch(batch)
    store.close()
    print(f"stored {made:,} points of {series:,} series in {time.monotonic() - t0:.0f} s", flush=True)


def timed(url: str, n: int = 7) -> tuple[float, float, dict[str, object]]:
    """Median and best wall time (ms) of n GETs, and the last body."""
    times = []
    body: dict[str, object] = {}
    for _ in range(n):
        t0 = time.perf_counter()
        r = HTTP.request("GET", url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200, r.data[:300]
        body = json.loads(r.data)
    return statistics.median(times), min(times), body


def browser(url: str, match: str) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1400,1000",
    ]:  # fmt: skip
        opts.add_argument(f)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(url + "/")
        d.execute_script("sessionStorage.setItem('lossproof.key', arguments[0])", KEY)
        out: dict[str, float] = {}
        fcps, charts = [], []
        for _ in range(3):
            d.get(url + "/?" + str(time.time()) + "#/series?match=" + urllib.parse.quote(match))
            _wait(d, "return document.body.dataset.loaded === 'series'")
            fcps.append(
                d.execute_script(
                    "return performance.getEntriesByType('paint')"
                    ".find(p => p.name === 'first-contentful-paint').startTime"
                )
            )
            # the page's own measure of a chart: request + JSON + holes + drawing, for the last 24 h
            d.execute_script(
                "document.getElementById('chart').dataset.ms = '';"
                "const r = document.getElementById('range'); r.value = '86400000';"
                "r.dispatchEvent(new Event('change'))"
            )
            _wait(d, "return document.getElementById('chart').dataset.ms")
            charts.append(float(d.execute_script("return document.getElementById('chart').dataset.ms")))
        out["first_contentful_paint_ms"] = statistics.median(fcps)
        out["chart_24h_100_series_in_page_ms"] = statistics.median(charts)
        return out
    finally:
        d.quit()


def _wait(d: object, script: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.execute_script(script):  # type: ignore[attr-defined]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out: {script}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lossproof-bench"))
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--charted", type=int, default=100)
    args = ap.parse_args()
    data = args.dir / "data"
    marker = args.dir / "end_ms"
    cfg, _ = config_mod.init_data_dir(data, KEY)
    if not marker.exists():
        end = int(time.time() * 1000) // 10_000 * 10_000
        generate(cfg, args.series, args.charted, end)
        marker.write_text(str(end))
    end = int(marker.read_text())
    p = Pipeline(data, free_port(), KEY)
    p.start()
    try:
        match = 'bench_cpu{host=~"h00.."}'
        now = int(time.time() * 1000)
        load = os.getloadavg()
        q = urllib.parse.urlencode({"match": match, "from": end - DAY, "to": end, "width": 1000})
        med, best, body = timed(f"{p.url}/ui/api/chart?{q}")
        series = body["series"]
        assert isinstance(series, list) and len(series) == args.charted
        print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores", flush=True)
        print(
            f"chart endpoint, 24 h x 100 series, 1000 px: median {med:.0f} ms, best {best:.0f} ms, "
            f"server {body['took_ms']} ms (store thread CPU {body['store_cpu_ms']} ms)",
            flush=True,
        )
        q = urllib.parse.urlencode(
            {"query": match, "start": (end - DAY) / 1000, "end": end / 1000, "step": 86.4}
        )
        med, best, _ = timed(f"{p.url}/api/v1/query_range?{q}", n=3)
        print(f"query_range {match} 24 h step 86.4 s: median {med:.0f} ms, best {best:.0f} ms", flush=True)
        q = urllib.parse.urlencode(
            {"query": f"rate({match}[5m])", "start": (end - DAY) / 1000, "end": end / 1000, "step": 86.4}
        )
        med, best, _ = timed(f"{p.url}/api/v1/query_range?{q}", n=3)
        print(
            f"query_range rate(...[5m]) 24 h step 86.4 s: median {med:.0f} ms, best {best:.0f} ms", flush=True
        )
        if now - end > 3_600_000:
            print("(data is older than an hour: the browser chart shows it only partly)")
        for k, v in browser(p.url, match).items():
            print(f"browser {k}: {v:.0f} ms", flush=True)
    finally:
        p.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
