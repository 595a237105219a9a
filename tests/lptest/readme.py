"""The README's commands, as a new user pastes them: the first line's ``lossproof up`` and the
"Try it" block, run by bash with this checkout's lossproof first on PATH."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

from lptest import TESTS, subprocess_env

README = TESTS.parent / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def up_command() -> str:
    """The ``lossproof up`` of the README's first line (what follows ``pip install -e . &&``)."""
    first = blocks()[0].splitlines()[0]
    install, _, up = first.partition(" && ")
    assert install == "pip install -e ." and up.startswith("lossproof up "), first
    return up


def try_it() -> str:
    text = README.read_text()
    section = text[text.index("## Try it") :]
    return blocks_in(section)[0]


def blocks_in(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def user_env(home: Path, port: int) -> dict[str, str]:
    """A new user's shell: a ``lossproof`` command that runs this checkout (never an installed copy),
    a fresh HOME (so ``send`` starts with no state), and ``port`` where the README says 8080 (the
    machine's 8080 may be someone else's)."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "lossproof"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m lossproof "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("LOSSPROOF_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["LOSSPROOF_README_PORT"] = str(port)
    return env


def with_port(script: str, port: int) -> str:
    return script.replace("8080", str(port))
