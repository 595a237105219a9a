"""The Rust extension ``lossproof._native`` (native/): built by ``pip install -e .`` and by the wheel
build, and the functions it replaces Python with, each against an independent reference."""

from __future__ import annotations

from lossproof import _native


def test_the_extension_is_built_and_matches_this_checkout() -> None:
    assert _native.ABI == 1
