//! Chunk decoding for reads (lossproof.store.chunks.decode_many): the columns of many chunks, one
//! after the other, in one pass over their bytes.
//!
//! Python opens each chunk (checks its header, decompresses a packed body: `chunks._opened`) and
//! hands the result here; what numpy did in a dozen passes over 2-D temporaries per chunk length
//! (unshuffle the byte planes, undo the zigzag delta-of-delta with two running sums, scale or
//! XOR-accumulate the values) is one loop per chunk. Bit for bit the same columns: wrapping integer
//! arithmetic as numpy's, int64 -> float64 rounding to nearest, the same division by an exact power
//! of ten. Any bytes are safe: a payload whose length does not match its header is a ValueError.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};

const RAW: u8 = 1;
const PACKED: u8 = 2;
const V_XOR: u8 = 0;
const V_DECIMAL: u8 = 1;
// 10.0 ** k for k = 0..=9, as Python computes it (every one exact in a float64)
const POW10: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// The `n` byte-shuffled little-endian words of `planes` (byte b of every word, then b + 1) into
/// `words`: one pass, each word gathered from its 8 planes (the planes cut to `n` bytes first, so
/// the loop has no bounds checks; a plane-at-a-time OR made 8 passes over the words).
fn unshuffle(planes: &[u8], n: usize, words: &mut Vec<u64>) {
    words.clear();
    if n == 0 || planes.len() < 8 * n {
        // (decode_one checks the lengths first: not reached with its arguments)
        words.resize(n, 0);
        for (b, plane) in planes.chunks_exact(n.max(1)).take(8).enumerate() {
            for (w, &x) in words.iter_mut().zip(plane) {
                *w |= (x as u64) << (8 * b);
            }
        }
        return;
    }
    let (p0, r) = planes.split_at(n);
    let (p1, r) = r.split_at(n);
    let (p2, r) = r.split_at(n);
    let (p3, r) = r.split_at(n);
    let (p4, r) = r.split_at(n);
    let (p5, r) = r.split_at(n);
    let (p6, r) = r.split_at(n);
    let p7 = &r[..n];
    words.resize(n, 0);
    let done = unshuffle_simd(planes, n, words);
    for i in done..n {
        words[i] = u64::from_le_bytes([p0[i], p1[i], p2[i], p3[i], p4[i], p5[i], p6[i], p7[i]]);
    }
}

/// The first words of `unshuffle` (a multiple of 16 of them; how many is the answer), 16 at a time
/// by SSE2's byte, word and dword interleaves (an 8 x 16 byte transpose: the same bytes in the same
/// places as the loop after it, which does the rest; x86-64 always has SSE2). `planes` holds at
/// least `8 * n` bytes and `words` `n` words.
#[cfg(target_arch = "x86_64")]
fn unshuffle_simd(planes: &[u8], n: usize, words: &mut [u64]) -> usize {
    use std::arch::x86_64::*;
    assert!(planes.len() >= 8 * n && words.len() >= n);
    let blocks = n / 16;
    let (src, dst) = (planes.as_ptr(), words.as_mut_ptr() as *mut __m128i);
    for k in 0..blocks {
        // SAFETY: plane b's bytes 16k .. 16k + 16 are in `planes` (b * n + 16k + 16 <= 8n), words
        // 16k .. 16k + 16 in `words`; unaligned loads and stores; SSE2 is part of x86-64.
        unsafe {
            let ld = |b: usize| _mm_loadu_si128(src.add(b * n + 16 * k) as *const __m128i);
            let (a0, a1, a2, a3) = (ld(0), ld(1), ld(2), ld(3));
            let (a4, a5, a6, a7) = (ld(4), ld(5), ld(6), ld(7));
            // bytes b, b + 1 of words 0..8 (lo) and 8..16 (hi)
            let (l01, h01) = (_mm_unpacklo_epi8(a0, a1), _mm_unpackhi_epi8(a0, a1));
            let (l23, h23) = (_mm_unpacklo_epi8(a2, a3), _mm_unpackhi_epi8(a2, a3));
            let (l45, h45) = (_mm_unpacklo_epi8(a4, a5), _mm_unpackhi_epi8(a4, a5));
            let (l67, h67) = (_mm_unpacklo_epi8(a6, a7), _mm_unpackhi_epi8(a6, a7));
            // bytes 0..4 and 4..8 of words 0..4, 4..8, 8..12, 12..16
            let (q0, q1) = (_mm_unpacklo_epi16(l01, l23), _mm_unpackhi_epi16(l01, l23));
            let (q2, q3) = (_mm_unpacklo_epi16(h01, h23), _mm_unpackhi_epi16(h01, h23));
            let (r0, r1) = (_mm_unpacklo_epi16(l45, l67), _mm_unpackhi_epi16(l45, l67));
            let (r2, r3) = (_mm_unpacklo_epi16(h45, h67), _mm_unpackhi_epi16(h45, h67));
            let out = dst.add(8 * k);
            _mm_storeu_si128(out, _mm_unpacklo_epi32(q0, r0));
            _mm_storeu_si128(out.add(1), _mm_unpackhi_epi32(q0, r0));
            _mm_storeu_si128(out.add(2), _mm_unpacklo_epi32(q1, r1));
            _mm_storeu_si128(out.add(3), _mm_unpackhi_epi32(q1, r1));
            _mm_storeu_si128(out.add(4), _mm_unpacklo_epi32(q2, r2));
            _mm_storeu_si128(out.add(5), _mm_unpackhi_epi32(q2, r2));
            _mm_storeu_si128(out.add(6), _mm_unpacklo_epi32(q3, r3));
            _mm_storeu_si128(out.add(7), _mm_unpackhi_epi32(q3, r3));
        }
    }
    16 * blocks
}

#[cfg(not(target_arch = "x86_64"))]
fn unshuffle_simd(_planes: &[u8], _n: usize, _words: &mut [u64]) -> usize {
    0
}

#[inline(always)]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Chunk `i`'s columns into `ts` and `vs` (8 bytes a point each, exactly its size); answers
/// whether its times strictly increase, checked as they are written (a second pass over them cost
/// a twentieth of a read's decoding).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_one(
    kind: u8,
    n: usize,
    mode: u8,
    first: i64,
    data: &[u8],
    ts: &mut [u8],
    vs: &mut [u8],
    words: &mut Vec<u64>,
) -> Result<bool, String> {
    match kind {
        RAW => {
            if n.checked_mul(16).and_then(|b| b.checked_add(1)) != Some(data.len()) {
                return Err(format!("raw chunk of {} bytes for {} points", data.len(), n));
            }
            ts.copy_from_slice(&data[1..1 + 8 * n]);
            vs.copy_from_slice(&data[1 + 8 * n..]);
            let mut increasing = true;
            let mut prev = i64::MIN;
            for (k, w) in ts.chunks_exact(8).enumerate() {
                let x = i64::from_le_bytes(w.try_into().unwrap());
                increasing &= k == 0 || x > prev;
                prev = x;
            }
            Ok(increasing)
        }
        PACKED => {
            if n == 0 || n.checked_mul(16).map(|b| b - 8) != Some(data.len()) {
                return Err(format!("chunk body of {} bytes for {} points", data.len(), n));
            }
            let scale = match mode {
                V_XOR => 0.0,
                m if (V_DECIMAL..V_DECIMAL + POW10.len() as u8).contains(&m) => {
                    POW10[(m - V_DECIMAL) as usize]
                }
                m => return Err(format!("unknown value mode {m}")),
            };
            let (tp, vp) = data.split_at(8 * (n - 1));
            unshuffle(tp, n - 1, words);
            let mut t = first;
            let mut delta = 0i64;
            let mut increasing = true;
            let mut out = ts.chunks_exact_mut(8);
            for (dst, &z) in out.by_ref().skip(1).zip(words.iter()) {
                delta = delta.wrapping_add(unzigzag(z));
                let next = t.wrapping_add(delta);
                increasing &= next > t;
                t = next;
                dst.copy_from_slice(&t.to_le_bytes());
            }
            ts[..8].copy_from_slice(&first.to_le_bytes());
            unshuffle(vp, n, words);
            let mut out = vs.chunks_exact_mut(8);
            if mode == V_XOR {
                let mut acc = 0u64;
                for (dst, &w) in out.by_ref().zip(words.iter()) {
                    acc ^= w;
                    dst.copy_from_slice(&acc.to_le_bytes());
                }
            } else {
                let mut iv = words[0] as i64;
                let mut d = 0i64;
                vs[..8].copy_from_slice(&((iv as f64) / scale).to_le_bytes());
                // x / 1.0 is x exactly: whole numbers (most counters) skip the division
                let whole = scale == 1.0;
                for (dst, &z) in vs.chunks_exact_mut(8).skip(1).zip(&words[1..]) {
                    d = d.wrapping_add(unzigzag(z));
                    iv = iv.wrapping_add(d);
                    let x = if whole { iv as f64 } else { (iv as f64) / scale };
                    dst.copy_from_slice(&x.to_le_bytes());
                }
            }
            Ok(increasing)
        }
        k => Err(format!("unknown chunk kind {k}")),
    }
}

/// `decode_chunks([(kind, n, mode, first, payload), ...], at, total) -> columns`: `total` points of
/// timestamps (int64) then as many values (float64), little-endian, in one bytearray of 16 bytes a
/// point (writable, so numpy views of it are too); chunk i's points go to positions `at[i]` ..
/// `at[i] + n` (`at`: native-endian int64 bytes, one per chunk); positions no chunk is given stay 0
/// (the caller fills them). `payload` is a raw chunk's whole data, or a packed chunk's decompressed
/// body; `n`, `mode` and `first` come from the chunk's header. A payload that does not match them,
/// an unknown kind or mode, or a chunk that does not fit in `total`, is a ValueError naming the
/// chunk.
#[pyfunction]
pub fn decode_chunks<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
) -> PyResult<Bound<'py, PyByteArray>> {
    Ok(decode_columns(py, items, at, total, false)?.0)
}

/// What `decode_chunks` answers, and (when `check`) whether every chunk's times strictly increase,
/// checked on each chunk's times as they are written; `true` when not checked.
pub fn decode_columns<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
    check: bool,
) -> PyResult<(Bound<'py, PyByteArray>, bool)> {
    if at.len() != 8 * items.len() {
        return Err(PyValueError::new_err(format!(
            "{} offsets for {} chunks",
            at.len() / 8,
            items.len()
        )));
    }
    if total > (isize::MAX as usize) / 16 {
        return Err(PyValueError::new_err(format!("{total} points")));
    }
    #[allow(clippy::type_complexity)]
    let mut opened: Vec<(u8, usize, u8, i64, Bound<'py, PyBytes>, usize)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (kind, n, mode, first, payload): (u8, usize, u8, i64, Bound<'py, PyBytes>) = item.extract()?;
        let start = i64::from_ne_bytes(at[8 * i..8 * i + 8].try_into().unwrap());
        let fits = start >= 0
            && (start as u64)
                .checked_add(n as u64)
                .is_some_and(|e| e <= total as u64);
        if !fits {
            return Err(PyValueError::new_err(format!(
                "chunk {i}: {n} points at {start} of {total}"
            )));
        }
        opened.push((kind, n, mode, first, payload, start as usize));
    }
    let mut increasing = true;
    let out = PyByteArray::new_with(py, 16 * total, |buf| {
        let (ts, vs) = buf.split_at_mut(8 * total);
        let mut words = Vec::new();
        for (i, (kind, n, mode, first, payload, at)) in opened.iter().enumerate() {
            let (t, v) = (&mut ts[8 * at..8 * (at + n)], &mut vs[8 * at..8 * (at + n)]);
            increasing &= decode_one(*kind, *n, *mode, *first, payload.as_bytes(), t, v, &mut words)
                .map_err(|why| PyValueError::new_err(format!("chunk {i}: {why}")))?
                || !check;
        }
        Ok(())
    })?;
    Ok((out, increasing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffle_simd_is_the_byte_loop() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 443, 512] {
            let planes: Vec<u8> = (0..8 * n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut words = Vec::new();
            unshuffle(&planes, n, &mut words);
            let want: Vec<u64> = (0..n)
                .map(|i| u64::from_le_bytes(std::array::from_fn(|b| planes[b * n + i])))
                .collect();
            assert_eq!(words, want, "n {n}");
        }
    }
}
