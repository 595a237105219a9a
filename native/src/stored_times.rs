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
//! series it does not know is UNKNOWN. Memory is bounded by two generations of at most
//! `capacity / 2` entries each: when the young one is full the old one is forgotten, each of its
//! series' floor raised to the highest t forgotten. The caller clears the table whenever another
//! writer may have stored points, and adds only what it has committed.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustc_hash::{FxHashMap, FxHashSet};

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

#[pyclass(module = "lossproof._native")]
pub struct StoredTimes {
    floors: FxHashMap<i64, i64>,
    young: FxHashSet<(i64, i64)>,
    old: FxHashSet<(i64, i64)>,
    half: usize,
}

impl StoredTimes {
    fn rotate(&mut self) {
        for (sid, t) in self.old.drain() {
            if let Some(f) = self.floors.get_mut(&sid) {
                if t > *f {
                    *f = t;
                }
            }
        }
        std::mem::swap(&mut self.old, &mut self.young);
    }
}

#[pymethods]
impl StoredTimes {
    /// At most ``capacity`` (series, t) entries are remembered (two generations of half of it).
    #[new]
    fn new(capacity: usize) -> Self {
        StoredTimes {
            floors: FxHashMap::default(),
            young: FxHashSet::default(),
            old: FxHashSet::default(),
            half: (capacity / 2).max(1),
        }
    }

    /// The (series, t) entries remembered.
    fn __len__(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// The series known (each with a floor).
    fn series(&self) -> usize {
        self.floors.len()
    }

    fn clear(&mut self) {
        self.floors.clear();
        self.young.clear();
        self.old.clear();
    }

    /// The series of ``sids`` (int64 bytes) not known here, in order (int64 bytes).
    fn unknown<'py>(&self, py: Python<'py>, sids: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let s = column(sids, "sids")?;
        let mut out = Vec::with_capacity(s.len() * 8);
        for sid in s {
            if !self.floors.contains_key(&sid) {
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
            let f = self.floors.entry(sid).or_insert(t);
            if t > *f {
                *f = t;
            }
        }
        Ok(())
    }

    /// Remember (series, t) pairs just committed to the store (series not known are skipped).
    /// The GIL is released meanwhile (the worker's compaction thread runs Python).
    fn add(&mut self, py: Python<'_>, sids: &[u8], ts: &[u8]) -> PyResult<()> {
        let (s, t) = columns(sids, ts)?;
        py.detach(|| {
            for (sid, t) in s.into_iter().zip(t) {
                if !self.floors.contains_key(&sid) {
                    continue;
                }
                if self.young.insert((sid, t)) && self.young.len() >= self.half {
                    self.rotate();
                }
            }
        });
        Ok(())
    }

    /// Per point one byte: 0 new, 1 stored, 2 unknown (see the module's doc); without the GIL.
    fn check<'py>(&self, py: Python<'py>, sids: &[u8], ts: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let (s, t) = columns(sids, ts)?;
        let out = py.detach(|| {
            let mut out = Vec::with_capacity(s.len());
            for (sid, t) in s.into_iter().zip(t) {
                out.push(match self.floors.get(&sid) {
                    None => UNKNOWN,
                    Some(&f) => {
                        let key = (sid, t);
                        if self.young.contains(&key) || self.old.contains(&key) {
                            STORED
                        } else if t > f {
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
