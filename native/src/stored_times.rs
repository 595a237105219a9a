//! The embedded store writer's memory of which (series, t) it has stored recently
//! (lossproof.store.embedded.write: first write wins without reading the store back).
//!
//! A batch of remote-write bodies sent over many connections reaches the worker out of time order
//! per series: most of its series then have points at or below the newest t stored, and the exact
//! check used to read the stored timestamps of those series back from SQLite (decoding parts and
//! chunks) for every batch. This table answers that check for the recent past from memory.
//!
//! Per series it knows a *floor*: every stored t above the floor is in the table (the newest t
//! stored when the series was first looked up here, raised as old entries are forgotten). A point
//! of a series the table knows is then NEW (above the floor, not in the table), STORED (in the
//! table) or UNKNOWN (at or below the floor and not in the table: the caller reads the store); a
//! series it does not know is UNKNOWN. Memory is bounded by `capacity` entries: when full, each
//! series forgets the older half of its times (by t, not by when they were added), its floor raised
//! to the highest t forgotten. Forgetting by age of arrival (two generations, as before) raised a
//! series' floor past times that had not arrived yet whenever bodies came out of order by more
//! than a generation (many connections, slow acks): each such point then cost a store read, ~15 %
//! of the worker under `bench compare`. The caller clears the table whenever another writer may
//! have stored points, and adds only what it has committed.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustc_hash::FxHashMap;

const NEW: u8 = 0;
const STORED: u8 = 1;
const UNKNOWN: u8 = 2;

fn column(b: &[u8], what: &str) -> PyResult<Vec<i64>> {
    if !b.len().is_multiple_of(8) {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes is not int64s",
            b.len()
        )));
    }
    Ok(b.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

fn columns(sids: &[u8], other: &[u8]) -> PyResult<(Vec<i64>, Vec<i64>)> {
    let s = column(sids, "sids")?;
    let o = column(other, "ts")?;
    if s.len() != o.len() {
        return Err(PyValueError::new_err(format!(
            "{} series ids, {} timestamps",
            s.len(),
            o.len()
        )));
    }
    Ok((s, o))
}

/// One series: its floor, and the times added (any t, also at or below the floor), ascending.
struct Times {
    floor: i64,
    /// the last of `ts` (i64::MIN: none), kept beside the floor: a point newer than both is
    /// answered without reading `ts` (a cache miss per series of a batch)
    last: i64,
    ts: Vec<i64>,
}

impl Times {
    fn new(floor: i64) -> Self {
        Times {
            floor,
            last: i64::MIN,
            ts: Vec::new(),
        }
    }

    fn note_last(&mut self) {
        self.last = self.ts.last().copied().unwrap_or(i64::MIN);
    }
}

#[pyclass(module = "lossproof._native")]
pub struct StoredTimes {
    series: FxHashMap<i64, Times>,
    len: usize,
    capacity: usize,
}

impl StoredTimes {
    /// Each series forgets the older half of its times (rounded up), its floor raised to the
    /// highest t forgotten.
    fn forget(&mut self) {
        let mut len = 0;
        for s in self.series.values_mut() {
            let k = s.ts.len().div_ceil(2);
            if k > 0 {
                s.floor = s.floor.max(s.ts[k - 1]);
                s.ts.drain(..k);
                // drain keeps the array's capacity: without giving it back, every series that was
                // once large would keep its peak (memory bounded by the sum of peaks, not capacity)
                if s.ts.capacity() > 4 * s.ts.len().max(4) {
                    s.ts.shrink_to(2 * s.ts.len());
                }
                s.note_last();
            }
            len += s.ts.len();
        }
        self.len = len;
    }

    /// Add a run of one series' times (unsorted, duplicates allowed); a series not known is skipped.
    fn add_run(&mut self, sid: i64, run: &mut [i64]) {
        let Some(s) = self.series.get_mut(&sid) else {
            return;
        };
        let before = s.ts.len();
        if !run.is_sorted() {
            run.sort_unstable();
        }
        if s.ts.last().is_none_or(|&last| run[0] > last) {
            // the common case: every time newer than any remembered (runs are sorted by the caller)
            s.ts.reserve(run.len());
            for &t in run.iter() {
                if s.ts.last() != Some(&t) {
                    s.ts.push(t);
                }
            }
        } else {
            // late times: merged with the remembered ones from where the first of them goes (bodies
            // out of order by a few: the tail merged is short)
            let tail = s.ts.split_off(s.ts.partition_point(|&x| x < run[0]));
            s.ts.reserve(tail.len() + run.len());
            let (mut i, mut j) = (0, 0);
            while i < tail.len() || j < run.len() {
                let t = if j == run.len() || (i < tail.len() && tail[i] <= run[j]) {
                    i += 1;
                    tail[i - 1]
                } else {
                    j += 1;
                    run[j - 1]
                };
                if s.ts.last() != Some(&t) {
                    s.ts.push(t);
                }
            }
        }
        s.note_last();
        self.len = self.len + s.ts.len() - before;
    }
}

#[pymethods]
impl StoredTimes {
    /// At most ``capacity`` (series, t) entries are remembered.
    #[new]
    fn new(capacity: usize) -> Self {
        StoredTimes {
            series: FxHashMap::default(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// The (series, t) entries remembered.
    fn __len__(&self) -> usize {
        self.len
    }

    /// The series known (each with a floor).
    fn series(&self) -> usize {
        self.series.len()
    }

    fn clear(&mut self) {
        self.series.clear();
        self.len = 0;
    }

    /// The series of ``sids`` (int64 bytes) not known here, in order (int64 bytes).
    fn unknown<'py>(&self, py: Python<'py>, sids: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let s = column(sids, "sids")?;
        let mut out = Vec::with_capacity(s.len() * 8);
        for sid in s {
            if !self.series.contains_key(&sid) {
                out.extend_from_slice(&sid.to_ne_bytes());
            }
        }
        Ok(PyBytes::new(py, &out))
    }

    /// Make each series of ``sids`` known, with the newest t the store holds of it (int64 bytes,
    /// i64::MIN: none) as its floor; a series known already keeps the higher floor.
    fn learn(&mut self, sids: &[u8], newest: &[u8]) -> PyResult<()> {
        let (s, n) = columns(sids, newest)?;
        for (sid, t) in s.into_iter().zip(n) {
            let e = self.series.entry(sid).or_insert_with(|| Times::new(t));
            if t > e.floor {
                e.floor = t;
            }
        }
        Ok(())
    }

    /// Remember (series, t) pairs just committed to the store (series not known are skipped).
    /// The GIL is released meanwhile (the worker's compaction thread runs Python).
    fn add(&mut self, py: Python<'_>, sids: &[u8], ts: &[u8]) -> PyResult<()> {
        let (s, mut t) = columns(sids, ts)?;
        py.detach(|| {
            let mut a = 0;
            while a < s.len() {
                let mut b = a + 1;
                while b < s.len() && s[b] == s[a] {
                    b += 1;
                }
                self.add_run(s[a], &mut t[a..b]);
                while self.len > self.capacity {
                    self.forget();
                }
                a = b;
            }
        });
        Ok(())
    }

    /// Per point one byte: 0 new, 1 stored, 2 unknown (see the module's doc); without the GIL.
    fn check<'py>(&self, py: Python<'py>, sids: &[u8], ts: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        if sids.len() != ts.len() || !sids.len().is_multiple_of(8) {
            columns(sids, ts)?; // the error it gives
        }
        let out = py.detach(|| {
            let mut out = Vec::with_capacity(sids.len() / 8);
            let mut last: Option<(i64, Option<&Times>)> = None;
            let word = |c: &[u8]| i64::from_ne_bytes(c.try_into().expect("8 bytes"));
            for (sid, t) in sids.chunks_exact(8).map(word).zip(ts.chunks_exact(8).map(word)) {
                let series = match last {
                    Some((k, found)) if k == sid => found,
                    _ => {
                        let found = self.series.get(&sid);
                        last = Some((sid, found));
                        found
                    }
                };
                out.push(match series {
                    None => UNKNOWN,
                    Some(x) => {
                        if t > x.last {
                            if t > x.floor {
                                NEW
                            } else {
                                UNKNOWN
                            }
                        } else if x.ts.binary_search(&t).is_ok() {
                            STORED
                        } else if t > x.floor {
                            NEW
                        } else {
                            UNKNOWN
                        }
                    }
                });
            }
            out
        });
        Ok(PyBytes::new(py, &out))
    }
}
