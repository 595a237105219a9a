"""The Rust extension (native/, module ``lossproof._native``), checked to be the build of this
checkout's native/: an older build fails at import, not on the first body or batch that calls a
function it lacks. Import ``_native`` from here."""

from __future__ import annotations

from lossproof import _native as _native

# native/src/lib.rs's ABI: raised whenever the extension gains or changes a function
ABI = 18

if _native.ABI != ABI:
    raise ImportError(
        f"lossproof._native is ABI {_native.ABI}, this code needs {ABI}: run pip install -e . again"
    )
