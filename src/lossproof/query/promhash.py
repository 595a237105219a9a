"""The hash Prometheus 3 samples series by in ``limit_ratio``: ``labels.Hash()`` (xxHash64, seed 0)
of the label set in its default (``stringlabels``) encoding, as a fraction of 2^64.

xxHash64 is written out here (a few dozen integer operations per 8 bytes: label sets are short, and
it runs once per series per query) rather than pulled in as a dependency."""

from __future__ import annotations

_M = (1 << 64) - 1
_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M
    return (_rotl(acc, 31) * _P1) & _M


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _M


def xxh64(data: bytes, seed: int = 0) -> int:
    """xxHash64 of ``data`` (the reference algorithm, XXH64)."""
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _M
        v2 = (seed + _P2) & _M
        v3 = seed & _M
        v4 = (seed - _P1) & _M
        while p + 32 <= n:
            v1 = _round(v1, int.from_bytes(data[p : p + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[p + 8 : p + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[p + 16 : p + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[p + 24 : p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while p + 8 <= n:
        h ^= _round(0, int.from_bytes(data[p : p + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p : p + 4], "little") * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


def _size(n: int) -> bytes:
    # stringlabels' length prefix: one byte below 255, else 255 and three bytes little-endian
    return bytes([n]) if n < 255 else bytes([255, n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF])


def labels_bytes(labels: dict[str, str]) -> bytes:
    """A label set in Prometheus' ``stringlabels`` encoding: sorted by name, each name and value
    preceded by its length; empty values left out (Prometheus holds none)."""
    out = bytearray()
    for name in sorted(labels, key=lambda k: k.encode()):
        value = labels[name]
        if value == "":
            continue
        nb, vb = name.encode(), value.encode()
        out += _size(len(nb)) + nb + _size(len(vb)) + vb
    return bytes(out)


def sample_offset(labels: dict[str, str]) -> float:
    """Prometheus' ``HashRatioSampler.sampleOffset``: ``float64(labels.Hash()) / float64(MaxUint64)``
    (the divisor rounds to 2^64)."""
    return float(xxh64(labels_bytes(labels))) / float(_M)


def in_ratio(ratio: float, offset: float) -> bool:
    """``AddRatioSample``: a ratio ``r >= 0`` keeps the series whose offset is below ``r``, a negative
    one those at or above ``1 + r`` (so ``r`` and ``r - 1`` split the series in two)."""
    return (ratio >= 0 and offset < ratio) or (ratio < 0 and offset >= 1.0 + ratio)
