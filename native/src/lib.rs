//! lossproof's hot paths in Rust, as the Python extension module `lossproof._native`.
//!
//! Built by maturin from `pip install -e .` and `python -m build` (see `buildsupport/lossproof_backend.py`).
//! What lives here is only what profiling showed Python to be the limit of (docs/store.md, "Native
//! code"); each function replaces its Python version (one code path) and is tested against an
//! independent reference in `tests/unit/test_native_ext.py`.

use std::sync::{LazyLock, Mutex, MutexGuard};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rustc_hash::FxHashMap;

/// The version of this module's interface, checked by the Python side (lossproof/store/columns.py):
/// an extension built from other sources than the Python code that calls it fails at import, not
/// half-way through a batch.
const ABI: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Points to store columns (lossproof.store.columns.Columns.add).
//
// A point's series key is the tuple `(tenant, metric, *labels.items())` (labels in the sender's
// order), the key of the store's series cache (a dict). Building that tuple per point (a 2-tuple
// per label, then hashing every fresh string) was most of the cost; here the key's text is looked
// up in a table of the key tuples already built (`KEYS`), and the store's dict is then asked with
// that same tuple object (found by identity, its strings' hashes cached). `KEYS` holds key objects
// only, never series ids: whatever the store's cache holds or forgets is asked of it every time, so
// a rolled-back or evicted id is never used from here.

/// Key text (see `key_text`) -> the key tuple first built for it.
struct Keys {
    map: FxHashMap<Box<[u8]>, Py<PyTuple>>,
    bytes: usize,
}

static KEYS: LazyLock<Mutex<Keys>> = LazyLock::new(|| Mutex::new(Keys { map: FxHashMap::default(), bytes: 0 }));

/// What `KEYS` may keep before it starts over: an estimate of its own memory (the key tuples are
/// shared with the store's cache while that holds them).
const KEYS_BYTES: usize = 64 << 20;
const KEYS_ENTRY: usize = 64; // the table's entry and the boxed text's header, about

fn lock_keys() -> MutexGuard<'static, Keys> {
    KEYS.lock().unwrap_or_else(|e| e.into_inner())
}

fn put_text(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The key's text, length-prefixed strings in key order, into `buf`; false when a label key or value
/// is not a str (such a point takes the general path).
fn key_text(buf: &mut Vec<u8>, tenant: &str, metric: &Bound<'_, PyAny>, labels: &Bound<'_, PyDict>) -> PyResult<bool> {
    buf.clear();
    put_text(buf, tenant);
    let Ok(m) = metric.cast::<PyString>() else { return Ok(false) };
    put_text(buf, m.to_str()?);
    for (k, v) in labels.iter() {
        let (Ok(k), Ok(v)) = (k.cast::<PyString>(), v.cast::<PyString>()) else { return Ok(false) };
        put_text(buf, k.to_str()?);
        put_text(buf, v.to_str()?);
    }
    Ok(true)
}

/// The key tuple, built as the Python code did: `(tenant, metric, *labels.items())`.
fn build_key<'py>(tenant: &Bound<'py, PyString>, metric: &Bound<'py, PyAny>, labels: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let py = tenant.py();
    let mut items: Vec<Bound<'py, PyAny>> = vec![tenant.clone().into_any(), metric.clone()];
    for item in labels.call_method0(intern!(py, "items"))?.try_iter()? {
        items.push(item?);
    }
    PyTuple::new(py, items)
}

/// `point_columns(tenant, points, known, resolve) -> (sids, ts, vs)`: the three columns of `points`
/// (a list of objects with a point's attributes `metric`, `labels`, `t`, `v`) as native-endian int64,
/// int64 and float64 bytes. A point's series id comes from `known` (the store's cache, a dict) by its
/// key, else from `resolve(key, tenant, metric, labels)`. A run of points sharing one labels object and
/// metric is looked up once. Nothing is returned (the caller's columns are left as they were) when a
/// point cannot be stored: TypeError or OverflowError for a `t` that is not an int64 or a `v` that is
/// not a float, as Python's `array` would raise.
#[pyfunction]
fn point_columns<'py>(
    py: Python<'py>,
    tenant: &Bound<'py, PyString>,
    points: &Bound<'py, PyList>,
    known: &Bound<'py, PyDict>,
    resolve: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let n = points.len();
    let mut sids: Vec<u8> = Vec::with_capacity(n * 8);
    let mut ts: Vec<u8> = Vec::with_capacity(n * 8);
    let mut vs: Vec<u8> = Vec::with_capacity(n * 8);
    let (a_labels, a_metric, a_t, a_v) = (intern!(py, "labels"), intern!(py, "metric"), intern!(py, "t"), intern!(py, "v"));
    let tenant_text = tenant.to_str()?;
    let mut last: Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = None; // (labels, metric)
    let mut sid: i64 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    for p in points.iter() {
        ts.extend_from_slice(&p.getattr(a_t)?.extract::<i64>()?.to_ne_bytes());
        vs.extend_from_slice(&p.getattr(a_v)?.extract::<f64>()?.to_ne_bytes());
        let labels = p.getattr(a_labels)?;
        let metric = p.getattr(a_metric)?;
        let same = match &last {
            Some((l, m)) => l.is(&labels) && (m.is(&metric) || m.eq(&metric)?),
            None => false,
        };
        if !same {
            let texted = match labels.cast::<PyDict>() {
                Ok(d) => key_text(&mut buf, tenant_text, &metric, d)?,
                Err(_) => false,
            };
            // The table is locked only while it is read or written, never across Python code.
            let found = if texted { lock_keys().map.get(buf.as_slice()).map(|k| k.clone_ref(py)) } else { None };
            let key = match found {
                Some(k) => k.into_bound(py),
                None => {
                    let k = build_key(tenant, &metric, &labels)?;
                    if texted {
                        let unused = {
                            let mut keys = lock_keys();
                            let unused = if keys.bytes + buf.len() + KEYS_ENTRY > KEYS_BYTES {
                                keys.bytes = 0;
                                std::mem::take(&mut keys.map)
                            } else {
                                FxHashMap::default()
                            };
                            keys.bytes += buf.len() + KEYS_ENTRY;
                            keys.map.insert(buf.as_slice().into(), k.clone().unbind());
                            unused
                        };
                        drop(unused); // the old keys' references released outside the lock
                    }
                    k
                }
            };
            sid = match known.get_item(&key)? {
                Some(got) => got.extract()?,
                None => resolve.call1((&key, tenant, &metric, &labels))?.extract()?,
            };
            last = Some((labels, metric));
        }
        sids.extend_from_slice(&sid.to_ne_bytes());
    }
    Ok((PyBytes::new(py, &sids), PyBytes::new(py, &ts), PyBytes::new(py, &vs)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ABI", ABI)?;
    m.add_function(wrap_pyfunction!(point_columns, m)?)?;
    Ok(())
}
