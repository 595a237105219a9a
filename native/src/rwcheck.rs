//! `rw1_check`: ingest's bounds check of a remote-write 1.0 body, in one pass (issue #15).
//!
//! lossproof.protocol.promrw.check first parses the body exactly with the message classes (upb: the
//! authority on a malformed message), then checks its bounds. Those checks read views of the body
//! (every sample and label as a bytes object, joined and parsed again), which cost most of ingest's
//! time per request. This reads the same bytes once and answers only when the body certainly passes
//! those checks: every series has a non-empty `__name__` of at most `max_name` bytes, no label has an
//! empty name, at most `max_labels + 1` labels (duplicates counted), every encoded Label at most
//! `max_name` bytes (so its name and value are within both bounds), every sample exactly one
//! timestamp (wire type varint) in `0..=max_time_ms` and values only as fixed64, no native histogram,
//! and no field of an unexpected number or wire type anywhere in a series. Anything else, including
//! anything the reader finds malformed, is `None`: the caller then runs its exact checks, which
//! find the error or pass the body, so this adds no rule of its own and drops none.

use pyo3::prelude::*;

use crate::{Reader, Wire};

/// Counts of a body that passed: (samples, exemplars).
fn check(body: &[u8], max_labels: usize, max_name: usize, max_time_ms: i64) -> Wire<Option<(u64, u64)>> {
    let (mut samples, mut exemplars) = (0u64, 0u64);
    let mut r = Reader::new(body);
    while !r.done() {
        let (f, w) = r.tag()?;
        if (f, w) != (1, 2) {
            r.skip(f, w, 0)?; // metadata, or what the message classes skip too
            continue;
        }
        let blob = r.len_delimited()?;
        let mut sr = Reader::new(blob);
        let (mut labels, mut named) = (0usize, false);
        while !sr.done() {
            let (f, w) = sr.tag()?;
            match (f, w) {
                (1, 2) => {
                    let label = sr.len_delimited()?;
                    if label.len() > max_name {
                        return Ok(None);
                    }
                    labels += 1;
                    if labels > max_labels + 1 {
                        return Ok(None);
                    }
                    let mut lr = Reader::new(label);
                    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
                    while !lr.done() {
                        match lr.tag()? {
                            (1, 2) => name = lr.len_delimited()?,
                            (2, 2) => value = lr.len_delimited()?,
                            _ => return Ok(None),
                        }
                    }
                    if name.is_empty() {
                        return Ok(None);
                    }
                    if name == b"__name__" {
                        if value.is_empty() {
                            return Ok(None);
                        }
                        named = true;
                    }
                }
                (2, 2) => {
                    let sample = sr.len_delimited()?;
                    let mut pr = Reader::new(sample);
                    let (mut times, mut t) = (0u32, 0i64);
                    while !pr.done() {
                        match pr.tag()? {
                            (1, 1) => {
                                pr.fixed64()?;
                            }
                            (2, 0) => {
                                t = pr.varint()? as i64;
                                times += 1;
                            }
                            _ => return Ok(None),
                        }
                    }
                    if times != 1 || t < 0 || t > max_time_ms {
                        return Ok(None);
                    }
                    samples += 1;
                }
                (3, 2) => {
                    sr.len_delimited()?;
                    exemplars += 1;
                }
                _ => return Ok(None), // a native histogram (4), or anything unexpected
            }
        }
        if !named {
            return Ok(None);
        }
    }
    Ok(Some((samples, exemplars)))
}

/// `rw1_check(body, max_labels, max_name, max_time_ms) -> (samples, exemplars) | None`: see the
/// module's comment. Call it only on a body the message classes parsed.
#[pyfunction]
pub fn rw1_check(body: &[u8], max_labels: usize, max_name: usize, max_time_ms: i64) -> Option<(u64, u64)> {
    check(body, max_labels, max_name, max_time_ms).ok().flatten()
}
