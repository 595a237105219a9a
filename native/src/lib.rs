//! lossproof's hot paths in Rust, as the Python extension module `lossproof._native`.
//!
//! Built by maturin from `pip install -e .` and `python -m build` (see `buildsupport/lossproof_backend.py`).
//! What lives here is only what profiling showed Python to be the limit of; each function replaces its
//! Python version (one code path) and is tested against an independent reference in `tests/unit/test_native.py`.

use pyo3::prelude::*;

/// The version of this module's interface: `lossproof/__init__.py`-independent check that the built
/// extension matches the Python code that calls it.
const ABI: u32 = 1;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ABI", ABI)?;
    Ok(())
}
