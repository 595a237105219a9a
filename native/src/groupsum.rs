//! `sum` and `avg` by group for PromQL (lossproof.query.promql._aggregate_block): per group and
//! evaluation step, the fsum of the group's present values, in one pass over the (series, steps)
//! matrix.
//!
//! numpy took a dozen passes over the matrix for it (the rows gathered in group order, the present
//! and finite ones counted by reduceat, zeros put in for the others, the matrix transposed and copied
//! for `fsum_windows`): ~40 ms of a day-long `sum by (job) (rate(...))` over 1,400 series. Here each
//! cell is summed by `fsum::fsum` over exactly what `fsum_windows` was given (the group's series in
//! ascending order, +0.0 where a value is absent or not finite), so the same float; the cells it
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
/// Steps a group's rows are read for at a time (each row's values for them are contiguous).
const STEPS_A_BLOCK: usize = 64;

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
/// the (series, n) matrix `v` / `p`. Per group, a block of steps at a time: each member row's
/// values for the block gathered (a contiguous read) into a step-major buffer, so that each cell's
/// run is contiguous; the run is exactly what it was (the group's series in ascending order, +0.0
/// where a value is absent or not finite), so the same fsum.
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
    let (mut block, mut here) = (Vec::new(), Vec::new());
    for (g, rows) in members.iter().enumerate() {
        let r = rows.len();
        let mut k0 = steps.start;
        while k0 < steps.end {
            let b = STEPS_A_BLOCK.min(steps.end - k0);
            block.clear();
            block.resize(b * r, 0.0f64);
            here.clear();
            here.resize(b * r, 0u8);
            for (j, &i) in rows.iter().enumerate() {
                let (vr, pr) = (&v[i * n + k0..i * n + k0 + b], &p[i * n + k0..i * n + k0 + b]);
                for d in 0..b {
                    block[d * r + j] = vr[d];
                    here[d * r + j] = pr[d];
                }
            }
            for d in 0..b {
                let (run, pres) = (&mut block[d * r..(d + 1) * r], &here[d * r..(d + 1) * r]);
                let (mut count, mut nonfinite) = (0i64, false);
                for (x, &h) in run.iter_mut().zip(pres) {
                    let h = h != 0;
                    count += h as i64;
                    nonfinite |= h && !x.is_finite();
                    if !(h && x.is_finite()) {
                        *x = 0.0;
                    }
                }
                let cell = g * w + (k0 - steps.start) + d;
                counts[cell] = count;
                match fsum(run, &mut partials) {
                    Some(s) => sums[cell] = s,
                    None => flags[cell] |= 2,
                }
                if nonfinite {
                    flags[cell] |= 1;
                }
            }
            k0 += b;
        }
    }
}
