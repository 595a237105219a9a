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


@pytest.mark.parametrize("enc", ["gzip", "zstd"])
def test_bomb_is_refused_at_the_limit(enc: str) -> None:
    bomb = compress(b"\0" * (50 * 2**20), enc)
    with pytest.raises(TooLarge):
        decompress(bomb, enc, 2**20)


def test_identity_limit() -> None:
    with pytest.raises(TooLarge):
        decompress(b"x" * 11, "identity", 10)


@pytest.mark.parametrize(
    ("enc", "data"),
    [
        ("gzip", b"not gzip"),
        ("gzip", gzip.compress(b"hello world" * 100)[:-5]),
        ("gzip", gzip.compress(b"a") + b"trailing"),
        ("zstd", b"not zstd at all"),
        ("zstd", zstandard.ZstdCompressor().compress(b"hello world" * 100)[:-5]),
        ("br", b"x"),
    ],
)
def test_bad_data_is_a_clear_error(enc: str, data: bytes) -> None:
    with pytest.raises(BadEncoding):
        decompress(data, enc, 10_000)
