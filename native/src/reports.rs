//! Native-protocol reports (`POST /v1/reports`) straight into store columns (issue #15).
//!
//! `native_report(raw)` reads one report of a request (the msgpack slice the worker's request decoder
//! keeps as `msgspec.Raw`, lossproof.protocol.decode) into a `ReportBlock`: every point's time and
//! value in two columns and, per distinct series in the report, only the text of its store key
//! (metric, then its labels in the sender's order) and its canonical encoding. No Python object is
//! made per point. The report's content digest (`lossproof.points.report_digest`: a kind byte, then
//! the first 16 bytes of BLAKE3 of the points encoded as msgspec encodes them with `order="sorted"`)
//! is computed here from the same bytes that encoding gives, so a resend still compares equal to
//! what the Python path stored.
//!
//! Only what is certain to decode as msgspec decodes it (into `decode._Report`) is read: anything
//! else (another type for a field, an unknown or repeated field, a repeated label name, an integer
//! outside int64, an int `v` past 2^53, a float32 NaN, trailing bytes) gives None, and the caller
//! takes the Python path, which stores, refuses or dead-letters it as before.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use std::hash::Hasher;

use rustc_hash::{FxHashMap, FxHasher};

use crate::mpjson::{Js, Rd, Src};
use crate::{
    ask_known, cache_token, key_from_text, key_metric_labels, keys_note_known, lock_keys, put_text, Known,
};

/// The first byte of a digest: which hash made it (`lossproof.points.DIGEST_KIND`).
const DIGEST_KIND: u8 = 3;

/// msgspec's msgpack encoding of the smallest width (its `mpack_encode_long`).
fn put_int(out: &mut Vec<u8>, x: i64) {
    if x < 0 {
        if x < -(1 << 31) {
            out.push(0xd3);
            out.extend_from_slice(&x.to_be_bytes());
        } else if x < -(1 << 15) {
            out.push(0xd2);
            out.extend_from_slice(&(x as i32).to_be_bytes());
        } else if x < -(1 << 7) {
            out.push(0xd1);
            out.extend_from_slice(&(x as i16).to_be_bytes());
        } else if x < -(1 << 5) {
            out.push(0xd0);
            out.push(x as i8 as u8);
        } else {
            out.push(x as i8 as u8);
        }
    } else if x < 1 << 7 {
        out.push(x as u8);
    } else if x < 1 << 8 {
        out.push(0xcc);
        out.push(x as u8);
    } else if x < 1 << 16 {
        out.push(0xcd);
        out.extend_from_slice(&(x as u16).to_be_bytes());
    } else if x < 1 << 32 {
        out.push(0xce);
        out.extend_from_slice(&(x as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&(x as u64).to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 1 << 8 {
        out.push(0xd9);
        out.push(n as u8);
    } else if n < 1 << 16 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize, fix: u8, w16: u8, w32: u8) {
    if n < 16 {
        out.push(fix | n as u8);
    } else if n < 1 << 16 {
        out.push(w16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(w32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

#[pyclass(module = "lossproof._native", frozen)]
pub struct ReportBlock {
    ts: Vec<i64>,
    vs: Vec<f64>,
    /// per point: its series (an index into the series below, numbered in order of first use)
    series_of: Vec<u32>,
    /// per series (and one more): its key text (`put_text` of the metric, then of each label's name
    /// and value in the sender's order) is `keys[key_at[k] .. key_at[k + 1]]`
    keys: Vec<u8>,
    key_at: Vec<usize>,
    n_labels: Vec<u32>,
    /// per series (and one more): the canonical encoding of a point of it up to its `t`'s value
    prefixes: Vec<u8>,
    prefix_at: Vec<usize>,
    digest: [u8; 17],
}

impl ReportBlock {
    fn key(&self, k: usize) -> &[u8] {
        &self.keys[self.key_at[k]..self.key_at[k + 1]]
    }

    fn n_series(&self) -> usize {
        self.n_labels.len()
    }

    /// The points as `lossproof.points.encode_points` encodes them.
    fn canonical(&self) -> Vec<u8> {
        let n = self.ts.len();
        let mut out = Vec::with_capacity(5 + n * 16 + self.prefixes.len());
        put_len(&mut out, n, 0x90, 0xdc, 0xdd);
        for i in 0..n {
            let k = self.series_of[i] as usize;
            out.extend_from_slice(&self.prefixes[self.prefix_at[k]..self.prefix_at[k + 1]]);
            put_int(&mut out, self.ts[i]);
            out.extend_from_slice(&[0xa1, b'v', 0xcb]);
            out.extend_from_slice(&self.vs[i].to_bits().to_be_bytes());
        }
        out
    }

    fn metric_labels<'py>(
        &self,
        py: Python<'py>,
        k: usize,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>)> {
        key_metric_labels(py, self.key(k))
    }
}

fn empty_block() -> ReportBlock {
    ReportBlock {
        ts: Vec::new(),
        vs: Vec::new(),
        series_of: Vec::new(),
        keys: Vec::new(),
        key_at: vec![0],
        n_labels: Vec::new(),
        prefixes: Vec::new(),
        prefix_at: vec![0],
        digest: [0; 17],
    }
}

/// Read one report, the whole input; None for anything not certainly decoded as msgspec decodes it
/// (module doc).
fn read_report<'a, S: Src<'a>>(r: &mut S) -> Option<(i64, i64, ReportBlock)> {
    let got = read_report_value(r)?;
    r.at_end().then_some(got)
}

/// Read one report (a value: what follows it is not looked at).
fn read_report_value<'a, S: Src<'a>>(r: &mut S) -> Option<(i64, i64, ReportBlock)> {
    let (mut seq, mut time, mut got_points) = (None, None, false);
    let mut blk = empty_block();
    let mut m = r.map()?;
    while let Some(key) = r.key(&mut m)? {
        match key {
            b"seq" if seq.is_none() => seq = Some(r.integer()?),
            b"time" if time.is_none() => time = Some(r.integer()?),
            b"points" if !got_points => {
                got_points = true;
                read_points(r, &mut blk)?;
            }
            _ => return None,
        }
    }
    if !got_points {
        return None;
    }
    blk.digest[0] = DIGEST_KIND;
    let hash = blake3::hash(&blk.canonical());
    blk.digest[1..].copy_from_slice(&hash.as_bytes()[..16]);
    Some((seq?, time.unwrap_or(0), blk))
}

fn read_points<'a, S: Src<'a>>(r: &mut S, blk: &mut ReportBlock) -> Option<()> {
    let mut arr = r.array()?;
    // room for the points up front, but not for any count: a count is only bounded by the bytes
    // left, and 20 bytes reserved per byte of a hostile body could fail to allocate, which aborts
    let n = r.count(&arr).min(1 << 16);
    blk.ts.reserve(n);
    blk.vs.reserve(n);
    blk.series_of.reserve(n);
    // the series seen, by their key text's hash: a hit is compared with the text (two texts of one
    // hash only cost a second entry for the same series, which is looked up twice, never a wrong id);
    // sized for a report of distinct series, at most a few pages (a long report of few series)
    let mut index: FxHashMap<u64, u32> = FxHashMap::with_capacity_and_hasher(n.min(4096), Default::default());
    let mut sorted: Vec<(&str, &str)> = Vec::with_capacity(16);
    let mut kb: Vec<u8> = Vec::with_capacity(256);
    let mut labels: Vec<(&str, &str)> = Vec::with_capacity(16);
    let mut last: Option<u32> = None;
    while r.next(&mut arr)? {
        let (mut metric, mut t, mut v, mut got_labels) = (None, None, None, false);
        labels.clear();
        let mut m = r.map()?;
        while let Some(key) = r.key(&mut m)? {
            match key {
                b"metric" if metric.is_none() => metric = Some(r.string()?),
                b"t" if t.is_none() => t = Some(r.integer()?),
                b"v" if v.is_none() => v = Some(r.number()?),
                b"labels" if !got_labels => {
                    got_labels = true;
                    let mut lm = r.map()?;
                    while let Some(kv) = r.entry(&mut lm)? {
                        labels.push(kv);
                    }
                }
                _ => return None,
            }
        }
        let metric = metric?;
        kb.clear();
        put_text(&mut kb, metric);
        for &(k, v) in &labels {
            put_text(&mut kb, k);
            put_text(&mut kb, v);
        }
        // a report's points usually repeat the previous point's series or one seen before
        let k = match last.filter(|&k| blk.key(k as usize) == kb.as_slice()) {
            Some(k) => k,
            None => {
                let h = {
                    let mut hs = FxHasher::default();
                    hs.write(&kb);
                    hs.finish()
                };
                match index.get(&h) {
                    Some(&k) if blk.key(k as usize) == kb.as_slice() => k,
                    _ => {
                        let k = new_series(blk, &kb, metric, &labels, &mut sorted)?;
                        index.entry(h).or_insert(k);
                        k
                    }
                }
            }
        };
        last = Some(k);
        blk.series_of.push(k);
        blk.ts.push(t?);
        blk.vs.push(v?);
    }
    Some(())
}

/// Add a series of this key text; None when a label name repeats (a dict keeps the last value in
/// the first one's place: left to Python).
fn new_series<'a>(
    blk: &mut ReportBlock,
    kb: &[u8],
    metric: &str,
    labels: &[(&'a str, &'a str)],
    sorted: &mut Vec<(&'a str, &'a str)>,
) -> Option<u32> {
    sorted.clear();
    sorted.extend_from_slice(labels);
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let k = u32::try_from(blk.n_series()).ok()?;
    blk.keys.extend_from_slice(kb);
    blk.key_at.push(blk.keys.len());
    blk.n_labels.push(labels.len() as u32);
    // a Point's fields sorted by name (labels, metric, t, v), its labels by name (code point order,
    // as Python sorts str, is UTF-8 byte order)
    let out = &mut blk.prefixes;
    out.push(0x84);
    put_str(out, "labels");
    put_len(out, sorted.len(), 0x80, 0xde, 0xdf);
    for &(name, value) in sorted.iter() {
        put_str(out, name);
        put_str(out, value);
    }
    put_str(out, "metric");
    put_str(out, metric);
    put_str(out, "t");
    blk.prefix_at.push(blk.prefixes.len());
    Some(k)
}

/// `native_report(raw) -> (seq, time, ReportBlock) | None`: one report of a native request (a
/// msgpack map, any object with the buffer protocol, e.g. msgspec.Raw), or None when it must take the
/// Python path (module doc).
#[pyfunction]
pub fn native_report(raw: &Bound<'_, PyAny>) -> PyResult<Option<(i64, i64, ReportBlock)>> {
    let buf = PyBuffer::<u8>::get(raw)?;
    if !buf.is_c_contiguous() {
        return Ok(None);
    }
    // SAFETY: a C-contiguous buffer of len_bytes bytes, held (and the GIL with it) while read; msgspec.Raw
    // and bytes are immutable
    let data = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(read_report(&mut Rd::new(data)))
}

/// The request fields nested deeper than this are left to msgspec.
const SKIP_DEPTH: u32 = 32;

/// `native_request(body) -> (head, [(seq, time, block, size)]) | None`: a whole native request in
/// msgpack (a map; its `reports` an array of reports), every report read as `native_report` reads
/// one, `size` its bytes; `head` is the body with an empty array in place of the reports, for
/// msgspec to decode the request's other fields from. msgspec, when it decoded the request with
/// its reports as `msgspec.Raw`, walked every report's bytes to find its end, and `native_report`
/// walked them again (~40 ns a point). None when a report must take the Python path, or the body
/// is not a map with one `reports` array (the caller then decodes it all as before).
#[pyfunction]
pub fn native_request<'py>(
    py: Python<'py>,
    body: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyBytes>, Vec<(i64, i64, ReportBlock, usize)>)>> {
    let buf = PyBuffer::<u8>::get(body)?;
    if !buf.is_c_contiguous() {
        return Ok(None);
    }
    // SAFETY: as in native_report
    let data = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    // Without the GIL when nothing can change the bytes meanwhile (a bytes object): a big body
    // takes a while, and ingest reads requests in a thread beside its event loop.
    let got = if body.is_instance_of::<PyBytes>() {
        py.detach(|| read_request(data))
    } else {
        read_request(data)
    };
    let Some((start, end, reports)) = got else {
        return Ok(None);
    };
    let head = PyBytes::new_with(py, data.len() - (end - start) + 1, |out| {
        out[..start].copy_from_slice(&data[..start]);
        out[start] = 0x90; // an empty array
        out[start + 1..].copy_from_slice(&data[end..]);
        Ok(())
    })?;
    Ok(Some((head, reports)))
}

/// The reports array's span in the body and its reports (see `native_request`).
#[allow(clippy::type_complexity)]
fn read_request(data: &[u8]) -> Option<(usize, usize, Vec<(i64, i64, ReportBlock, usize)>)> {
    let mut r = Rd::new(data);
    let mut m = r.map()?;
    let mut span = None;
    let mut reports = Vec::new();
    while let Some(key) = r.key(&mut m)? {
        if key != b"reports" {
            r.skip(SKIP_DEPTH)?;
            continue;
        }
        if span.is_some() {
            return None; // a key twice: left to msgspec's rule
        }
        let start = r.pos();
        let mut arr = r.array()?;
        reports.reserve(r.count(&arr).min(1024)); // a count is only bounded by the bytes left
        while r.next(&mut arr)? {
            let at = r.pos();
            let (seq, time, blk) = read_report_value(&mut r)?;
            reports.push((seq, time, blk, r.pos() - at));
        }
        span = Some((start, r.pos()));
    }
    if !r.at_end() {
        return None;
    }
    let (start, end) = span?;
    Some((start, end, reports))
}

/// `native_report_json(raw)`: `native_report` of a report in JSON.
#[pyfunction]
pub fn native_report_json(raw: &Bound<'_, PyAny>) -> PyResult<Option<(i64, i64, ReportBlock)>> {
    let buf = PyBuffer::<u8>::get(raw)?;
    if !buf.is_c_contiguous() {
        return Ok(None);
    }
    // SAFETY: as in native_report
    let data = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(read_report(&mut Js::new(data)))
}

#[pymethods]
impl ReportBlock {
    /// The number of points.
    fn __len__(&self) -> usize {
        self.ts.len()
    }

    /// The number of distinct series.
    fn series(&self) -> usize {
        self.n_series()
    }

    /// The report's content digest (`lossproof.points.report_digest` of its points).
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.digest)
    }

    /// The points' canonical bytes (`lossproof.points.encode_points`).
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.canonical())
    }

    /// The distinct series as `[(metric, labels)]`, in order of first use.
    fn series_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for k in 0..self.n_series() {
            out.append(self.metric_labels(py, k)?)?;
        }
        Ok(out)
    }

    /// The points as `[(metric, labels, t, v)]` in order (one labels dict per series, shared by its
    /// points), for code that wants them one by one.
    fn expand<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let made = (0..self.n_series())
            .map(|k| self.metric_labels(py, k))
            .collect::<PyResult<Vec<_>>>()?;
        let out = PyList::empty(py);
        for i in 0..self.ts.len() {
            let (m, l) = &made[self.series_of[i] as usize];
            out.append((m, l, self.ts[i], self.vs[i]))?;
        }
        Ok(out)
    }
}

/// `report_columns(tenant, block, known, resolve) -> (sids, ts, vs)`: the report's points as the
/// store's three columns (native-endian int64, int64, float64 bytes), as `point_columns` (lib.rs)
/// makes them from the same points: a series' id from `known` (the store's cache) by its key
/// `(tenant, metric, *labels.items())`, else from `resolve(key, tenant, metric, labels)`, asked once
/// per series in order of first use. Nothing is returned if a look-up raises.
#[pyfunction]
pub fn report_columns<'py>(
    py: Python<'py>,
    tenant: &Bound<'py, PyString>,
    block: &Bound<'py, ReportBlock>,
    known: &Bound<'py, PyDict>,
    resolve: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let b = block.get();
    let tenant_text = tenant.to_str()?;
    keys_note_known(known.len());
    let ns = b.n_series();
    // every series' key text with the tenant first, and the key tuples the table holds for them,
    // the table locked once for all (never across Python code: nothing here runs any)
    let mut text: Vec<u8> = Vec::with_capacity(b.keys.len() + ns * (4 + tenant_text.len()));
    let mut at: Vec<usize> = Vec::with_capacity(ns + 1);
    at.push(0);
    for k in 0..ns {
        put_text(&mut text, tenant_text);
        text.extend_from_slice(b.key(k));
        at.push(text.len());
    }
    let token = cache_token(known)?;
    let found: Vec<Known> = {
        let keys = lock_keys();
        (0..ns).map(|k| keys.find(py, &text[at[k]..at[k + 1]], token)).collect()
    };
    let mut ids: Vec<i64> = Vec::with_capacity(ns);
    for (k, got) in found.into_iter().enumerate() {
        let text = &text[at[k]..at[k + 1]];
        let key = match got {
            Known::Sid(sid) => {
                ids.push(sid);
                continue;
            }
            Known::Key(key) => key.into_bound(py),
            Known::Nothing => key_from_text(py, tenant, b.key(k), b.n_labels[k] as usize, text)?,
        };
        let sid = match ask_known(known, &key, text, token)? {
            Some(sid) => sid,
            None => {
                let (metric, labels) = b.metric_labels(py, k)?;
                resolve.call1((&key, tenant, metric, labels))?.extract()?
            }
        };
        ids.push(sid);
    }
    let n = b.ts.len();
    let sids = PyBytes::new_with(py, n * 8, |out| {
        for (dst, &k) in out.chunks_exact_mut(8).zip(&b.series_of) {
            dst.copy_from_slice(&ids[k as usize].to_ne_bytes());
        }
        Ok(())
    })?;
    let ts = PyBytes::new_with(py, n * 8, |out| {
        for (dst, t) in out.chunks_exact_mut(8).zip(&b.ts) {
            dst.copy_from_slice(&t.to_ne_bytes());
        }
        Ok(())
    })?;
    let vs = PyBytes::new_with(py, n * 8, |out| {
        for (dst, v) in out.chunks_exact_mut(8).zip(&b.vs) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok((sids, ts, vs))
}
