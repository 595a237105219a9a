"""PromQL conformance: lossproof answers the compliance suite's and real dashboards' queries as Debian's
Prometheus does, on the same data loaded by remote write into both (lptest.promqlconf).

The target is every query; ``lptest/promqlconf/passing.txt`` is the honest state of the default
windows (Prometheus 3's, which the 2.x reference does not have). The test fails when a listed query no
longer passes (a regression) and when an unlisted one passes (rewrite the list:
``PYTHONPATH=src:tests python -m lptest.promqlconf --write-passing``). With ``[query] windows =
"prometheus2"`` (the reference's own windows) every query must pass. The full report (score, every
failure and why) is printed; ``python -m lptest.promqlconf [--windows prometheus2]`` prints it alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lptest import require
from lptest.promqlconf import compare, queries
from lptest.promqlconf.run import Report, run

pytestmark = pytest.mark.process


@pytest.mark.timeout(240)
def test_lossproof_answers_as_prometheus_does(tmp_path: Path) -> None:
    require(shutil.which("prometheus"), "Prometheus (Debian's prometheus)")
    qs = queries.all_queries()
    report = run(tmp_path, qs, print)
    print("\n".join(report.lines()))
    _check_reference(report, qs)

    passing = set(report.passing)
    expected = queries.load_passing()
    regressed = sorted(expected - passing)
    new = sorted(passing - expected)
    why = {o.query.text: o for o in report.outcomes}
    msg = []
    if regressed:
        msg.append(f"{len(regressed)} queries in passing.txt no longer pass:")
        for q in regressed:
            o = why.get(q)
            msg.append(f"  {q}  [{o.verdict if o else 'not in the query list'}]")
            if o:
                msg += [f"      instant: {o.instant[1]}", f"      range: {o.range[1]}"]
    if new:
        msg.append(
            f"{len(new)} queries pass and are not in passing.txt: rewrite it with "
            "`PYTHONPATH=src:tests python -m lptest.promqlconf --write-passing`:"
        )
        msg += [f"  {q}" for q in new]
    assert not msg, "\n".join(msg)
    assert all(o.verdict in compare.RANK for o in report.outcomes)


@pytest.mark.timeout(240)
def test_with_prometheus2_windows_every_query_is_answered_as_prometheus_2_does(tmp_path: Path) -> None:
    """The reference is Prometheus 2.x: with its closed windows (``[query] windows = "prometheus2"``)
    nothing is left to differ, the queries the default windows fail included (a sample exactly on a
    window's start, a subquery's first step on ``T - range``)."""
    require(shutil.which("prometheus"), "Prometheus (Debian's prometheus)")
    qs = queries.all_queries()
    report = run(tmp_path, qs, print, windows="prometheus2")
    print("\n".join(report.lines()))
    _check_reference(report, qs)
    failed = [o for o in report.outcomes if o.verdict != compare.PASS]
    msg = [f"  {o.query.text}  [{o.verdict}]: instant: {o.instant[1]}; range: {o.range[1]}" for o in failed]
    assert not failed, f"{len(failed)} queries differ from Prometheus 2 with its windows:\n" + "\n".join(msg)


def _check_reference(report: Report, qs: list[queries.Query]) -> None:
    """The reference must have had the data: Prometheus counts every sample but the staleness markers,
    and answers series for most queries (some ask for nonexistent metrics or filter everything out
    on purpose, or take [1s] of 5 s scrapes)."""
    assert report.counts["prometheus"] == report.samples - report.stale_markers
    answered = [o for o in report.outcomes if not o.reference_empty]
    assert len(answered) > 0.85 * len(qs), f"Prometheus answered only {len(answered)} of {len(qs)} queries"
    # ... and must have read the staleness markers as markers: the intermittent series (3 of them,
    # present in even minutes) are gone in the odd minutes of the 61 steps of the range query.
    intermittent = next(o for o in report.outcomes if o.query.text == "demo_intermittent_metric")
    assert 60 <= intermittent.reference_points <= 120, intermittent
