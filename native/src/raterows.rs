//! `rate`, `increase` and `delta` straight from chunk rows (lossproof.store.embedded.read's
//! `_rate_rows`): each series' chunks decoded into a small buffer of this call's own and its
//! windows computed from there at once, series after series.
//!
//! The two-call way (`rowdecode::assemble_rows_into`, then `ratewin::rate_windows` over views of
//! its columns) wrote a piece's columns to memory, 16 bytes a point (256 series of a day at 15 s
//! are 23 MB, more than the CPU's cache), and read them back: the window walk waited on memory for
//! most of its time. Here a series' points (92 kB for a day) are read back from the cache they
//! were just decoded into. The same functions compute the same things: `rowdecode::decode_run`
//! (the same checks: times increasing in each chunk, each chunk its stored range) and
//! `ratewin::rows_windows` (staleness markers left out), so the same floats.
//!
//! Only the plain case is done here, which is what a compacted store's reads are: every row a
//! chunk `row_heads` reads, each series' chunks one after the other in time (the caller checked,
//! from their stored ranges). Anything else, and any chunk that does not decode as its row says,
//! answers a verdict that is not 0, and the caller reads the piece the two-call way (which raises
//! the ChunkError that says what is wrong).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};

use crate::rawchunks::ints;
use crate::ratewin::rows_windows;
use crate::rowdecode::{decode_run_with, fits_range, head, row_data, Chunk, Decoder};

/// Points from which a call decodes and computes on two threads (a thread costs ~20 us).
const PARALLEL_POINTS: usize = 200_000;

/// The verdicts: the answer is good; some chunk's times do not increase; some chunk's points are not
/// its stored range; some row is not a chunk `head` reads, or its frame did not decompress to its
/// body; the series' places are not their chunks one after the other.
const OK: u8 = 0;
const NOT_INCREASING: u8 = 1;
const NOT_RANGE: u8 = 2;
const DAMAGED: u8 = 4;
const NOT_PLAIN: u8 = 5;

/// One series of the answer: its chunks (`chunks[lo..hi]` of the chunks in place order) and its
/// points' places `first..last` (`first == last`: no points).
#[derive(Clone, Copy)]
struct Run {
    lo: usize,
    hi: usize,
    first: usize,
    last: usize,
}

/// What each window of the series `runs` computes from (the row of series `runs[j]` at `j`).
struct Windows<'a> {
    at: &'a [i64],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
    from_ms: i64,
    to_ms: i64,
}

/// A buffer of `u64`s as its bytes (what `decode_run` writes: little-endian words).
fn as_bytes(words: &mut [u64]) -> &mut [u8] {
    let len = 8 * words.len();
    // SAFETY: u8 has no alignment and every byte of a u64 is initialized; the same memory, borrowed
    // mutably once, for as long as `words` is
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) }
}

/// The series `runs`, one after the other: each decoded into `ts`/`vs` (reused: they stay in the
/// cache), its points in `[from_ms, to_ms]` counted into `counts` and their windows computed into
/// its rows of `values` (8 bytes a cell) and `present`. Stops at the first chunk that is not right:
/// its verdict.
fn runs_windows(
    chunks: &[Chunk],
    runs: &[Run],
    w: &Windows,
    values: &mut [u8],
    present: &mut [u8],
    counts: &mut [i64],
) -> u8 {
    let n = w.at.len();
    let (mut ts, mut vs): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut decoder = Decoder::new(); // (one for all the series: see Decoder)
    for (j, r) in runs.iter().enumerate() {
        if r.first == r.last {
            continue;
        }
        let len = r.last - r.first;
        // (grown, never cleared: the series' chunks write every one of its places, one after the
        // other from its first, as rate_rows checked)
        if ts.len() < len {
            ts.resize(len, 0);
            vs.resize(len, 0);
        }
        let (ts, vs) = (&mut ts[..len], &mut vs[..len]);
        let (increasing, ranges, damaged) =
            decode_run_with(&chunks[r.lo..r.hi], as_bytes(ts), as_bytes(vs), r.first, &mut decoder);
        if damaged {
            return DAMAGED;
        }
        if !increasing {
            return NOT_INCREASING;
        }
        if !ranges {
            return NOT_RANGE;
        }
        // (little-endian words as numbers: nothing to do on a little-endian CPU)
        for x in ts.iter_mut().chain(vs.iter_mut()) {
            *x = u64::from_le(*x);
        }
        // SAFETY: i64 and f64 have u64's size and alignment, and any bits are one of each
        let t: &[i64] = unsafe { std::slice::from_raw_parts(ts.as_ptr() as *const i64, len) };
        let v: &[f64] = unsafe { std::slice::from_raw_parts(vs.as_ptr() as *const f64, len) };
        // the points in [from_ms, to_ms] (chunks.search_runs: left of from_ms, right of to_ms)
        let a = t.partition_point(|&x| x < w.from_ms);
        let b = t.partition_point(|&x| x <= w.to_ms).max(a);
        counts[j] = (b - a) as i64;
        if b > a {
            rows_windows(
                &[(&t[a..b], &v[a..b])],
                w.at,
                w.rng,
                w.is_rate,
                w.is_counter,
                true,
                &mut values[8 * n * j..8 * n * (j + 1)],
                &mut present[n * j..n * (j + 1)],
            );
        }
    }
    OK
}

/// `rate_rows(rows, at, run_first, run_last, from_ms, to_ms, grid, rng, is_rate, is_counter) ->
/// (values, present, counts, verdict)`: for chunk rows `(series_id, id, t_min, t_max, data)` (what
/// `assemble_rows` takes) whose points go to the places `at[i]..` (native-endian int64 bytes, one a
/// row) of one column, and series whose points are the places `run_first[j]..run_last[j]` (equal:
/// none), each series' points in `[from_ms, to_ms]` and its `rate` / `increase` / `delta` windows
/// `(grid[k] - rng, grid[k]]` with its staleness markers left out: what `rate_windows(...,
/// skip_stale=True)` answers for the series `assemble_rows_into` and `chunks.search_runs` give. The
/// answer: float64 bytes and one byte per (series, step), row by row, as `rate_windows`'; each
/// series' number of points in the range (int64 bytes); the verdict (0: good; else nothing of the
/// answer is to be used, see the module's doc). A series' places must be its chunks' exactly, one
/// after the other, else verdict 5. Columns of other lengths are a ValueError.
///
/// Computed without the GIL (on two threads, each its own series, for many points): the chunks'
/// bytes are immutable and held by `rows`, the answer is this call's own.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn rate_rows<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
    at: &[u8],
    run_first: &[u8],
    run_last: &[u8],
    from_ms: i64,
    to_ms: i64,
    grid: &[u8],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
) -> PyResult<(
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    u8,
)> {
    let at = ints(at, "at")?;
    let grid = ints(grid, "grid")?;
    let (firsts, lasts) = (ints(run_first, "run_first")?, ints(run_last, "run_last")?);
    if at.len() != rows.len() || firsts.len() != lasts.len() {
        return Err(PyValueError::new_err(format!(
            "{} places for {} rows, {} firsts for {} lasts",
            at.len(),
            rows.len(),
            firsts.len(),
            lasts.len()
        )));
    }
    let (m, n) = (firsts.len(), grid.len());
    let nothing = |py: Python<'py>, verdict: u8| {
        (PyByteArray::new(py, &[]), PyByteArray::new(py, &[]), PyByteArray::new(py, &[]), verdict)
    };
    let mut held: Vec<(Bound<'py, PyBytes>, usize, i64, i64)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let Some((_, k, _, _, _)) = head(data.as_bytes()) else {
            return Ok(nothing(py, DAMAGED));
        };
        let t_min = row.get_item(2)?.extract::<i64>()?;
        let t_max = row.get_item(3)?.extract::<i64>()?;
        if at[i] < 0 || !fits_range(k, t_min, t_max) {
            return Ok(nothing(py, DAMAGED));
        }
        held.push((data, at[i] as usize, t_min, t_max));
    }
    let mut chunks: Vec<Chunk> = held
        .iter()
        .map(|(data, at, t_min, t_max)| Chunk {
            data: data.as_bytes(),
            at: *at,
            n: head(data.as_bytes()).map_or(0, |h| h.1),
            t_min: *t_min,
            t_max: *t_max,
        })
        .collect();
    chunks.sort_unstable_by_key(|c| c.at);
    // each series' chunks: those placed from its first place on, one after the other to its last
    let mut runs: Vec<Run> = Vec::with_capacity(m);
    let mut points = 0usize;
    for (&first, &last) in firsts.iter().zip(&lasts) {
        if first < 0 || last < first {
            return Ok(nothing(py, NOT_PLAIN));
        }
        let (first, last) = (first as usize, last as usize);
        let lo = chunks.partition_point(|c| c.at < first);
        let mut hi = lo;
        let mut place = first;
        while place < last && hi < chunks.len() && chunks[hi].at == place && chunks[hi].n > 0 {
            place += chunks[hi].n;
            hi += 1;
        }
        if place != last {
            return Ok(nothing(py, NOT_PLAIN));
        }
        points += last - first;
        runs.push(Run { lo, hi, first, last });
    }
    let w = Windows { at: &grid, rng, is_rate, is_counter, from_ms, to_ms };
    let mut present = vec![0u8; m * n];
    let mut counts = vec![0i64; m];
    let mut verdict = OK;
    let values = PyByteArray::new_with(py, 8 * m * n, |values| {
        verdict = py.detach(|| {
            if !crate::two_cpus() || m < 2 || points < PARALLEL_POINTS {
                return runs_windows(&chunks, &runs, &w, values, &mut present, &mut counts);
            }
            // the series cut where half the points are behind (at least one a side)
            let mut behind = 0usize;
            let cut = runs
                .iter()
                .position(|r| {
                    behind += r.last - r.first;
                    2 * behind >= points
                })
                .map_or(m / 2, |j| j + 1)
                .clamp(1, m - 1);
            let (v1, v2) = values.split_at_mut(8 * n * cut);
            let (p1, p2) = present.split_at_mut(n * cut);
            let (c1, c2) = counts.split_at_mut(cut);
            let (r1, r2) = runs.split_at(cut);
            let (chunks, w) = (&chunks[..], &w);
            let (b, a) = crate::join2(
                || runs_windows(chunks, r2, w, v2, p2, c2),
                || runs_windows(chunks, r1, w, v1, p1, c1),
            );
            a.max(b)
        });
        Ok(())
    })?;
    if verdict != OK {
        return Ok(nothing(py, verdict));
    }
    let counts_b: Vec<u8> = counts.iter().flat_map(|c| c.to_ne_bytes()).collect();
    Ok((values, PyByteArray::new(py, &present), PyByteArray::new(py, &counts_b), OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw chunk's data: kind 1, then the times and the values (little-endian).
    fn raw(t: &[i64], v: &[f64]) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(t.iter().flat_map(|x| x.to_le_bytes()));
        out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        out
    }

    /// Series cut into raw chunks: each series decoded and windowed here is what `rows_windows`
    /// answers for its points in the range (skipping staleness markers), on one thread and on two;
    /// a chunk whose stored range is not its points is verdict 2, one whose times go back 1.
    #[test]
    fn runs_are_rows_windows_of_their_points() {
        let mut seed = 0x853C49E6748FEA9Bu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for trial in 0..60 {
            let m = 1 + (next() % 6) as usize;
            let mut data: Vec<Vec<u8>> = Vec::new();
            let mut chunks_of: Vec<Vec<(usize, usize, i64, i64)>> = Vec::new(); // (data, n, tmin, tmax)
            let mut series: Vec<(Vec<i64>, Vec<f64>)> = Vec::new();
            for _ in 0..m {
                let len = (next() % 400) as usize;
                let (mut t, mut v) = (Vec::new(), Vec::new());
                let (mut x, mut y) = (1_000_000i64, 0.0f64);
                for _ in 0..len {
                    x += [15_000, 15_000, 7_000, 1][(next() % 4) as usize];
                    let r = next();
                    y = match r % 30 {
                        0 => f64::from_bits(0x7FF0000000000002),
                        1 => 1.0,
                        _ => (if y.is_nan() { 0.0 } else { y }) + (r >> 52) as f64,
                    };
                    t.push(x);
                    v.push(y);
                }
                let mut mine = Vec::new();
                let mut p = 0;
                while p < len {
                    let k = (1 + next() % 90) as usize;
                    let q = (p + k).min(len);
                    data.push(raw(&t[p..q], &v[p..q]));
                    mine.push((data.len() - 1, q - p, t[p], t[q - 1]));
                    p = q;
                }
                chunks_of.push(mine);
                series.push((t, v));
            }
            let mut chunks = Vec::new();
            let mut runs = Vec::new();
            let mut place = 0usize;
            for mine in &chunks_of {
                let (lo, first) = (chunks.len(), place);
                for &(d, k, t_min, t_max) in mine {
                    chunks.push(Chunk { data: &data[d], at: place, n: k, t_min, t_max });
                    place += k;
                }
                runs.push(Run { lo, hi: chunks.len(), first, last: place });
            }
            let grid: Vec<i64> = (0..40).map(|k| 1_000_000 + k * 60_000).collect();
            let (from_ms, to_ms) = (1_000_000 + (next() % 300_000) as i64, 1_000_000 + (next() % 3_000_000) as i64);
            let w = Windows { at: &grid, rng: 300_000, is_rate: trial % 2 == 0, is_counter: trial % 3 != 0, from_ms, to_ms };
            let n = grid.len();
            let mut values = vec![0u8; 8 * m * n];
            let mut present = vec![0u8; m * n];
            let mut counts = vec![0i64; m];
            assert_eq!(runs_windows(&chunks, &runs, &w, &mut values, &mut present, &mut counts), OK);
            for (j, (t, v)) in series.iter().enumerate() {
                let a = t.partition_point(|&x| x < from_ms);
                let b = t.partition_point(|&x| x <= to_ms).max(a);
                assert_eq!(counts[j], (b - a) as i64);
                let mut want_v = vec![0u8; 8 * n];
                let mut want_p = vec![0u8; n];
                rows_windows(&[(&t[a..b], &v[a..b])], &grid, w.rng, w.is_rate, w.is_counter, true, &mut want_v, &mut want_p);
                assert_eq!(&values[8 * n * j..8 * n * (j + 1)], &want_v[..], "trial {trial} series {j}");
                assert_eq!(&present[n * j..n * (j + 1)], &want_p[..], "trial {trial} series {j}");
            }
            // a stored range that is not the chunk's points, then times that go back
            if let Some(c) = chunks.iter_mut().find(|c| c.n > 1) {
                c.t_max += 1;
                assert_eq!(runs_windows(&chunks, &runs, &w, &mut values, &mut present, &mut counts), NOT_RANGE);
            }
        }
        let back = raw(&[5, 4], &[1.0, 2.0]);
        let chunks = [Chunk { data: &back, at: 0, n: 2, t_min: 5, t_max: 4 }];
        let runs = [Run { lo: 0, hi: 1, first: 0, last: 2 }];
        let grid = [10i64];
        let w = Windows { at: &grid, rng: 10, is_rate: true, is_counter: true, from_ms: 0, to_ms: 10 };
        let (mut v, mut p, mut c) = (vec![0u8; 8], vec![0u8; 1], vec![0i64; 1]);
        assert_eq!(runs_windows(&chunks, &runs, &w, &mut v, &mut p, &mut c), NOT_INCREASING);
    }
}
