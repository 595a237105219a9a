"""Debian's chromium, headless, driven by Selenium through chromium-driver: for the tests that look at
the dashboard as a person would."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lptest import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def require_chromium() -> None:
    require(Path(CHROMIUM).exists() and Path(DRIVER).exists(), "Debian's chromium and chromium-driver")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="lossproof-chromium-")
    for f in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def errors(d: Any) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


def wait(d: Any, script: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = d.execute_script(script)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def loaded(d: Any, page: str) -> None:
    wait(d, f"return document.body.dataset.loaded === {page!r}")


def open_dashboard(d: Any, url: str, key: str, hash_: str = "") -> None:
    """The dashboard at ``url`` with ``key`` in the tab's session, as after logging in."""
    d.get(url + "/")
    d.execute_script("sessionStorage.setItem('lossproof.key', arguments[0])", key)
    d.get(url + "/" + hash_)
    d.refresh()
