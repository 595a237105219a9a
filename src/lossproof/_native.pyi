# The Rust extension module (native/src/lib.rs), built by maturin.

ABI: int
