"""The bounds a query text is checked against before the parser sees it: the parser holds the GIL,
so what it spends is spent by the event loop that acknowledges writes too."""

from __future__ import annotations

import time

import pytest

from lossproof.query import promparse
from lossproof.query.promvalues import PromQLError


@pytest.mark.parametrize(
    "query",
    [
        "m{" + ",".join(['a=~"\\\\W{300}"'] * 18) + "}",  # 254 characters: 3 s before, parsed inline
        "m{" + ",".join(['a=~"\\\\w{100}"'] * 18) + "}",
        'm{a=~"((\\\\W{15}){15})"}',  # nested counts multiply
        "m{a=~`\\W{300}`}",
        "m{a!~'\\\\d{1000}'}",
    ],
)
def test_regexes_of_many_counted_copies_are_refused_without_holding_the_gil(query: str) -> None:
    """The parser compiles every =~ / !~ regex (Rust regex) holding the GIL; a counted repetition of
    a Unicode class (\\W{300}: ~100 ms) copies it n times. 18 of them in 254 characters, parsed on
    the event loop (a query that short is), stalled it, and every write acknowledgement, for 3 s;
    a thread would not have helped. Refused (a 400) before the parser sees them."""
    t0 = time.perf_counter()
    with pytest.raises(PromQLError, match="regex"):
        promparse.parse(query)
    assert time.perf_counter() - t0 < 0.25


@pytest.mark.parametrize(
    "query",
    [
        'm{uuid=~"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"}',
        'm{ip=~"[0-9]{1,3}\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}"}',
        'm{instance=~"(' + "|".join(f"host-{i}.example.com:9100" for i in range(300)) + ')"}',
        'm{a=~"\\\\w+", b!~"\\\\W*x?", c=~"x{2}y{0,3}\\\\{9999\\\\}"}',
        'm{a=~"\\\\p{Greek}{20}"}',
    ],
)
def test_usual_regexes_still_parse(query: str) -> None:
    assert promparse.parse(query) is not None
