"""The PostgreSQL store's modules (:class:`lossproof.store.postgres.PostgresStore` puts them together).

- :mod:`.common`: connections and their errors, the SQL and types the paths share;
- :mod:`.binary`: binary COPY and array parameters built and read with numpy;
- :mod:`.migrate`: ``store migrate`` (schema migrations, version 3's points into chunks);
- :mod:`.core`: the pool, the schema check, driver errors translated;
- :mod:`.write`: ``write_batch`` (prior state loaded in bulk, :func:`~lossproof.store.plan.plan_batch`
  applied);
- :mod:`.maintain`: compaction and retention;
- :mod:`.read`: the read path.
"""
