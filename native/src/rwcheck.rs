//! `rw1_check`: ingest's whole check of a plain remote-write 1.0 body, in one pass (issue #15).
//!
//! lossproof.protocol.promrw.check parses a body exactly with the message classes (upb: the
//! authority on a malformed message), then checks its bounds on views of the body (every sample
//! and label as a bytes object, joined and parsed again). Together those were most of ingest's time
//! per request. This reads the body once and answers only for a body that certainly passes both:
//!
//! - its grammar is the plain subset Prometheus sends: the request holds only series (field 1, no
//!   metadata or anything else), a series only labels and samples (1, 2: no exemplar, no native
//!   histogram), a label only its name and value (1, 2, strings: valid UTF-8, as upb requires of
//!   proto3 strings), a sample only its value (fixed64) and exactly one timestamp (varint); no field
//!   of another number or wire type anywhere, no group, every tag in its one-byte form, every length
//!   a varint of at most 5 bytes (upb refuses longer ones) within its message, every timestamp a
//!   varint as the worker's reader reads it (it refuses what upb refuses there);
//! - every series has a `__name__`, and every `__name__` a non-empty value; no label name is empty;
//!   at most `max_labels + 1` labels (duplicates counted); every encoded Label at most `max_name`
//!   bytes (so its name and value are within both bounds); every timestamp in `0..=max_time_ms`.
//!
//! Anything else is `None`, including anything the reader finds malformed: the caller then runs its
//! exact parse and checks, which refuse the body or pass it. So this adds no rule and drops none;
//! tests/protocols/test_promrw_rwcheck.py checks `promrw.check` answers the same with and without it.

use pyo3::prelude::*;

use crate::Reader;

fn text(b: &[u8]) -> Option<&[u8]> {
    std::str::from_utf8(b).ok().map(|_| b)
}

/// A tag in its one-byte form (every tag this reads has one); a longer one (padded: upb refuses
/// some of those) is None.
fn tag(r: &mut Reader<'_>) -> Option<(u8, u8)> {
    let b = *r.buf.get(r.pos)?;
    if b & 0x80 != 0 {
        return None;
    }
    r.pos += 1;
    Some((b >> 3, b & 7))
}

/// A length-delimited field's bytes, its length a varint of at most 5 bytes (upb's limit) and at
/// most `i32::MAX`.
fn bytes<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let mut n = 0u64;
    for i in 0..5 {
        let b = *r.buf.get(r.pos)?;
        r.pos += 1;
        n |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            if n > i32::MAX as u64 {
                return None;
            }
            return r.take(n as usize).ok();
        }
    }
    None
}

/// The body's samples, if it passed.
fn check(body: &[u8], max_labels: usize, max_name: usize, max_time_ms: i64) -> Option<u64> {
    let mut samples = 0u64;
    let mut r = Reader::new(body);
    while !r.done() {
        if tag(&mut r)? != (1, 2) {
            return None; // metadata, or anything else: the message classes decide
        }
        let mut sr = Reader::new(bytes(&mut r)?);
        let (mut labels, mut named) = (0usize, false);
        while !sr.done() {
            match tag(&mut sr)? {
                (1, 2) => {
                    let label = bytes(&mut sr)?;
                    labels += 1;
                    if label.len() > max_name || labels > max_labels + 1 {
                        return None;
                    }
                    let mut lr = Reader::new(label);
                    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
                    while !lr.done() {
                        let field = match tag(&mut lr)? {
                            (1, 2) => &mut name,
                            (2, 2) => &mut value,
                            _ => return None,
                        };
                        *field = text(bytes(&mut lr)?)?;
                    }
                    if name.is_empty() {
                        return None;
                    }
                    if name == b"__name__" {
                        if value.is_empty() {
                            return None;
                        }
                        named = true;
                    }
                }
                (2, 2) => {
                    let mut pr = Reader::new(bytes(&mut sr)?);
                    let (mut times, mut t) = (0u32, 0i64);
                    while !pr.done() {
                        match tag(&mut pr)? {
                            (1, 1) => {
                                pr.fixed64().ok()?;
                            }
                            (2, 0) => {
                                t = pr.varint().ok()? as i64;
                                times += 1;
                            }
                            _ => return None,
                        }
                    }
                    if times != 1 || t < 0 || t > max_time_ms {
                        return None;
                    }
                    samples += 1;
                }
                _ => return None, // an exemplar, a native histogram, or anything unexpected
            }
        }
        if !named {
            return None;
        }
    }
    Some(samples)
}

/// `rw1_check(body, max_labels, max_name, max_time_ms) -> samples | None`: see the module's comment.
#[pyfunction]
pub fn rw1_check(body: &[u8], max_labels: usize, max_name: usize, max_time_ms: i64) -> Option<u64> {
    check(body, max_labels, max_name, max_time_ms)
}
