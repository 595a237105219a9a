"""The UI in a real browser: Debian's chromium, headless, driven by Selenium through chromium-driver.

Every page must load without console errors; the chart must draw; a lost range and a delayed range
must show as such (in the holes table and as coloured bands on the canvas); a label filter must narrow
the series. Screenshots of each page go to the artifacts directory (see conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from lptest.browser import chromium, errors, loaded, open_dashboard, require_chromium, wait
from lptest.dash import Dash
from lptest.pipeline import HTTP

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _needs_browser() -> None:
    require_chromium()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as d:
        yield d


def logged_in(d: Any, dash: Dash, hash_: str = "") -> None:
    open_dashboard(d, dash.p.url, dash.p.key, hash_)


def test_login_and_key_in_session(browser: Any, dash: Dash, artifacts: Path) -> None:
    d = browser
    d.get(dash.p.url + "/")
    d.execute_script("sessionStorage.clear()")
    d.refresh()
    loaded(d, "login")
    # first paint is a speed goal: measured by `lossproof bench dashboard`, not asserted here
    d.save_screenshot(str(artifacts / "login.png"))
    d.find_element(By.ID, "key").send_keys("lp_wrong_key")
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(d, "return document.getElementById('login-error').textContent")
    assert "unknown API key" in d.find_element(By.ID, "login-error").text
    d.find_element(By.ID, "key").clear()
    d.find_element(By.ID, "key").send_keys(dash.p.key)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    loaded(d, "series")
    assert "tenant: default" in d.find_element(By.ID, "tenant").text
    assert d.execute_script("return sessionStorage.getItem('lossproof.key')") == dash.p.key
    assert errors(d) == []


def _pixel(d: Any, t_ms: int) -> list[int]:
    """The chart canvas' colour at time t, near the top of the plot (where no line runs)."""
    return d.execute_script(  # type: ignore[no-any-return]
        "const u = window.lossproof.chart; const x = Math.round(u.valToPos(arguments[0] / 1000, 'x', true));"
        "return Array.from(u.ctx.getImageData(x, u.bbox.top + 20, 1, 1).data);",
        t_ms,
    )


def test_chart_draws_lost_and_delayed_ranges(browser: Any, dash: Dash, artifacts: Path) -> None:
    d = browser
    logged_in(d, dash, '#/series?match=cpu_user{host="web-01"}')
    loaded(d, "series")
    wait(d, "return document.querySelector('#chart canvas')")
    assert d.find_element(By.ID, "chart").get_attribute("data-series") == "1"
    rows = {
        r.get_attribute("data-kind"): r.text for r in d.find_elements(By.CSS_SELECTOR, "#holes tr.hole-row")
    }
    assert "spool_full" in rows["lost"]
    assert "still in its spool" in rows["delayed"]
    assert "replay" in rows["missing"]
    # one time format: the viewer's zone, 24 h, year first, UTC on hover; the server's UTC times in
    # the "why" texts shown the same way
    times = d.find_elements(By.CSS_SELECTOR, "#holes tr.hole-row time")
    assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", t.text) for t in times)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t.get_attribute("title")) for t in times)
    assert not any(" UTC" in r for r in rows.values()), rows
    # the chart's time axis in the same format: hours and minutes for a span of hours
    labels = d.execute_script("return timeAxis(null, [1767225600, 1767229200, 1767232800])")
    assert all(re.fullmatch(r"\d\d:\d\d", v) for v in labels) and len(set(labels)) == 3, labels
    from lptest import dash as dd

    lost = _pixel(d, dd.t0_of(dash.t0, 50))
    delayed_band = [_pixel(d, dd.t0_of(dash.t0, 171) + dt) for dt in range(2000, 60000, 1500)]
    # a stored stretch, sampled at several places: a time-axis grid line (7 % black) may cross one of them
    stored = [_pixel(d, dd.t0_of(dash.t0, s) + 5000) for s in range(12, 36, 3)]
    r, g, b, a = lost
    assert a > 0 and r > 150 and g < 150 and b < 150, f"lost band not red: {lost}"
    # the delayed band is hatched amber: some of its pixels are clearly amber (red+green high, blue low)
    assert any(p[3] > 0 and p[0] > 200 and p[1] > 120 and p[2] < 120 for p in delayed_band), delayed_band
    assert all(p[3] < 40 or p[:3] == [255, 255, 255] for p in stored), f"stored time has a band: {stored}"
    assert sum(p[3] == 0 for p in stored) >= len(stored) - 2, stored
    d.save_screenshot(str(artifacts / "series.png"))
    assert errors(d) == []


def test_label_filter_narrows_series(browser: Any, dash: Dash) -> None:
    d = browser
    logged_in(d, dash, "#/series")
    loaded(d, "series")
    wait(d, "return document.querySelectorAll('#metrics li').length")
    next(li for li in d.find_elements(By.CSS_SELECTOR, "#metrics li") if li.text == "cpu.user").click()
    wait(d, "return document.getElementById('series-count').dataset.count === '2'")
    wait(d, "return document.getElementById('chart').dataset.series === '2'")
    d.find_element(By.ID, "add-filter").click()
    wait(d, "return document.querySelector('#filters .filter select.f-name option[value=host]')")
    Select(d.find_element(By.CSS_SELECTOR, "#filters .f-name")).select_by_value("host")
    Select(d.find_element(By.CSS_SELECTOR, "#filters .f-op")).select_by_value("=~")
    d.find_element(By.CSS_SELECTOR, "#filters .f-value").send_keys("web.*")
    d.find_element(By.ID, "apply-filters").click()
    wait(d, "return document.getElementById('series-count').dataset.count === '1'")
    wait(d, "return document.getElementById('chart').dataset.series === '1'")
    assert d.find_element(By.ID, "selector").get_attribute("value") == '{"cpu.user",host=~"web.*"}'
    assert [
        r.text.split("\n")[0] for r in d.find_elements(By.CSS_SELECTOR, "#series-list tr.series-row")
    ] == ['cpu.user{dc="eu", host="web-01"} web-01']
    assert errors(d) == []


def _type_selector(d: Any, text: str) -> None:
    box = d.find_element(By.ID, "selector")
    box.clear()
    box.send_keys(text)
    d.execute_script("document.body.dataset.loaded = ''")
    d.find_element(By.ID, "selector").submit()
    loaded(d, "series")


def test_a_name_as_listed_charts_and_a_failed_query_clears_the_chart(browser: Any, dash: Dash) -> None:
    d = browser
    logged_in(d, dash, "#/series")
    loaded(d, "series")
    _type_selector(d, "cpu.user")  # as the metric list shows it
    wait(d, "return document.getElementById('chart').dataset.series === '2'")
    assert not d.find_elements(By.CSS_SELECTOR, "#chart .chart-error")
    _type_selector(d, "cpu.user{host=")
    wait(d, "return document.querySelector('#chart .chart-error')")
    assert d.execute_script("return document.getElementById('chart').dataset.series") == "0"
    assert d.execute_script("return window.lossproof.chart") is None
    assert "invalid PromQL" in d.find_element(By.CSS_SELECTOR, "#chart .chart-error").text
    assert not d.find_elements(By.CSS_SELECTOR, "#holes tbody tr")
    # the failed request is the only console error
    assert all("400" in e for e in errors(d)), errors(d)


def test_completeness_page(browser: Any, dash: Dash, artifacts: Path) -> None:
    d = browser
    logged_in(d, dash, "#/completeness")
    loaded(d, "completeness")
    row = d.find_element(By.CSS_SELECTOR, "tr.agent-row[data-agent='web-01']")
    kinds = [s.get_attribute("data-kind") for s in row.find_elements(By.CSS_SELECTOR, ".seg")]
    assert kinds == ["stored", "lost", "stored", "missing", "stored", "delayed"]
    lost = row.find_element(By.CSS_SELECTOR, ".seg.lost")
    assert "spool_full" in lost.get_attribute("title")
    assert "lost 41-60: spool_full" in row.text and "delayed 171-180" in row.text
    totals = {
        e.get_attribute("data-kind"): e.get_attribute("data-count")
        for e in d.find_elements(By.CSS_SELECTOR, ".total")
    }
    assert totals == {"stored": "320", "delayed": "10", "missing": "10", "lost": "20"}
    d.save_screenshot(str(artifacts / "completeness.png"))
    assert errors(d) == []


def test_completeness_page_shows_what_a_third_party_client_may_have_dropped(
    browser: Any, dash: Dash, artifacts: Path
) -> None:
    sender = "BrowserCheckExporter/1.0"
    for _ in range(2):  # a malformed OTLP body: refused, so the exporter drops it
        r = HTTP.request(
            "POST",
            dash.p.url + "/v1/metrics",
            body=b"{not json",
            headers={**dash.p.headers(), "User-Agent": sender},
        )
        assert r.status == 400, r.data
    d = browser
    logged_in(d, dash, "#/completeness")
    loaded(d, "completeness")
    row = d.find_element(By.CSS_SELECTOR, f"tr.dropped-row[data-protocol='otlp'][data-sender='{sender}']")
    refused = row.find_element(By.CSS_SELECTOR, "td[data-kind='refused']")
    assert refused.get_attribute("data-requests") == "2", row.text
    assert "400: 2" in refused.text
    assert row.find_element(By.CSS_SELECTOR, "td[data-kind='unavailable']").text == "0"
    assert "Counted by this ingest process since" in d.find_element(By.ID, "c-dropped-note").text
    d.execute_script("document.getElementById('c-dropped').scrollIntoView()")
    d.save_screenshot(str(artifacts / "completeness-dropped.png"))
    assert errors(d) == []


def test_health_page(browser: Any, dash: Dash, artifacts: Path) -> None:
    d = browser
    logged_in(d, dash, "#/health")
    loaded(d, "health")
    assert "healthy" in d.find_element(By.ID, "h-log").text
    assert "dead letters" in d.find_element(By.ID, "h-store").text
    assert "damaged rows set aside" in d.find_element(By.ID, "h-store").text
    assert "lag (records)" in d.find_element(By.ID, "h-worker").text
    # seconds on the sparklines' value axes keep their unit: a sub-millisecond fsync is not "0"
    assert d.execute_script("return [secs(0.0004), secs(0.012), secs(2)]") == ["400 µs", "12.00 ms", "2.00 s"]
    d.save_screenshot(str(artifacts / "health.png"))
    assert errors(d) == []
