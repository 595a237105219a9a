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

/// A series' column in place, as a slice: `b` must be C-contiguous (PyBuffer checked its item
/// type). Sound while the buffer is held and nobody writes to it: see `rate_windows`.
fn in_place<'a, T: pyo3::buffer::Element>(b: &'a PyBuffer<T>, what: &str, i: usize) -> PyResult<&'a [T]> {
    if !b.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("series {i}: {what} not contiguous")));
    }
    let n = b.item_count();
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: a C-contiguous buffer of n items of T (PyBuffer::get checked the format and the
    // item size), alive as long as `b`
    Ok(unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const T, n) })
}

/// Windows from which a call computes on two threads (a thread costs ~20 us to start).
const PARALLEL_WINDOWS: usize = 100_000;

/// Rows `rows` of the answer (`values`, `present`: theirs only): each series walked once, its
/// windows' bounds moving forward with the evaluation times (sorted) or searched (not).
#[allow(clippy::too_many_arguments)]
fn rows_windows(
    series: &[(&[i64], &[f64])],
    at: &[i64],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
    values: &mut [u8],
    present: &mut [u8],
) {
    let n = at.len();
    let sorted = at.windows(2).all(|w| w[0] <= w[1]);
    let mut drops: Vec<usize> = Vec::new();
    for (i, &(ts, vs)) in series.iter().enumerate() {
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
}

/// `rate_windows(ts, vs, at, rng, is_rate, is_counter) -> (values, present)`: series i's points are
/// `ts[i]` (int64) and `vs[i]` (float64), C-contiguous objects with the buffer protocol (numpy
/// arrays), each in ascending t; its windows `(at[k] - rng, at[k]]` (`at`: native-endian int64
/// bytes). The answer is float64 bytes and one byte per (series, step), row by row, present 1 where
/// the window has a value (0.0 where not). `rate`: is_rate and is_counter; `increase`: is_counter;
/// `delta`: neither. A series whose columns differ in length, are not int64 / float64 or not
/// contiguous, is an error.
///
/// The columns are read in place, without the GIL (on two threads, each its own rows, for many
/// windows): sound because the caller's arrays are its own, which nothing else writes to
/// meanwhile (lossproof.query.promwindows.rate_windows: the columns of a store read, or of arrays
/// the evaluator made). Each window is computed as before, so the same float.
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
    let mut buffers: Vec<(PyBuffer<i64>, PyBuffer<f64>)> = Vec::with_capacity(m);
    for i in 0..m {
        let tb: PyBuffer<i64> = PyBuffer::get(&ts_list.get_item(i)?)?;
        let vb: PyBuffer<f64> = PyBuffer::get(&vs_list.get_item(i)?)?;
        if tb.item_count() != vb.item_count() {
            return Err(PyValueError::new_err(format!(
                "series {i}: {} times, {} values",
                tb.item_count(),
                vb.item_count()
            )));
        }
        buffers.push((tb, vb));
    }
    let mut series: Vec<(&[i64], &[f64])> = Vec::with_capacity(m);
    for (i, (tb, vb)) in buffers.iter().enumerate() {
        series.push((in_place(tb, "times", i)?, in_place(vb, "values", i)?));
    }
    let mut present = vec![0u8; m * n];
    let two = std::thread::available_parallelism().map_or(1, |c| c.get()) >= 2;
    // the values written straight into the answer (a column-sized Vec then copied was a second
    // allocation of m x n floats: fresh pages to fault in on every call)
    let out = PyByteArray::new_with(py, 8 * m * n, |values| {
        py.detach(|| {
            if !two || m < 2 || m * n < PARALLEL_WINDOWS {
                rows_windows(&series, &at, rng, is_rate, is_counter, values, &mut present);
                return;
            }
            let half = m / 2;
            let (v1, v2) = values.split_at_mut(8 * half * n);
            let (p1, p2) = present.split_at_mut(half * n);
            let (s1, s2) = series.split_at(half);
            let at = &at[..];
            std::thread::scope(|s| {
                s.spawn(|| rows_windows(s2, at, rng, is_rate, is_counter, v2, p2));
                rows_windows(s1, at, rng, is_rate, is_counter, v1, p1);
            });
        });
        Ok(())
    })?;
    drop(series);
    drop(buffers);
    Ok((out, PyByteArray::new(py, &present)))
}
