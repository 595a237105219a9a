"""Benchmarks (``lossproof bench ...``, registered lazily in :mod:`lossproof.cli`): every benchmark
lives here, and nothing of the product imports this package. Each module holds one bench and its
click command (``store``: ``bench_cmd``; ``kafka``: ``kafka_bench_cmd``; ...)."""
