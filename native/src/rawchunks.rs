//! Reads of raw chunks (lossproof.store.embedded.read._assemble): the rows a chunk query fetched,
//! `(series_id, id, t_min, t_max, data)`, turned into columns without a Python object per chunk.
//!
//! Right after ingest (and for the newest minutes always) a series' points are in raw chunks (kind 1,
//! then every t, then every v, 8 bytes each, little-endian), one per flush of parts: a range query
//! over many series reads thousands of them. Python used to open each (`chunks._opened`), gather
//! each column of the rows in a generator, and check the decoded times with numpy passes over the
//! whole read (every unfilled position a "not increasing" place to look up). Here: one pass over the
//! rows for their heads (`chunk_heads`), one to copy and check them (`raw_chunks_into`), and the
//! check of the other segments' times (`runs_increasing`), each a loop in Rust.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

const RAW: u8 = 1;

fn ints(b: &[u8], what: &str) -> PyResult<Vec<i64>> {
    if b.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!("{what}: {} bytes", b.len())));
    }
    Ok(b.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

/// The data of row `i` (a tuple whose 5th item is bytes).
fn row_data<'py>(row: &Bound<'py, PyTuple>, i: usize) -> PyResult<Bound<'py, PyBytes>> {
    if row.len() != 5 {
        return Err(PyValueError::new_err(format!("row {i}: {} items", row.len())));
    }
    Ok(row.get_item(4)?.cast_into::<PyBytes>()?)
}

/// The points of a raw chunk of `len` bytes, or None when it is not one (empty, another kind, or a
/// length that is not 1 + 16 n).
fn raw_points(data: &[u8]) -> Option<usize> {
    if data.first() != Some(&RAW) || (data.len() - 1) % 16 != 0 {
        return None;
    }
    Some((data.len() - 1) / 16)
}

/// `chunk_heads(rows) -> bytearray | None`: for rows `(series_id, id, t_min, t_max, data)` (tuples;
/// ints and bytes), five columns of native-endian int64, one after the other: the series ids, the
/// chunk ids, the t_mins, the t_maxes and each chunk's number of points. None when any row's data is
/// not a well-formed raw chunk (the caller then opens them one by one, which says what is wrong).
#[pyfunction]
pub fn chunk_heads<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
) -> PyResult<Option<Bound<'py, PyByteArray>>> {
    let m = rows.len();
    let mut cols = vec![0i64; 5 * m];
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let Some(n) = raw_points(data.as_bytes()) else {
            return Ok(None);
        };
        for c in 0..4 {
            cols[c * m + i] = row.get_item(c)?.extract::<i64>()?;
        }
        cols[4 * m + i] = n as i64;
    }
    let out = PyByteArray::new_with(py, 8 * cols.len(), |buf| {
        for (dst, x) in buf.chunks_exact_mut(8).zip(&cols) {
            dst.copy_from_slice(&x.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok(Some(out))
}

/// A contiguous buffer's items (read in place: the GIL is held throughout, and nothing here calls
/// back into Python, so no other thread can write to it meanwhile).
#[allow(deprecated)]
fn cells<'a, T: pyo3::buffer::Element + Copy>(
    py: Python<'a>,
    b: &'a PyBuffer<T>,
    what: &str,
) -> PyResult<&'a [pyo3::buffer::ReadOnlyCell<T>]> {
    b.as_slice(py)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: not a contiguous buffer")))
}

/// `assemble_into(rows, at, total, src_ts, src_vs, seg_src, seg_start, seg_dest, seg_len) ->
/// (columns, verdict)`: `total` points of timestamps (int64) then as many values (float64),
/// little-endian, in one bytearray (writable; positions nothing is given stay 0):
///
/// - row i's raw chunk (rows `(series_id, id, t_min, t_max, data)`) copied to positions `at[i]` ..;
/// - segment k, `seg_len[k]` points of source `seg_src[k]` (`src_ts[j]`, `src_vs[j]`: contiguous
///   int64 and float64 buffers, numpy arrays) from `seg_start[k]`, copied to `seg_dest[k]` ..
///
/// (`at` and the `seg_*`: native-endian int64 bytes.) Verdict 0: every chunk's and segment's times
/// strictly increase, and every chunk's begin and end at its row's t_min and t_max; 1: some chunk's
/// times do not increase; 2: they do, but some chunk's first or last time is not its row's range;
/// 3: the chunks are right, but some segment's times do not increase. A row that is not a raw chunk,
/// or anything that does not fit, is a ValueError.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn assemble_into<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
    src_ts: Vec<PyBuffer<i64>>,
    src_vs: Vec<PyBuffer<f64>>,
    seg_src: &[u8],
    seg_start: &[u8],
    seg_dest: &[u8],
    seg_len: &[u8],
) -> PyResult<(Bound<'py, PyByteArray>, u8)> {
    let at = ints(at, "at")?;
    if at.len() != rows.len() {
        return Err(PyValueError::new_err(format!(
            "{} offsets for {} rows",
            at.len(),
            rows.len()
        )));
    }
    if total > (isize::MAX as usize) / 16 {
        return Err(PyValueError::new_err(format!("{total} points")));
    }
    let fits = |start: i64, n: u64, within: usize| {
        start >= 0 && (start as u64).checked_add(n).is_some_and(|e| e <= within as u64)
    };
    let mut got: Vec<(Bound<'py, PyBytes>, usize, usize, i64, i64)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let n = raw_points(data.as_bytes())
            .ok_or_else(|| PyValueError::new_err(format!("row {i}: not a raw chunk")))?;
        let start = at[i];
        if !fits(start, n as u64, total) {
            return Err(PyValueError::new_err(format!(
                "row {i}: {n} points at {start} of {total}"
            )));
        }
        let t_min = row.get_item(2)?.extract::<i64>()?;
        let t_max = row.get_item(3)?.extract::<i64>()?;
        got.push((data, n, start as usize, t_min, t_max));
    }
    if src_ts.len() != src_vs.len() {
        return Err(PyValueError::new_err("src_ts and src_vs differ in length"));
    }
    let mut sources = Vec::with_capacity(src_ts.len());
    for (j, (tb, vb)) in src_ts.iter().zip(&src_vs).enumerate() {
        let (t, v) = (cells(py, tb, "src_ts")?, cells(py, vb, "src_vs")?);
        if t.len() != v.len() {
            return Err(PyValueError::new_err(format!(
                "source {j}: {} times, {} values",
                t.len(),
                v.len()
            )));
        }
        sources.push((t, v));
    }
    let (s_src, s_start) = (ints(seg_src, "seg_src")?, ints(seg_start, "seg_start")?);
    let (s_dest, s_len) = (ints(seg_dest, "seg_dest")?, ints(seg_len, "seg_len")?);
    if s_start.len() != s_src.len() || s_dest.len() != s_src.len() || s_len.len() != s_src.len() {
        return Err(PyValueError::new_err("segment columns differ in length"));
    }
    for k in 0..s_src.len() {
        let j = s_src[k];
        let ok = j >= 0
            && (j as usize) < sources.len()
            && s_len[k] >= 0
            && fits(s_start[k], s_len[k] as u64, sources[j as usize].0.len())
            && fits(s_dest[k], s_len[k] as u64, total);
        if !ok {
            return Err(PyValueError::new_err(format!(
                "segment {k}: {} points of source {j} at {} to {} of {total}",
                s_len[k], s_start[k], s_dest[k]
            )));
        }
    }
    let mut verdict = 0u8;
    let out = PyByteArray::new_with(py, 16 * total, |buf| {
        let (ts, vs) = buf.split_at_mut(8 * total);
        let (mut increasing, mut ranges, mut segs_increasing) = (true, true, true);
        for (data, n, at, t_min, t_max) in &got {
            let (n, at) = (*n, *at);
            let d = data.as_bytes();
            let (tb, vb) = d[1..].split_at(8 * n);
            ts[8 * at..8 * (at + n)].copy_from_slice(tb);
            vs[8 * at..8 * (at + n)].copy_from_slice(vb);
            if n == 0 {
                continue;
            }
            let t = |k: usize| i64::from_le_bytes(tb[8 * k..8 * k + 8].try_into().unwrap());
            let mut prev = t(0);
            for k in 1..n {
                let x = t(k);
                increasing &= x > prev;
                prev = x;
            }
            ranges &= t(0) == *t_min && t(n - 1) == *t_max;
        }
        for k in 0..s_src.len() {
            let (n, from, to) = (s_len[k] as usize, s_start[k] as usize, s_dest[k] as usize);
            let (st, sv) = sources[s_src[k] as usize];
            let mut prev = i64::MIN;
            for (p, (x, y)) in st[from..from + n].iter().zip(&sv[from..from + n]).enumerate() {
                let (x, y) = (x.get(), y.get());
                segs_increasing &= p == 0 || x > prev;
                prev = x;
                ts[8 * (to + p)..8 * (to + p) + 8].copy_from_slice(&x.to_le_bytes());
                vs[8 * (to + p)..8 * (to + p) + 8].copy_from_slice(&y.to_le_bytes());
            }
        }
        verdict = if !increasing {
            1
        } else if !ranges {
            2
        } else if !segs_increasing {
            3
        } else {
            0
        };
        Ok(())
    })?;
    Ok((out, verdict))
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
