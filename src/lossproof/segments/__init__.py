"""Durable segment files, written once for the agent spool, the embedded log and the fallback journal.

* :mod:`.framing` — the 32-byte record frame (magic, CRC, length, aux, number, timestamp), reading,
  scanning, and the torn-tail-versus-corruption rule (:func:`.framing.verdict`);
* :mod:`.state` — small CRC'd state files (atomically replaced, rewritten in place, two-slot counter);
* :mod:`.commit` — the group-commit engine (futures, unhealthy after a failed write or fsync, probe);
* :mod:`.fs` — the file-system seam the writers are handed (and the fault-injecting one for tests);
* :mod:`.lock` — the one-writer lock of a durable directory;
* :mod:`.names` — numbered segment file names.

The on-disk formats built on these are documented in docs/log.md ("Durable files").
"""
