"""The embedded (SQLite) store's modules (:class:`lossproof.store.sqlite.SqliteStore` puts them together).

- :mod:`.common`: the schema, the SQL, limits and type names the modules share;
- :mod:`.core`: the connection, the schema created, checked and upgraded;
- :mod:`.write`: ``write_batch`` (prior state loaded, :func:`~lossproof.store.plan.plan_batch` applied);
- :mod:`.compact`: compaction;
- :mod:`.read`: the read path.
"""
