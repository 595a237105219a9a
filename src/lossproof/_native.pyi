# The Rust extension module (native/src/lib.rs), built by maturin.

from collections.abc import Callable
from typing import Any

ABI: int

def point_columns(
    tenant: str,
    points: list[Any],
    known: dict[tuple[Any, ...], int],
    resolve: Callable[[tuple[Any, ...], str, str, dict[str, str]], int],
) -> tuple[bytes, bytes, bytes]: ...
def rw1_series(
    body: bytes,
) -> tuple[bytes, bytes, list[tuple[dict[str, str], int, int, int, int, bool]], str | None]: ...
def decode_chunks(items: list[tuple[int, int, int, int, bytes]], at: bytes, total: int) -> bytearray: ...
def fsum_windows(v: bytes, lo: bytes, hi: bytes) -> tuple[bytearray, bytearray]: ...
def rate_windows(
    ts: list[Any], vs: list[Any], at: bytes, rng: int, is_rate: bool, is_counter: bool
) -> tuple[bytearray, bytearray]: ...
