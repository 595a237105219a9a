//! Prometheus remote write 1.0 bodies straight into store columns (issue #15).
//!
//! `rw1_block(body)` reads a WriteRequest's series once (the same reader as `rw1_series`, lib.rs)
//! into an `RwBlock`: every sample's time and value in two columns, and per series only the text of
//! its store key (metric and labels as the worker's Python decoder made them: the last value of a
//! repeated name in the first one's place, `__name__` taken out as the metric, empty values
//! dropped). No Python object is made per series or per sample. The worker's decoder
//! (lossproof.protocol.promrw._iter_v1) cuts the block into chunks with `plan` (the chunk bounds of
//! the Python loop it replaces) and hands sample ranges of it to the store, whose
//! `Columns.add_series` turns a range into its three columns with `block_columns`: one series-id
//! look-up per series (the key tuple found by its text in the table `point_columns` keeps, then the
//! store's cache asked with it, else the store's resolver), the samples copied as they are.
//!
//! A series that has exemplars or histograms (its message class must check them and read the
//! histograms) or no `__name__` (the Python decoder raised KeyError there) is left to Python: `plan`
//! stops before it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::{
    ask_known, cache_token, key_from_text, key_metric_labels, keys_get, keys_note_known, put_text, rw_series, Known,
    Malformed,
};

/// What `RwBlock.plan` returns: the events, and the series, `n_out` and `size` it stopped at.
type Plan = (Vec<(i64, i64)>, usize, usize, usize);

#[pyclass(module = "lossproof._native", frozen)]
pub struct RwBlock {
    ts: Vec<i64>,
    vs: Vec<f64>,
    /// per series (and one more): its samples are `starts[k] .. starts[k + 1]`
    starts: Vec<usize>,
    /// per series (and one more): its key text (`put_text` of the metric, then of each label's name
    /// and value) is `keys[key_at[k] .. key_at[k + 1]]`
    keys: Vec<u8>,
    key_at: Vec<usize>,
    n_labels: Vec<u32>,
    /// where its TimeSeries lies in the body
    blobs: Vec<(usize, usize)>,
    /// left to Python (exemplars or histograms, or no `__name__`)
    more: Vec<bool>,
    named: Vec<bool>,
}

fn key_text<'a>(labels: &[(&'a str, &'a str)], out: &mut Vec<u8>) -> (bool, u32) {
    // a dict filled in order: a repeated name keeps its first place and takes the last value
    let mut uniq: Vec<(&str, &str)> = Vec::with_capacity(labels.len());
    if labels.len() <= 16 {
        for &(k, v) in labels {
            match uniq.iter_mut().find(|(n, _)| *n == k) {
                Some(slot) => slot.1 = v,
                None => uniq.push((k, v)),
            }
        }
    } else {
        let mut at: rustc_hash::FxHashMap<&str, usize> = rustc_hash::FxHashMap::default();
        for &(k, v) in labels {
            match at.get(k) {
                Some(&i) => uniq[i].1 = v,
                None => {
                    at.insert(k, uniq.len());
                    uniq.push((k, v));
                }
            }
        }
    }
    let Some(&(_, metric)) = uniq.iter().find(|(n, _)| *n == "__name__") else {
        return (false, 0);
    };
    put_text(out, metric);
    let mut n = 0;
    for &(k, v) in &uniq {
        if k == "__name__" || v.is_empty() {
            continue;
        }
        put_text(out, k);
        put_text(out, v);
        n += 1;
    }
    (true, n)
}

fn column_bytes<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    col: &[T],
    to: impl Fn(T) -> [u8; N],
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, col.len() * N, |b| {
        for (dst, x) in b.chunks_exact_mut(N).zip(col) {
            dst.copy_from_slice(&to(*x));
        }
        Ok(())
    })
}

impl RwBlock {
    fn key(&self, k: usize) -> &[u8] {
        &self.keys[self.key_at[k]..self.key_at[k + 1]]
    }

    /// The series holding sample `p` (the last of the series starting at or before it: a series
    /// without samples is never it).
    fn series_of(&self, p: usize) -> usize {
        self.starts.partition_point(|&s| s <= p) - 1
    }

    fn check_range(&self, first: usize, last: usize) -> PyResult<()> {
        if first > last || last > self.ts.len() {
            return Err(PyValueError::new_err(format!(
                "samples {first}..{last} of a block of {}",
                self.ts.len()
            )));
        }
        Ok(())
    }

    fn check_series(&self, k: usize) -> PyResult<()> {
        if k >= self.more.len() {
            return Err(PyValueError::new_err(format!(
                "series {k} of a block of {}",
                self.more.len()
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl RwBlock {
    /// The number of series.
    fn __len__(&self) -> usize {
        self.more.len()
    }

    /// The number of samples.
    fn samples(&self) -> usize {
        self.ts.len()
    }

    /// Whether some series has exemplars or histograms.
    fn has_more(&self) -> bool {
        self.more.iter().any(|&m| m)
    }

    /// `(first, last, start, end, more, named)` of series `k`: its samples, where its TimeSeries
    /// lies in the body, whether it has exemplars or histograms, whether it has a `__name__`.
    fn series_info(&self, k: usize) -> PyResult<(usize, usize, usize, usize, bool, bool)> {
        self.check_series(k)?;
        let (start, end) = self.blobs[k];
        Ok((
            self.starts[k],
            self.starts[k + 1],
            start,
            end,
            self.more[k],
            self.named[k],
        ))
    }

    /// `(metric, labels)` of series `k` (named) as the worker stores it.
    fn labels<'py>(&self, py: Python<'py>, k: usize) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>)> {
        self.check_series(k)?;
        if !self.named[k] {
            return Err(PyValueError::new_err(format!("series {k} has no __name__")));
        }
        key_metric_labels(py, self.key(k))
    }

    /// The samples `first .. last` as `[(metric, labels, t, v)]`, one entry per series with samples
    /// among them (`t`, `v` as int64 and float64 bytes): for the code that wants them series by
    /// series (tests, the series limit, the points of a chunk).
    fn expand<'py>(&self, py: Python<'py>, first: usize, last: usize) -> PyResult<Bound<'py, PyList>> {
        self.check_range(first, last)?;
        let out = PyList::empty(py);
        if first == last {
            return Ok(out);
        }
        let mut k = self.series_of(first);
        while k < self.more.len() && self.starts[k] < last {
            let (a, b) = (first.max(self.starts[k]), last.min(self.starts[k + 1]));
            if a < b {
                let (metric, labels) = self.labels(py, k)?;
                let t = column_bytes(py, &self.ts[a..b], i64::to_ne_bytes)?;
                let v = column_bytes(py, &self.vs[a..b], f64::to_ne_bytes)?;
                out.append((metric, labels, t, v))?;
            }
            k += 1;
        }
        Ok(out)
    }

    /// The chunks of the Python loop this replaces (promrw._iter_v1), from series `k` on, with
    /// `n_out` samples, `size` bytes and (`has_out`) something already in the current chunk. Each
    /// series adds its TimeSeries' size; its samples are cut where the chunk reaches `max_points`;
    /// after a series the chunk ends if it holds `max_bytes`. Stops before a series left to Python
    /// (or at the end): returns the events, `(first, last)` a range of samples for the current
    /// chunk or `(-1, size)` the current chunk ends, and the series it stopped at, `n_out`, `size`.
    fn plan(
        &self,
        k: usize,
        max_points: usize,
        max_bytes: usize,
        n_out: usize,
        size: usize,
        has_out: bool,
    ) -> PyResult<Plan> {
        if max_points == 0 {
            return Err(PyValueError::new_err("max_points must be at least 1"));
        }
        let (mut n_out, mut size, mut has_out) = (n_out, size, has_out);
        let mut events: Vec<(i64, i64)> = Vec::new();
        let n = self.more.len();
        let mut k = k;
        while k < n && !self.more[k] && self.named[k] {
            size += self.blobs[k].1 - self.blobs[k].0;
            let (mut i, last) = (self.starts[k], self.starts[k + 1]);
            while i < last {
                let j = last.min(i.saturating_add(max_points.saturating_sub(n_out).max(1)));
                match events.last_mut() {
                    Some(e) if e.0 >= 0 && e.1 == i as i64 => e.1 = j as i64,
                    _ => events.push((i as i64, j as i64)),
                }
                n_out += j - i;
                has_out = true;
                i = j;
                if n_out >= max_points {
                    events.push((-1, size as i64));
                    (n_out, size, has_out) = (0, 0, false);
                }
            }
            if size >= max_bytes && has_out {
                events.push((-1, size as i64));
                (n_out, size, has_out) = (0, 0, false);
            }
            k += 1;
        }
        Ok((events, k, n_out, size))
    }
}

/// `rw1_block(body) -> (RwBlock, error)`: a remote-write 1.0 WriteRequest read as `rw1_series`
/// reads it (a malformed top level is a ValueError; a malformed series ends the block, `error`
/// says why, None when every series was read).
#[pyfunction]
pub fn rw1_block(body: &[u8]) -> PyResult<(RwBlock, Option<&'static str>)> {
    // a sample as senders write it takes 13 bytes of the body or more (tags, lengths, the double,
    // the time's varint): sized once for those, not grown a doubling at a time (reallocations were
    // ~4 % of the worker); a body of smaller ones (fields left out) grows them as before
    let cap = body.len() / 13;
    let (mut ts, mut vs) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    let (series, error) =
        rw_series(body, &mut ts, &mut vs).map_err(|Malformed(why)| PyValueError::new_err(why))?;
    let n = series.len();
    let mut b = RwBlock {
        ts,
        vs,
        starts: Vec::with_capacity(n + 1),
        keys: Vec::with_capacity(n * 64),
        key_at: Vec::with_capacity(n + 1),
        n_labels: Vec::with_capacity(n),
        blobs: Vec::with_capacity(n),
        more: Vec::with_capacity(n),
        named: Vec::with_capacity(n),
    };
    b.starts.push(0);
    b.key_at.push(0);
    for s in series {
        let (named, n_labels) = key_text(&s.labels, &mut b.keys);
        b.starts.push(s.last);
        b.key_at.push(b.keys.len());
        b.n_labels.push(n_labels);
        b.blobs.push((s.start, s.end));
        b.more.push(s.more);
        b.named.push(named);
    }
    // the series' samples are consecutive in the columns (rw_series appends them in order)
    debug_assert_eq!(*b.starts.last().unwrap(), b.ts.len());
    Ok((b, error))
}

/// `block_columns(tenant, block, first, last, known, resolve) -> (sids, ts, vs)`: the samples
/// `first .. last` of `block` as the store's three columns (native-endian int64, int64, float64
/// bytes). A series' id comes from `known` (the store's cache) by its key `(tenant, metric,
/// *labels.items())`, else from `resolve(key, tenant, metric, labels)`, once per series; a series
/// without samples in the range is not looked up. Nothing is returned if a look-up raises.
#[pyfunction]
pub fn block_columns<'py>(
    py: Python<'py>,
    tenant: &Bound<'py, PyString>,
    block: &Bound<'py, RwBlock>,
    first: usize,
    last: usize,
    known: &Bound<'py, PyDict>,
    resolve: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let b = block.get();
    b.check_range(first, last)?;
    let tenant_text = tenant.to_str()?;
    keys_note_known(known.len());
    let token = cache_token(known)?;
    let mut sids: Vec<i64> = Vec::with_capacity(last - first);
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    if first < last {
        let mut k = b.series_of(first);
        while k < b.more.len() && b.starts[k] < last {
            let (lo, hi) = (first.max(b.starts[k]), last.min(b.starts[k + 1]));
            if lo < hi {
                if !b.named[k] {
                    return Err(PyValueError::new_err(format!("series {k} has no __name__")));
                }
                buf.clear();
                put_text(&mut buf, tenant_text);
                buf.extend_from_slice(b.key(k));
                let sid = match keys_get(py, &buf, token) {
                    Known::Sid(sid) => sid,
                    found => {
                        let key = match found {
                            Known::Key(key) => key.into_bound(py),
                            _ => key_from_text(py, tenant, b.key(k), b.n_labels[k] as usize, &buf)?,
                        };
                        match ask_known(known, &key, &buf, token)? {
                            Some(sid) => sid,
                            None => {
                                let (metric, labels) = key_metric_labels(py, b.key(k))?;
                                resolve.call1((&key, tenant, metric, labels))?.extract()?
                            }
                        }
                    }
                };
                sids.resize(sids.len() + (hi - lo), sid);
            }
            k += 1;
        }
    }
    Ok((
        column_bytes(py, &sids, i64::to_ne_bytes)?,
        column_bytes(py, &b.ts[first..last], i64::to_ne_bytes)?,
        column_bytes(py, &b.vs[first..last], f64::to_ne_bytes)?,
    ))
}
