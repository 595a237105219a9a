"""The dashboard's charting library, uPlot, fetched from the npm registry (never vendored in git, never a
CDN at run time).

``python -m lossproof.query.uplot`` (run by ``scripts/deps/dashboard.sh``) fetches the pinned version
with ``npm pack``, checks the tarball against the pinned integrity hash and keeps only the built files
(``uPlot.iife.min.js``, ``uPlot.min.css``, its LICENSE). A built wheel or sdist carries them (the build
backend, buildsupport/lossproof_backend.py, fetches them); in a checkout the HTTP process does the
same in the background at start-up when the files are missing and ``npm`` is on the PATH (set
``LOSSPROOF_UI_FETCH=0`` to turn that off); until then the UI says how to install it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

VERSION = "1.6.32"
# npm's dist.integrity for uplot@1.6.32 (sha512 of the tarball)
INTEGRITY = "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
FILES = {
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "LICENSE",
}
HINT = "python -m lossproof.query.uplot   (needs npm; or run scripts/deps/dashboard.sh)"

_lock = threading.Lock()
_state: dict[str, str] = {}


def package_dir() -> Path:
    return Path(__file__).parent / "static" / "vendor" / f"uplot-{VERSION}"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lossproof" / f"uplot-{VERSION}"


def find() -> Path | None:
    """The directory holding the built files, or None if they are not installed."""
    for d in (package_dir(), cache_dir()):
        if all((d / name).is_file() for name in FILES.values()):
            return d
    return None


def status() -> dict[str, str]:
    """For the UI: whether the library is there, and what to do if not."""
    with _lock:
        state = dict(_state)
    if find() is not None:
        return {"state": "installed", "version": VERSION}
    return {"state": state.get("state", "missing"), "error": state.get("error", ""), "hint": HINT}


def _verify(tarball: Path) -> None:
    algo, _, want = INTEGRITY.partition("-")
    got = base64.b64encode(hashlib.new(algo, tarball.read_bytes()).digest()).decode()
    if got != want:
        raise RuntimeError(f"uplot@{VERSION} tarball does not match the pinned integrity {INTEGRITY}")


def fetch(timeout: float = 180, dests: tuple[Path, ...] | None = None) -> Path:
    """Download, verify and unpack the pinned uPlot into the first of ``dests`` that can be written
    (default: the package, else the user's cache); returns where it went."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="lossproof-uplot-") as tmp:
        out = subprocess.run(
            [npm, "pack", f"uplot@{VERSION}", "--json", "--pack-destination", tmp],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"npm pack uplot@{VERSION} failed: {out.stderr.strip()[-500:]}")
        name = json.loads(out.stdout)[0]["filename"]
        tarball = Path(tmp) / name
        _verify(tarball)
        last_error: Exception | None = None
        for dest in dests or (package_dir(), cache_dir()):
            try:
                _unpack(tarball, dest)
                return dest
            except OSError as e:  # e.g. a read-only site-packages: use the user's cache
                last_error = e
        raise RuntimeError(f"cannot write the uPlot files: {last_error}")


def _unpack(tarball: Path, dest: Path) -> None:
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        for member, target in FILES.items():
            f = tar.extractfile(member)
            if f is None:
                raise RuntimeError(f"{member} missing from uplot@{VERSION}")
            (staging / target).write_bytes(f.read())
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def ensure_in_background() -> None:
    """Start fetching the library in a thread if it is missing (at most once per process)."""
    if find() is not None or os.environ.get("LOSSPROOF_UI_FETCH", "1") == "0":
        return
    with _lock:
        if _state.get("state") == "fetching":
            return
        _state.update(state="fetching", error="")

    def run() -> None:
        try:
            fetch()
            with _lock:
                _state.update(state="installed")
        except Exception as e:
            with _lock:
                _state.update(state="missing", error=str(e))

    threading.Thread(target=run, name="uplot-fetch", daemon=True).start()


def main() -> int:
    if find() is not None and "--force" not in sys.argv:
        print(find())
        return 0
    try:
        print(fetch())
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
