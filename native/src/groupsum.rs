//! `sum` and `avg` by group for PromQL (lossproof.query.promql._aggregate_block): per group and
//! evaluation step, the fsum of the group's present values, in two passes over the (series, steps)
//! matrix's rows.
//!
//! numpy took a dozen passes over the matrix for it (the rows gathered in group order, the present
//! and finite ones counted by reduceat, zeros put in for the others, the matrix transposed and copied
//! for `fsum_windows`): ~40 ms of a day-long `sum by (job) (rate(...))` over 1,400 series. Here each
//! cell's sum is the correctly rounded sum of exactly what `fsum_windows` was given (the group's
//! series in ascending order, +0.0 where a value is absent or not finite), as fsum's is, so the
//! same float (an exact integer sum where it can, else `fsum::fsum` itself: `cells`); the cells it
//! flags (a present NaN or infinity, or fsum's intermediate overflow) are the caller's to answer.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

use crate::fsum::fsum;

/// `group_sums(values, present, gid, groups) -> (sums, counts, flags)`: `values` a C-contiguous
/// float64 matrix (series, steps), `present` a uint8 matrix of the same shape (0 or not), `gid`
/// each series' group (native-endian int64 bytes, each in `0..groups`). For every (group, step),
/// row by row: the fsum of the group's present finite values (float64), how many of its series are
/// present (int64), and a flag byte: 1 where some present value is a NaN or an infinity, 2 where
/// fsum did not answer (intermediate overflow), 3 both; the sum is then 0.0. Shapes that do not
/// match, more groups than series, or a group out of range, are a ValueError.
#[pyfunction]
pub fn group_sums<'py>(
    py: Python<'py>,
    values: PyBuffer<f64>,
    present: PyBuffer<u8>,
    gid: &[u8],
    groups: usize,
) -> PyResult<(
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
)> {
    let shape = values.shape().to_vec();
    if shape.len() != 2 || present.shape() != shape.as_slice() {
        return Err(PyValueError::new_err(format!(
            "values {:?} and present {:?}: not one matrix shape",
            shape,
            present.shape()
        )));
    }
    let (m, n) = (shape[0], shape[1]);
    if groups > m {
        // (every group one series at least: else groups * steps cells, unbounded, allocated)
        return Err(PyValueError::new_err(format!("{groups} groups of {m} series")));
    }
    if gid.len() != 8 * m {
        return Err(PyValueError::new_err(format!(
            "{} groups for {m} series",
            gid.len() / 8
        )));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups];
    for (i, g) in gid.chunks_exact(8).enumerate() {
        let g = i64::from_ne_bytes(g.try_into().unwrap());
        if g < 0 || g as u64 >= groups as u64 {
            return Err(PyValueError::new_err(format!(
                "series {i}: group {g} of {groups}"
            )));
        }
        members[g as usize].push(i);
    }
    let v = in_place(&values, "values")?;
    let p = in_place(&present, "present")?;
    let mut sums = vec![0.0f64; groups * n];
    let mut counts = vec![0i64; groups * n];
    let mut flags = vec![0u8; groups * n];
    // without the GIL, on two threads for a large matrix (each its own steps): the matrix is the
    // caller's own (lossproof.query.promql._sum_by_group: the evaluator's fresh arrays)
    py.detach(|| {
        let two = crate::two_cpus();
        if !two || n < 2 || m * n < PARALLEL_CELLS {
            cells(v, p, n, &members, 0..n, &mut sums, &mut counts, &mut flags);
            return;
        }
        let half = n / 2;
        let mut second = (vec![0.0f64; groups * (n - half)], vec![0i64; groups * (n - half)]);
        let mut second_flags = vec![0u8; groups * (n - half)];
        {
            let (s2, c2, f2) = (&mut second.0, &mut second.1, &mut second_flags);
            let members = &members;
            crate::join2(
                move || cells(v, p, n, members, half..n, s2, c2, f2),
                || {
                    let (mut s1, mut c1, mut f1) = (
                        vec![0.0f64; groups * half],
                        vec![0i64; groups * half],
                        vec![0u8; groups * half],
                    );
                    cells(v, p, n, members, 0..half, &mut s1, &mut c1, &mut f1);
                    for g in 0..groups {
                        sums[g * n..g * n + half].copy_from_slice(&s1[g * half..(g + 1) * half]);
                        counts[g * n..g * n + half].copy_from_slice(&c1[g * half..(g + 1) * half]);
                        flags[g * n..g * n + half].copy_from_slice(&f1[g * half..(g + 1) * half]);
                    }
                },
            );
        }
        let w = n - half;
        for g in 0..groups {
            sums[g * n + half..(g + 1) * n].copy_from_slice(&second.0[g * w..(g + 1) * w]);
            counts[g * n + half..(g + 1) * n].copy_from_slice(&second.1[g * w..(g + 1) * w]);
            flags[g * n + half..(g + 1) * n].copy_from_slice(&second_flags[g * w..(g + 1) * w]);
        }
    });
    let sums_b = PyByteArray::new_with(py, 8 * sums.len(), |buf| {
        for (dst, s) in buf.chunks_exact_mut(8).zip(&sums) {
            dst.copy_from_slice(&s.to_ne_bytes());
        }
        Ok(())
    })?;
    let counts_b = PyByteArray::new_with(py, 8 * counts.len(), |buf| {
        for (dst, c) in buf.chunks_exact_mut(8).zip(&counts) {
            dst.copy_from_slice(&c.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok((sums_b, counts_b, PyByteArray::new(py, &flags)))
}

/// Cells from which a call sums on two threads.
const PARALLEL_CELLS: usize = 200_000;

/// A C-contiguous buffer in place, as a slice (sound while it is held and nobody writes to it).
pub(crate) fn in_place<'a, T: pyo3::buffer::Element>(b: &'a PyBuffer<T>, what: &str) -> PyResult<&'a [T]> {
    if !b.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what}: not C-contiguous")));
    }
    let n = b.item_count();
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: a C-contiguous buffer of n items of T (PyBuffer checked the format and item size),
    // alive as long as `b`
    Ok(unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const T, n) })
}

/// The cells of steps `steps` (`sums`, `counts`, `flags`: (groups, steps.len()), row by row) of
/// the (series, n) matrix `v` / `p`. Per group, a block of steps at a time, each member row read
/// once or twice in order (`v` is row-major: a row's steps are contiguous): first every cell's
/// count, flags and exponent range, then, where that range allows it (`Block::exact`), the
/// cell's exact sum as an integer (each value's significand shifted to the cell's lowest exponent
/// and added in an i128, then rounded once: the correctly rounded sum, which fsum answers too).
/// The other cells (a subnormal, exponents too far apart) gather their run as before (the group's
/// series in ascending order, +0.0 where a value is absent or not finite) for `fsum`: the same
/// float either way. Gathering every cell's run (a transposed copy) and summing it by fsum's two
/// passes of branches took 6.5 ns a value on one thread (200 series in 10 groups, 1,441 steps);
/// this takes 4.4 (2,000 series on two threads: 19.4 -> 8.9 ms).
#[allow(clippy::too_many_arguments)]
fn cells(
    v: &[f64],
    p: &[u8],
    n: usize,
    members: &[Vec<usize>],
    steps: std::ops::Range<usize>,
    sums: &mut [f64],
    counts: &mut [i64],
    flags: &mut [u8],
) {
    let w = steps.len();
    let mut partials = Vec::new();
    let mut run = Vec::new();
    let mut blk = Block::default();
    for (g, rows) in members.iter().enumerate() {
        // a sum of r terms needs this many bits more than its largest term (fsum::exact_sum's)
        let growth = 64 - (rows.len() as u64).leading_zeros() as i32;
        let mut k0 = steps.start;
        while k0 < steps.end {
            let b = EXACT_BLOCK.min(steps.end - k0);
            blk.scan(v, p, n, rows, k0, b, growth);
            blk.add(v, p, n, rows, k0, b);
            for d in 0..b {
                let cell = g * w + (k0 - steps.start) + d;
                counts[cell] = blk.count[d];
                let mut f = blk.nonfinite[d];
                match blk.sum(d) {
                    Some(s) => sums[cell] = s,
                    None => {
                        run.clear();
                        run.extend(rows.iter().map(|&i| {
                            let x = v[i * n + k0 + d];
                            if p[i * n + k0 + d] != 0 && x.is_finite() { x } else { 0.0 }
                        }));
                        match fsum(&run, &mut partials) {
                            Some(s) => sums[cell] = s,
                            None => f |= 2,
                        }
                    }
                }
                flags[cell] = f;
            }
            k0 += b;
        }
    }
}

/// Steps `cells` takes at a time: its per-step state (~40 bytes a step) stays in the L1 cache.
const EXACT_BLOCK: usize = 256;

/// The biased exponent field of a float64's bits.
#[inline(always)]
fn exponent(bits: u64) -> u32 {
    ((bits >> 52) & 0x7ff) as u32
}

/// One block of steps of one group, as `cells` computes it: per step, the count of present values,
/// whether one is not finite, and the smallest and largest magnitude of the present finite values
/// (the smallest not counting zeros: their exponents, `lo` and `hi`, bound every term's; a
/// subnormal one sends the step to fsum: `exact` false), then the exact integer sum of those
/// values' significands, each shifted left by its exponent minus `lo`. Each pass is a loop over a
/// row's contiguous values that the compiler vectorises (the first) or keeps free of branches.
#[derive(Default)]
struct Block {
    count: Vec<i64>,
    nonfinite: Vec<u8>,
    amin: Vec<f64>,
    amax: Vec<f64>,
    lo: Vec<u32>,
    exact: Vec<bool>,
    acc: Vec<i128>,
}

impl Block {
    /// The first pass: counts, flags and magnitude ranges of steps `k0..k0 + b`, and which steps
    /// the integer sum takes (`exact`, as `fsum::exact_sum` decides: the terms' bits with
    /// `growth` more fit an i128, the lowest place is a normal float's exponent, and no running
    /// sum can reach 2**1022, where fsum's could overflow; the lowest place here is the smallest exponent's, not its lowest set bit, which
    /// takes fewer steps but not others).
    #[allow(clippy::too_many_arguments)]
    fn scan(&mut self, v: &[f64], p: &[u8], n: usize, rows: &[usize], k0: usize, b: usize, growth: i32) {
        fn fresh<T: Copy>(col: &mut Vec<T>, b: usize, x: T) {
            col.clear();
            col.resize(b, x);
        }
        fresh(&mut self.count, b, 0);
        fresh(&mut self.nonfinite, b, 0);
        fresh(&mut self.amin, b, f64::INFINITY);
        fresh(&mut self.amax, b, 0.0);
        fresh(&mut self.lo, b, 0);
        fresh(&mut self.exact, b, false);
        let (count, nonfinite) = (&mut self.count[..b], &mut self.nonfinite[..b]);
        let (amin, amax) = (&mut self.amin[..b], &mut self.amax[..b]);
        for &i in rows {
            let (vr, pr) = (&v[i * n + k0..i * n + k0 + b], &p[i * n + k0..i * n + k0 + b]);
            for d in 0..b {
                let h = pr[d] != 0;
                let a = vr[d].abs();
                let finite = a < f64::INFINITY; // (false for a NaN)
                count[d] += h as i64;
                nonfinite[d] |= (h & !finite) as u8;
                let big = if h & finite { a } else { 0.0 };
                let small = if h & finite & (a != 0.0) { a } else { f64::INFINITY };
                amax[d] = if big > amax[d] { big } else { amax[d] };
                amin[d] = if small < amin[d] { small } else { amin[d] };
            }
        }
        for d in 0..b {
            if self.amax[d] == 0.0 {
                self.exact[d] = true; // (nothing but zeros: the sum is +0.0)
                continue;
            }
            if self.amin[d] < f64::MIN_POSITIVE {
                continue; // a subnormal
            }
            let (lo, hi) = (exponent(self.amin[d].to_bits()), exponent(self.amax[d].to_bits()));
            let emin = lo as i32 - 1075; // the lowest place: 2**emin
            let emax = hi as i32 - 1075 + 53; // above the highest value's top bit
            self.lo[d] = lo;
            // (the sum of the group's magnitudes below 2**1022 too: fsum overflows where a running
            // sum does, even if the later values bring it back, and flags it)
            self.exact[d] = emax - emin + growth <= 126 && emin >= -1022 && emax + growth <= 1022;
        }
    }

    /// The second pass: `acc`, the integer sum of each `exact` step.
    fn add(&mut self, v: &[f64], p: &[u8], n: usize, rows: &[usize], k0: usize, b: usize) {
        self.acc.clear();
        self.acc.resize(b, 0);
        let (acc, lo, exact) = (&mut self.acc[..b], &self.lo[..b], &self.exact[..b]);
        for &i in rows {
            let (vr, pr) = (&v[i * n + k0..i * n + k0 + b], &p[i * n + k0..i * n + k0 + b]);
            for d in 0..b {
                let bits = vr[d].to_bits();
                let e = exponent(bits);
                let take = (pr[d] != 0) & (e != 0) & (e != 0x7ff) & exact[d];
                // (not taken: a zero term, shifted by nothing; taken: e >= lo, and the shift is
                // below 127 - 53 as scan checked)
                let mant = if take { (bits & ((1u64 << 52) - 1)) | (1u64 << 52) } else { 0 };
                let shift = if take { e - lo[d] } else { 0 };
                let term = (mant as i128) << shift;
                let neg = -((bits >> 63) as i128);
                acc[d] += (term ^ neg) - neg;
            }
        }
    }

    /// Step `d`'s sum, or None where `scan` left it to fsum.
    fn sum(&self, d: usize) -> Option<f64> {
        if !self.exact[d] {
            return None;
        }
        let s = self.acc[d];
        if s == 0 {
            return Some(0.0); // fsum of zeros, or of terms that cancel: +0.0
        }
        let emin = self.lo[d] as i32 - 1075;
        let r = s as f64; // one rounding, to nearest even (|s| < 2**126: no overflow)
        let out = r * f64::from_bits(((emin + 1023) as u64) << 52); // times 2**emin: exact if normal
        if out.is_normal() {
            Some(out)
        } else {
            None
        }
    }
}
