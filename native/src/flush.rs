//! Compaction's flush: parts (one row per batch, many series: `chunks.encode_part`) merged into one
//! RAW chunk per series (sealed: seal.rs), the rows to insert built here.
//!
//! Each part is sorted by series, and each series' times increase (the writer made it so); parts are
//! given oldest first. A k-way merge per series therefore replaces the concatenate + lexsort + dedup
//! + per-series slicing that numpy and a Python loop did (about 3 µs a series, most of a flush's
//! CPU), and the merge runs without the GIL, so the worker's main thread stores meanwhile. Of two
//! points of a series with the same t, the older part's is kept: first write wins, as everywhere.
//!
//! A part whose layout or order is not what the writer makes is damage: a `ValueError` saying what
//! (the caller raises it as a `ChunkError`), never a merge of unsorted input.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::seal;

const PART: u8 = 3;
const RAW: u8 = 1;
const HEAD: usize = 16; // kind, 3 pad bytes, u32 series, u64 points

fn rd(b: &[u8], i: usize) -> i64 {
    i64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

struct Part<'a> {
    sids: &'a [u8],
    starts: &'a [u8],
    ts: &'a [u8],
    vs: &'a [u8],
    series: usize,
}

impl Part<'_> {
    fn sid(&self, j: usize) -> i64 {
        rd(self.sids, j)
    }

    fn run(&self, j: usize) -> (usize, usize) {
        (rd(self.starts, j) as usize, rd(self.starts, j + 1) as usize)
    }
}

/// A part's sections, its layout checked (sizes, series ascending, each series' times increasing).
fn open(data: &[u8], k: usize) -> Result<Part<'_>, String> {
    if !seal::intact(data) {
        return Err(format!("part {k}: its checksum does not match its bytes"));
    }
    let Some((PART, data, _)) = seal::unsealed(data) else {
        return Err(format!("part {k}: not a part"));
    };
    if data.len() < HEAD {
        return Err(format!("part {k}: not a part"));
    }
    let series = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    let points = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let dir = (series as u64)
        .checked_mul(24)
        .and_then(|d| d.checked_add(HEAD as u64 + 8));
    let total = dir
        .zip(points.checked_mul(16))
        .and_then(|(d, p)| d.checked_add(p));
    if total != Some(data.len() as u64) {
        return Err(format!(
            "part {k}: {} bytes for {series} series and {points} points",
            data.len()
        ));
    }
    let (dir, points) = (dir.expect("checked") as usize, points as usize);
    let part = Part {
        sids: &data[HEAD..HEAD + 8 * series],
        starts: &data[HEAD + 16 * series..dir],
        ts: &data[dir..dir + 8 * points],
        vs: &data[dir + 8 * points..],
        series,
    };
    if rd(part.starts, 0) != 0 || rd(part.starts, series) != points as i64 {
        return Err(format!("part {k}: its series do not cover its {points} points"));
    }
    for j in 0..series {
        if j > 0 && part.sid(j) <= part.sid(j - 1) {
            return Err(format!("part {k}: series not ascending"));
        }
        if rd(part.starts, j + 1) < rd(part.starts, j) {
            return Err(format!("part {k}: series bounds going back"));
        }
    }
    for j in 0..series {
        let (a, b) = (rd(part.starts, j), rd(part.starts, j + 1));
        for i in (a as usize + 1)..(b as usize) {
            if rd(part.ts, i) <= rd(part.ts, i - 1) {
                return Err(format!("part {k}: a series' times not increasing"));
            }
        }
    }
    Ok(part)
}

/// One output chunk: its series, time range, points, and where its points start in the columns.
struct Row {
    sid: i64,
    t_min: i64,
    t_max: i64,
    at: usize,
    n: usize,
}

/// Every series of the parts merged: the rows and one pair of columns (times, value bits) holding
/// each row's points at `row.at`.
fn merge(parts: &[Part<'_>]) -> (Vec<Row>, Vec<i64>, Vec<u64>) {
    let mut next = vec![0usize; parts.len()];
    let mut rows = Vec::new();
    let total: usize = parts.iter().map(|p| p.ts.len() / 8).sum();
    let mut ts: Vec<i64> = Vec::with_capacity(total);
    let mut vs: Vec<u64> = Vec::with_capacity(total);
    let mut runs: Vec<(usize, usize, usize)> = Vec::with_capacity(parts.len()); // part, from, to
    loop {
        let sid = parts
            .iter()
            .zip(&next)
            .filter(|(p, &j)| j < p.series)
            .map(|(p, &j)| p.sid(j))
            .min();
        let Some(sid) = sid else { break };
        runs.clear();
        for (k, p) in parts.iter().enumerate() {
            if next[k] < p.series && p.sid(next[k]) == sid {
                let (a, b) = p.run(next[k]);
                if a < b {
                    runs.push((k, a, b));
                }
                next[k] += 1;
            }
        }
        let at = ts.len();
        // the usual case: each part's run after the one before in time (parts written in time
        // order), copied one after the other
        let in_order = runs
            .windows(2)
            .all(|w| rd(parts[w[0].0].ts, w[0].2 - 1) < rd(parts[w[1].0].ts, w[1].1));
        if in_order {
            for &(k, a, b) in &runs {
                let p = &parts[k];
                ts.extend(
                    p.ts[8 * a..8 * b]
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8"))),
                );
                vs.extend(
                    p.vs[8 * a..8 * b]
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8"))),
                );
            }
        } else {
            // the smallest head t next; of equal ones the oldest part's (runs are in part order)
            loop {
                let mut best: Option<(i64, usize)> = None;
                for (r, &(k, a, b)) in runs.iter().enumerate() {
                    if a < b {
                        let t = rd(parts[k].ts, a);
                        if best.is_none_or(|(bt, _)| t < bt) {
                            best = Some((t, r));
                        }
                    }
                }
                let Some((t, r)) = best else { break };
                let (k, a, _) = runs[r];
                ts.push(t);
                vs.push(rd(parts[k].vs, a) as u64);
                for run in runs.iter_mut() {
                    if run.1 < run.2 && rd(parts[run.0].ts, run.1) == t {
                        run.1 += 1;
                    }
                }
            }
        }
        let n = ts.len() - at;
        if n > 0 {
            rows.push(Row {
                sid,
                t_min: ts[at],
                t_max: ts[ts.len() - 1],
                at,
                n,
            });
        }
    }
    (rows, ts, vs)
}

/// `flush_rows(parts, first_id, pack_min) -> (rows, points, bytes, big)`: the parts (bytes, oldest
/// first) merged per series, in series order. A series of fewer than `pack_min` points becomes one
/// RAW chunk row `(id, series_id, t_min, t_max, n, data)`, ids from `first_id` on; the others are
/// left to the caller to pack, as `big = (series, run ends, times, values)`: int64 series ids, the
/// int64 end of each one's run in the columns, then the columns (int64 times, float64 values, bit
/// for bit). `points` counts both, `bytes` the rows' data. A damaged part is a ValueError.
#[pyfunction]
pub fn flush_rows<'py>(
    py: Python<'py>,
    parts: &Bound<'py, PyList>,
    first_id: i64,
    pack_min: usize,
) -> PyResult<(Bound<'py, PyList>, usize, usize, BigRuns<'py>)> {
    let held: Vec<Bound<'py, PyBytes>> = parts
        .iter()
        .map(|p| p.cast_into::<PyBytes>().map_err(PyErr::from))
        .collect::<PyResult<_>>()?;
    let datas: Vec<&[u8]> = held.iter().map(|b| b.as_bytes()).collect();
    // bytes objects are immutable and `held` keeps them alive: read without the GIL
    let merged = py.detach(|| {
        let opened = datas
            .iter()
            .enumerate()
            .map(|(k, d)| open(d, k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, String>(merge(&opened))
    });
    let (rows, ts, vs) = merged.map_err(PyValueError::new_err)?;
    let out = PyList::empty(py);
    let mut size = 0usize;
    let (mut big_sids, mut big_ends) = (Vec::new(), Vec::new());
    let (mut big_ts, mut big_vs) = (Vec::new(), Vec::new());
    for r in &rows {
        if r.n >= pack_min {
            big_sids.push(r.sid);
            big_ts.extend_from_slice(&ts[r.at..r.at + r.n]);
            big_vs.extend_from_slice(&vs[r.at..r.at + r.n]);
            big_ends.push(big_ts.len() as i64);
            continue;
        }
        let len = 1 + 16 * r.n;
        let data = PyBytes::new_with(py, len + 4, |b| {
            b[0] = RAW | seal::SEALED;
            let (tb, vb) = b[1..len].split_at_mut(8 * r.n);
            put_le(tb, ts[r.at..r.at + r.n].iter().map(|t| t.to_le_bytes()));
            put_le(vb, vs[r.at..r.at + r.n].iter().map(|v| v.to_le_bytes()));
            let sum = crc32c::crc32c(&b[..len]);
            b[len..].copy_from_slice(&sum.to_le_bytes());
            Ok(())
        })?;
        size += len + 4;
        let row = (first_id + out.len() as i64, r.sid, r.t_min, r.t_max, r.n, data);
        out.append(row.into_pyobject(py)?.cast_into::<PyTuple>()?)?;
    }
    let big = (
        le_bytes(py, big_sids.len(), big_sids.iter().map(|x| x.to_le_bytes()))?,
        le_bytes(py, big_ends.len(), big_ends.iter().map(|x| x.to_le_bytes()))?,
        le_bytes(py, big_ts.len(), big_ts.iter().map(|x| x.to_le_bytes()))?,
        le_bytes(py, big_vs.len(), big_vs.iter().map(|x| x.to_le_bytes()))?,
    );
    Ok((out, ts.len(), size, big))
}

type BigRuns<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

fn le_bytes<'py>(
    py: Python<'py>,
    n: usize,
    words: impl Iterator<Item = [u8; 8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, 8 * n, |b| {
        put_le(b, words);
        Ok(())
    })
}

fn put_le(dst: &mut [u8], words: impl Iterator<Item = [u8; 8]>) {
    for (d, w) in dst.chunks_exact_mut(8).zip(words) {
        d.copy_from_slice(&w);
    }
}
