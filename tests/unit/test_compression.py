from __future__ import annotations

import gzip
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from lossproof.protocol.compression import BadEncoding, TooLarge, compress, decompress


@given(st.binary(max_size=5000), st.sampled_from(["identity", "gzip", "zstd"]))
def test_round_trip(data: bytes, enc: str) -> None:
    assert decompress(compress(data, enc), enc, 10_000) == data


def test_deflate_means_zlib_wrapped() -> None:
    assert decompress(zlib.compress(b"abc"), "deflate", 100) == b"abc"


def _zstd_streamed(data: bytes) -> bytes:
    """A frame without a declared content size, as streaming compressors write it."""
    c = zstandard.ZstdCompressor().compressobj()
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("enc", ["gzip", "zstd", "zstd-streamed"])
def test_bomb_is_refused_at_the_limit(enc: str) -> None:
    data = b"\0" * (50 * 2**20)
    bomb = _zstd_streamed(data) if enc == "zstd-streamed" else compress(data, enc)
    with pytest.raises(TooLarge):
        decompress(bomb, enc.split("-")[0], 2**20)


def test_zstd_streamed_frame_round_trips() -> None:
    assert decompress(_zstd_streamed(b"abc" * 1000), "zstd", 10_000) == b"abc" * 1000


def test_identity_limit() -> None:
    with pytest.raises(TooLarge):
        decompress(b"x" * 11, "identity", 10)


@pytest.mark.parametrize(
    ("enc", "data"),
    [
        ("gzip", b"not gzip"),
        ("gzip", gzip.compress(b"hello world" * 100, mtime=0)[:-5]),
        ("gzip", gzip.compress(b"a", mtime=0) + b"trailing"),
        ("zstd", b"not zstd at all"),
        ("zstd", zstandard.ZstdCompressor().compress(b"hello world" * 100)[:-5]),
        ("zstd", zstandard.ZstdCompressor().compress(b"a") + b"trailing"),
        ("zstd", zstandard.ZstdCompressor().compress(b"a") * 2),
        ("zstd", _zstd_streamed(b"hello world" * 100)[:-5]),
        ("zstd", _zstd_streamed(b"a") + b"trailing"),
        ("zstd", b""),
        ("br", b"x"),
    ],
)
def test_bad_data_is_a_clear_error(enc: str, data: bytes) -> None:
    with pytest.raises(BadEncoding):
        decompress(data, enc, 10_000)
