"""The agent runs beside the applications it watches: it loads neither the store's libraries nor
numpy (~13 MB of RSS), also with its relay, which decodes every third-party protocol."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_and_its_relay_load_no_numpy_and_no_re2() -> None:
    code = (
        "import sys, lossproof.agent.agent, lossproof.agent.relay.server; "
        "print(sorted(m for m in ('numpy', 're2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
