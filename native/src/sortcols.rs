//! Columns (series id, t, value) sorted by (series, t), the first of each (series, t) kept: what a
//! store writes (lossproof.store.chunks.sort_dedup).
//!
//! numpy's `lexsort` took ~15 % of the worker draining remote-write bodies (40-50 ms for 1 M
//! points: two indirect sorts, then three gathers). A batch is made of runs already in order (a
//! body holds each of its series' samples in time order), so here the runs are ordered, not the
//! points (see `sorted`): 13-27 ms for the same points.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

use crate::groupsum::in_place;

type Sorted<'py> = (
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
);

/// `sort_dedup(sids, ts, vs) -> None | (sids, ts, vs)`: three C-contiguous columns of one length
/// (int64, int64, float64), read in place without the GIL (sound: the caller's own arrays, which
/// nothing writes to meanwhile: lossproof.store.chunks.sort_dedup). None when they are already
/// sorted by (series, t) with no (series, t) twice; else the columns sorted by (series, t), of
/// each (series, t) only its first point in the input order, as native-endian bytes.
#[pyfunction]
pub fn sort_dedup<'py>(
    py: Python<'py>,
    sids: PyBuffer<i64>,
    ts: PyBuffer<i64>,
    vs: PyBuffer<f64>,
) -> PyResult<Option<Sorted<'py>>> {
    let (s, t, v) = (in_place(&sids, "sids")?, in_place(&ts, "ts")?, in_place(&vs, "vs")?);
    if s.len() != t.len() || s.len() != v.len() {
        return Err(PyValueError::new_err(format!(
            "columns of {}, {} and {} items",
            s.len(),
            t.len(),
            v.len()
        )));
    }
    let Some((s, t, v)) = py.detach(|| sorted(s, t, v)) else {
        return Ok(None);
    };
    Ok(Some((
        PyByteArray::new(py, as_bytes(&s)),
        PyByteArray::new(py, as_bytes(&t)),
        PyByteArray::new(py, as_bytes(&v)),
    )))
}

/// A column's bytes, native-endian (copied once, into the bytearray: `new_with` zeroes its buffer
/// before filling it, a pass more).
fn as_bytes<T: Copy>(xs: &[T]) -> &[u8] {
    // SAFETY: i64 and f64 have no padding and every byte of them is initialised; u8's alignment is 1
    unsafe { std::slice::from_raw_parts(xs.as_ptr() as *const u8, std::mem::size_of_val(xs)) }
}

type Columns = (Vec<i64>, Vec<i64>, Vec<f64>);


/// The columns sorted by (series, t), of each (series, t) its first point; None when they are in
/// that order already, with no (series, t) twice.
///
/// By runs, not points: the input is cut where the series changes or t does not increase (a body
/// holds a run per series), the runs ordered by (series, first t), and each series' runs copied
/// one after the other where each ends before the next begins (the bodies of a batch, in time
/// order or not); a series whose runs overlap (a point resent, bodies interleaved) has its points
/// sorted by t, the input order breaking ties (first write wins).
fn sorted(s: &[i64], t: &[i64], v: &[f64]) -> Option<Columns> {
    let n = s.len();
    let mut starts: Vec<usize> = (1..n).filter(|&i| s[i] != s[i - 1] || t[i] <= t[i - 1]).collect();
    // within a run the points are in order: the whole is where every cut is too
    if starts.iter().all(|&i| (s[i - 1], t[i - 1]) < (s[i], t[i])) {
        return None;
    }
    starts.insert(0, 0);
    starts.push(n);
    let runs = starts.len() - 1;
    // stable, and the run's index in the key: equal firsts keep input order
    let mut order: Vec<(i64, i64, usize)> = (0..runs).map(|k| (s[starts[k]], t[starts[k]], k)).collect();
    order.sort();
    let (mut os, mut ot, mut ov) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut scratch: Vec<(i64, usize)> = Vec::new();
    let mut a = 0;
    while a < runs {
        let sid = order[a].0;
        let b = a + order[a..].iter().position(|o| o.0 != sid).unwrap_or(runs - a);
        let group = &order[a..b];
        let chained = group.windows(2).all(|w| t[starts[w[0].2 + 1] - 1] < w[1].1);
        if chained {
            for &(_, _, k) in group {
                let (lo, hi) = (starts[k], starts[k + 1]);
                ot.extend_from_slice(&t[lo..hi]);
                ov.extend_from_slice(&v[lo..hi]);
            }
        } else {
            scratch.clear();
            for &(_, _, k) in group {
                scratch.extend((starts[k]..starts[k + 1]).map(|i| (t[i], i)));
            }
            scratch.sort_unstable();
            let mut last = None;
            for &(ts, i) in &scratch {
                if last != Some(ts) {
                    ot.push(ts);
                    ov.push(v[i]);
                    last = Some(ts);
                }
            }
        }
        os.resize(ot.len(), sid);
        a = b;
    }
    Some((os, ot, ov))
}

#[cfg(test)]
mod tests {
    use super::sorted;

    fn check(s: &[i64], t: &[i64], want: Option<(Vec<i64>, Vec<i64>, Vec<f64>)>) {
        let v: Vec<f64> = (0..s.len()).map(|i| i as f64).collect();
        assert_eq!(sorted(s, t, &v), want);
    }

    #[test]
    fn sorted_input_is_none() {
        check(&[1, 1, 2], &[5, 6, 1], None);
        check(&[], &[], None);
    }

    #[test]
    fn runs_merged_first_write_kept() {
        // two bodies of series 1 and 2, the second older, and (1, 10) twice
        check(
            &[1, 2, 1, 2, 1],
            &[10, 10, 5, 5, 10],
            Some((vec![1, 1, 2, 2], vec![5, 10, 5, 10], vec![2.0, 0.0, 3.0, 1.0])),
        );
    }

    #[test]
    fn far_apart_ids_sorted_too() {
        check(
            &[i64::MAX, i64::MIN, i64::MAX, 0, i64::MAX],
            &[2, 7, 1, 3, 2],
            Some((vec![i64::MIN, 0, i64::MAX, i64::MAX], vec![7, 3, 1, 2], vec![1.0, 3.0, 2.0, 0.0])),
        );
    }

    #[test]
    fn overlapping_runs_of_a_series_merged() {
        // series 3: runs [1, 4] and [2, 4, 6] overlap (4 twice: the first run's wins)
        check(
            &[3, 3, 3, 3, 3],
            &[1, 4, 2, 4, 6],
            Some((vec![3, 3, 3, 3], vec![1, 2, 4, 6], vec![0.0, 2.0, 1.0, 4.0])),
        );
    }
}
