"""Metric names with dots written and read the Prometheus 3 way ({"system.load.1"})."""

from __future__ import annotations

import promql_parser as pp
import pytest

from lossproof.query import utf8names


@pytest.mark.parametrize(
    ("typed", "read"),
    [
        ("system.load.1", '{"system.load.1"}'),
        ("  system.load.1  ", '{"system.load.1"}'),
        ('system.load.1{host="a"}', '{"system.load.1", host="a"}'),
        ("system.load.1{}", '{"system.load.1"}'),
        ("http-requests.total", '{"http-requests.total"}'),
        # valid PromQL or not a bare name: unchanged (the parser says what is wrong, if anything)
        ("cpu_user", "cpu_user"),
        ('{"system.load.1"}', '{"system.load.1"}'),
        ("rate(system.load.1[5m])", "rate(system.load.1[5m])"),
        ("a - b", "a - b"),
        ("1.5", "1.5"),
        ("", ""),
    ],
)
def test_a_bare_dotted_name_is_quoted(typed: str, read: str) -> None:
    assert utf8names.quote_bare_name(typed) == read


def test_what_is_written_parses_back_to_the_stored_name_and_labels() -> None:
    labels = {"host": "a\"b\\c", "service.name": "shop"}
    for metric in ("system.load.1", "cpu_user", "a\"quote"):
        text = utf8names.selector(metric, [utf8names.equals(k, v) for k, v in sorted(labels.items())])
        e = pp.parse(text)
        assert isinstance(e, pp.VectorSelector)
        got = {m.name: m.value for m in e.matchers.matchers}
        name = e.name or got.pop("__name__")
        assert (name, got) == (metric, labels), text
    assert utf8names.selector("cpu_user", []) == "cpu_user"
    assert utf8names.selector("system.load.1", ['job="x"']) == '{"system.load.1",job="x"}'
