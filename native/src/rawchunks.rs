//! Checks and searches over the columns a read assembled (lossproof.store.chunks): whether every
//! run's times increase (`runs_increasing`), the decode of opened chunks with that check
//! (`decode_checked`), and a sorted search in many runs at once (`search_runs`). The rows
//! themselves are laid out by rowdecode.rs.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};

pub(crate) fn ints(b: &[u8], what: &str) -> PyResult<Vec<i64>> {
    if b.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!("{what}: {} bytes", b.len())));
    }
    Ok(b.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

/// A contiguous buffer's items, read in place. Holding the GIL is not enough for that (numpy writes
/// to arrays with the GIL released); it is sound because every caller passes buffers that are its
/// own: the read's fresh columns and views of immutable bytes (lossproof.store.embedded.read).
#[allow(deprecated)]
pub(crate) fn cells<'a, T: pyo3::buffer::Element + Copy>(
    py: Python<'a>,
    b: &'a PyBuffer<T>,
    what: &str,
) -> PyResult<&'a [pyo3::buffer::ReadOnlyCell<T>]> {
    b.as_slice(py)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: not a contiguous buffer")))
}

/// `runs_increasing(ts, at, counts) -> bool`: are the times of every run `ts[at[i] : at[i] +
/// counts[i]]` strictly increasing (`ts`: an int64 buffer, a numpy array; `at`, `counts`:
/// native-endian int64 bytes; runs of no point are skipped)? A run outside `ts` is a ValueError.
#[pyfunction]
pub fn runs_increasing(py: Python<'_>, ts: PyBuffer<i64>, at: &[u8], counts: &[u8]) -> PyResult<bool> {
    let at = ints(at, "at")?;
    let counts = ints(counts, "counts")?;
    if at.len() != counts.len() {
        return Err(PyValueError::new_err("at and counts differ in length"));
    }
    // copied (a pass at memory speed): reading the buffer in place is unsafe in pyo3
    let mut cells = vec![0i64; ts.item_count()];
    ts.copy_to_slice(py, &mut cells)?;
    for (i, (&a, &c)) in at.iter().zip(&counts).enumerate() {
        if c <= 0 {
            continue;
        }
        let fits = a >= 0
            && (a as u64)
                .checked_add(c as u64)
                .is_some_and(|e| e <= cells.len() as u64);
        if !fits {
            return Err(PyValueError::new_err(format!(
                "run {i}: {c} points at {a} of {}",
                cells.len()
            )));
        }
        let run = &cells[a as usize..(a + c) as usize];
        let mut prev = run[0];
        for &x in &run[1..] {
            if x <= prev {
                return Ok(false);
            }
            prev = x;
        }
    }
    Ok(true)
}

/// `decode_checked(items, at, total) -> (columns, increasing)`: what `decode_chunks` answers (the
/// opened chunks `(kind, n, mode, first, payload)` decoded to positions `at[i]` ..), and whether
/// every chunk's times strictly increase, checked on each chunk's times as they are written (where
/// `chunks.check_increasing` made another pass over the whole read).
#[pyfunction]
pub fn decode_checked<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
) -> PyResult<(Bound<'py, PyByteArray>, bool)> {
    crate::chunkdecode::decode_columns(py, items, at, total, true)
}

/// `search_runs(ts, lo, hi, x, right) -> bytearray`: for each run `ts[lo[k]:hi[k]]` (each sorted;
/// `ts` a contiguous int64 buffer, read in place; `lo`, `hi` native-endian int64 bytes) where `x`
/// goes in it, as an index into `ts` (numpy's `searchsorted(run, x, side) + lo[k]`, side "right" when
/// `right`), native-endian int64 bytes. A run outside `ts` is a ValueError.
#[pyfunction]
pub fn search_runs<'py>(
    py: Python<'py>,
    ts: PyBuffer<i64>,
    lo: &[u8],
    hi: &[u8],
    x: i64,
    right: bool,
) -> PyResult<Bound<'py, PyByteArray>> {
    let (lo, hi) = (ints(lo, "lo")?, ints(hi, "hi")?);
    if lo.len() != hi.len() {
        return Err(PyValueError::new_err("lo and hi differ in length"));
    }
    let t = cells(py, &ts, "ts")?;
    let mut out = Vec::with_capacity(lo.len());
    for (k, (&a, &b)) in lo.iter().zip(&hi).enumerate() {
        if a < 0 || b < a || b as u64 > t.len() as u64 {
            return Err(PyValueError::new_err(format!(
                "run {k}: [{a}, {b}) of {}",
                t.len()
            )));
        }
        let run = &t[a as usize..b as usize];
        let at = if right {
            run.partition_point(|c| c.get() <= x)
        } else {
            run.partition_point(|c| c.get() < x)
        };
        out.push(a + at as i64);
    }
    PyByteArray::new_with(py, 8 * out.len(), |buf| {
        for (dst, x) in buf.chunks_exact_mut(8).zip(&out) {
            dst.copy_from_slice(&x.to_ne_bytes());
        }
        Ok(())
    })
}
