//! Range-query answers as JSON (lossproof.query.promql.matrix_rows): each series' points
//! `[[ts,"value"],...]`, a value written as Prometheus writes it (its jsonutil.MarshalValue: Go's
//! `FormatFloat(v, 'f', -1, 64)`, the shortest digits that read back as the same float, but with
//! 'e' below 1e-6 and from 1e21 on; `NaN`, `+Inf`, `-Inf`).
//!
//! Python wrote them at ~150 ns a point (msgspec's digits, then the text split, fixed and joined
//! per point): 7 ms of a 1 h `rate` over 200 series whose windows took 2 ms. Here the digits are
//! Ryu's (Rust's own `Display` writes this format too, at twice the cost).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::groupsum::in_place;

/// One value as Prometheus writes it.
fn push_value(out: &mut Vec<u8>, v: f64, digits: &mut ryu::Buffer) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else if v != 0.0 && !(1e-6..1e21).contains(&v.abs()) {
        push_exponent(out, digits.format_finite(v).as_bytes());
    } else {
        push_plain(out, digits.format_finite(v).as_bytes());
    }
}

/// Ryu's shortest digits of a value below 1e-6 or from 1e21 on, which it writes in scientific
/// notation (`1.5e-7`, `1e22`), as Go's 'e', -1 writes them: the exponent signed, of two digits at
/// least (`1.5e-07`, `1e+22`).
fn push_exponent(out: &mut Vec<u8>, text: &[u8]) {
    let Some(e) = text.iter().position(|&c| c == b'e') else {
        // (Ryu writes no such value without an exponent; plain digits are still the same number)
        push_plain(out, text);
        return;
    };
    let mantissa = &text[..e];
    out.extend_from_slice(mantissa.strip_suffix(b".0").unwrap_or(mantissa));
    let exp: i64 = std::str::from_utf8(&text[e + 1..]).ok().and_then(|x| x.parse().ok()).unwrap_or(0);
    out.extend_from_slice(if exp < 0 { b"e-" } else { b"e+" });
    let digits = exp.unsigned_abs().to_string();
    if digits.len() < 2 {
        out.push(b'0');
    }
    out.extend_from_slice(digits.as_bytes());
}

/// Ryu's shortest digits (`1.0`, `0.001`, `1.5e-7`, `1e22`, a `-` first if negative) without an
/// exponent and without a trailing `.0`: Go's 'f', -1 (the same digits: both are the shortest that
/// read back as the float, the closest to it of those).
fn push_plain(out: &mut Vec<u8>, text: &[u8]) {
    let (sign, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if sign {
        out.push(b'-');
    }
    let Some(e) = text.iter().position(|&c| c == b'e') else {
        out.extend_from_slice(text.strip_suffix(b".0").unwrap_or(text));
        return;
    };
    // d[.ddd]e[-]x: the digits, and how many of them are before the point (1 + x)
    let exp: i64 = std::str::from_utf8(&text[e + 1..]).ok().and_then(|x| x.parse().ok()).unwrap_or(0);
    let digits: Vec<u8> = text[..e].iter().copied().filter(|&c| c != b'.').collect();
    let point = 1 + exp;
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-point) as usize, b'0');
        out.extend_from_slice(&digits);
    } else if point as usize >= digits.len() {
        out.extend_from_slice(&digits);
        out.resize(out.len() + point as usize - digits.len(), b'0');
    } else {
        out.extend_from_slice(&digits[..point as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[point as usize..]);
    }
}

/// Row `i`'s points into `out` (`[[ts,"v"],...]`), false (nothing written) when it has none.
fn row_json(out: &mut Vec<u8>, v: &[f64], p: &[u8], stamps: &[String]) -> bool {
    let mut digits = ryu::Buffer::new();
    let mut first = true;
    for ((&x, &here), stamp) in v.iter().zip(p).zip(stamps) {
        if here == 0 {
            continue;
        }
        out.extend_from_slice(if first { b"[[" } else { b"],[" });
        first = false;
        out.extend_from_slice(stamp.as_bytes());
        out.extend_from_slice(b",\"");
        push_value(out, x, &mut digits);
        out.push(b'"');
    }
    if !first {
        out.extend_from_slice(b"]]");
    }
    !first
}

/// `points_json(values, present, stamps, rows) -> list[bytes | None]`: for each row index of
/// `rows`, in that order, the points of that row of `values` (float64, (series, steps),
/// C-contiguous) where `present` (uint8, the same shape) is not 0, as the JSON `[[ts,"v"],...]`
/// with `stamps[k]` (already JSON: what is written for step k's time) as step k's time; None for
/// a row without any. Shapes that do not match and rows out of range are a ValueError.
#[pyfunction]
pub fn points_json<'py>(
    py: Python<'py>,
    values: PyBuffer<f64>,
    present: PyBuffer<u8>,
    stamps: Vec<String>,
    rows: Vec<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let shape = values.shape().to_vec();
    if shape.len() != 2 || present.shape() != shape.as_slice() || stamps.len() != shape[1] {
        return Err(PyValueError::new_err(format!(
            "values {:?}, present {:?} and {} stamps: not one (series, steps) shape",
            shape,
            present.shape(),
            stamps.len()
        )));
    }
    let (m, n) = (shape[0], shape[1]);
    if let Some(&bad) = rows.iter().find(|&&i| i >= m) {
        return Err(PyValueError::new_err(format!("row {bad} of {m}")));
    }
    let v = in_place(&values, "values")?;
    let p = in_place(&present, "present")?;
    // every row's text into one buffer without the GIL (the arrays are the caller's, not written
    // meanwhile), then a bytes object each
    let (text, ends) = py.detach(|| {
        // (room for a typical answer, not for the worst: a failed allocation aborts the process)
        let mut text = Vec::with_capacity(rows.len().saturating_mul(n).saturating_mul(24).min(1 << 24));
        let mut ends: Vec<Option<usize>> = Vec::with_capacity(rows.len());
        for &i in &rows {
            let wrote = row_json(&mut text, &v[i * n..(i + 1) * n], &p[i * n..(i + 1) * n], &stamps);
            ends.push(wrote.then_some(text.len()));
        }
        (text, ends)
    });
    let out = PyList::empty(py);
    let mut start = 0;
    for end in ends {
        match end {
            Some(e) => {
                out.append(PyBytes::new(py, &text[start..e]))?;
                start = e;
            }
            None => out.append(py.None())?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: f64) -> String {
        let mut out = Vec::new();
        push_value(&mut out, v, &mut ryu::Buffer::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_as_prometheus_writes_them() {
        assert_eq!(one(1.0), "1");
        assert_eq!(one(-0.0), "-0");
        assert_eq!(one(0.1), "0.1");
        assert_eq!(one(1e20), "100000000000000000000");
        assert_eq!(one(1e21), "1e+21");
        assert_eq!(one(1e22), "1e+22");
        assert_eq!(one(-1.5e21), "-1.5e+21");
        assert_eq!(one(1e-6), "0.000001");
        assert_eq!(one(1.5e-7), "1.5e-07");
        assert_eq!(one(f64::NAN), "NaN");
        assert_eq!(one(f64::INFINITY), "+Inf");
        assert_eq!(one(f64::NEG_INFINITY), "-Inf");
        assert_eq!(one(5e-324), "5e-324");
        assert_eq!(one(-1.25e-300), "-1.25e-300");
        assert_eq!(one(123.0), "123");
        assert_eq!(one(1e308), "1e+308");
        assert_eq!(one(1.7976931348623157e308), "1.7976931348623157e+308");
        // between 1e-6 and 1e21: the same text as Rust's Display (Go's 'f', -1 too); outside, as
        // Rust's LowerExp (the same shortest digits) with Go's exponent
        let mut x = 1.234567e-310_f64;
        while x < 1e308 {
            for v in [x, -x, x * 3.7, 1.0 / x] {
                if !v.is_finite() {
                    continue;
                }
                if (1e-6..1e21).contains(&v.abs()) {
                    assert_eq!(one(v), format!("{v}"));
                } else {
                    let e = format!("{v:e}");
                    let (m, x) = e.split_once('e').unwrap();
                    let x: i32 = x.parse().unwrap();
                    assert_eq!(one(v), format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs()));
                }
            }
            x *= 9.99;
        }
    }

    #[test]
    fn a_row_is_its_present_points_and_nothing_without_any() {
        let stamps: Vec<String> = ["1", "2.5", "3"].iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        assert!(row_json(&mut out, &[1.0, 2.0, 3.0], &[1, 0, 1], &stamps));
        assert_eq!(String::from_utf8(out).unwrap(), "[[1,\"1\"],[3,\"3\"]]");
        let mut none = Vec::new();
        assert!(!row_json(&mut none, &[1.0, 2.0, 3.0], &[0, 0, 0], &stamps));
        assert!(none.is_empty());
    }
}
