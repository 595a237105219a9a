//! lossproof's hot paths in Rust, as the Python extension module `lossproof._native`.
//!
//! Built by maturin from `pip install -e .` and `python -m build` (see `buildsupport/lossproof_backend.py`).
//! What lives here is only what profiling showed Python to be the limit of (docs/store.md, "Native
//! code"); each function replaces its Python version (one code path) and is tested against an
//! independent reference in `tests/unit/test_native_ext.py`.

use std::sync::{LazyLock, Mutex, MutexGuard};

mod stored_times;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rustc_hash::FxHashMap;

mod chunkdecode;
mod flush;
mod fsum;
mod groupsum;
mod mpjson;
mod pointsjson;
mod raterows;
mod ratewin;
mod rawchunks;
mod reportcheck;
mod reports;
mod rowdecode;
mod rwcheck;
mod rwcols;
mod seal;
mod sortcols;

/// The version of this module's interface, checked by the Python side (lossproof/native_ext.py):
/// an extension built from other sources than the Python code that calls it fails at import, not
/// half-way through a batch.
const ABI: u32 = 18;

// ---------------------------------------------------------------------------------------------
// Points to store columns (lossproof.store.columns.Columns.add).
//
// A point's series key is the tuple `(tenant, metric, *labels.items())` (labels in the sender's
// order), the key of the store's series cache (a dict). Building that tuple per point (a 2-tuple
// per label, then hashing every fresh string) was most of the cost; here the key's text is looked
// up in a table of the key tuples already built (`KEYS`), and the store's dict is then asked with
// that same tuple object (found by identity, its strings' hashes cached).
//
// Asking the store's dict was then most of what a known series cost (hashing the nested tuple,
// a probe into a table of every series: cache misses), so `KEYS` also keeps the id the dict gave
// for a key, with the dict's `token` (lossproof.store.base.SeriesCache): a number never used twice,
// replaced whenever the cache forgets anything. An id is taken from here only while the cache
// still has the token it was read under. The cache holds committed ids only and never changes the
// id of a key it holds, so such an id is the one the dict would give; a rolled-back or forgotten
// id is never used from here. A plain dict (no token) is asked every time.

/// What `KEYS` holds for a key text: the key tuple first built for it and the last id the store's
/// cache gave for it, with that cache's token (0: none).
pub(crate) struct KeyEntry {
    key: Py<PyTuple>,
    sid: i64,
    token: u64,
}

/// Key text (see `key_text`) -> its entry.
pub(crate) struct Keys {
    map: FxHashMap<Box<[u8]>, KeyEntry>,
    bytes: usize,
    known_len: usize, // the store's cache's length when last seen
}

pub(crate) static KEYS: LazyLock<Mutex<Keys>> = LazyLock::new(|| {
    Mutex::new(Keys {
        map: FxHashMap::default(),
        bytes: 0,
        known_len: 0,
    })
});

/// What `KEYS` may keep before it starts over: an estimate of the memory it keeps alive, the key
/// tuples counted as lossproof.store.base.series_key_bytes counts them, plus the table's entry. The
/// tuples are shared with the store's cache while that holds them; so that the table does not keep
/// them alive long after, it also starts over whenever the store's cache was found shorter than the
/// last time (the cache starts over when full).
const KEYS_BYTES: usize = 128 << 20;

pub(crate) fn entry_bytes(text: usize, labels: usize) -> usize {
    80 + text + 200 + 57 * (2 + labels) + 154 * labels
}

pub(crate) fn lock_keys() -> MutexGuard<'static, Keys> {
    KEYS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start `KEYS` over when the store's cache (`known`, of length `known_len`) was found shorter than
/// the last time (it started over); the references are released outside the lock.
pub(crate) fn keys_note_known(known_len: usize) {
    let unused = {
        let mut keys = lock_keys();
        let shorter = known_len < keys.known_len;
        keys.known_len = known_len;
        if shorter {
            keys.bytes = 0;
            std::mem::take(&mut keys.map)
        } else {
            FxHashMap::default()
        }
    };
    drop(unused);
}

/// The store cache's token (`SeriesCache.token`), 0 for a dict without one (never matched).
pub(crate) fn cache_token(known: &Bound<'_, PyDict>) -> PyResult<u64> {
    match known.getattr(intern!(known.py(), "token")) {
        Ok(t) => t.extract(),
        Err(_) => Ok(0),
    }
}

/// What `KEYS` knows of a key text.
pub(crate) enum Known {
    /// the id the store's cache gave, under the token asked with
    Sid(i64),
    /// the key tuple, to ask the cache with
    Key(Py<PyTuple>),
    Nothing,
}

impl Keys {
    pub(crate) fn find(&self, py: Python<'_>, text: &[u8], token: u64) -> Known {
        match self.map.get(text) {
            Some(e) if token != 0 && e.token == token => Known::Sid(e.sid),
            Some(e) => Known::Key(e.key.clone_ref(py)),
            None => Known::Nothing,
        }
    }

    /// Remember that the cache of `token` gave `sid` for the key text `text` (if it is held).
    pub(crate) fn learn(&mut self, text: &[u8], token: u64, sid: i64) {
        if token == 0 {
            return;
        }
        if let Some(e) = self.map.get_mut(text) {
            e.sid = sid;
            e.token = token;
        }
    }
}

/// What `KEYS` knows of the key text `text`, asked with the store cache's token.
pub(crate) fn keys_get(py: Python<'_>, text: &[u8], token: u64) -> Known {
    lock_keys().find(py, text, token)
}

/// Remember `key` for the key text `text` (of `n_labels` labels), starting over when full.
pub(crate) fn keys_put(text: &[u8], n_labels: usize, key: Py<PyTuple>) {
    let size = entry_bytes(text.len(), n_labels);
    let entry = KeyEntry { key, sid: 0, token: 0 };
    let (unused, replaced) = {
        let mut keys = lock_keys();
        let unused = if keys.bytes + size > KEYS_BYTES {
            keys.bytes = 0;
            std::mem::take(&mut keys.map)
        } else {
            FxHashMap::default()
        };
        keys.bytes += size;
        let replaced = keys.map.insert(text.into(), entry);
        (unused, replaced)
    };
    // the old keys' references released outside the lock (a release may run Python code, which
    // may call back in here)
    drop(unused);
    drop(replaced);
}

/// The key tuple `(tenant, metric, (name, value), ...)` of a key text without its tenant (`put_text`
/// of the metric, then of each label's name and value), remembered in `KEYS` for `text` (the key
/// text with the tenant, of `n_labels` labels).
pub(crate) fn key_from_text<'py>(
    py: Python<'py>,
    tenant: &Bound<'py, PyString>,
    series_text: &[u8],
    n_labels: usize,
    text: &[u8],
) -> PyResult<Bound<'py, PyTuple>> {
    let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(2 + n_labels);
    items.push(tenant.clone().into_any());
    let mut it = texts(series_text);
    items.push(PyString::new(py, it.next().unwrap_or("")).into_any());
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        items.push(PyTuple::new(py, [PyString::new(py, name), PyString::new(py, value)])?.into_any());
    }
    let key = PyTuple::new(py, items)?;
    keys_put(text, n_labels, key.clone().unbind());
    Ok(key)
}

/// The id the store's cache `known` gives for `key` (None: not there), remembered in `KEYS` for
/// the key text `text` under the cache's `token`.
pub(crate) fn ask_known(
    known: &Bound<'_, PyDict>,
    key: &Bound<'_, PyTuple>,
    text: &[u8],
    token: u64,
) -> PyResult<Option<i64>> {
    match known.get_item(key)? {
        Some(got) => {
            let sid: i64 = got.extract()?;
            lock_keys().learn(text, token, sid);
            Ok(Some(sid))
        }
        None => Ok(None),
    }
}

pub(crate) fn put_text(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A key text's metric and labels as Python objects (what a store's resolver is handed).
pub(crate) fn key_metric_labels<'py>(
    py: Python<'py>,
    key: &[u8],
) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>)> {
    let mut it = texts(key);
    let metric = PyString::new(py, it.next().unwrap_or(""));
    let labels = PyDict::new(py);
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        labels.set_item(name, value)?;
    }
    Ok((metric, labels))
}

/// The strings of a key text (written by `put_text`), in order.
pub(crate) fn texts(mut b: &[u8]) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        // written from &str by put_text: valid UTF-8
        let s = std::str::from_utf8(&b[4..4 + n]).expect("key text is UTF-8");
        b = &b[4 + n..];
        Some(s)
    })
}

/// The key's text, length-prefixed strings in key order, into `buf`, and its number of labels; None
/// when a label key or value is not a str (such a point takes the general path).
fn key_text(
    buf: &mut Vec<u8>,
    tenant: &str,
    metric: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyDict>,
) -> PyResult<Option<usize>> {
    buf.clear();
    put_text(buf, tenant);
    let Ok(m) = metric.cast::<PyString>() else {
        return Ok(None);
    };
    put_text(buf, m.to_str()?);
    let mut n = 0;
    for (k, v) in labels.iter() {
        let (Ok(k), Ok(v)) = (k.cast::<PyString>(), v.cast::<PyString>()) else {
            return Ok(None);
        };
        put_text(buf, k.to_str()?);
        put_text(buf, v.to_str()?);
        n += 1;
    }
    Ok(Some(n))
}

/// The key tuple, built as the Python code did: `(tenant, metric, *labels.items())`.
fn build_key<'py>(
    tenant: &Bound<'py, PyString>,
    metric: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
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
    let (a_labels, a_metric, a_t, a_v) = (
        intern!(py, "labels"),
        intern!(py, "metric"),
        intern!(py, "t"),
        intern!(py, "v"),
    );
    let tenant_text = tenant.to_str()?;
    let mut last: Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = None; // (labels, metric)
    let mut sid: i64 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    keys_note_known(known.len());
    let token = cache_token(known)?;
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
                Err(_) => None,
            };
            // The table is locked only while it is read or written, never across Python code.
            let found = match texted {
                Some(_) => keys_get(py, &buf, token),
                None => Known::Nothing,
            };
            sid = match found {
                Known::Sid(got) => got,
                found => {
                    let key = match found {
                        Known::Key(k) => k.into_bound(py),
                        _ => {
                            let k = build_key(tenant, &metric, &labels)?;
                            if let Some(n_labels) = texted {
                                keys_put(&buf, n_labels, k.clone().unbind());
                            }
                            k
                        }
                    };
                    // a key without a text (labels not a dict) is not in KEYS: nothing to learn
                    let token = if texted.is_some() { token } else { 0 };
                    match ask_known(known, &key, &buf, token)? {
                        Some(got) => got,
                        None => resolve.call1((&key, tenant, &metric, &labels))?.extract()?,
                    }
                }
            };
            last = Some((labels, metric));
        }
        sids.extend_from_slice(&sid.to_ne_bytes());
    }
    Ok((
        PyBytes::new(py, &sids),
        PyBytes::new(py, &ts),
        PyBytes::new(py, &vs),
    ))
}

// ---------------------------------------------------------------------------------------------
// Prometheus remote write 1.0: a WriteRequest's series, straight into columns
// (lossproof.protocol.promrw.iter_decode). Read as protobuf's own parser (upb) reads the message
// classes it replaces: a field with an unexpected wire type is an unknown field and skipped, the last
// of a repeated singular field wins, strings must be UTF-8, groups are skipped whole, a field number
// 0 (outside a group), wire type 6 or 7, an end-group tag outside its group, a varint over 10 bytes or a length past
// the end is malformed. A series with exemplars or histograms (fields 3, 4) is flagged: the caller
// parses that series with the message class as well (which checks those and reads the histograms).

pub(crate) struct Malformed(pub(crate) &'static str);

pub(crate) type Wire<T> = Result<T, Malformed>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> Wire<u64> {
        // one byte: every tag and length of a remote-write body but a few
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Wire<u64> {
        let mut out: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(Malformed("truncated varint"));
            };
            self.pos += 1;
            if i < 10 {
                out |= ((b & 0x7f) as u64).wrapping_shl(7 * i);
            }
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(Malformed("varint longer than 10 bytes"))
    }

    fn fixed64(&mut self) -> Wire<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn take(&mut self, n: usize) -> Wire<&'a [u8]> {
        if n > self.buf.len() - self.pos {
            return Err(Malformed("field runs past the end"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn len_delimited(&mut self) -> Wire<&'a [u8]> {
        let n = self.varint()?;
        if n > i32::MAX as u64 {
            return Err(Malformed("length too large"));
        }
        self.take(n as usize)
    }

    /// The next field's (number, wire type); an end-group tag is returned to the caller.
    fn tag(&mut self) -> Wire<(u32, u8)> {
        let (field, wire) = self.group_tag()?;
        if field == 0 {
            return Err(Malformed("field number 0"));
        }
        Ok((field, wire))
    }

    /// A tag inside a group being skipped: upb takes field number 0 there (it checks only the wire
    /// type and that the end tag matches its start), so ingest's check accepts such a body.
    fn group_tag(&mut self) -> Wire<(u32, u8)> {
        let tag = self.varint()?;
        if tag > u32::MAX as u64 {
            return Err(Malformed("tag too large"));
        }
        let (field, wire) = ((tag >> 3) as u32, (tag & 7) as u8);
        if wire > 5 {
            return Err(Malformed("invalid wire type"));
        }
        Ok((field, wire))
    }

    /// Skip a field of this wire type (its tag read); a group up to its matching end. ``depth`` is
    /// the nesting the field is at, counted as upb counts it: one per message level (the request
    /// 0, a TimeSeries 1, a Label or Sample 2) and one per group entered; past MAX_DEPTH it refuses.
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Wire<()> {
        match wire {
            0 => {
                self.varint()?;
            }
            1 => {
                self.take(8)?;
            }
            2 => {
                self.len_delimited()?;
            }
            5 => {
                self.take(4)?;
            }
            3 => {
                if depth + 1 > MAX_DEPTH {
                    return Err(Malformed("nested too deeply"));
                }
                loop {
                    if self.done() {
                        return Err(Malformed("unterminated group"));
                    }
                    let (f, w) = self.group_tag()?;
                    if w == 4 {
                        if f != field {
                            return Err(Malformed("mismatched end group"));
                        }
                        break;
                    }
                    self.skip(f, w, depth + 1)?;
                }
            }
            _ => return Err(Malformed("end group without a start")),
        }
        Ok(())
    }
}

/// upb's default nesting limit (kUpb_WireFormat_DefaultDepthLimit).
const MAX_DEPTH: u32 = 100;

fn utf8(b: &[u8]) -> Wire<&str> {
    std::str::from_utf8(b).map_err(|_| Malformed("invalid UTF-8 in a string field"))
}

/// A Label: (name, value), each "" when absent.
fn rw_label(buf: &[u8]) -> Wire<(&str, &str)> {
    let mut r = Reader::new(buf);
    let (mut name, mut value) = ("", "");
    while !r.done() {
        let (f, w) = r.tag()?;
        match (f, w) {
            (1, 2) => name = utf8(r.len_delimited()?)?,
            (2, 2) => value = utf8(r.len_delimited()?)?,
            _ => r.skip(f, w, 2)?,
        }
    }
    Ok((name, value))
}

/// A Sample: (timestamp, value bits), each 0 when absent.
fn rw_sample(buf: &[u8]) -> Wire<(i64, u64)> {
    // the layouts encoders write, value (left out when 0) then timestamp, read straight; anything
    // else (fields absent, repeated, reordered or unknown) by the loop below, as upb reads it
    let head = if buf.len() >= 11 && buf[0] == 0x09 && buf[9] == 0x10 {
        Some((10, u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"))))
    } else if buf.first() == Some(&0x10) {
        Some((1, 0))
    } else {
        None
    };
    if let Some((pos, v)) = head {
        let mut r = Reader { buf, pos };
        if let Ok(t) = r.varint() {
            if r.done() {
                return Ok((t as i64, v));
            }
        }
    }
    let mut r = Reader::new(buf);
    let (mut t, mut v) = (0i64, 0u64);
    while !r.done() {
        let (f, w) = r.tag()?;
        match (f, w) {
            (1, 1) => v = r.fixed64()?,
            (2, 0) => t = r.varint()? as i64,
            _ => r.skip(f, w, 2)?,
        }
    }
    Ok((t, v))
}

pub(crate) struct RwSeries<'a> {
    pub(crate) labels: Vec<(&'a str, &'a str)>,
    pub(crate) first: usize, // its samples: first .. last in the body's columns
    pub(crate) last: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) more: bool, // exemplars or histograms
}

/// The body's series blobs, the whole top level checked first (as the message class of the blobs
/// does); then each series in order, up to the first malformed one: the series before it and why it
/// is malformed.
pub(crate) fn rw_series<'a>(
    body: &'a [u8],
    ts: &mut Vec<i64>,
    vs: &mut Vec<f64>,
) -> Wire<(Vec<RwSeries<'a>>, Option<&'static str>)> {
    let mut blobs = Vec::new();
    let mut r = Reader::new(body);
    while !r.done() {
        let (f, w) = r.tag()?;
        if (f, w) != (1, 2) {
            r.skip(f, w, 0)?;
            continue;
        }
        let blob = r.len_delimited()?;
        blobs.push((blob, r.pos - blob.len(), r.pos));
    }
    let mut out = Vec::with_capacity(blobs.len());
    for (blob, start, end) in blobs {
        let first = ts.len();
        match rw_one(blob, start, end, ts, vs) {
            Ok(s) => out.push(s),
            Err(Malformed(why)) => {
                ts.truncate(first);
                vs.truncate(first);
                return Ok((out, Some(why)));
            }
        }
    }
    Ok((out, None))
}

fn rw_one<'a>(
    blob: &'a [u8],
    start: usize,
    end: usize,
    ts: &mut Vec<i64>,
    vs: &mut Vec<f64>,
) -> Wire<RwSeries<'a>> {
    let first = ts.len();
    let mut s = RwSeries {
        labels: Vec::with_capacity(8), // one allocation for a series' labels, not three or four
        first,
        last: first,
        start,
        end,
        more: false,
    };
    let mut sr = Reader::new(blob);
    while !sr.done() {
        let (f, w) = sr.tag()?;
        match (f, w) {
            (1, 2) => s.labels.push(rw_label(sr.len_delimited()?)?),
            (2, 2) => {
                let (t, v) = rw_sample(sr.len_delimited()?)?;
                ts.push(t);
                vs.push(f64::from_bits(v));
            }
            (3, 2) | (4, 2) => {
                sr.len_delimited()?;
                s.more = true;
            }
            _ => sr.skip(f, w, 1)?,
        }
    }
    s.last = ts.len();
    Ok(s)
}

const STR_CACHE: usize = 1 << 16;

fn cached<'py, 'a>(
    py: Python<'py>,
    strs: &mut FxHashMap<&'a str, Bound<'py, PyString>>,
    text: &'a str,
) -> Bound<'py, PyString> {
    if let Some(s) = strs.get(text) {
        return s.clone();
    }
    let s = PyString::new(py, text);
    if strs.len() < STR_CACHE {
        strs.insert(text, s.clone());
    }
    s
}

/// `rw1_series(body) -> (t, v, [(labels, first, last, start, end, more)], error)`: the samples of a
/// remote-write 1.0 WriteRequest as two columns, timestamps and values (native-endian int64 and
/// float64 bytes, in the body's order), and each series: its labels as a dict (the last of a name
/// wins), its samples (`first .. last` in the columns), where its TimeSeries lies in the body, and
/// whether it also has exemplars or histograms. A malformed top level is a ValueError; a malformed
/// series ends the list, and `error` says why (None when every series was read), so the caller
/// fails where the message classes failed, after the series before it.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn rw1_series<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<(
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyList>,
    Option<&'static str>,
)> {
    let (mut ts, mut vs) = (Vec::new(), Vec::new());
    let (series, error) = rw_series(body, &mut ts, &mut vs)
        .map_err(|Malformed(why)| pyo3::exceptions::PyValueError::new_err(why))?;
    let out = PyList::empty(py);
    // Label names and values repeat from series to series (every `__name__`, `job`, `instance`):
    // each distinct text is made a Python string once per body and shared (fewer allocations, the
    // hash computed once). Bounded: past STR_CACHE texts the rest are made one by one.
    let mut strs: FxHashMap<&str, Bound<'py, PyString>> = FxHashMap::default();
    for s in series {
        let labels = PyDict::new(py);
        for (k, v) in s.labels {
            let key = cached(py, &mut strs, k);
            let value = cached(py, &mut strs, v);
            labels.set_item(key, value)?;
        }
        out.append((labels, s.first, s.last, s.start, s.end, s.more))?;
    }
    let t_col = PyBytes::new_with(py, ts.len() * 8, |b| {
        for (dst, t) in b.chunks_exact_mut(8).zip(&ts) {
            dst.copy_from_slice(&t.to_ne_bytes());
        }
        Ok(())
    })?;
    drop(ts);
    let v_col = PyBytes::new_with(py, vs.len() * 8, |b| {
        for (dst, v) in b.chunks_exact_mut(8).zip(&vs) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok((t_col, v_col, out, error))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ABI", ABI)?;
    m.add_function(wrap_pyfunction!(point_columns, m)?)?;
    m.add_function(wrap_pyfunction!(rw1_series, m)?)?;
    m.add_function(wrap_pyfunction!(reportcheck::reports_check, m)?)?;
    m.add_function(wrap_pyfunction!(rwcheck::rw1_check, m)?)?;
    m.add_function(wrap_pyfunction!(rwcols::rw1_block, m)?)?;
    m.add_function(wrap_pyfunction!(rwcols::block_columns, m)?)?;
    m.add_class::<rwcols::RwBlock>()?;
    m.add_function(wrap_pyfunction!(chunkdecode::decode_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(fsum::fsum_windows, m)?)?;
    m.add_function(wrap_pyfunction!(ratewin::rate_windows, m)?)?;
    m.add_function(wrap_pyfunction!(raterows::rate_rows_start, m)?)?;
    m.add_class::<raterows::RateJob>()?;
    m.add_function(wrap_pyfunction!(rawchunks::runs_increasing, m)?)?;
    m.add_function(wrap_pyfunction!(rawchunks::decode_checked, m)?)?;
    m.add_function(wrap_pyfunction!(rawchunks::search_runs, m)?)?;
    m.add_function(wrap_pyfunction!(rowdecode::row_heads, m)?)?;
    m.add_function(wrap_pyfunction!(rowdecode::slice_rows, m)?)?;
    m.add_function(wrap_pyfunction!(rowdecode::assemble_rows, m)?)?;
    m.add_function(wrap_pyfunction!(rowdecode::assemble_rows_into, m)?)?;
    m.add_function(wrap_pyfunction!(groupsum::group_sums, m)?)?;
    m.add_function(wrap_pyfunction!(sortcols::sort_dedup, m)?)?;
    m.add_class::<stored_times::StoredTimes>()?;
    m.add_function(wrap_pyfunction!(reports::native_report, m)?)?;
    m.add_function(wrap_pyfunction!(reports::native_request, m)?)?;
    m.add_function(wrap_pyfunction!(reports::native_report_json, m)?)?;
    m.add_function(wrap_pyfunction!(reports::report_columns, m)?)?;
    m.add_class::<reports::ReportBlock>()?;
    m.add_function(wrap_pyfunction!(flush::flush_rows, m)?)?;
    m.add_function(wrap_pyfunction!(seal::crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(seal::seal, m)?)?;
    m.add_function(wrap_pyfunction!(seal::first_broken, m)?)?;
    m.add_function(wrap_pyfunction!(seal::raw_sums, m)?)?;
    m.add_function(wrap_pyfunction!(pointsjson::points_json, m)?)?;
    Ok(())
}

/// Whether there are two CPUs to compute on (asked once: `available_parallelism` reads the cgroup
/// files on every call, ~10 us).
pub(crate) fn two_cpus() -> bool {
    static TWO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2)
}

/// `a` on a second thread while `b` runs on this one; both here, one after the other, when the OS
/// gives no thread (a pids limit, memory pressure: `spawn` would panic, and a panic reaches Python
/// as a BaseException). A panic in `a` is resumed here, as `thread::scope` does.
pub(crate) fn join2<RA: Send, RB>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB) -> (RA, RB) {
    let slot = std::sync::Mutex::new(Some(a));
    let take = || slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    std::thread::scope(|s| match std::thread::Builder::new().spawn_scoped(s, || take().map(|f| f())) {
        Ok(other) => {
            let rb = b();
            match other.join() {
                Ok(ra) => (ra.expect("the job runs once"), rb),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Err(_) => {
            let ra = take().expect("the job did not run")();
            (ra, b())
        }
    })
}

#[cfg(test)]
mod join2_tests {
    #[test]
    fn both_run_and_a_panic_of_the_other_thread_is_resumed() {
        let mut x = vec![0u8; 4];
        let (a, b) = {
            let (l, r) = x.split_at_mut(2);
            super::join2(
                || {
                    r.fill(2);
                    "a"
                },
                || {
                    l.fill(1);
                    7
                },
            )
        };
        assert_eq!((a, b, x), ("a", 7, vec![1, 1, 2, 2]));
        let caught = std::panic::catch_unwind(|| super::join2(|| panic!("boom"), || 1));
        assert!(caught.is_err());
    }
}
