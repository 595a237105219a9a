"""The pipeline's own metrics as the health page samples them: a scrape parsed into a
:data:`~lossproof.query.healthhistory.Sample` (name and labels -> value), and what is read off two
samples (totals, a histogram's quantile between them)."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from lossproof.query.gofloat import parse_go_float
from lossproof.query.healthhistory import Sample


def parse_metrics(text: str) -> Sample:
    """A Prometheus text exposition as a sample: (name, sorted labels) -> value."""
    out: Sample = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def value_of(snap: Sample, name: str) -> float | None:
    """The sum of every series of ``name`` in ``snap``; None when it has none."""
    vals = [v for (n, _), v in snap.items() if n == name]
    return sum(vals) if vals else None


def sum_of(snap: Sample, name: str, **match: str) -> float:
    """The sum of the series of ``name`` whose labels include ``match`` (0 when none)."""
    total = 0.0
    for (n, labels), v in snap.items():
        if n == name and all(dict(labels).get(k) == want for k, want in match.items()):
            total += v
    return total


def hist_quantile(a: Sample, b: Sample, name: str, q: float) -> float | None:
    """Quantile of a histogram's observations between two samples (like histogram_quantile)."""
    buckets: dict[float, float] = {}
    for (n, labels), v in b.items():
        if n == name + "_bucket":
            le = dict(labels).get("le", "+Inf")
            # as histogram_quantile reads it (Go's ParseFloat); a bucket whose bound does not parse
            # is left out, as there, rather than failing the whole page
            bound = parse_go_float(le)
            if bound is None:
                continue
            buckets[bound] = buckets.get(bound, 0.0) + v - a.get((n, labels), 0.0)
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
