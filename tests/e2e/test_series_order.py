"""``/api/v1/series`` answers in Prometheus' order, by the whole label set with ``__name__`` in it,
whether or not the store's order (by metric, then the other labels) is already that one: a label name
with an upper-case first letter sorts before ``__name__``, and a stored name that is not PromQL's
(``cpu.user``) is answered as its PromQL spelling, which sorts elsewhere."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from lptest.inproc import InProcess
from lptest.pipeline import HTTP

SERIES = [
    ("m", {"b": "1"}),
    ("m", {"a": "2"}),
    ("m", {"Z": "3"}),  # "Z" < "__name__": m{Z="3"} comes before a{Z="4"}
    ("a", {"Z": "4"}),
    ("a", {"c": "1"}),
    ("cpu.user", {"c": "1"}),  # cpu_user
    ("cpu_a", {"c": "1"}),
    ("n", {}),
]


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    p = InProcess(tmp_path_factory.mktemp("order") / "data", "lp_test_" + secrets.token_hex(16))
    p.start()
    try:
        t = int(time.time() * 1000) // 1000 * 1000 - 60_000
        points = [{"metric": m, "labels": lab, "t": t, "v": 1.0} for m, lab in SERIES]
        r = p.post_reports("o1", [{"seq": 1, "points": points}])
        assert r.status == 200, r.data
        p.wait_stored("o1", {1})
        yield p
    finally:
        p.stop()


def _series(p: InProcess, *selectors: str) -> list[dict[str, str]]:
    q = "&".join("match[]=" + urllib.parse.quote(s) for s in selectors)
    r = HTTP.request("GET", f"{p.url}/api/v1/series?{q}", headers=p.headers())
    assert r.status == 200, r.data
    data: list[dict[str, str]] = json.loads(r.data)["data"]
    return data


def _prometheus_order(series: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    full = [{**lab, "__name__": m.replace(".", "_")} for m, lab in series]
    return sorted(full, key=lambda s: sorted(s.items()))


@pytest.mark.parametrize(
    ("selectors", "names"),
    [
        (['{__name__=~".+"}'], None),
        (["m"], {"m"}),
        (['{Z=~".+"}'], {"a", "m"}),
        (['m{Z=""}'], {"m"}),  # no upper-case label name among the answers: the store's order is kept
        (['{c="1"}'], {"a", "cpu.user", "cpu_a"}),
        (["a", "m"], {"a", "m"}),
    ],
    ids=["all", "one-metric", "upper-case-label", "store-order", "promql-spelling", "two-selectors"],
)
def test_series_come_in_prometheus_order(p: InProcess, selectors: list[str], names: set[str] | None) -> None:
    got = _series(p, *selectors)
    want = [(m, lab) for m, lab in SERIES if names is None or m in names]
    if selectors == ['m{Z=""}']:
        want = [(m, lab) for m, lab in want if "Z" not in lab]
    if selectors == ['{Z=~".+"}']:
        want = [(m, lab) for m, lab in want if "Z" in lab]
    if selectors == ['{c="1"}']:
        want = [(m, lab) for m, lab in want if lab.get("c") == "1"]
    assert got == _prometheus_order(want)
