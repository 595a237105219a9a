"""lossproof's PEP 517 build backend: maturin (which builds the Rust extension ``lossproof._native``
from ``native/`` with cargo and packs the Python sources), plus the dashboard's charting library
(uPlot) put into the package before a wheel or an sdist is built.

The library is fetched with ``npm pack`` at the pinned version and checked against the pinned
integrity hash (``lossproof.query.uplot``), here at build time, so an installed wheel or sdist has a
working dashboard with no npm and no network at run time. An sdist carries the files, so building a
wheel from it needs no npm either. Editable installs (``pip install -e .``) are left as maturin
makes them (the extension built into ``src/lossproof/``, the checkout on the path): a checkout fetches
the library when the dashboard first starts (or by ``python -m lossproof.query.uplot``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import maturin as _maturin
from maturin import *  # noqa: F403  (the rest of the PEP 517 hooks, build_editable included, unchanged)

ROOT = Path(__file__).resolve().parent.parent


def _uplot() -> ModuleType:
    # loaded from its file: importing the lossproof package would need its dependencies here
    path = ROOT / "src" / "lossproof" / "query" / "uplot.py"
    spec = importlib.util.spec_from_file_location("_lossproof_build_uplot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vendor_assets() -> Path:
    """The pinned, verified uPlot files in the package directory (fetched unless already there)."""
    uplot = _uplot()
    dest: Path = uplot.package_dir()
    if not all((dest / name).is_file() for name in uplot.FILES.values()):
        print(f"lossproof build: fetching uplot@{uplot.VERSION} into {dest}", flush=True)
        uplot.fetch(dests=(dest,))
    return dest


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    vendor_assets()
    return str(_maturin.build_wheel(wheel_directory, config_settings, metadata_directory))


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    vendor_assets()
    return str(_maturin.build_sdist(sdist_directory, config_settings))
