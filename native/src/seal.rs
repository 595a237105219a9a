//! Sealed chunks and parts (`lossproof.store.chunks`, "Sealed"): the kind byte with `SEALED` set, the
//! kind's layout unchanged, then a 4-byte little-endian CRC-32C of every byte before it. The checks
//! of a chunk's structure (sizes, headers, times increasing, its stored time range) catch most
//! damage, but not a flipped bit of a value or of a packed chunk's value mode: the checksum does.
//! Readers accept a chunk without the bit (written before there was one) as it is.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

pub(crate) const SEALED: u8 = 0x80;

/// A sealed chunk's kind and its bytes without the checksum (its first byte still has the bit),
/// and whether it was sealed; None for a sealed one too short to hold a checksum. Not verified.
pub(crate) fn unsealed(data: &[u8]) -> Option<(u8, &[u8], bool)> {
    let kind = *data.first()?;
    if kind & SEALED == 0 {
        return Some((kind, data, false));
    }
    (data.len() >= 5).then(|| (kind & !SEALED, &data[..data.len() - 4], true))
}

/// Whether `data` is not sealed, or sealed with the checksum of what it holds.
pub(crate) fn intact(data: &[u8]) -> bool {
    match data.first() {
        Some(k) if k & SEALED != 0 => {
            data.len() >= 5 && {
                let (body, sum) = data.split_at(data.len() - 4);
                ::crc32c::crc32c(body) == u32::from_le_bytes(sum.try_into().expect("4 bytes"))
            }
        }
        _ => true,
    }
}

/// `crc32c(data, crc=0) -> int`: the CRC-32C of `data` (bytes), continuing `crc` (the value over
/// what came before it), so that pieces joined later are summed without joining them first.
#[pyfunction]
#[pyo3(signature = (data, crc=0))]
pub fn crc32c(data: &[u8], crc: u32) -> u32 {
    ::crc32c::crc32c_append(crc, data)
}

/// `seal(data) -> bytes`: the chunk or part `data` (unsealed) sealed.
#[pyfunction]
pub fn seal<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    match data.first() {
        Some(k) if k & SEALED == 0 => {}
        _ => return Err(PyValueError::new_err("seal: empty or already sealed")),
    }
    PyBytes::new_with(py, data.len() + 4, |b| {
        b[..data.len()].copy_from_slice(data);
        b[0] |= SEALED;
        let sum = ::crc32c::crc32c(&b[..data.len()]);
        b[data.len()..].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    })
}

/// `first_broken(datas) -> int`: the index of the first of `datas` (bytes) that is sealed but does
/// not hold its checksum, or -1. One call for a read's chunks, without the GIL.
#[pyfunction]
pub fn first_broken(py: Python<'_>, datas: &Bound<'_, PyList>) -> PyResult<i64> {
    let held: Vec<Bound<'_, PyBytes>> = datas
        .iter()
        .map(|d| d.cast_into::<PyBytes>().map_err(PyErr::from))
        .collect::<PyResult<_>>()?;
    let views: Vec<&[u8]> = held.iter().map(|b| b.as_bytes()).collect();
    // bytes objects are immutable and `held` keeps them alive
    Ok(py.detach(|| views.iter().position(|d| !intact(d)).map_or(-1, |i| i as i64)))
}

/// `raw_sums(ts, vs, starts, ends) -> bytes`: for each run `starts[i]..ends[i]` of the columns
/// (little-endian int64 times, float64 values as bytes), the little-endian CRC-32C of the sealed
/// RAW chunk of its points (kind byte, times, values): what a writer that lays such chunks out with
/// numpy (`pg.binary.chunk_rows`) appends to each.
#[pyfunction]
pub fn raw_sums<'py>(
    py: Python<'py>,
    ts: &[u8],
    vs: &[u8],
    starts: &[u8],
    ends: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let starts = crate::rawchunks::ints(starts, "starts")?;
    let ends = crate::rawchunks::ints(ends, "ends")?;
    if starts.len() != ends.len() || ts.len() != vs.len() || !ts.len().is_multiple_of(8) {
        return Err(PyValueError::new_err("raw_sums: columns or runs of different lengths"));
    }
    let n = ts.len() / 8;
    if starts.iter().zip(&ends).any(|(&a, &b)| a < 0 || b < a || b as usize > n) {
        return Err(PyValueError::new_err("raw_sums: a run outside the columns"));
    }
    let kind = [1u8 | SEALED];
    PyBytes::new_with(py, 4 * starts.len(), |out| {
        for (i, (&a, &b)) in starts.iter().zip(&ends).enumerate() {
            let (a, b) = (8 * a as usize, 8 * b as usize);
            let sum = ::crc32c::crc32c_append(::crc32c::crc32c(&kind), &ts[a..b]);
            let sum = ::crc32c::crc32c_append(sum, &vs[a..b]);
            out[4 * i..4 * i + 4].copy_from_slice(&sum.to_le_bytes());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(data: &[u8]) -> Vec<u8> {
        let mut b = data.to_vec();
        b[0] |= SEALED;
        let sum = ::crc32c::crc32c(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn every_flipped_bit_is_found() {
        let b = sealed(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(intact(&b));
        assert_eq!(unsealed(&b), Some((1, &b[..b.len() - 4], true)));
        for i in 0..8 * b.len() {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            // (the SEALED bit itself flipped off: the rest reads as an unsealed chunk 4 bytes
            // longer, which the size checks of raw chunks and parts refuse, and a packed chunk's
            // decoders too: nothing may follow its zstd frame, rowdecode.rs and chunks._opened)
            assert!(!intact(&c) || c[0] & SEALED == 0, "bit {i}");
        }
    }

    #[test]
    fn unsealed_chunks_pass_as_they_are() {
        assert!(intact(&[1, 2, 3]));
        assert_eq!(unsealed(&[1, 2, 3]), Some((1, &[1u8, 2, 3][..], false)));
        assert_eq!(unsealed(&[0x81, 0, 0]), None);
        assert!(!intact(&[0x81, 0, 0]));
    }
}
