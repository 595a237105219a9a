"""PromQL conformance: the same data and the same queries in Debian's Prometheus and in lossproof.

``data`` (the deterministic data set), ``queries`` (the compliance suite's queries expanded, and the
dashboard and alert ones; the data files beside it), ``servers`` (both servers as real processes,
loaded by remote write), ``compare`` (verdicts), ``run`` (one whole run). ``python -m
lptest.promqlconf`` prints the report; tests/promql/test_conformance.py checks it against
``passing.txt``.
"""
