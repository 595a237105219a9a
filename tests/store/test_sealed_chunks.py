"""Sealed chunks and parts (chunks, "Sealed"): a flipped bit anywhere in a stored chunk or part is
refused, never answered as points.

Before, the structural checks (sizes, headers, times increasing, the stored time range) were all
there was: a flipped bit of a value, or of a packed chunk's value mode, read back as other numbers,
and nothing said so. The tests show that on chunks written without a seal (as before), and that
the seal closes it: every single-bit flip is refused or reads the same points."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from lossproof.query import promql
from lossproof.store import chunks
from lossproof.store import pg_migrations as mig
from lossproof.store.base import StoreUnavailable
from lossproof.store.embedded.common import SCHEMA_VERSION
from lptest.damaged_store import HOUR, SERIES, T0, M, batch, compact_all, first_chunk, points, stored
from lptest.store_backends import SqliteBackend, StoreBackend, unseal

_TS = np.array([T0 + 15_000 * k for k in range(12)], dtype=np.int64)
_VS = np.array([100.0 + k for k in range(12)])  # integers: the decimal value mode


def _flips(data: bytes) -> Iterator[bytes]:
    for i in range(8 * len(data)):
        d = bytearray(data)
        d[i // 8] ^= 1 << (i % 8)
        yield bytes(d)


def _silently_wrong(data: bytes, read: Callable[[bytes], tuple[np.ndarray, ...]]) -> int:
    """How many of the single-bit flips of ``data`` read back as other points without an error."""
    want = read(data)
    wrong = 0
    for d in _flips(data):
        try:
            got = read(d)
        except chunks.ChunkError:
            continue
        same = len(got) == len(want) and all(
            a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(got, want, strict=True)
        )
        wrong += not same
    return wrong


def _chunk(data: bytes) -> tuple[np.ndarray, ...]:
    [(ts, vs)] = chunks.decode_stored([(int(_TS[0]), int(_TS[-1]), data)])
    return ts, vs


def _raw() -> bytes:
    return chunks.encode_batch(np.zeros(len(_TS), np.int64), _TS, _VS)[0].data


def _packed(kind: int) -> bytes:
    return chunks.encode_many(_TS, _VS, np.array([0]), np.array([len(_TS)]), kind)[0]


@pytest.mark.parametrize(
    "make",
    [_raw, lambda: _packed(chunks.PACKED), lambda: _packed(chunks.PENDING)],
    ids=["raw", "packed", "pending"],
)
def test_every_flipped_bit_of_a_sealed_chunk_is_refused_or_harmless(make: Callable[[], bytes]) -> None:
    sealed = make()
    assert sealed[0] & chunks.SEALED
    assert _silently_wrong(sealed, _chunk) == 0
    # without the seal (a chunk from before it): values read back changed, and nothing said so
    assert _silently_wrong(unseal(sealed), _chunk) > 0


def test_every_flipped_bit_of_a_sealed_part_is_refused_or_harmless() -> None:
    sids = np.repeat(np.array([3, 5, 9], dtype=np.int64), 4)
    ts = np.tile(_TS[:4], 3)
    vs = np.arange(12, dtype=np.float64) / 4
    part = chunks.encode_part(sids, ts, vs)
    assert part[0] == chunks.PART | chunks.SEALED

    def flushed(data: bytes) -> tuple[np.ndarray, ...]:
        # what compaction makes of it: the native merge (flush_rows), every series kept raw
        rows, _, _ = chunks.flush_parts([data], 1, 10**9, chunks.Windows(2 * HOUR), lambda s, a, b: s > 0)
        heads = np.array([r[:5] for r in rows], dtype=np.int64).reshape(-1, 5)
        return heads, *(_chunk_any(r[5]) for r in rows)

    for read in (chunks.decode_part, flushed):
        assert read(part)  # (what a flip is compared with)
        assert _silently_wrong(part, read) == 0, read
        assert _silently_wrong(unseal(part), read) > 0, read


def _chunk_any(data: bytes) -> np.ndarray:
    ts, vs = chunks.decode(data)
    return np.concatenate((ts, vs.view(np.int64)))


@pytest.mark.parametrize("kind", [chunks.PACKED, chunks.PENDING])
def test_a_packed_chunk_whose_seal_bit_is_cleared_is_not_read_unverified(kind: int) -> None:
    """The seal is declared by a bit of the data itself: damage that clears it turns a sealed packed
    chunk into an "old" one, read without its checksum (its 4 checksum bytes are taken for what
    follows the zstd frame, which python-zstandard and the Rust path both ignore). A raw chunk or a
    part so damaged fails its size check; a packed one is then open to any further damage, such as
    its value mode (values read as hundredths). No writer ever put bytes after a packed chunk's
    frame: refusing them closes this."""
    [sealed] = chunks.encode_many(_TS, _VS, np.array([0]), np.array([len(_TS)]), kind)
    d = bytearray(sealed)
    d[0] &= ~chunks.SEALED  # one bit: the seal gone
    d[1] ^= 0x02  # and the value mode: decimal k=0 read as k=2
    with pytest.raises(chunks.ChunkError):
        chunks.decode_stored([(int(_TS[0]), int(_TS[-1]), bytes(d))])


def test_a_stored_packed_chunk_whose_seal_bit_is_cleared_fails_every_read(backend: StoreBackend) -> None:
    """The same through each store's reads (the embedded store's native assemble and the rate's
    path; PostgreSQL's decode in Python) and its check."""
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    cid, _ = first_chunk(backend)
    [(data,)] = backend.fetch(f"SELECT data FROM chunks WHERE id = {cid}")
    d = bytearray(_mode_flipped(bytes(data)))
    d[0] &= ~chunks.SEALED
    backend.rewrite("chunks", cid, bytes(d))
    reader = backend.open(readonly=True)
    with pytest.raises(chunks.ChunkError):
        stored(reader)
    grid = promql.Grid(T0 + 10 * 60_000, T0 + 30 * 60_000, 60_000)
    with pytest.raises(chunks.ChunkError):
        promql.Evaluator(reader, "t", grid).eval(promql.parse("rate(m[5m])"))
    assert [x.id for x in reader.check_rows("chunks", None, 100).damaged] == [cid]


def _mode_flipped(data: bytes) -> bytes:
    """A packed chunk of integers with its value mode's second bit flipped: the decimal mode of
    k = 0 read as k = 2 (every value a hundredth of what was stored), which no structural check can
    tell from a chunk of such values."""
    assert chunks.kind_of(data) == chunks.PACKED and data[1] == 1, data[:2]
    d = bytearray(data)
    d[1] ^= 0x02
    return bytes(d)


def test_a_value_flipped_in_a_stored_chunk_fails_its_reads_instead_of_answering_it(
    backend: StoreBackend,
) -> None:
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    cid, hit = first_chunk(backend)
    [(data,)] = backend.fetch(f"SELECT data FROM chunks WHERE id = {cid}")
    sealed = bytes(data)

    # as before the seal: the chunk without it, damaged so, is read back as other values, silently
    backend.rewrite("chunks", cid, _mode_flipped(unseal(sealed)))
    got = stored(backend.open(readonly=True))
    want = points(*range(10))
    assert got[hit][0] == want[0] and got[hit][1] == [v / 100 for v in want[1]]

    # sealed: the read of the metric fails (a query's 500, docs/store.md), the rate's path too
    backend.rewrite("chunks", cid, _mode_flipped(sealed))
    reader = backend.open(readonly=True)
    with pytest.raises(chunks.ChunkError, match="checksum"):
        reader.select("t", M, 0, 1 << 62)
    grid = promql.Grid(T0 + 10 * 60_000, T0 + 30 * 60_000, 60_000)
    with pytest.raises(chunks.ChunkError, match="checksum"):
        promql.Evaluator(reader, "t", grid).eval(promql.parse("rate(m[5m])"))
    # found by the check, and set aside by a replay over it; the replay's points stored again
    assert [d.id for d in reader.check_rows("chunks", None, 100).damaged] == [cid]
    res = backend.open().write_batch(batch(0))
    assert res.chunks_quarantined == 1
    got = stored(store)
    assert got.pop(hit) == points(0)
    assert got == {str(i): points(*range(10)) for i in range(SERIES) if str(i) != hit}


def test_a_writer_whose_store_a_newer_lossproof_upgraded_sets_nothing_aside(backend: StoreBackend) -> None:
    """A worker that is still running when a newer lossproof upgrades the store may meet rows in a
    format it cannot read (sealed rows were that to the version before them), and take them for
    damage: it refuses to set anything aside instead (the batch is retried, nothing is moved)."""
    store = backend.open()
    for b in range(10):
        store.write_batch(batch(b))
    compact_all(store, T0 + 30 * HOUR)
    old = backend.open()  # opened before the upgrade
    backend.damage_first("chunks")
    if isinstance(backend, SqliteBackend):
        backend.execute(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    else:
        backend.execute(
            f"INSERT INTO schema_migrations (version, description) VALUES ({mig.LATEST + 1}, 'x')"
        )
    # a replay over the damaged chunk, which it would set aside: unavailable (the worker retries)
    with pytest.raises(StoreUnavailable, match="newer"):
        old.write_batch(batch(0))
    assert backend.fetch("SELECT count(*) FROM damaged_chunks") == [(0,)]
    assert backend.fetch("SELECT count(*) FROM chunks") == [(SERIES,)]
