//! `rate`, `increase` and `delta` straight from chunk rows (lossproof.store.embedded.read's
//! `_rate_rows`): each series' chunks decoded into a small buffer of the job's own and its
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
//! A call is a job (`rate_rows_start`): a thread of its own takes series from the start, and the
//! job's `finish` takes those left on the caller's thread, so that the caller can read the next
//! piece's rows meanwhile (a third of the work, and Python's: one thread's alone).
//!
//! Only the plain case is done here, which is what a compacted store's reads are: every row a
//! chunk `row_heads` reads, each series' chunks one after the other in time (the caller checked,
//! from their stored ranges). Anything else, and any chunk that does not decode as its row says,
//! answers a verdict that is not 0, and the caller reads the piece the two-call way (which raises
//! the ChunkError that says what is wrong).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::ratewin::rows_windows;
use crate::rawchunks::ints;
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
    closed: bool,
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

/// What a thread decodes a series with, kept for all the series it takes: the series' columns
/// (grown to the longest) and a decoder (a zstd context is ~100 kB to set up: see Decoder).
struct Scratch {
    ts: Vec<u64>,
    vs: Vec<u64>,
    decoder: Decoder,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            ts: Vec::new(),
            vs: Vec::new(),
            decoder: Decoder::new(),
        }
    }
}

/// The series `runs`, one after the other: each decoded into `ts`/`vs` (reused: they stay in the
/// cache), its points in `[from_ms, to_ms]` counted into `counts` and their windows computed into
/// its rows of `values` (8 bytes a cell) and `present`. Stops at the first chunk that is not right:
/// its verdict.
#[allow(clippy::too_many_arguments)]
fn runs_windows(
    chunks: &[Chunk],
    runs: &[Run],
    w: &Windows,
    values: &mut [u8],
    present: &mut [u8],
    counts: &mut [i64],
    scratch: &mut Scratch,
) -> u8 {
    let n = w.at.len();
    let Scratch { ts, vs, decoder } = scratch;
    for (j, r) in runs.iter().enumerate() {
        if r.first == r.last {
            continue;
        }
        let len = r.last - r.first;
        // (grown, never cleared: the series' chunks write every one of its places, one after the
        // other from its first, as prepare checked)
        if ts.len() < len {
            ts.resize(len, 0);
            vs.resize(len, 0);
        }
        let (ts, vs) = (&mut ts[..len], &mut vs[..len]);
        let (increasing, ranges, damaged) =
            decode_run_with(&chunks[r.lo..r.hi], as_bytes(ts), as_bytes(vs), r.first, decoder);
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
                w.closed,
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

/// The chunks of `rows` in place order and the series' runs of them, with the number of points
/// of all runs; or the verdict that says the rows are not the plain case (see `rate_rows_start`).
/// `held`: each row's data, which the chunks borrow.
type Prepared<'a> = Result<(Vec<Chunk<'a>>, Vec<Run>, usize), u8>;

fn prepare<'a>(
    held: &'a [(Bound<'_, PyBytes>, usize, i64, i64)],
    firsts: &[i64],
    lasts: &[i64],
) -> Prepared<'a> {
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
    let mut runs: Vec<Run> = Vec::with_capacity(firsts.len());
    let mut points = 0usize;
    for (&first, &last) in firsts.iter().zip(lasts) {
        if first < 0 || last < first {
            return Err(NOT_PLAIN);
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
            return Err(NOT_PLAIN);
        }
        points += last - first;
        runs.push(Run { lo, hi, first, last });
    }
    Ok((chunks, runs, points))
}

/// Each row's data (kept: the chunks borrow it), its place and stored range; or DAMAGED where a
/// row is not a chunk `head` reads or its range cannot hold its points.
#[allow(clippy::type_complexity)]
fn rows_held<'py>(
    rows: &Bound<'py, PyList>,
    at: &[i64],
) -> PyResult<Result<Vec<(Bound<'py, PyBytes>, usize, i64, i64)>, u8>> {
    let mut held = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let Some((_, k, _, _, _)) = head(data.as_bytes()) else {
            return Ok(Err(DAMAGED));
        };
        let t_min = row.get_item(2)?.extract::<i64>()?;
        let t_max = row.get_item(3)?.extract::<i64>()?;
        if at[i] < 0 || !fits_range(k, t_min, t_max) {
            return Ok(Err(DAMAGED));
        }
        held.push((data, at[i] as usize, t_min, t_max));
    }
    Ok(Ok(held))
}

/// The columns of `rate_rows_start`'s arguments, checked for their lengths: (at, grid, firsts,
/// lasts).
type Columns = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

fn columns(rows: usize, at: &[u8], run_first: &[u8], run_last: &[u8], grid: &[u8]) -> PyResult<Columns> {
    let at = ints(at, "at")?;
    let grid = ints(grid, "grid")?;
    let (firsts, lasts) = (ints(run_first, "run_first")?, ints(run_last, "run_last")?);
    if at.len() != rows || firsts.len() != lasts.len() {
        return Err(PyValueError::new_err(format!(
            "{} places for {rows} rows, {} firsts for {} lasts",
            at.len(),
            firsts.len(),
            lasts.len()
        )));
    }
    Ok((at, grid, firsts, lasts))
}

/// Series a thread of a `RateJob` takes at a time (a few: the two threads end close together).
const JOB_BATCH: usize = 4;

/// What a `RateJob`'s threads share: the chunks (their bytes held by the job), the series' runs,
/// the windows' arguments, the next series to take, and the answer's memory, each series' rows
/// written by the one thread that took it.
struct Shared {
    chunks: Vec<Chunk<'static>>,
    runs: Vec<Run>,
    at: Vec<i64>,
    rng: i64,
    closed: bool,
    is_rate: bool,
    is_counter: bool,
    from_ms: i64,
    to_ms: i64,
    next: std::sync::atomic::AtomicUsize,
    verdict: std::sync::atomic::AtomicU8,
    values: *mut u8,
    present: *mut u8,
    counts: *mut i64,
}

// SAFETY: the raw pointers are the answer's memory, which the job owns until both threads are done
// (finish and Drop join the other thread first); each series' rows are written by the one thread
// whose fetch_add took its index; the chunks' bytes are immutable and held by the job.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Take series a few at a time until none is left (or one was not right: its verdict kept).
    fn work(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (m, n) = (self.runs.len(), self.at.len());
        let w = Windows {
            at: &self.at,
            rng: self.rng,
            closed: self.closed,
            is_rate: self.is_rate,
            is_counter: self.is_counter,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
        };
        let mut scratch = Scratch::new();
        loop {
            let j0 = self.next.fetch_add(JOB_BATCH, Relaxed);
            if j0 >= m || self.verdict.load(Relaxed) != OK {
                return;
            }
            let j1 = (j0 + JOB_BATCH).min(m);
            // SAFETY: rows j0..j1 of the answer (inside it: j1 <= m), this thread's alone (see Shared)
            let (values, present, counts) = unsafe {
                (
                    std::slice::from_raw_parts_mut(self.values.add(8 * n * j0), 8 * n * (j1 - j0)),
                    std::slice::from_raw_parts_mut(self.present.add(n * j0), n * (j1 - j0)),
                    std::slice::from_raw_parts_mut(self.counts.add(j0), j1 - j0),
                )
            };
            let verdict = runs_windows(
                &self.chunks,
                &self.runs[j0..j1],
                &w,
                values,
                present,
                counts,
                &mut scratch,
            );
            if verdict != OK {
                self.verdict.store(verdict, Relaxed);
                return;
            }
        }
    }
}

/// A `rate_rows_start` begun: a thread computes the series while the caller does something else
/// (the store reads the next piece's rows); `finish` takes the rest of the series on the caller's
/// thread and answers the verdict.
#[pyclass(module = "lossproof._native")]
pub struct RateJob {
    shared: Option<std::sync::Arc<Shared>>,
    other: Option<std::thread::JoinHandle<()>>,
    // the answer's memory, the caller's arrays (written through Shared's pointers, without the
    // GIL: see rate_rows_start), and the rows' bytes the chunks borrow; held until the job is
    // dropped (after its other thread is joined)
    _out: Option<(PyBuffer<f64>, PyBuffer<u8>, PyBuffer<i64>)>,
    _held: Vec<Py<PyBytes>>,
    verdict: u8,
}

impl RateJob {
    fn join_other(&mut self) {
        if let Some(t) = self.other.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for RateJob {
    fn drop(&mut self) {
        // the other thread reads the rows' bytes and writes the answer: done before they go
        if let Some(s) = &self.shared {
            s.next.store(usize::MAX / 2, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(t) = self.other.take() {
            let _ = t.join();
        }
    }
}

#[pymethods]
impl RateJob {
    /// The job's verdict once every series is computed into the arrays given to
    /// `rate_rows_start` (0: they are the answer; else they are not to be used). Once only: a
    /// second call is a ValueError.
    fn finish(&mut self, py: Python<'_>) -> PyResult<u8> {
        let Some(shared) = self.shared.take() else {
            if self.verdict != OK && self.verdict != DONE {
                return Ok(self.verdict);
            }
            return Err(PyValueError::new_err("this job is finished"));
        };
        {
            let other = &mut self.other;
            let s = &shared;
            py.detach(|| {
                s.work();
                if let Some(t) = other.take() {
                    if let Err(panic) = t.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
            });
        }
        self.join_other();
        let verdict = shared.verdict.load(std::sync::atomic::Ordering::Relaxed);
        self.verdict = if verdict == OK { DONE } else { verdict };
        Ok(verdict)
    }
}

/// (A finished job's verdict: not one a call answers.)
const DONE: u8 = 255;

/// `rate_rows_start(rows, at, run_first, run_last, from_ms, to_ms, grid, rng, is_rate, is_counter,
/// closed=False) -> RateJob`: for chunk rows `(series_id, id, t_min, t_max, data)` (what
/// `assemble_rows` takes) whose points go to the places `at[i]..` (native-endian int64 bytes, one a
/// row) of one column, and series whose points are the places `run_first[j]..run_last[j]` (equal:
/// none), each series' points in `[from_ms, to_ms]` and its `rate` / `increase` / `delta` windows
/// `(grid[k] - rng, grid[k]]` (`closed`: `[grid[k] - rng, grid[k]]`) with its staleness markers left
/// out: what `rate_windows(..., skip_stale=True, closed=closed)` answers for the series
/// `assemble_rows_into` and `chunks.search_runs` give, written into
/// `values` (float64, (series, steps), C-contiguous: rate_windows' values where a window has one,
/// untouched elsewhere), `present` (uint8, 1 where a window has a value, untouched elsewhere) and
/// `counts` (int64, each series' points in the range). The job's `finish` answers the verdict (0:
/// good; else the arrays are not to be used, see the module's doc). A series' places must be its
/// chunks' exactly, one after the other, else verdict 5. Columns or arrays of other lengths, and
/// arrays not writable and C-contiguous, are a ValueError. The arrays must be the caller's own,
/// read by nobody until `finish` returns (they are written without the GIL meanwhile).
///
/// The series are computed on another thread from now on (when there are two CPUs and enough
/// points; else all by `finish`), without the GIL: the caller may go on meanwhile, with Python or
/// the store (the job holds the rows' bytes, which it only reads); `finish` takes the series left
/// on the caller's thread.
#[pyfunction]
#[pyo3(signature = (
    values, present, counts, rows, at, run_first, run_last, from_ms, to_ms, grid, rng, is_rate,
    is_counter, closed=false
))]
#[allow(clippy::too_many_arguments)]
pub fn rate_rows_start(
    values: PyBuffer<f64>,
    present: PyBuffer<u8>,
    counts: PyBuffer<i64>,
    rows: &Bound<'_, PyList>,
    at: &[u8],
    run_first: &[u8],
    run_last: &[u8],
    from_ms: i64,
    to_ms: i64,
    grid: &[u8],
    rng: i64,
    is_rate: bool,
    is_counter: bool,
    closed: bool,
) -> PyResult<RateJob> {
    let (at, grid, firsts, lasts) = columns(rows.len(), at, run_first, run_last, grid)?;
    let (m, n) = (firsts.len(), grid.len());
    for (b, cells, what) in [
        (values.item_count(), m * n, "values"),
        (present.item_count(), m * n, "present"),
        (counts.item_count(), m, "counts"),
    ] {
        if b != cells {
            return Err(PyValueError::new_err(format!("{what}: {b} cells for {cells}")));
        }
    }
    let writable = |readonly: bool, contiguous: bool, what: &str| {
        if readonly || !contiguous {
            return Err(PyValueError::new_err(format!(
                "{what}: not a writable C-contiguous array"
            )));
        }
        Ok(())
    };
    writable(values.readonly(), values.is_c_contiguous(), "values")?;
    writable(present.readonly(), present.is_c_contiguous(), "present")?;
    writable(counts.readonly(), counts.is_c_contiguous(), "counts")?;
    let failed = |verdict: u8| RateJob {
        shared: None,
        other: None,
        _out: None,
        _held: Vec::new(),
        verdict,
    };
    let held = match rows_held(rows, &at)? {
        Ok(h) => h,
        Err(verdict) => return Ok(failed(verdict)),
    };
    let (chunks, runs, points) = match prepare(&held, &firsts, &lasts) {
        Ok(p) => p,
        Err(verdict) => return Ok(failed(verdict)),
    };
    // SAFETY: the chunks borrow the rows' bytes objects, immutable, which the job holds (`_held`)
    // for as long as it has the chunks (Drop joins the other thread before the fields go)
    let chunks: Vec<Chunk<'static>> =
        unsafe { std::mem::transmute::<Vec<Chunk<'_>>, Vec<Chunk<'static>>>(chunks) };
    // written through these, without the GIL, while the job runs (see the doc: the caller's own)
    let (pv, pp, pc) = (
        values.buf_ptr() as *mut u8,
        present.buf_ptr() as *mut u8,
        counts.buf_ptr() as *mut i64,
    );
    let shared = std::sync::Arc::new(Shared {
        chunks,
        runs,
        at: grid,
        rng,
        closed,
        is_rate,
        is_counter,
        from_ms,
        to_ms,
        next: std::sync::atomic::AtomicUsize::new(0),
        verdict: std::sync::atomic::AtomicU8::new(OK),
        values: pv,
        present: pp,
        counts: pc,
    });
    let other = if crate::two_cpus() && m >= 2 && points >= PARALLEL_POINTS {
        let s = std::sync::Arc::clone(&shared);
        // (no thread from the OS: finish does it all)
        std::thread::Builder::new().spawn(move || s.work()).ok()
    } else {
        None
    };
    Ok(RateJob {
        shared: Some(shared),
        other,
        _out: Some((values, present, counts)),
        _held: held.into_iter().map(|(d, _, _, _)| d.unbind()).collect(),
        verdict: OK,
    })
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

    /// Each series' chunks `(data index, points, t_min, t_max)` one after the other: the chunks in
    /// place order and the runs.
    fn laid_out<'a>(
        chunks_of: &[Vec<(usize, usize, i64, i64)>],
        data: &'a [Vec<u8>],
    ) -> (Vec<Chunk<'a>>, Vec<Run>) {
        let mut chunks = Vec::new();
        let mut runs = Vec::new();
        let mut place = 0usize;
        for mine in chunks_of {
            let (lo, first) = (chunks.len(), place);
            for &(d, k, t_min, t_max) in mine {
                chunks.push(Chunk {
                    data: &data[d],
                    at: place,
                    n: k,
                    t_min,
                    t_max,
                });
                place += k;
            }
            runs.push(Run {
                lo,
                hi: chunks.len(),
                first,
                last: place,
            });
        }
        (chunks, runs)
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
            let (mut chunks, runs) = laid_out(&chunks_of, &data);
            let grid: Vec<i64> = (0..40).map(|k| 1_000_000 + k * 60_000).collect();
            let (from_ms, to_ms) = (
                1_000_000 + (next() % 300_000) as i64,
                1_000_000 + (next() % 3_000_000) as i64,
            );
            let w = Windows {
                at: &grid,
                rng: 300_000,
                closed: trial % 4 == 1,
                is_rate: trial % 2 == 0,
                is_counter: trial % 3 != 0,
                from_ms,
                to_ms,
            };
            let n = grid.len();
            let mut values = vec![0u8; 8 * m * n];
            let mut present = vec![0u8; m * n];
            let mut counts = vec![0i64; m];
            assert_eq!(
                runs_windows(
                    &chunks,
                    &runs,
                    &w,
                    &mut values,
                    &mut present,
                    &mut counts,
                    &mut Scratch::new()
                ),
                OK
            );
            for (j, (t, v)) in series.iter().enumerate() {
                let a = t.partition_point(|&x| x < from_ms);
                let b = t.partition_point(|&x| x <= to_ms).max(a);
                assert_eq!(counts[j], (b - a) as i64);
                let mut want_v = vec![0u8; 8 * n];
                let mut want_p = vec![0u8; n];
                rows_windows(
                    &[(&t[a..b], &v[a..b])],
                    &grid,
                    w.rng,
                    w.closed,
                    w.is_rate,
                    w.is_counter,
                    true,
                    &mut want_v,
                    &mut want_p,
                );
                assert_eq!(
                    &values[8 * n * j..8 * n * (j + 1)],
                    &want_v[..],
                    "trial {trial} series {j}"
                );
                assert_eq!(
                    &present[n * j..n * (j + 1)],
                    &want_p[..],
                    "trial {trial} series {j}"
                );
            }
            // a stored range that is not the chunk's points, then times that go back
            if let Some(c) = chunks.iter_mut().find(|c| c.n > 1) {
                c.t_max += 1;
                assert_eq!(
                    runs_windows(
                        &chunks,
                        &runs,
                        &w,
                        &mut values,
                        &mut present,
                        &mut counts,
                        &mut Scratch::new()
                    ),
                    NOT_RANGE
                );
            }
        }
        let back = raw(&[5, 4], &[1.0, 2.0]);
        let chunks = [Chunk {
            data: &back,
            at: 0,
            n: 2,
            t_min: 5,
            t_max: 4,
        }];
        let runs = [Run {
            lo: 0,
            hi: 1,
            first: 0,
            last: 2,
        }];
        let grid = [10i64];
        let w = Windows {
            at: &grid,
            rng: 10,
            closed: false,
            is_rate: true,
            is_counter: true,
            from_ms: 0,
            to_ms: 10,
        };
        let (mut v, mut p, mut c) = (vec![0u8; 8], vec![0u8; 1], vec![0i64; 1]);
        assert_eq!(
            runs_windows(&chunks, &runs, &w, &mut v, &mut p, &mut c, &mut Scratch::new()),
            NOT_INCREASING
        );
    }

    /// A job's series taken by two threads at once (the job's and finish's) are what one thread
    /// computes, row for row.
    #[test]
    fn two_threads_of_a_job_are_one() {
        let mut data = Vec::new();
        let mut chunks_of = Vec::new();
        for j in 0..37usize {
            let t: Vec<i64> = (0..(50 + 13 * j) as i64)
                .map(|k| 1_000_000 + 15_000 * k + (k * j as i64) % 3)
                .collect();
            let v: Vec<f64> = (0..t.len())
                .map(|k| ((k * (j + 1)) % 17) as f64 + (k / 40) as f64)
                .collect();
            let mut mine = Vec::new();
            for p in (0..t.len()).step_by(30) {
                let q = (p + 30).min(t.len());
                data.push(raw(&t[p..q], &v[p..q]));
                mine.push((data.len() - 1, q - p, t[p], t[q - 1]));
            }
            chunks_of.push(mine);
        }
        let (chunks, runs) = laid_out(&chunks_of, &data);
        let grid: Vec<i64> = (0..60).map(|k| 1_000_000 + k * 60_000).collect();
        let (m, n) = (runs.len(), grid.len());
        let w = Windows {
            at: &grid,
            rng: 300_000,
            closed: false,
            is_rate: true,
            is_counter: true,
            from_ms: 1_100_000,
            to_ms: 4_000_000,
        };
        let (mut v1, mut p1, mut c1) = (vec![0u8; 8 * m * n], vec![0u8; m * n], vec![0i64; m]);
        assert_eq!(
            runs_windows(&chunks, &runs, &w, &mut v1, &mut p1, &mut c1, &mut Scratch::new()),
            OK
        );
        let (mut v2, mut p2, mut c2) = (vec![0u8; 8 * m * n], vec![0u8; m * n], vec![0i64; m]);
        // SAFETY (the test's): the chunks borrow `data`, which outlives the job's threads below
        let chunks: Vec<Chunk<'static>> =
            unsafe { std::mem::transmute::<Vec<Chunk<'_>>, Vec<Chunk<'static>>>(chunks) };
        let shared = std::sync::Arc::new(Shared {
            chunks,
            runs,
            at: grid.clone(),
            rng: w.rng,
            closed: w.closed,
            is_rate: w.is_rate,
            is_counter: w.is_counter,
            from_ms: w.from_ms,
            to_ms: w.to_ms,
            next: std::sync::atomic::AtomicUsize::new(0),
            verdict: std::sync::atomic::AtomicU8::new(OK),
            values: v2.as_mut_ptr(),
            present: p2.as_mut_ptr(),
            counts: c2.as_mut_ptr(),
        });
        let s = std::sync::Arc::clone(&shared);
        let other = std::thread::spawn(move || s.work());
        shared.work();
        other.join().unwrap();
        assert_eq!(shared.verdict.load(std::sync::atomic::Ordering::Relaxed), OK);
        drop(shared);
        assert_eq!((v1, p1, c1), (v2, p2, c2));
    }
}
