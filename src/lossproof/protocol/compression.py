"""Bounded decompression: a body may never expand past a limit, so a zip bomb costs at most
``limit`` bytes of work before it is refused."""

from __future__ import annotations

import threading
import zlib

import zstandard


class TooLarge(Exception):
    pass


class BadEncoding(Exception):
    pass


ENCODINGS = ("identity", "gzip", "zstd", "deflate")
_KNOWN = ("", "x-gzip", *ENCODINGS)  # what decompress() takes: no header, and gzip's old name too


def is_known(encoding: str) -> bool:
    """Whether :func:`decompress` decodes this Content-Encoding (an endpoint that answers 415 for
    the others asks before it reads the body)."""
    return encoding.strip().lower() in _KNOWN


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Decode ``data`` per its Content-Encoding, refusing output beyond ``limit`` bytes."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        if len(data) > limit:
            raise TooLarge(f"body is {len(data)} bytes, limit {limit}")
        return data
    if enc in ("gzip", "x-gzip", "deflate"):
        # wbits 47 = auto-detect zlib or gzip header; "deflate" in HTTP means zlib-wrapped.
        d = zlib.decompressobj(47)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as e:
            raise BadEncoding(f"invalid {enc} data: {e}") from None
        if len(out) > limit:
            raise TooLarge(f"decompressed body exceeds {limit} bytes")
        if not d.eof:
            raise BadEncoding(f"truncated {enc} data")
        if d.unused_data:
            raise BadEncoding(f"trailing bytes after {enc} data")
        return out
    if enc == "zstd":
        return _zstd(data, limit)
    raise BadEncoding(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate, zstd or identity)")


_local = threading.local()


def _zstd(data: bytes, limit: int) -> bytes:
    # A context is costly to set up and not thread-safe: one per thread.
    dctx = getattr(_local, "zstd_d", None)
    if dctx is None:
        dctx = _local.zstd_d = zstandard.ZstdDecompressor()
    try:
        declared = zstandard.frame_content_size(data)
        if declared > limit:
            raise TooLarge(f"decompressed body would be {declared} bytes, limit {limit}")
        if declared >= 0:
            # One pass: zstd itself refuses a frame whose output differs from the size its header
            # declares, and allow_extra_data=False refuses trailing bytes or a second frame.
            return dctx.decompress(data, allow_extra_data=False)
        # No declared size (a streamed frame): stream_reader bounds the work; it cannot tell a
        # truncated frame from a short one, so a second pass (now known to stay under the limit)
        # checks the frame is whole.
        out = dctx.stream_reader(data).read(limit + 1)
        if len(out) > limit:
            raise TooLarge(f"decompressed body exceeds {limit} bytes")
        z = dctx.decompressobj()
        out = z.decompress(data)
    except zstandard.ZstdError as e:
        raise BadEncoding(f"invalid zstd data: {e}") from None
    if not z.eof:
        raise BadEncoding("truncated zstd data")
    if z.unused_data:
        raise BadEncoding("trailing bytes after zstd frame")
    return out


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return zlib.compress(data, 6, wbits=31)
    if encoding == "zstd":
        cctx = getattr(_local, "zstd", None)
        if cctx is None:
            # a compression context is costly to set up and not thread-safe: one per thread
            cctx = _local.zstd = zstandard.ZstdCompressor(level=3)
        return cctx.compress(data)
    return data
