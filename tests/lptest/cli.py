"""Run lossproof's real command-line entry point (``lossproof.cli.main``) in this process: a bad
argument or config costs milliseconds instead of an interpreter start."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lossproof.cli import main


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Ran:
    """``lossproof ARGS`` with no ``LOSSPROOF_*`` variables but ``env``. An exception other than the
    exit escapes and fails the test: that is what a traceback would have been."""
    with monkeypatch.context() as m:
        if cwd is not None:
            m.chdir(cwd)
        for k in [k for k in os.environ if k.startswith("LOSSPROOF_")]:
            m.delenv(k)
        for k, v in (env or {}).items():
            m.setenv(k, v)
        m.setattr(sys, "argv", ["lossproof", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        code = exited.value.code
        out, err = capsys.readouterr()
        return Ran(code if isinstance(code, int) else (0 if code is None else 1), out, err)
