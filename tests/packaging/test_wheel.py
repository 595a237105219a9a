"""The package a user installs: ``python -m build`` makes an sdist and, from it, a wheel; both carry
the dashboard's charting library (fetched and verified at build time), so the installed lossproof
serves a working dashboard with no npm and no network at run time. And ``pip install -e .``, the
README's first command, still works with the build backend."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lptest import TESTS, require
from lptest.browser import chromium, errors, loaded, open_dashboard, require_chromium, wait
from lptest.pipeline import HTTP, free_port

pytestmark = [pytest.mark.process, pytest.mark.browser]

ROOT = TESTS.parent
VENDOR = "lossproof/query/static/vendor/uplot-1.6.32/"
ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE")


def _checkout_copy(dest: Path) -> Path:
    """This checkout's files as a fresh clone has them (tracked and new, nothing ignored: no fetched
    charting library), so the build has to fetch it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    assert not (dest / "src" / VENDOR).exists()
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    # no PYTHONPATH: the lossproof under test is the installed one, not this checkout's src/
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("LOSSPROOF_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(importlib.util.find_spec("build"), "the build package (pip install build)")
    require(shutil.which("npm"), "npm (to fetch the charting library at build time)")
    tmp = tmp_path_factory.mktemp("build")
    src = _checkout_copy(tmp / "src")
    out = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "fetching uplot@1.6.32" in out.stdout
    return tmp / "dist"


def test_the_sdist_and_the_wheel_carry_the_charting_library(built: Path) -> None:
    (sdist,) = built.glob("lossproof-*.tar.gz")
    (wheel,) = built.glob("lossproof-*.whl")
    with tarfile.open(sdist) as t:
        names = t.getnames()
    for asset in ASSETS:
        assert any(n.endswith("src/" + VENDOR + asset) for n in names), asset
    assert any(n.endswith("buildsupport/lossproof_backend.py") for n in names)
    with zipfile.ZipFile(wheel) as z:
        wheel_names = set(z.namelist())
    for asset in ASSETS:
        assert VENDOR + asset in wheel_names, asset


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel (its dependencies from this machine's site-packages: the
    test is about what the wheel carries, not about downloading numpy)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    (wheel,) = built.glob("lossproof-*.whl")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        env=_clean_env(),
        timeout=300,
    )
    return venv


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The installed ``lossproof up`` with no npm on the PATH, no fetch at run time and an empty
    cache: the dashboard has only what the wheel brought."""
    require_chromium()
    port, key = free_port(), "lp_wheel_test_key_0123456789"
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(
        PATH=str(installed / "bin"),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        LOSSPROOF_UI_FETCH="0",
        LOSSPROOF_API_KEY=key,
    )
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import lossproof; print(lossproof.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed)), where
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [str(installed / "bin" / "lossproof"), "up", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            try:
                if HTTP.request("GET", url + "/healthz", timeout=1).status == 200:
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.1)
        yield url, key
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_installed_wheel_serves_a_dashboard_with_charts(served: tuple[str, str]) -> None:
    url, key = served
    auth = {"Authorization": f"Bearer {key}"}
    status = json.loads(HTTP.request("GET", url + "/ui/api/status", headers=auth).data)
    assert status["uplot"] == {"state": "installed", "version": "1.6.32"}, status
    assert HTTP.request("GET", url + "/ui/vendor/uPlot.iife.min.js").status == 200
    t = int(time.time() * 1000)
    body = {"agent": "wheel", "reports": [{"seq": 1, "points": [{"metric": "m", "t": t, "v": 1.0}]}]}
    r = HTTP.request(
        "POST",
        url + "/v1/reports",
        body=json.dumps(body).encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert r.status == 200, r.data
    with chromium() as d:
        open_dashboard(d, url, key, "#/series?match=m")
        loaded(d, "series")
        wait(d, "return typeof window.uPlot === 'function'")
        wait(d, "return document.getElementById('chart').dataset.series === '1'", timeout=30)
        assert d.find_elements("css selector", "#chart canvas")
        assert errors(d) == []


def test_an_editable_install_works_with_the_build_backend(tmp_path: Path) -> None:
    """The README's first command, `pip install -e .`, in a throwaway virtualenv (never this
    machine's own environment)."""
    src = _checkout_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(src)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import lossproof; print(lossproof.__file__)"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert where.stdout.strip() == str(src / "src" / "lossproof" / "__init__.py"), where
    version = subprocess.run([str(venv / "bin" / "lossproof"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version
