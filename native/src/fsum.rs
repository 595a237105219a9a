//! Exact sums for PromQL (lossproof.query.exact.fsum_windows): `math.fsum` of many windows of one
//! column of float64 values, each window `v[lo[k]..hi[k]]`.
//!
//! PromQL's sums in lossproof are `math.fsum` (the correctly rounded sum; `promref._sum`); numpy has
//! no such reduction, and a Python call per window was the cost of `avg_over_time` and `sum by`.
//! This is CPython's `math_fsum` (Shewchuk's partials, then the round-half-even correction), the
//! same operations in the same order, so the same float. A window holding a NaN or an infinity, or
//! whose partial sums overflow (where fsum raises OverflowError), is flagged instead: the caller
//! answers those as `_sum` does.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

/// The correctly rounded (ties to even) sum of `xs` by exact integer arithmetic, when that is
/// quick: every value finite and normal-range, the values' bits spanning few enough binary places
/// that their sum is exact in an i128, and the rounded sum a normal float. CPython's fsum is the
/// correctly rounded sum too, so this is its answer where it answers; None sends the window to
/// :func:`fsum` (the usual case for gauges and counters of a few decimals is this one: ~60 bits).
fn exact_sum(xs: &[f64]) -> Option<f64> {
    let (mut emin, mut emax) = (i32::MAX, i32::MIN);
    for &x in xs {
        if x == 0.0 {
            continue;
        }
        if !x.is_normal() {
            return None; // NaN, an infinity or a subnormal
        }
        let bits = x.to_bits();
        let mant = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
        let exp = ((bits >> 52) & 0x7ff) as i32 - 1075 + mant.trailing_zeros() as i32;
        emin = emin.min(exp);
        emax = emax.max(exp + 53);
    }
    if emin == i32::MAX {
        return Some(0.0); // fsum of zeros: +0.0
    }
    let growth = 64 - (xs.len() as u64).leading_zeros() as i32; // the sum of n terms: log2(n) more bits
    // (emax + growth: any running sum's bound; CPython's fsum overflows, and raises, where a running
    // sum does, even if the later values bring it back)
    if emax - emin + growth > 126 || emin < -1022 || emax + growth > 1022 {
        return None;
    }
    let mut s: i128 = 0;
    for &x in xs {
        if x == 0.0 {
            continue;
        }
        let bits = x.to_bits();
        let mant = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
        let exp = ((bits >> 52) & 0x7ff) as i32 - 1075;
        // mant * 2**exp == (mant >> tz) * 2**(exp + tz), and exp + tz >= emin
        let tz = mant.trailing_zeros() as i32;
        let term = ((mant >> tz) as i128) << (exp + tz - emin);
        s += if bits >> 63 == 1 { -term } else { term };
    }
    if s == 0 {
        return Some(0.0);
    }
    let r = s as f64; // one rounding, to nearest even (an integer below 2**126: no overflow)
    let out = r * f64::from_bits(((emin + 1023) as u64) << 52); // times 2**emin: exact if normal
    if out.is_normal() {
        Some(out)
    } else {
        None
    }
}

/// CPython's `math.fsum` of `xs`, or None where it would not answer a finite float from finite
/// inputs (a non-finite input, or an intermediate overflow).
pub(crate) fn fsum(xs: &[f64], p: &mut Vec<f64>) -> Option<f64> {
    if let Some(s) = exact_sum(xs) {
        return Some(s);
    }
    p.clear();
    for &xsave in xs {
        if !xsave.is_finite() {
            return None;
        }
        let mut x = xsave;
        let mut i = 0;
        for j in 0..p.len() {
            let mut y = p[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let yr = hi - x;
            let lo = y - yr;
            if lo != 0.0 {
                p[i] = lo;
                i += 1;
            }
            x = hi;
        }
        p.truncate(i);
        if x != 0.0 {
            if !x.is_finite() {
                return None; // "intermediate overflow in fsum"
            }
            p.push(x);
        }
    }
    let mut hi = 0.0f64;
    let mut n = p.len();
    if n > 0 {
        n -= 1;
        hi = p[n];
        let mut lo = 0.0f64;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    Some(hi)
}

fn words<'a, const N: usize>(b: &'a [u8], what: &str) -> PyResult<impl Iterator<Item = [u8; N]> + 'a> {
    if b.len() % N != 0 {
        return Err(PyValueError::new_err(format!("{what}: {} bytes", b.len())));
    }
    Ok(b.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    }))
}

/// `fsum_windows(v, lo, hi) -> (sums, flags)`: for every k, `math.fsum(v[lo[k]:hi[k]])` (native-
/// endian float64 and int64 bytes in; float64 bytes out, in a bytearray), and a flag byte, 1 where
/// that window was not summed (a NaN or an infinity in it, or fsum's intermediate overflow: its sum
/// is then 0.0 here). A window outside `v` (or with `hi < lo`) is a ValueError.
#[pyfunction]
pub fn fsum_windows<'py>(
    py: Python<'py>,
    v: &[u8],
    lo: &[u8],
    hi: &[u8],
) -> PyResult<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)> {
    let vals: Vec<f64> = words::<8>(v, "values")?.map(f64::from_ne_bytes).collect();
    let los: Vec<i64> = words::<8>(lo, "lo")?.map(i64::from_ne_bytes).collect();
    let his: Vec<i64> = words::<8>(hi, "hi")?.map(i64::from_ne_bytes).collect();
    if los.len() != his.len() {
        return Err(PyValueError::new_err("lo and hi differ in length"));
    }
    let mut sums = vec![0.0f64; los.len()];
    let mut flags = vec![0u8; los.len()];
    let mut partials = Vec::new();
    for k in 0..los.len() {
        let (a, b) = (los[k], his[k]);
        if a < 0 || b < a || b as u64 > vals.len() as u64 {
            return Err(PyValueError::new_err(format!(
                "window {k}: [{a}, {b}) of {} values",
                vals.len()
            )));
        }
        match fsum(&vals[a as usize..b as usize], &mut partials) {
            Some(s) => sums[k] = s,
            None => flags[k] = 1,
        }
    }
    let out = PyByteArray::new_with(py, 8 * sums.len(), |buf| {
        for (dst, s) in buf.chunks_exact_mut(8).zip(&sums) {
            dst.copy_from_slice(&s.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok((out, PyByteArray::new(py, &flags)))
}
