"""The README works pasted in order: its first line's ``lossproof up`` in one terminal, the "Try it"
block in a second one, in a fresh directory. No 401, the point is stored, nothing counted lost."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lptest import readme
from lptest.pipeline import free_port

pytestmark = pytest.mark.process


def test_try_it_works_pasted_after_the_first_line(tmp_path: Path) -> None:
    port = free_port()
    env = readme.user_env(tmp_path / "home", port)
    work = tmp_path / "work"
    work.mkdir()
    up_log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        ["bash", "-c", "exec " + readme.with_port(readme.up_command(), port)],
        cwd=work,
        env=env,
        stdout=up_log,
        stderr=subprocess.STDOUT,
    )
    try:
        script = readme.with_port(readme.try_it(), port)
        # the user waits for "lossproof is up" before pasting; so does the test
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait = f"for i in $(seq 300); do curl -sf {healthz} >/dev/null && break; sleep 0.1; done\n"
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", wait + script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        up_log.seek(0)
        assert r.returncode == 0, (r.stdout, r.stderr, up_log.read()[-3000:])
        assert "API key for tenant 'default': lp_" in up_log.read()
        assert "1 points in 1 reports acknowledged durable" in r.stdout, r.stdout
        docs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        query, agents = docs[0], docs[1]
        assert [p[1] for p in query["series"][0]["points"]] == [1.5], query
        (agent,) = agents["agents"]
        assert agent["lost"] == 0 and agent["missing"] == 0, agent
        assert "lossproof_ingest_requests_total" in r.stdout
        assert "401" not in r.stderr
    finally:
        up.terminate()
        up.wait(30)
        up_log.close()
