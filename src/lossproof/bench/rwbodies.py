"""Prometheus remote-write 1.0 bodies for load tests, built fast and written to files.

A body is a snappy-compressed ``WriteRequest`` of a fixed set of series, each with the same ``k``
timestamps. Every series' labels are encoded once (:class:`SeriesSet`); a body is then one struct
pack per series, so tens of thousands of 10,000-sample bodies take seconds, not minutes. The
encoding is the protobuf wire format by hand (checked against the real message classes in
``tests/bench/test_bench_compare.py``):

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }

Timestamps are encoded as 6-byte varints, which every unix-ms time from 2004 to 2109 is; a body
with a time outside that range is refused (ValueError), since its sample size would differ.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import cramjam

from lossproof.bench.protocols import varint

_TS_MIN, _TS_MAX = 1 << 35, 1 << 42  # unix ms whose varint is exactly 6 bytes (2004 .. 2109)
_SAMPLE = 1 + 1 + 1 + 8 + 1 + 6  # tag, length, value tag, double, timestamp tag, 6-byte varint

# A function of (series index, sample index from the start of time) -> the sample's value.
ValueFn = Callable[[int, int], float]

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "lossproof-bench",
}


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def _labels(labels: dict[str, str]) -> bytes:
    """A series' labels, ``__name__`` first and the others sorted by name (as Prometheus sends)."""
    names = sorted(labels, key=lambda k: (k != "__name__", k))
    return b"".join(_field(0x0A, _field(0x0A, k.encode()) + _field(0x12, labels[k].encode())) for k in names)


class SeriesSet:
    """Series (label sets) whose bodies carry ``samples`` samples each per body."""

    def __init__(self, series: Sequence[dict[str, str]], samples: int, value: ValueFn) -> None:
        if samples < 1:
            raise ValueError("samples per series must be at least 1")
        self.series = list(series)
        self.samples = samples
        self.value = value
        body = samples * _SAMPLE
        # per series: the TimeSeries tag and length, and its labels; the samples follow
        self.prefixes = []
        for labels in self.series:
            lab = _labels(labels)
            self.prefixes.append(b"\x0a" + varint(len(lab) + body) + lab)
        self._pack = struct.Struct("<" + "3sd1s6s" * samples).pack

    @property
    def samples_per_body(self) -> int:
        return len(self.series) * self.samples

    def raw(self, first: int, t_ms: Sequence[int]) -> bytes:
        """The uncompressed WriteRequest of samples ``first .. first + samples - 1`` (the index fed to
        the value function), at the times ``t_ms``."""
        if len(t_ms) != self.samples:
            raise ValueError(f"{len(t_ms)} timestamps for {self.samples} samples per series")
        if not all(_TS_MIN <= t < _TS_MAX for t in t_ms):
            raise ValueError("timestamps must be unix ms between 2004 and 2109")
        head = b"\x12\x10\x09"
        stamps = [varint(t) for t in t_ms]
        value = self.value
        pack = self._pack
        parts = []
        ks = range(first, first + self.samples)
        for j, prefix in enumerate(self.prefixes):
            args: list[object] = []
            for k, st in zip(ks, stamps, strict=True):
                args += (head, value(j, k), b"\x10", st)
            parts.append(prefix)
            parts.append(pack(*args))
        return b"".join(parts)

    def body(self, first: int, t_ms: Sequence[int]) -> bytes:
        """:meth:`raw`, snappy-compressed (block format, as remote write sends it)."""
        return bytes(cramjam.snappy.compress_raw(self.raw(first, t_ms)))


def body_path(directory: Path, i: int) -> Path:
    return directory / f"{i:06d}.bin"


def write_pool(
    directory: Path, sset: SeriesSet, bodies: int, start_ms: int, step_ms: int, first_body: int = 0
) -> int:
    """Bodies ``first_body .. first_body + bodies - 1`` as files ``NNNNNN.bin`` in ``directory``;
    body ``b`` holds samples ``b * k .. b * k + k - 1`` of every series (``k`` samples per series),
    sample ``i`` at ``start_ms + i * step_ms``: no two bodies share a timestamp. Returns the bytes
    written."""
    directory.mkdir(parents=True, exist_ok=True)
    k = sset.samples
    written = 0
    for b in range(first_body, first_body + bodies):
        times = [start_ms + (b * k + s) * step_ms for s in range(k)]
        data = sset.body(b * k, times)
        body_path(directory, b).write_bytes(data)
        written += len(data)
    return written
