"""The fallback receiver (a separate, deliberately simple ingest into a local journal) and replay.

See ``docs/fallback.md``.
"""
