"""Read numbers off a running pipeline's ``/metrics``."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Sample name with sorted labels -> value, e.g. ``lossproof_worker_points_total``."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def total(sample: dict[str, float], prefix: str) -> float:
    """Sum of every sample whose name (labels stripped) equals ``prefix``."""
    return sum(v for k, v in sample.items() if k.split("{", 1)[0] == prefix)


def histogram_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float:
    """Quantile of observations made between two scrapes, from cumulative buckets (upper bound)."""
    by_le: dict[float, float] = {}
    for k, v in after.items():
        if k.startswith(f"{name}_bucket{{") and "le=" in k:
            le = float(k.split("le=", 1)[1].rstrip("}").split(",", 1)[0])
            by_le[le] = by_le.get(le, 0.0) + v - before.get(k, 0.0)
    buckets = sorted(by_le.items())
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return float("inf")
