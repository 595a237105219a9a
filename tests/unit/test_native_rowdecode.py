"""The native read of chunk rows of either kind (``_native.row_heads``, ``_native.assemble_rows``)
against the Python path it replaced (``chunks.open_many``, ``chunks.decode_into``, numpy copies and
checks: what ``_assemble`` does when ``row_heads`` answers None): the same columns bit for bit (NaN
payloads, staleness markers), and the same ChunkError, message and all, for every kind of damage."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossproof import _native
from lossproof.store import chunks
from lossproof.store.embedded import read
from lossproof.store.embedded.read import PartBlock, _assemble
from lptest import subprocess_env

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus' staleness marker
Row = tuple[int, int, int, int, bytes]


def _raw(ts: list[int], vs: list[float]) -> bytes:
    return bytes((chunks.RAW,)) + np.array(ts, dtype="<i8").tobytes() + np.array(vs, dtype="<f8").tobytes()


def _packed(ts: list[int], vs: list[float]) -> bytes:
    """A packed chunk, written without the encoder's checks (its times may go back)."""
    t, v = np.array(ts, dtype=np.int64), np.array(vs, dtype=np.float64)
    return chunks.encode_many(t, v, np.array([0]), np.array([len(t)]))[0]


def _damaged(data: bytes, how: int) -> bytes:
    """One of the ways a chunk's bytes can be wrong."""
    head = chunks._PACKED_HEAD.size
    if how == 0:
        return b""
    if how == 1:
        return bytes((7,)) + data[1:]  # an unknown kind
    if data[0] == chunks.RAW:
        return data[:-1]  # not 1 + 16 n bytes
    if how == 2:
        return data[:1] + bytes((42,)) + data[2:]  # an unknown value mode
    if how == 3:
        return data[:2] + struct.pack("<I", 0) + data[6:]  # 0 points
    if how == 4:
        return (
            data[:2] + struct.pack("<I", struct.unpack_from("<I", data, 2)[0] + 1) + data[6:]
        )  # n not the frame's
    if how == 5:
        return data[: max(head + 1, len(data) - 3)]  # the frame cut short
    if how == 6:
        return data[:head]  # no frame at all
    if how == 7:
        return data + b"\x00\x01\x02"  # bytes after the frame
    # a byte of the compressed blocks flipped (the frame header left alone)
    at = head + 6 + (how % 5)
    return data if at >= len(data) else data[:at] + bytes((data[at] ^ 0x5A,)) + data[at + 1 :]


def _python_path(fn: Callable[[], Any]) -> Any:
    """``fn()`` with ``_assemble`` made to open every row in Python (row_heads answering None)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(read._native, "row_heads", lambda rows: None)
        return fn()


def _outcome(fn: Callable[[], list[tuple[np.ndarray, np.ndarray]]]) -> Any:
    try:
        got = fn()
    except chunks.ChunkError as e:
        return ("error", str(e))
    return [(t.tolist(), v.view(np.uint64).tolist()) for t, v in got]


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True),
    st.integers(-(10**6), 10**6).map(lambda x: x / 100),
    st.sampled_from([float("nan"), STALE, -0.0, 0.0, 1e308]),
)


@st.composite
def rows_and_blocks(draw: st.DrawFn) -> tuple[list[Row], list[PartBlock], int, int]:
    rows: list[Row] = []
    for cid in range(1, draw(st.integers(0, 8)) + 1):
        sid = draw(st.integers(1, 4))
        ts = sorted(set(draw(st.lists(st.integers(-50, 300), min_size=1, max_size=40))))
        if not draw(st.integers(0, 6)):
            ts = ts[::-1]  # times going back (a damaged chunk that decompresses)
        vs = [draw(values) for _ in ts]
        data = _packed(ts, vs) if draw(st.booleans()) else _raw(ts, vs)
        t_min, t_max = min(ts), max(ts)
        if not draw(st.integers(0, 8)):
            t_max += 1  # a stored range not the chunk's
        if not draw(st.integers(0, 10)):
            data = _damaged(data, draw(st.integers(0, 12)))
        rows.append((sid, cid, t_min, t_max, data))
    blocks = []
    if draw(st.booleans()):
        bts = np.array(
            sorted(set(draw(st.lists(st.integers(-50, 300), min_size=2, max_size=8)))), dtype=np.int64
        )
        if not draw(st.integers(0, 5)):
            bts = bts[::-1].copy()
        bvs = np.array([draw(values) for _ in bts], dtype=np.float64)
        cut = len(bts) // 2
        blocks.append(
            PartBlock(
                np.array([0, 2]), (1 << 62) + 1, bts, bvs, np.array([0, cut]), np.array([cut, len(bts) - cut])
            )
        )
    lo = draw(st.integers(-60, 100))
    return rows, blocks, lo, lo + draw(st.integers(0, 300))


@settings(max_examples=400, deadline=None)
@given(rows_and_blocks())
def test_native_rows_answer_or_refuse_as_the_python_path(
    case: tuple[list[Row], list[PartBlock], int, int],
) -> None:
    rows, blocks, lo, hi = case
    found = [(s, "m", ()) for s in range(1, 5)]
    native = _outcome(lambda: _assemble(found, rows, {}, lo, hi, blocks))
    python = _outcome(lambda: _python_path(lambda: _assemble(found, rows, {}, lo, hi, blocks)))
    assert native == python
    # into a scratch buffer of a read in pieces, left dirty by an earlier piece: the same
    scratch = [bytearray(b"\xa5" * 4096)]
    assert _outcome(lambda: _assemble(found, rows, {}, lo, hi, blocks, scratch)) == native


def test_assemble_rows_into_is_assemble_rows_in_the_callers_buffer() -> None:
    """The same columns (and verdict) written into a buffer the caller gives, dirty from an earlier
    use: the points no chunk or segment is given zeroed there, as in a new bytearray; the bytes past
    the columns left alone; a buffer too short refused."""
    ts1, ts2 = list(range(100, 160, 10)), list(range(300, 330, 10))
    rows = [(1, 1, 100, 150, _packed(ts1, [1.5] * 6)), (2, 2, 300, 320, _raw(ts2, [2.0, STALE, -0.0]))]
    at = np.array([0, 9], dtype=np.int64).tobytes()  # points 6..9 are nobody's
    src_t, src_v = np.array([7, 8], dtype=np.int64), np.array([0.25, 0.5])
    seg = [np.array([x], dtype=np.int64).tobytes() for x in (0, 0, 7, 2)]  # source 0 to points 7, 8
    cols, verdict = _native.assemble_rows(rows, at, 12, [src_t], [src_v], *seg)
    buf = bytearray(b"\xa5" * (16 * 12 + 5))
    assert _native.assemble_rows_into(buf, rows, at, 12, [src_t], [src_v], *seg) == verdict == 0
    assert bytes(buf[: 16 * 12]) == bytes(cols) and buf[16 * 12 :] == b"\xa5" * 5
    assert np.frombuffer(cols, dtype=np.int64, count=12)[6:9].tolist() == [0, 7, 8]
    with pytest.raises(ValueError):
        _native.assemble_rows_into(bytearray(16 * 12 - 1), rows, at, 12, [src_t], [src_v], *seg)


@pytest.mark.parametrize("how", range(13))
@pytest.mark.parametrize("kind", ["raw", "packed"])
def test_each_kind_of_damage_is_the_python_paths_chunk_error(how: int, kind: str) -> None:
    ts = list(range(0, 15_000 * 200, 15_000))
    vs = [1000.0 + 0.5 * k for k in range(len(ts))]
    good = (_packed if kind == "packed" else _raw)(ts, vs)
    rows = [(1, 1, ts[0], ts[-1], _raw([ts[-1] + 1], [1.0])), (1, 2, ts[0], ts[-1], _damaged(good, how))]
    rows[0] = (1, 1, ts[-1] + 1, ts[-1] + 1, rows[0][4])
    found = [(1, "m", ())]
    native = _outcome(lambda: _assemble(found, rows, {}, 0, 10**9))
    python = _outcome(lambda: _python_path(lambda: _assemble(found, rows, {}, 0, 10**9)))
    assert native == python
    # every one is an error: bytes after the frame too (a sealed chunk whose seal bit was cleared
    # would otherwise be read with its checksum taken for them, unverified)
    assert native[0] == "error"


def test_row_heads_are_the_rows_columns_and_the_header_counts() -> None:
    rng = np.random.default_rng(3)
    rows: list[Row] = []
    for cid in range(30):
        n = int(rng.integers(1, 300))
        ts = np.cumsum(rng.integers(1, 30_000, n)).tolist()
        vs = rng.normal(size=n).tolist()
        data = _packed(ts, vs) if cid % 2 else _raw(ts, vs)
        rows.append((int(rng.integers(1, 2**40)), cid, ts[0], ts[-1], data))
    heads = _native.row_heads(rows)
    assert heads is not None
    cols = np.frombuffer(heads, dtype=np.int64).reshape(5, len(rows))
    _, counts = chunks.open_many([r[4] for r in rows])
    for c in range(4):
        assert cols[c].tolist() == [r[c] for r in rows]
    assert cols[4].tolist() == counts.tolist()
    assert _native.row_heads([]) is not None and len(_native.row_heads([]) or b"") == 0
    assert _native.row_heads([*rows, (1, 99, 0, 0, b"")]) is None


def test_one_point_chunks_and_empty_reads() -> None:
    found = [(1, "m", ()), (2, "m", ())]
    rows = [(1, 1, 5, 5, _packed([5], [STALE])), (2, 2, 7, 7, _raw([7], [float("nan")]))]
    got = _assemble(found, rows, {}, 0, 10)
    assert got[0][0].tolist() == [5] and got[0][1].view(np.uint64).tolist() == [0x7FF0000000000002]
    assert got[1][0].tolist() == [7] and np.isnan(got[1][1][0])
    assert [len(t) for t, _ in _assemble(found, [], {}, 0, 10)] == [0, 0]


def test_assemble_rows_refuses_what_does_not_fit() -> None:
    d = _packed([1, 2], [1.0, 2.0])
    rows = [(1, 1, 1, 2, d)]
    e = b""
    with pytest.raises(ValueError):
        _native.assemble_rows(rows, np.array([1], dtype=np.int64).tobytes(), 2, [], [], e, e, e, e)
    with pytest.raises(ValueError):
        _native.assemble_rows(rows, b"", 2, [], [], e, e, e, e)
    with pytest.raises(ValueError):
        _native.assemble_rows(
            [(1, 1, 1, 2, b"\x07")], np.zeros(1, dtype=np.int64).tobytes(), 2, [], [], e, e, e, e
        )
    cols, verdict = _native.assemble_rows(rows, np.zeros(1, dtype=np.int64).tobytes(), 2, [], [], e, e, e, e)
    assert verdict == 0 and np.frombuffer(cols, dtype=np.int64, count=2).tolist() == [1, 2]


@pytest.mark.parametrize("damage", [None, "first", "last"])
def test_a_day_of_many_series_is_the_python_paths(damage: str | None) -> None:
    """A read of the size a query makes (a few hundred thousand points, chunks of a few thousand,
    packed and raw, rows not in the order of their places): the same columns, and a damaged chunk
    among them, first or last, the same error."""
    rng = np.random.default_rng(11)
    rows: list[Row] = []
    found = [(s, "m", ()) for s in range(1, 41)]
    for s in range(1, 41):
        t0 = 0
        for c in range(3):
            n = int(rng.integers(1500, 2500))
            ts = (t0 + np.cumsum(rng.integers(1, 20_000, n))).tolist()
            vs = (rng.integers(0, 10**6, n) / 100).tolist()
            vs[n // 2] = STALE
            t0 = ts[-1]
            data = _packed(ts, vs) if (s + c) % 3 else _raw(ts, vs)
            rows.append((s, 100 * s + c, ts[0], ts[-1], data))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    if damage is not None:
        pick = min if damage == "first" else max
        k = pick(range(len(rows)), key=lambda i: rows[i][0])
        rows[k] = (*rows[k][:4], _damaged(_packed(list(range(50)), [1.0] * 50), 9))
    native = _outcome(lambda: _assemble(found, rows, {}, -1, 10**12))
    python = _outcome(lambda: _python_path(lambda: _assemble(found, rows, {}, -1, 10**12)))
    assert native == python
    assert (native[0] == "error") == (damage is not None)


def _claiming(n: int) -> bytes:
    """A packed chunk's header of ``n`` points and a 16-byte zstd frame that declares their body
    (16 n - 8 bytes: any size fits in its header) but holds one empty block."""
    frame = struct.pack("<IBQ", 0xFD2FB528, 0xE0, 16 * n - 8) + bytes((1, 0, 0))
    return chunks._PACKED_HEAD.pack(chunks.PACKED, 0, n, 0) + frame


@pytest.mark.parametrize("n", [1 << 24, (1 << 32) - 1])
def test_a_header_claiming_many_points_is_a_chunk_error_without_allocating_them(n: int) -> None:
    """A damaged count in a few bytes of header is a ChunkError on both paths, with no more memory
    than the frame can hold: the native path allocated (and zeroed) 16 bytes a claimed point before
    it found out the frame (4 GB for 2**28 of them), both paths answered MemoryError for 2**32 - 1
    (python-zstandard allocates the size a frame declares)."""
    import tracemalloc

    rows = [(1, 1, 0, 1 << 40, _claiming(n))]
    found = [(1, "m", ())]
    assert _native.row_heads(rows) is None
    tracemalloc.start()
    try:
        native = _outcome(lambda: _assemble(found, rows, {}, 0, 10))
        python = _outcome(lambda: _python_path(lambda: _assemble(found, rows, {}, 0, 10)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert native == python == ("error", f"chunk of {n} points in a frame of 16 bytes")
    assert peak < 16 << 20


def test_more_points_than_the_stored_range_holds_is_read_by_the_python_path() -> None:
    """A chunk of n points stored as [t_min, t_max] with t_max - t_min + 1 < n is damaged (its
    times cannot strictly increase): row_heads leaves it to Python (which says what is wrong),
    rather than allocating its columns first."""
    good = _packed([10, 20, 30], [1.0, 2.0, 3.0])
    rows = [(1, 1, 10, 11, good)]
    assert _native.row_heads(rows) is None
    assert _native.row_heads([(1, 1, 10, 12, good)]) is not None
    e = b""
    with pytest.raises(ValueError):
        _native.assemble_rows(rows, np.zeros(1, dtype=np.int64).tobytes(), 3, [], [], e, e, e, e)
    found = [(1, "m", ())]
    assert _outcome(lambda: _assemble(found, rows, {}, 0, 100)) == (
        "error",
        "a chunk's points are not its stored time range",
    )


# Review (q): assemble_rows_into writes the caller's bytearray without the GIL; without an export
# held, another thread could resize (free) it meanwhile. Run in a child: unfixed, it crashed
# (SIGSEGV) or wrote into freed memory; fixed, the resize raises BufferError.
_RESIZE_CHILD = textwrap.dedent("""
    import sys, threading, time, numpy as np
    from lossproof import _native
    from lossproof.store import chunks
    r = np.random.default_rng(1)
    rows, at, pos = [], [], 0
    for i in range(400):
        t = 1_000_000 + np.cumsum(r.integers(1, 30000, 5000)).astype(np.int64)
        data = chunks.encode_many(t, r.standard_normal(5000), np.array([0]), np.array([5000]))[0]
        rows.append((i, i, int(t[0]), int(t[-1]), data)); at.append(pos); pos += 5000
    at_b = np.array(at, dtype=np.int64).tobytes()
    buf = bytearray(16 * pos)
    started = threading.Event()
    outcome = []
    def resizer():
        started.set()
        time.sleep(0.0001)  # then waits for the GIL: it gets it when the extension lets it go
        try:
            del buf[:]
            outcome.append("resized")
        except BufferError:
            outcome.append("refused")
    sys.setswitchinterval(5.0)  # the main thread keeps the GIL until the extension releases it
    th = threading.Thread(target=resizer); th.start(); started.wait()
    try:
        _native.assemble_rows_into(buf, rows, at_b, pos, [], [], b"", b"", b"", b"")
    except ValueError:  # the resizer ran before the call (its length checked): no race this time
        outcome.insert(0, "early")
    th.join()
    print(outcome[0])
""")


def test_the_callers_bytearray_cannot_be_resized_while_written_without_the_gil() -> None:
    seen = []
    for _ in range(8):
        p = subprocess.run(
            [sys.executable, "-c", _RESIZE_CHILD],
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(),
        )
        assert p.returncode == 0, (p.returncode, p.stderr[-500:])  # -11: SIGSEGV, a write into freed memory
        seen.append(p.stdout.strip())
        assert seen[-1] in ("refused", "early"), seen  # "resized": freed under the writer, no crash this time
    assert "refused" in seen
