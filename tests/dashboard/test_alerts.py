"""deploy/alerts.yml is valid for promtool and its unit tests (alerts_test.yml) pass."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lossproof.query import dashboard
from lptest import require

HERE = Path(__file__).parent
RULES = HERE.parent.parent / "deploy" / "alerts.yml"
promtool = shutil.which("promtool")


@pytest.mark.process
def test_check_rules() -> None:
    require(promtool, "promtool (Debian's prometheus)")
    out = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.process
def test_rule_unit_tests() -> None:
    require(promtool, "promtool (Debian's prometheus)")
    out = subprocess.run(
        [str(promtool), "test", "rules", "alerts_test.yml"], cwd=HERE, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_use_metrics_lossproof_exports() -> None:
    """Every lossproof_* name the rules use is one the code defines (a typo would never fire)."""
    src = HERE.parent.parent / "src" / "lossproof"
    code = "\n".join(p.read_text() for p in src.rglob("*.py"))
    used = set(re.findall(r"\b(lossproof_[a-z0-9_]+)", RULES.read_text())) - {"lossproof_kind"}
    # agents must export the spool limit for LossproofAgentSpoolNearFull (not yet: see docs/dashboard.md)
    pending = {"lossproof_agent_spool_limit_bytes"}
    missing = []
    for name in sorted(used - pending):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        if f'"{name}"' not in code and f'"{base}"' not in code:
            missing.append(name)
    assert missing == [], missing
    assert dashboard.SILENT_AFTER_S == 300  # LossproofAgentsSilent's text says 5 minutes


def _rule_exprs() -> list[tuple[str, str]]:
    """(alert, expr) of every rule, read from the YAML text (folded ``>-`` blocks joined)."""
    out: list[tuple[str, str]] = []
    lines = RULES.read_text().splitlines()
    alert = ""
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert: (\w+)", line)
        if m:
            alert = m.group(1)
        m = re.match(r"(\s*)expr: (.*)", line)
        if not m:
            continue
        if m.group(2) != ">-":
            out.append((alert, m.group(2)))
            continue
        indent = len(m.group(1))
        block = []
        for nxt in lines[i + 1 :]:
            if len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt.strip())
        out.append((alert, " ".join(block)))
    return out


def test_lossproof_evaluates_every_rule() -> None:
    """Every rule's expression is PromQL that lossproof itself evaluates (Grafana alerting pointed at
    lossproof's /api/v1 runs them), among them one absent() rule per sender class."""
    from lossproof.query import promql

    rules = _rule_exprs()
    assert len(rules) == RULES.read_text().count("- alert:")
    for _, expr in rules:
        promql.parse(expr)  # raises Unsupported for anything lossproof does not evaluate
    absent = {alert for alert, expr in rules if expr.startswith("absent(")}
    assert absent == {
        "LossproofNoDataNativeAgents",
        "LossproofNoDataRemoteWrite",
        "LossproofNoDataOTLP",
        "LossproofNoDataInflux",
    }
