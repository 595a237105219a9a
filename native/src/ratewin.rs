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
/// None where `_extrapolated_rate` answers nothing; `prom2`: Prometheus 2's extrapolation, else
/// Prometheus 3's (see `finish_body`). (The reference `finish` is tested against: `rows_windows`
/// computes windows a block at a time.)
#[cfg(test)]
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
    prom2: bool,
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
    let duration_to_zero = sampled * (first_v / result);
    let zero_first = is_counter && result > 0.0 && first_v >= 0.0;
    let threshold = average_between * 1.1;
    let half = average_between / 2.0;
    if prom2 {
        if zero_first && duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
        let to_start = if duration_to_start < threshold { duration_to_start } else { half };
        let to_end = if duration_to_end < threshold { duration_to_end } else { half };
        let mut factor = (sampled + to_start + to_end) / sampled;
        if is_rate {
            factor /= rng as f64 / 1000.0;
        }
        return Some(result * factor);
    }
    if duration_to_start >= threshold {
        duration_to_start = half;
    }
    if zero_first && duration_to_zero < duration_to_start {
        duration_to_start = duration_to_zero;
    }
    if duration_to_end >= threshold {
        duration_to_end = half;
    }
    let mut factor = (sampled + duration_to_start + duration_to_end) / sampled;
    if is_rate {
        factor /= rng as f64 / 1000.0;
    }
    Some(result * factor)
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

/// Prometheus' staleness marker (lossproof.query.promql.STALE_NAN_BITS): not a value.
const STALE_NAN_BITS: u64 = 0x7FF0000000000002;

/// Windows computed at a time by `finish`.
const BLOCK: usize = 64;

/// A block of windows with at least two points each, as `window` has them before its float
/// arithmetic: first and last point's times (as float64) and the first value, `result` (the last
/// value minus the first, plus the value before each drop, in order), points - 1 (as float64), and
/// the window's end and start (as float64).
struct Block {
    first_t: [f64; BLOCK],
    last_t: [f64; BLOCK],
    first_v: [f64; BLOCK],
    result: [f64; BLOCK],
    between: [f64; BLOCK],
    end: [f64; BLOCK],
    start: [f64; BLOCK],
    ok: [bool; BLOCK],
}

impl Block {
    fn new() -> Self {
        Block {
            first_t: [0.0; BLOCK],
            last_t: [0.0; BLOCK],
            first_v: [0.0; BLOCK],
            result: [0.0; BLOCK],
            between: [1.0; BLOCK],
            end: [0.0; BLOCK],
            start: [0.0; BLOCK],
            ok: [false; BLOCK],
        }
    }
}

/// The rest of `window` for the first `len` windows of `b`, each with exactly its operations in
/// its order (no operation of one window depends on another's: the compiler computes several at
/// once in vector registers, where a division is as exact as alone). `b.result` becomes the
/// window's value, `b.ok` whether it has one (what `window` answers None for: not ok).
#[inline(always)]
fn finish_body(b: &mut Block, len: usize, per_s: f64, is_rate: bool, is_counter: bool, prom2: bool) {
    for j in 0..len.min(BLOCK) {
        let first_t = b.first_t[j];
        let last_t = b.last_t[j];
        let first_v = b.first_v[j];
        let mut result = b.result[j];
        let mut duration_to_start = first_t - b.start[j];
        duration_to_start /= 1000.0;
        let mut duration_to_end = b.end[j] - last_t;
        duration_to_end /= 1000.0;
        let mut sampled = last_t - first_t;
        sampled /= 1000.0;
        b.ok[j] = sampled > 0.0;
        let average_between = sampled / b.between[j];
        let mut duration_to_zero = first_v / result;
        duration_to_zero *= sampled;
        let zero_first = is_counter && result > 0.0 && first_v >= 0.0;
        let threshold = average_between * 1.1;
        let half = average_between / 2.0;
        if prom2 {
            // Prometheus 2: the start moved to the counter's zero point first, then the threshold
            if zero_first && duration_to_zero < duration_to_start {
                duration_to_start = duration_to_zero;
            }
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
            // Prometheus 2.40+: one factor (it also scales native histograms), the range
            // divided into it before it multiplies the result
            interval /= sampled;
            if is_rate {
                interval /= per_s;
            }
            result *= interval;
        } else {
            // Prometheus 3 (since its PR 13725): the threshold first, then the zero point, which
            // only ever shortens the extrapolation; the factor divided by the range before it
            // multiplies the result
            if duration_to_start >= threshold {
                duration_to_start = half;
            }
            if zero_first && duration_to_zero < duration_to_start {
                duration_to_start = duration_to_zero;
            }
            if duration_to_end >= threshold {
                duration_to_end = half;
            }
            let mut factor = sampled + duration_to_start;
            factor += duration_to_end;
            factor /= sampled;
            if is_rate {
                factor /= per_s;
            }
            result *= factor;
        }
        b.result[j] = result;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn finish_avx2(b: &mut Block, len: usize, per_s: f64, is_rate: bool, is_counter: bool, prom2: bool) {
    finish_body(b, len, per_s, is_rate, is_counter, prom2)
}

/// `finish_body`, with AVX2's 4-wide registers where the CPU has them (IEEE arithmetic either way:
/// Rust never fuses a multiply and an add, nor reorders float operations).
#[allow(clippy::too_many_arguments)]
fn finish(b: &mut Block, len: usize, per_s: f64, is_rate: bool, is_counter: bool, prom2: bool, avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2 (the caller asked is_x86_feature_detected)
        unsafe { finish_avx2(b, len, per_s, is_rate, is_counter, prom2) };
        return;
    }
    let _ = avx2;
    finish_body(b, len, per_s, is_rate, is_counter, prom2)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Points `advance` counts at once: a step of a few points at a time is one count, not a loop.
const AHEAD: usize = 8;

/// The first position from `i` on whose time is past `bound` (`ts` ascending): what stepping one
/// point at a time while `ts[i] <= bound` reaches. A whole block of `AHEAD` points is skipped while
/// its last one is not past the bound, then the points not past it among the next `AHEAD` are
/// counted (the times ascend: they are the ones before the answer). The one-point loop's exit was
/// a mispredicted branch at every window's both ends (~4 points a step at a 15 s scrape and a 60 s
/// step); a fixed-length count has no branch to mispredict.
#[inline(always)]
fn advance(ts: &[i64], mut i: usize, bound: i64) -> usize {
    while i + AHEAD <= ts.len() && ts[i + AHEAD - 1] <= bound {
        i += AHEAD;
    }
    if i + AHEAD <= ts.len() {
        let block: &[i64; AHEAD] = ts[i..i + AHEAD].try_into().expect("AHEAD points");
        i + block.iter().map(|&x| (x <= bound) as usize).sum::<usize>()
    } else {
        i + ts[i..].iter().map(|&x| (x <= bound) as usize).sum::<usize>()
    }
}

/// Whether `vs` holds a staleness marker: every value looked at (no early exit, which kept the
/// compiler from comparing several at once), a block at a time.
fn has_stale(vs: &[f64]) -> bool {
    let mut blocks = vs.chunks_exact(AHEAD);
    let mut any = false;
    for b in blocks.by_ref() {
        any |= b.iter().fold(false, |a, x| a | (x.to_bits() == STALE_NAN_BITS));
    }
    any | blocks.remainder().iter().any(|x| x.to_bits() == STALE_NAN_BITS)
}

/// The positions p of `vs` with `vs[p] < vs[p - 1]` (a counter's resets), ascending, into `drops`:
/// a block of `AHEAD` compared at once and looked into only when one of them is a drop (rare: a
/// counter mostly goes up).
fn find_drops(vs: &[f64], drops: &mut Vec<usize>) {
    let n = vs.len();
    let mut p = 1;
    while p + AHEAD <= n {
        let (cur, prev) = (&vs[p..p + AHEAD], &vs[p - 1..p - 1 + AHEAD]);
        let any = cur.iter().zip(prev).fold(false, |a, (c, q)| a | (c < q));
        if any {
            drops.extend((p..p + AHEAD).filter(|&q| vs[q] < vs[q - 1]));
        }
        p += AHEAD;
    }
    drops.extend((p.max(1)..n).filter(|&q| vs[q] < vs[q - 1]));
}

/// Rows `rows` of the answer (`values`, `present`: theirs only): each series walked once, its
/// windows' bounds moving forward with the evaluation times (sorted) or searched (not); the
/// windows of two points or more gathered a block at a time and computed by `finish`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_windows(
    series: &[(&[i64], &[f64])],
    at: &[i64],
    rng: i64,
    closed: bool,
    is_rate: bool,
    is_counter: bool,
    skip_stale: bool,
    values: &mut [u8],
    present: &mut [u8],
) {
    let n = at.len();
    let sorted = at.windows(2).all(|w| w[0] <= w[1]);
    let avx2 = has_avx2();
    #[cfg(test)]
    let avx2 = avx2 && !FORCE_PLAIN.with(|f| f.get());
    // (`window` divides by this for every window: the same float each time)
    let per_s = rng as f64 / 1000.0;
    let mut drops: Vec<usize> = Vec::new();
    let mut b = Box::new(Block::new());
    let mut ks = [0usize; BLOCK];
    let (mut kept_t, mut kept_v): (Vec<i64>, Vec<f64>) = (Vec::new(), Vec::new());
    // Where a window starts at an earlier step's end (a range a whole number of steps, as Grafana
    // and most rules ask), the points up to its start are that step's points up to its end,
    // already counted: `his[k]` is step k's `hi`, and `lag` how many steps back a window starts.
    let lag = if sorted && n > 1 && at[1] > at[0] && rng % (at[1] - at[0]) == 0 {
        (rng / (at[1] - at[0])) as usize
    } else {
        0
    };
    let mut his: Vec<usize> = vec![0; if lag > 0 { n } else { 0 }];
    for (i, &(ts, vs)) in series.iter().enumerate() {
        let (ts, vs) = if skip_stale && has_stale(vs) {
            // the series without its staleness markers (promql.without_stale)
            kept_t.clear();
            kept_v.clear();
            for (&t, &v) in ts.iter().zip(vs) {
                if v.to_bits() != STALE_NAN_BITS {
                    kept_t.push(t);
                    kept_v.push(v);
                }
            }
            (&kept_t[..], &kept_v[..])
        } else {
            (ts, vs)
        };
        drops.clear();
        if is_counter {
            find_drops(vs, &mut drops);
        }
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut len = 0usize;
        let row = i * n;
        let mut flush = |b: &mut Block, len: usize, ks: &[usize; BLOCK]| {
            finish(b, len, per_s, is_rate, is_counter, closed, avx2);
            for j in 0..len {
                if b.ok[j] {
                    let cell = row + ks[j];
                    values[8 * cell..8 * cell + 8].copy_from_slice(&b.result[j].to_ne_bytes());
                    present[cell] = 1;
                }
            }
        };
        for k in 0..n {
            let end = at[k];
            let start = end.wrapping_sub(rng);
            // the points before the window: up to its start (left-open), or before it (closed:
            // times are whole ms, so `x < start` is `x <= start - 1`); its start is the same float
            // either way, where the extrapolation reaches
            let before = if closed { start.saturating_sub(1) } else { start };
            if sorted {
                hi = advance(ts, hi, end);
                if lag > 0 {
                    his[k] = hi;
                }
                lo = if lag > 0 && k >= lag && at[k - lag] == start {
                    // the points up to `start` (closed: before it, so not those on it)
                    let mut up_to = his[k - lag];
                    while closed && up_to > 0 && ts[up_to - 1] == start {
                        up_to -= 1;
                    }
                    up_to
                } else {
                    advance(ts, lo, before)
                };
            } else {
                hi = ts.partition_point(|&x| x <= end);
                lo = ts.partition_point(|&x| x <= before);
            }
            if hi < lo + 2 {
                continue;
            }
            let last = hi - 1;
            let first_v = vs[lo];
            let mut result = vs[last] - first_v;
            if is_counter {
                // the drops at lo + 1 .. hi - 1, in order
                let a = drops.partition_point(|&p| p < lo + 1);
                for &p in drops[a..].iter().take_while(|&&p| p < hi) {
                    result += vs[p - 1];
                }
            }
            b.first_t[len] = ts[lo] as f64;
            b.last_t[len] = ts[last] as f64;
            b.first_v[len] = first_v;
            b.result[len] = result;
            b.between[len] = (hi - lo - 1) as f64;
            b.end[len] = end as f64;
            b.start[len] = start as f64;
            ks[len] = k;
            len += 1;
            if len == BLOCK {
                flush(&mut b, len, &ks);
                len = 0;
            }
        }
        if len > 0 {
            flush(&mut b, len, &ks);
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
///
/// `skip_stale`: each series' staleness markers (the NaN of bits 0x7FF0000000000002) left out
/// first, as `promql.without_stale` does (a series of nothing else then has no window).
/// `closed`: the windows are `[at[k] - rng, at[k]]` (Prometheus 2), the extrapolation the same.
#[pyfunction]
#[pyo3(signature = (ts_list, vs_list, at, rng, is_rate, is_counter, skip_stale=false, closed=false))]
#[allow(clippy::too_many_arguments)]
pub fn rate_windows<'py>(
    py: Python<'py>,
    ts_list: &Bound<'py, PyList>,
    vs_list: &Bound<'py, PyList>,
    at: &[u8],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
    skip_stale: bool,
    closed: bool,
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
    let two = crate::two_cpus();
    // the values written straight into the answer (a column-sized Vec then copied was a second
    // allocation of m x n floats: fresh pages to fault in on every call)
    let out = PyByteArray::new_with(py, 8 * m * n, |values| {
        py.detach(|| {
            if !two || m < 2 || m * n < PARALLEL_WINDOWS {
                let (series, present) = (&series[..], &mut present[..]);
                rows_windows(series, &at, rng, closed, is_rate, is_counter, skip_stale, values, present);
                return;
            }
            let half = m / 2;
            let (v1, v2) = values.split_at_mut(8 * half * n);
            let (p1, p2) = present.split_at_mut(half * n);
            let (s1, s2) = series.split_at(half);
            let at = &at[..];
            crate::join2(
                || rows_windows(s2, at, rng, closed, is_rate, is_counter, skip_stale, v2, p2),
                || rows_windows(s1, at, rng, closed, is_rate, is_counter, skip_stale, v1, p1),
            );
        });
        Ok(())
    })?;
    drop(series);
    drop(buffers);
    Ok((out, PyByteArray::new(py, &present)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Blocks of windows (with and without AVX2) answer what `window` answers, bit for bit, on
    /// series of specials, resets and staleness-marker NaNs.
    #[test]
    fn blocks_are_the_window_by_window_reference() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            f64::NAN,
            f64::from_bits(0x7FF0000000000002),
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e308,
            -1e308,
            5e-324,
            2.5,
        ];
        let mut seed = 0x2545F4914F6CDD1Du64;
        for trial in 0..400 {
            let len = (xorshift(&mut seed) % 300) as usize;
            let mut t = Vec::with_capacity(len);
            let mut v = Vec::with_capacity(len);
            let (mut x, mut y) = (1_767_225_600_000i64, 0.0f64);
            for _ in 0..len {
                x += [1, 500, 15_000, 15_000, 60_000, 400_000][(xorshift(&mut seed) % 6) as usize];
                let r = xorshift(&mut seed);
                y = match r % 10 {
                    0 => specials[(r >> 8) as usize % specials.len()],
                    1 => y / 3.0, // a reset
                    _ => y + (r >> 40) as f64 / 7.0,
                };
                t.push(x);
                v.push(y);
            }
            let n = 1 + (xorshift(&mut seed) % 200) as usize;
            let mut at: Vec<i64> = (0..n)
                .map(|_| 1_767_225_600_000 - 400_000 + (xorshift(&mut seed) % 9_000_000) as i64)
                .collect();
            if trial % 3 != 0 {
                at.sort_unstable();
            }
            let rng = [1i64, 1000, 15_000, 300_000, 3_600_000][trial % 5];
            let closed = trial % 4 == 1;
            for (is_rate, is_counter) in [(true, true), (false, true), (false, false)] {
                let drops: Vec<usize> = (1..len).filter(|&p| is_counter && v[p] < v[p - 1]).collect();
                let series = [(&t[..], &v[..])];
                for avx2 in [false, has_avx2()] {
                    let mut values = vec![0u8; 8 * n];
                    let mut present = vec![0u8; n];
                    if avx2 {
                        let (v, p) = (&mut values[..], &mut present[..]);
                        rows_windows(&series, &at, rng, closed, is_rate, is_counter, false, v, p);
                    } else {
                        let (v, p) = (&mut values[..], &mut present[..]);
                        rows_windows_plain(&series, &at, rng, closed, is_rate, is_counter, v, p);
                    }
                    for k in 0..n {
                        let hi = t.partition_point(|&x| x <= at[k]);
                        let start = at[k].wrapping_sub(rng);
                        let lo = t.partition_point(|&x| if closed { x < start } else { x <= start });
                        let want = if hi < lo + 2 {
                            None
                        } else {
                            window(&t, &v, &drops, lo, hi, at[k], rng, is_rate, is_counter, closed)
                        };
                        let got = f64::from_ne_bytes(values[8 * k..8 * k + 8].try_into().unwrap());
                        assert_eq!(present[k] == 1, want.is_some(), "trial {trial} k {k}");
                        if let Some(w) = want {
                            assert!(got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()), "trial {trial} k {k}");
                        }
                    }
                }
            }
        }
    }

    /// `advance`, `has_stale` and `find_drops` answer what their one-point-at-a-time definitions
    /// do, on every length around their blocks and on repeated times.
    #[test]
    fn block_helpers_are_their_one_point_definitions() {
        let mut seed = 0x9E3779B97F4A7C15u64;
        for trial in 0..3000 {
            let len = (xorshift(&mut seed) % 40) as usize;
            let mut ts = Vec::with_capacity(len);
            let mut x = (xorshift(&mut seed) % 100) as i64 - 50;
            for _ in 0..len {
                x += (xorshift(&mut seed) % 4) as i64; // 0: a repeated time (not increasing)
                ts.push(x);
            }
            for _ in 0..8 {
                let from = (xorshift(&mut seed) % (len as u64 + 1)) as usize;
                let bound = (xorshift(&mut seed) % 200) as i64 - 100;
                let mut want = from;
                while want < ts.len() && ts[want] <= bound {
                    want += 1;
                }
                assert_eq!(advance(&ts, from, bound), want, "trial {trial}");
            }
            let vs: Vec<f64> = (0..len)
                .map(|_| match xorshift(&mut seed) % 9 {
                    0 => f64::NAN,
                    1 => f64::from_bits(STALE_NAN_BITS),
                    r => (r as f64) * 0.5 - 1.0,
                })
                .map(|v| if trial % 2 == 0 && v.to_bits() == STALE_NAN_BITS { 1.0 } else { v })
                .collect();
            assert_eq!(has_stale(&vs), vs.iter().any(|x| x.to_bits() == STALE_NAN_BITS));
            let mut got = vec![7usize]; // appended to, as rows_windows' cleared vector is
            find_drops(&vs, &mut got);
            let want: Vec<usize> = std::iter::once(7).chain((1..len).filter(|&p| vs[p] < vs[p - 1])).collect();
            assert_eq!(got, want, "trial {trial}");
        }
    }

    /// On a regular grid (sorted evaluation times, the usual range query) with staleness markers
    /// left out, every window is the reference's over the series without its markers.
    #[test]
    fn sorted_grid_without_markers_is_the_reference() {
        let mut seed = 0xD1B54A32D192ED03u64;
        for trial in 0..200 {
            let len = (xorshift(&mut seed) % 500) as usize;
            let (mut t, mut v) = (Vec::with_capacity(len), Vec::with_capacity(len));
            let (mut x, mut y) = (1_767_225_600_000i64, 0.0f64);
            for _ in 0..len {
                x += [15_000, 15_000, 15_000, 14_999, 30_000, 1][(xorshift(&mut seed) % 6) as usize];
                let r = xorshift(&mut seed);
                y = match r % 25 {
                    0 => f64::from_bits(STALE_NAN_BITS),
                    1 => 0.0, // a reset
                    _ => (if y.is_nan() { 0.0 } else { y }) + (r >> 50) as f64,
                };
                t.push(x);
                v.push(y);
            }
            let step = [15_000i64, 60_000, 7_000][trial % 3];
            let n = 1 + (xorshift(&mut seed) % 300) as usize;
            let at: Vec<i64> = (0..n as i64).map(|k| 1_767_225_600_000 + k * step).collect();
            let rng = [60_000i64, 300_000, 15_000][trial % 3];
            let (kt, kv): (Vec<i64>, Vec<f64>) = t
                .iter()
                .zip(&v)
                .filter(|(_, y)| y.to_bits() != STALE_NAN_BITS)
                .map(|(&a, &b)| (a, b))
                .unzip();
            for (is_rate, is_counter) in [(true, true), (false, true), (false, false)] {
                let drops: Vec<usize> = (1..kv.len()).filter(|&p| is_counter && kv[p] < kv[p - 1]).collect();
                let mut values = vec![0u8; 8 * n];
                let mut present = vec![0u8; n];
                let (vals, pres) = (&mut values[..], &mut present[..]);
                rows_windows(&[(&t[..], &v[..])], &at, rng, false, is_rate, is_counter, true, vals, pres);
                for k in 0..n {
                    let hi = kt.partition_point(|&x| x <= at[k]);
                    let lo = kt.partition_point(|&x| x <= at[k] - rng);
                    let want = if hi < lo + 2 {
                        None
                    } else {
                        window(&kt, &kv, &drops, lo, hi, at[k], rng, is_rate, is_counter, false)
                    };
                    let got = f64::from_ne_bytes(values[8 * k..8 * k + 8].try_into().unwrap());
                    assert_eq!(present[k] == 1, want.is_some(), "trial {trial} k {k}");
                    if let Some(w) = want {
                        assert!(got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()), "trial {trial} k {k}");
                    }
                }
            }
        }
    }

    /// `rows_windows` without AVX2 (the same code, SSE2 only).
    #[allow(clippy::too_many_arguments)]
    fn rows_windows_plain(
        series: &[(&[i64], &[f64])],
        at: &[i64],
        rng: i64,
        closed: bool,
        is_rate: bool,
        is_counter: bool,
        values: &mut [u8],
        present: &mut [u8],
    ) {
        FORCE_PLAIN.with(|f| f.set(true));
        rows_windows(series, at, rng, closed, is_rate, is_counter, false, values, present);
        FORCE_PLAIN.with(|f| f.set(false));
    }
}

#[cfg(test)]
thread_local! {
    static FORCE_PLAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
