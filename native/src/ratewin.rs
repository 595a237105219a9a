//! PromQL's `rate`, `increase` and `delta` over every window of every series
//! (lossproof.query.promwindows: the native path of `_rate_arrays`).
//!
//! The numpy version found each window's bounds by a search per series, then ran ~30 array passes
//! over every window; here each series is walked once (the windows' bounds move forward with the
//! evaluation times), and each window's value is computed with exactly the operations of
//! `_extrapolated_rate`, in the same order, so the same float: times as float64, counter resets
//! added one after the other, the same divisions.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};

fn column<T, const N: usize>(b: &[u8], what: &str, from: fn([u8; N]) -> T) -> PyResult<Vec<T>> {
    if b.len() % N != 0 {
        return Err(PyValueError::new_err(format!("{what}: {} bytes", b.len())));
    }
    Ok(b.chunks_exact(N)
        .map(|c| {
            let mut w = [0u8; N];
            w.copy_from_slice(c);
            from(w)
        })
        .collect())
}

/// The value of one window `[lo, hi)` (at least two points) of one series' points `t`, `v`
/// (`drops`: the positions p of the series with `v[p] < v[p - 1]`, ascending, from `d0` on), or
/// None where `_extrapolated_rate` answers nothing.
#[allow(clippy::too_many_arguments)]
fn window(
    t: &[i64],
    v: &[f64],
    drops: &[usize],
    lo: usize,
    hi: usize,
    at: i64,
    rng: i64,
    is_rate: bool,
    is_counter: bool,
) -> Option<f64> {
    let cnt = hi - lo;
    let last = hi - 1;
    let first_t = t[lo] as f64;
    let last_t = t[last] as f64;
    let first_v = v[lo];
    let mut result = v[last] - first_v;
    if is_counter {
        // the drops at lo + 1 .. hi - 1, in order
        let a = drops.partition_point(|&p| p < lo + 1);
        for &p in drops[a..].iter().take_while(|&&p| p < hi) {
            result += v[p - 1];
        }
    }
    let mut duration_to_start = first_t - (at.wrapping_sub(rng)) as f64;
    duration_to_start /= 1000.0;
    let mut duration_to_end = at as f64 - last_t;
    duration_to_end /= 1000.0;
    let mut sampled = last_t - first_t;
    sampled /= 1000.0;
    if !(sampled > 0.0) {
        return None;
    }
    let average_between = sampled / ((cnt - 1).max(1) as f64);
    let mut duration_to_zero = first_v / result;
    duration_to_zero *= sampled;
    if is_counter && result > 0.0 && first_v >= 0.0 && duration_to_zero < duration_to_start {
        duration_to_start = duration_to_zero;
    }
    let threshold = average_between * 1.1;
    let half = average_between / 2.0;
    let mut interval = if duration_to_start < threshold {
        duration_to_start
    } else {
        half
    };
    interval += sampled;
    interval += if duration_to_end < threshold {
        duration_to_end
    } else {
        half
    };
    interval /= sampled;
    result *= interval;
    if is_rate {
        result /= rng as f64 / 1000.0;
    }
    Some(result)
}

/// `rate_windows(ts, vs, at, rng, is_rate, is_counter) -> (values, present)`: series i's points are
/// `ts[i]` (int64) and `vs[i]` (float64), any objects with the buffer protocol (numpy arrays), each
/// in ascending t; its windows `(at[k] - rng, at[k]]` (`at`: native-endian int64 bytes). The answer
/// is float64 bytes and one byte per (series, step), row by row, present 1 where the window has a
/// value (0.0 where not). `rate`: is_rate and is_counter; `increase`: is_counter; `delta`: neither.
/// A series whose columns differ in length, or are not int64 / float64, is an error.
#[pyfunction]
pub fn rate_windows<'py>(
    py: Python<'py>,
    ts_list: &Bound<'py, PyList>,
    vs_list: &Bound<'py, PyList>,
    at: &[u8],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
) -> PyResult<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)> {
    let at = column::<i64, 8>(at, "at", i64::from_ne_bytes)?;
    if ts_list.len() != vs_list.len() {
        return Err(PyValueError::new_err("ts and vs differ in length"));
    }
    let m = ts_list.len();
    let n = at.len();
    let mut present = vec![0u8; m * n];
    let sorted = at.windows(2).all(|w| w[0] <= w[1]);
    let mut drops: Vec<usize> = Vec::new();
    let (mut ts_buf, mut vs_buf): (Vec<i64>, Vec<f64>) = (Vec::new(), Vec::new());
    // the values written straight into the answer (a column-sized Vec then copied was a second
    // allocation of m x n floats: fresh pages to fault in on every call)
    let out = PyByteArray::new_with(py, 8 * m * n, |values| {
        for i in 0..m {
            // the series' points into buffers used again for the next (no column-sized copy)
            let tb: PyBuffer<i64> = PyBuffer::get(&ts_list.get_item(i)?)?;
            let vb: PyBuffer<f64> = PyBuffer::get(&vs_list.get_item(i)?)?;
            if tb.item_count() != vb.item_count() {
                return Err(PyValueError::new_err(format!(
                    "series {i}: {} times, {} values",
                    tb.item_count(),
                    vb.item_count()
                )));
            }
            ts_buf.clear();
            ts_buf.resize(tb.item_count(), 0);
            tb.copy_to_slice(py, &mut ts_buf)?;
            vs_buf.clear();
            vs_buf.resize(vb.item_count(), 0.0);
            vb.copy_to_slice(py, &mut vs_buf)?;
            let (ts, vs) = (&ts_buf[..], &vs_buf[..]);
            drops.clear();
            if is_counter {
                drops.extend((1..vs.len()).filter(|&p| vs[p] < vs[p - 1]));
            }
            let (mut lo, mut hi) = (0usize, 0usize);
            for k in 0..n {
                let end = at[k];
                let start = end.wrapping_sub(rng);
                if sorted {
                    while hi < ts.len() && ts[hi] <= end {
                        hi += 1;
                    }
                    while lo < ts.len() && ts[lo] <= start {
                        lo += 1;
                    }
                } else {
                    hi = ts.partition_point(|&x| x <= end);
                    lo = ts.partition_point(|&x| x <= start);
                }
                if hi < lo + 2 {
                    continue;
                }
                if let Some(r) = window(ts, vs, &drops, lo, hi, end, rng, is_rate, is_counter) {
                    let at = 8 * (i * n + k);
                    values[at..at + 8].copy_from_slice(&r.to_ne_bytes());
                    present[i * n + k] = 1;
                }
            }
        }
        Ok(())
    })?;
    Ok((out, PyByteArray::new(py, &present)))
}
