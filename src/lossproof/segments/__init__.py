"""Durable segment files, written once for the agent spool, the embedded log and the fallback journal.

* :mod:`.framing` — the 32-byte record frame (magic, CRC, length, aux, number, timestamp), reading,
  scanning, and the torn-tail-versus-corruption rule;
* :mod:`.state` — small CRC'd state files (atomically replaced, rewritten in place, two-slot counter);
* :mod:`.commit` — the group-commit engine (futures, unhealthy after a failed write or fsync, probe).
"""
