"""Handing freed memory back to the system after a big batch or compaction step."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere. Freed memory of a big batch otherwise stays
    in the process (glibc keeps freed heap and, after a large free, raises its mmap threshold), and
    what a thread freed stays in that thread's arena, where the others do not reuse it."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]

    def release() -> None:
        trim(0)

    return release


release_memory = _malloc_trim()
