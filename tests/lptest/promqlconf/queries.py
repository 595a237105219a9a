"""The conformance queries: the compliance suite's templates expanded, then the dashboard and alert ones.

The suite's tester (promql/testcases/expand.go) fills each ``{{.name}}`` of a query with every value
of that variant, the first name of ``variant_args`` varying slowest; :func:`expand` does the same, so
the list here is the suite's list in the suite's order (549 queries at the pinned commit).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPLIANCE_FILE = HERE / "compliance_queries.toml"
MIXIN_FILE = HERE / "mixin_queries.toml"
PASSING_FILE = HERE / "passing.txt"

_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class Query:
    text: str
    source: str  # "compliance" or "mixin"
    should_fail: bool = False


class QueryFileError(Exception):
    pass


def _fill(chosen: dict[str, str], m: re.Match[str]) -> str:
    return chosen[m.group(1)]


def expand(template: str, variant_args: list[str], variants: dict[str, list[str]]) -> list[str]:
    """Every variant of ``template``, as the suite's tester makes them."""
    used = set(_PLACEHOLDER.findall(template))
    unknown = [a for a in variant_args if a not in variants]
    if unknown:
        raise QueryFileError(f"unknown variant {unknown[0]!r} in {template!r}")
    if used != set(variant_args):
        raise QueryFileError(f"{template!r} uses {sorted(used)} but varies {variant_args}")
    out = []
    for values in itertools.product(*(variants[a] for a in variant_args)):
        chosen = dict(zip(variant_args, values, strict=True))
        out.append(_PLACEHOLDER.sub(partial(_fill, chosen), template))
    return out


def load(path: Path, source: str) -> list[Query]:
    with path.open("rb") as f:
        doc = tomllib.load(f)
    variants: dict[str, list[str]] = doc.get("variants", {})
    out: list[Query] = []
    for case in doc["case"]:
        for text in expand(case["query"], case.get("variant_args", []), variants):
            out.append(Query(text, source, bool(case.get("should_fail", False))))
    return out


def all_queries() -> list[Query]:
    """The compliance suite's queries, then the dashboard/alert ones; a query in both counts once."""
    seen: set[str] = set()
    out = []
    for q in [*load(COMPLIANCE_FILE, "compliance"), *load(MIXIN_FILE, "mixin")]:
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out


def load_passing(path: Path = PASSING_FILE) -> set[str]:
    """The queries expected to pass: one per line, ``#`` starts a comment line."""
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()
    return {line for line in lines if line.strip() and not line.startswith("#")}


def write_passing(passing: list[str], path: Path = PASSING_FILE) -> None:
    head = (
        "# Queries of lptest/promqlconf that lossproof answers as Prometheus does (one per line, in the\n"
        "# order of the query files). tests/promql/test_conformance.py fails when one of these stops\n"
        "# passing, and when a query not listed here passes: then rewrite this file with\n"
        "#   PYTHONPATH=src:tests python -m lptest.promqlconf --write-passing\n"
    )
    path.write_text(head + "".join(q + "\n" for q in passing))
