"""Comparing one query's answers from Prometheus (the reference) and lossproof: a verdict and why.

Verdicts: ``pass`` (same result type, the same series — label sets — and the same values: relative
tolerance 1e-9, NaN equal to NaN, +-Inf equal to themselves; or both refuse the query), ``wrong``
(both answer, differently; or lossproof answers what Prometheus refuses), ``unsupported`` (lossproof
answers 4xx naming the query unsupported), ``error`` (any other failure of lossproof: another 4xx, a
5xx, no answer).

Series order is compared only for instant queries under ``sort`` / ``sort_desc``, where Prometheus
defines it; elsewhere a result is a set.
"""

from __future__ import annotations

import math
import re
from typing import Any

PASS, WRONG, UNSUPPORTED, ERROR = "pass", "wrong", "unsupported", "error"
RANK = {PASS: 0, UNSUPPORTED: 1, WRONG: 2, ERROR: 3}  # the worse of two verdicts wins
REL_TOL = 1e-9
# Below this, two values are equal whatever their ratio: sums in another order leave rounding
# residues around 0 (1e-17 against 0.0) that a relative tolerance alone calls different.
ABS_TOL = 1e-12

# (HTTP status, parsed body); status 0: no answer (the body then holds {"error": why})
Answer = tuple[int, Any]
_SORTED = re.compile(r"\s*sort(_desc)?\s*\(")


def ordered(query: str) -> bool:
    return bool(_SORTED.match(query))


def same_value(a: str | float, b: str | float) -> bool:
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error", body))[:200]
    return str(body)[:200]


def _ok(answer: Answer) -> bool:
    status, body = answer
    return status == 200 and isinstance(body, dict) and body.get("status") == "success"


def verdict(ref: Answer, lp: Answer, keep_order: bool = False) -> tuple[str, str]:
    """The verdict on lossproof's answer ``lp`` against Prometheus' ``ref``, and a one-line detail."""
    lp_status, lp_body = lp
    if lp_status == 0 or lp_status >= 500:
        return (
            ERROR,
            f"lossproof: {'no answer' if lp_status == 0 else f'HTTP {lp_status}'}: {_error_text(lp_body)}",
        )
    if not _ok(ref):
        if 400 <= lp_status < 500:
            return PASS, f"both refuse (Prometheus HTTP {ref[0]}; lossproof: {_error_text(lp_body)})"
        return WRONG, f"Prometheus refuses (HTTP {ref[0]}: {_error_text(ref[1])}), lossproof answers"
    if 400 <= lp_status < 500:
        text = _error_text(lp_body)
        if "unsupported" in text.lower():
            return UNSUPPORTED, text
        return ERROR, f"lossproof HTTP {lp_status}: {text}"
    if not _ok(lp):
        return ERROR, f"lossproof HTTP {lp_status}: {_error_text(lp_body)}"
    return compare_data(ref[1]["data"], lp_body["data"], keep_order)


def _labels(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(metric.items()))


def _fmt(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"


def compare_data(ref: Any, got: Any, keep_order: bool = False) -> tuple[str, str]:
    """Compare two ``data`` members of successful query answers."""
    rtype, gtype = ref.get("resultType"), got.get("resultType")
    if rtype != gtype:
        return WRONG, f"result type {gtype}, Prometheus {rtype}"
    rres, gres = ref["result"], got["result"]
    if rtype == "string":
        return (PASS, "") if rres == gres else (WRONG, f"{gres!r}, Prometheus {rres!r}")
    if rtype == "scalar":
        return _compare_points([rres], [gres], "scalar")
    key = "values" if rtype == "matrix" else "value"
    rmap = {_labels(s["metric"]): s[key] for s in rres}
    gmap: dict[tuple[tuple[str, str], ...], Any] = {}
    for s in gres:
        labels = _labels(s["metric"])
        if labels in gmap:
            return WRONG, f"series {_fmt(labels)} twice in lossproof's answer"
        gmap[labels] = s[key]
    if rmap.keys() != gmap.keys():
        missing = sorted(rmap.keys() - gmap.keys())
        extra = sorted(gmap.keys() - rmap.keys())
        parts = [f"{len(gmap)} series, Prometheus {len(rmap)}"]
        if missing:
            parts.append(
                f"missing {_fmt(missing[0])}" + (f" (+{len(missing) - 1})" if len(missing) > 1 else "")
            )
        if extra:
            parts.append(f"extra {_fmt(extra[0])}" + (f" (+{len(extra) - 1})" if len(extra) > 1 else ""))
        return WRONG, "; ".join(parts)
    if keep_order:
        rorder = [_labels(s["metric"]) for s in rres]
        gorder = [_labels(s["metric"]) for s in gres]
        if rorder != gorder:
            return (
                WRONG,
                f"series order {[_fmt(x) for x in gorder[:3]]}, Prometheus {[_fmt(x) for x in rorder[:3]]}",
            )
    points = 0
    for labels, rpts in rmap.items():
        gpts = gmap[labels]
        if rtype == "vector":
            rpts, gpts = [rpts], [gpts]
        v, detail = _compare_points(rpts, gpts, _fmt(labels))
        if v != PASS:
            return v, detail
        points += len(rpts)
    return PASS, f"{len(rmap)} series, {points} points"


def _compare_points(ref: list[Any], got: list[Any], where: str) -> tuple[str, str]:
    rts = [float(p[0]) for p in ref]
    gts = [float(p[0]) for p in got]
    if rts != gts:
        only_ref = sorted(set(rts) - set(gts))
        only_got = sorted(set(gts) - set(rts))
        return WRONG, (
            f"{where} {len(gts)} points, Prometheus {len(rts)}"
            + (f"; missing t={only_ref[0]:.3f}" if only_ref else "")
            + (f"; extra t={only_got[0]:.3f}" if only_got else "")
        )
    for (t, rv), (_, gv) in zip(ref, got, strict=True):
        if not same_value(rv, gv):
            return WRONG, f"{where} at t={float(t):.3f}: {gv}, Prometheus {rv}"
    return PASS, ""
