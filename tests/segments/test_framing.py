"""The shared framing of lossproof.segments: formats, a model test, and bit-flip / torn-write
properties of the scan and of the torn-tail-versus-corruption verdict.

The model: a segment is what a writer appended, batch by batch, each batch either made durable
(fsync'd: vouched for) or not. A crash tears the unsynced tail anywhere (cut, garbage, or pages of
it surviving out of order); the scan must return exactly the records a correct recovery keeps
(all durable ones, then a prefix of the unsynced ones), and the verdict must never call a torn tail
corruption nor damage of durable bytes a torn tail.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossproof.segments.framing import HEADER_SIZE, Framing, Verdict, verdict
from lossproof.segments.state import TwoSlotCounter, decode_slot

F = Framing(b"LPT1")
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def encode_all(records: list[tuple[int, int, int, bytes]]) -> tuple[bytes, list[int]]:
    """(file bytes, record start positions) of records (number, ts, aux, payload)."""
    out = bytearray()
    starts = []
    for n, ts, aux, payload in records:
        starts.append(len(out))
        out += F.encode(n, ts, aux, payload)
    return bytes(out), starts


def scan_bytes(tmp: Path, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
    p = tmp / "seg"
    p.write_bytes(data)
    return F.scan_path(p, **kw)


payloads = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12)


# --- the formats stay byte-identical -------------------------------------------------------------


def test_the_three_record_formats_are_the_ones_written_before() -> None:
    """The encoders the spool, the log and the journal had before lossproof.segments (copied here)."""
    from lossproof.agent.spool.format import Codec
    from lossproof.fallback import journal as jn
    from lossproof.log.embedded import segment as seg

    payload = b"x" * 100
    # spool (LPAR): "<IB3xQq" after magic and crc
    part = struct.pack("<IB3xQq", len(payload), 0, 7, 1234)
    old = b"LPAR" + struct.pack("<I", zlib.crc32(payload, zlib.crc32(part))) + part + payload
    assert Codec().encode(7, 1234, payload) == old
    # log (LPR1): key length in the aux field
    key, value = b"k", b"value"
    tail = struct.pack("<IIQq", len(key) + len(value), len(key), 42, 99)
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(tail)))
    assert seg.encode_record(42, 99, key, value) == b"LPR1" + crc.to_bytes(4, "little") + tail + key + value
    # journal (LPFR): header only, reserved 0
    tail = struct.pack("<IIQq", len(payload), 0, 5, 77)
    crc = zlib.crc32(payload, zlib.crc32(tail))
    assert jn.encode_record(5, 77, payload) == b"LPFR" + crc.to_bytes(4, "little") + tail
    # small state cells: seal, log watermark, journal segment header and watermark
    sealtail = struct.pack("<QQQq", 1, 2, 3, 4)
    assert (
        seg.encode_seal(seg.Seal(1, 2, 3, 4))
        == b"LPS1" + zlib.crc32(sealtail).to_bytes(4, "little") + sealtail
    )
    assert seg.decode_seal(seg.encode_seal(seg.Seal(1, 2, 3, 4))) == seg.Seal(1, 2, 3, 4)
    wm = struct.pack("<Q", 9)
    assert seg.encode_watermark(9) == b"LPW1" + zlib.crc32(wm).to_bytes(4, "little") + wm
    hdr = struct.pack("<IIQQ", 1, 0, 10, 20)
    assert jn.encode_segment_header(10, 20) == b"LPFS" + zlib.crc32(hdr).to_bytes(4, "little") + hdr
    jwm = struct.pack("<QQ", 3, 4)
    assert jn.encode_watermark(3, 4) == b"LPFW" + zlib.crc32(jwm).to_bytes(4, "little") + jwm


# --- properties ----------------------------------------------------------------------------------


@SETTINGS
@given(payloads=payloads, data=st.data())
def test_a_bit_flip_anywhere_stops_the_scan_at_its_record_and_is_never_a_torn_tail(
    tmp_path: Path, payloads: list[bytes], data: st.DataObject
) -> None:
    records = [(i + 10, i, 0, p) for i, p in enumerate(payloads)]
    blob, starts = encode_all(records)
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    flipped = bytearray(blob)
    flipped[bit // 8] ^= 1 << (bit % 8)
    k = max(i for i, s in enumerate(starts) if s <= bit // 8)  # the record holding the bit
    sc = scan_bytes(tmp_path, bytes(flipped), after=9)
    assert sc.count == k and sc.bad_pos == starts[k] and sc.end_pos == starts[k]
    assert [sc.first, sc.last] == ([10, 10 + k - 1] if k else [None, None])
    # all of it was fsync'd and vouched for: damage, never a torn tail
    v = verdict(sc, durable_pos=len(blob))
    assert v is (Verdict.CORRUPT if k < len(records) - 1 else Verdict.LOST)
    if v is Verdict.CORRUPT:
        assert sc.valid_after is not None and sc.valid_after.pos == starts[k + 1]
    assert verdict(sc, durable_number=10 + len(records)) is v
    # nothing vouched for it (never acknowledged): a torn tail, cut off
    assert verdict(sc) is Verdict.TORN


@SETTINGS
@given(payloads=payloads, data=st.data())
def test_a_torn_write_keeps_exactly_the_whole_records_before_the_tear(
    tmp_path: Path, payloads: list[bytes], data: st.DataObject
) -> None:
    records = [(i, 1000 + i, 3, p) for i, p in enumerate(payloads)]
    blob, starts = encode_all(records)
    cut = data.draw(st.integers(0, len(blob)))
    garbage = data.draw(st.sampled_from([b"", b"\0" * 40, b"LPT1" + b"\xff" * 40]))
    torn = blob[:cut] + garbage
    sc = scan_bytes(tmp_path, torn)
    # the records still whole (garbage may by chance complete the one the cut went through)
    whole = 0
    for i, start in enumerate(starts):
        end = start + HEADER_SIZE + len(payloads[i])
        if torn[start:end] != blob[start:end]:
            break
        whole += 1
    assert sc.count == whole
    boundary = starts[whole] if whole < len(starts) else len(blob)
    assert sc.end_pos == boundary
    if boundary == len(torn):
        assert sc.bad_pos is None and verdict(sc) is Verdict.CLEAN
    else:
        assert sc.bad_pos == boundary and verdict(sc) is Verdict.TORN
        # the tear is past what was vouched for: still torn; inside it: lost
        assert verdict(sc, durable_pos=boundary) is Verdict.TORN
        if boundary > 0:
            assert verdict(sc, durable_pos=boundary + 1) is Verdict.LOST


# --- model test ----------------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"), st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.booleans()
        ),
        st.tuples(
            st.just("crash"), st.sampled_from(["cut", "garbage", "out_of_order"]), st.integers(0, 10**6)
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_model_appends_syncs_and_crashes(tmp_path: Path, ops: list[tuple[object, ...]]) -> None:
    """Random appends (synced or not) and crashes against a reference model of what is durable."""
    path = tmp_path / "seg"
    path.write_bytes(b"")
    durable: list[bytes] = []  # payloads fsync'd (acknowledged), in order
    unsynced: list[bytes] = []  # written since, not fsync'd
    next_number = 0
    for op in ops:
        if op[0] == "append":
            _, batch, sync = op
            assert isinstance(batch, list)
            with open(path, "ab") as f:
                for p in batch:
                    f.write(F.encode(next_number, 0, 0, p))
                    next_number += 1
            unsynced.extend(batch)
            if sync:
                durable.extend(unsynced)
                unsynced = []
            continue
        _, how, r = op
        assert isinstance(r, int)
        data = path.read_bytes()
        durable_end = sum(HEADER_SIZE + len(p) for p in durable)
        tail = data[durable_end:]
        if how == "cut":
            tail = tail[: r % (len(tail) + 1)]
        elif how == "garbage":
            tail = tail[: r % (len(tail) + 1)] + bytes([r % 251]) * (r % 50)
        elif tail:  # a middle page of the unsynced tail lost, later ones kept
            a = r % len(tail)
            tail = tail[:a] + b"\0" * min(64, len(tail) - a) + tail[a + 64 :]
        path.write_bytes(data[:durable_end] + tail)
        # recovery: scan, judge, cut
        sc = F.scan_path(path, consecutive=True)
        v = verdict(sc, durable_pos=durable_end)
        assert v in (Verdict.CLEAN, Verdict.TORN), (v, sc)
        assert sc.end_pos >= durable_end
        # what survives is every durable record and a prefix of the unsynced ones, intact
        kept = durable + unsynced[: sc.count - len(durable)]
        assert sc.count >= len(durable)
        with open(path, "r+b") as f:
            f.truncate(sc.end_pos)
        assert path.read_bytes() == b"".join(F.encode(i, 0, 0, p) for i, p in enumerate(kept))
        durable, unsynced = kept, []
        next_number = len(kept)
    sc = F.scan_path(path, consecutive=True)
    assert verdict(sc, durable_pos=sum(HEADER_SIZE + len(p) for p in durable)) in (
        Verdict.CLEAN,
        Verdict.TORN,
    )


# --- state cells ---------------------------------------------------------------------------------


@pytest.mark.parametrize("slot", [0, 1])
def test_two_slot_counter_survives_a_torn_slot(tmp_path: Path, slot: int) -> None:
    c = TwoSlotCounter(tmp_path / "seq", b"LPT2")
    for v in (5, 9, 12):
        c.advance(v)
    c.close()
    fd = os.open(tmp_path / "seq", os.O_RDWR)
    try:
        os.pwrite(fd, b"\xee" * 7, slot * 24 + 10)  # tear one slot
        other = decode_slot(b"LPT2", os.pread(fd, 24, (1 - slot) * 24))
    finally:
        os.close(fd)
    c2 = TwoSlotCounter(tmp_path / "seq", b"LPT2")
    assert other is not None and c2.value == other[0] and c2.value in (9, 12)
    c2.advance(c2.value + 1)
    c2.close()
    assert TwoSlotCounter(tmp_path / "seq", b"LPT2").value == other[0] + 1
