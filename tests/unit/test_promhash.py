"""limit_ratio's series hash: xxHash64 (checked against digests of the reference C implementation, the
``xxhash`` package, for every code path: under 4 bytes, 4, 8, the 32-byte stripes) over Prometheus'
``stringlabels`` encoding of the label set."""

from __future__ import annotations

import pytest

from lossproof.query import promhash

# xxhash.xxh64_intdigest(bytes((i * 7 + 3) % 256 for i in range(n)))
DIGESTS = {
    0: 0xEF46DB3751D8E999,
    1: 0x1F25C8D0BC1F4BB6,
    3: 0x31D2363F52E564C9,
    4: 0x9BB64B7D66EE9FDA,
    7: 0x9A7B149959CE60D8,
    8: 0xDAB99D95C6F90092,
    11: 0x7A52CC9457CF1A1F,
    31: 0xA2AA5F33CC4A6119,
    32: 0x23C3C17EF790FD97,
    33: 0x50A7CFC7BA588784,
    63: 0x5E3E54B431C7493C,
    64: 0x0EB64B3EF6EEB01F,
    100: 0xA61F8D4C170FE531,
    300: 0x240004DBEE0BA6DC,
}


@pytest.mark.parametrize("n", sorted(DIGESTS))
def test_xxh64_is_the_reference(n: int) -> None:
    assert promhash.xxh64(bytes((i * 7 + 3) % 256 for i in range(n))) == DIGESTS[n]


def test_abc() -> None:
    assert promhash.xxh64(b"abc") == 0x44BC2CF5AD770999


def test_stringlabels_encoding() -> None:
    lab = {"job": "api", "__name__": "http_requests", "instance": "0", "empty": ""}
    want = b"\x08__name__\x0dhttp_requests\x08instance\x010\x03job\x03api"
    assert promhash.labels_bytes(lab) == want
    assert promhash.sample_offset(lab) == 0xD38B5155C2F4CCB1 / 2.0**64
    long = "x" * 300
    assert promhash.labels_bytes({"a": long}) == b"\x01a\xff\x2c\x01\x00" + long.encode()


def test_in_ratio_splits_in_two() -> None:
    for off in (0.0, 0.2, 0.5, 0.8, 0.999, 1.0):
        for r in (0.0, 0.2, 0.5, 0.8, 1.0):
            assert promhash.in_ratio(r, off) != promhash.in_ratio(r - 1.0, off) or (r, off) == (1.0, 1.0)
