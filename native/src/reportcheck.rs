//! `reports_check`: ingest's check of a native `POST /v1/reports` body in one pass (issue #15).
//!
//! lossproof.protocol.native.decode validates a body with msgspec into a Python struct per report,
//! point and label set, then throws them away: ingest appends the body as it came and keeps only a
//! summary (agent, incarnation, seqs, counts). That was about 0.3-0.4 ms of ingest's CPU per
//! 500-point report. This reads the body once, allocates nothing per point, and answers only for a
//! body that msgspec and `decode`'s own rules certainly accept:
//!
//! - JSON or msgpack, the whole body one object, nothing after it;
//! - the request holds only `agent`, `reports`, `incarnation`, `first_seq`, an empty `dropped` and
//!   `spool`; a report only `seq`, `points`, `time`; a point only `metric`, `t`, `v`, `labels`; a
//!   spool all five of its counts; every required field present and no field twice;
//! - every value of its field's type and within its bounds as `lossproof.protocol.native` declares
//!   them (lengths counted in code points, as Python does); an int field holds an integer token (a
//!   JSON number with a fraction or exponent is msgspec's "expected int, got float"); a JSON `v` is
//!   a number that parses to a finite float well within range;
//! - JSON strings without escapes or control characters, valid UTF-8 in both formats;
//! - at least one report, no seq twice, no NUL in the agent, the spool's first pending seq not above
//!   its last.
//!
//! Anything else is `None`, and the caller runs msgspec's exact decode, which refuses the body with
//! its message or passes it. So this adds no rule and drops none: tests/protocols/
//! test_reports_check.py compares both on valid, boundary, damaged and random bodies.

use crate::mpjson::{Js, Rd, Src};

const MAX_NAME: usize = 1024;
const MAX_LABEL_VALUE: usize = 4096;
const MAX_LABELS: usize = 64;
const MAX_AGENT: usize = 256;
const MAX_INCARNATION: usize = 64;
const MAX_TIME_MS: i64 = 4_102_444_800_000;
const MIN_POINT_TIME_MS: i64 = 100_000_000_000;

/// `s` has `min..=max` code points (valid UTF-8 already).
fn chars_within(s: &[u8], min: usize, max: usize) -> bool {
    if s.len() <= max {
        return s.len() >= min; // a code point takes at least a byte
    }
    let n = s.iter().filter(|&&b| b & 0xc0 != 0x80).count();
    (min..=max).contains(&n)
}

/// Marks field `bit` as seen; `None` when it was already.
fn once(seen: &mut u32, bit: u32) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

fn labels<'a, S: Src<'a>>(s: &mut S) -> Option<()> {
    let mut names: Vec<&str> = Vec::new();
    let mut m = s.map()?;
    while let Some((name, value)) = s.entry(&mut m)? {
        let name_ok = chars_within(name.as_bytes(), 1, MAX_NAME);
        if names.len() == MAX_LABELS || names.contains(&name) || !name_ok {
            return None;
        }
        names.push(name);
        chars_within(value.as_bytes(), 0, MAX_LABEL_VALUE).then_some(())?;
    }
    Some(())
}

fn point<'a, S: Src<'a>>(s: &mut S) -> Option<()> {
    let mut seen = 0u32;
    let mut m = s.map()?;
    while let Some(k) = s.key(&mut m)? {
        match k {
            b"metric" => {
                once(&mut seen, 1)?;
                chars_within(s.string()?.as_bytes(), 1, MAX_NAME).then_some(())?;
            }
            b"t" => {
                once(&mut seen, 2)?;
                (MIN_POINT_TIME_MS..=MAX_TIME_MS)
                    .contains(&s.integer()?)
                    .then_some(())?;
            }
            b"v" => {
                once(&mut seen, 4)?;
                s.valid_number()?;
            }
            b"labels" => {
                once(&mut seen, 8)?;
                labels(s)?;
            }
            _ => return None,
        }
    }
    (seen & 7 == 7).then_some(())
}

fn report<'a, S: Src<'a>>(s: &mut S, seqs: &mut Vec<i64>, points: &mut u64) -> Option<()> {
    let mut seen = 0u32;
    let mut m = s.map()?;
    while let Some(k) = s.key(&mut m)? {
        match k {
            b"seq" => {
                once(&mut seen, 1)?;
                let seq = s.integer()?;
                (seq >= 1).then_some(())?;
                seqs.push(seq);
            }
            b"points" => {
                once(&mut seen, 2)?;
                let mut a = s.array()?;
                while s.next(&mut a)? {
                    point(s)?;
                    *points += 1;
                }
            }
            b"time" => {
                once(&mut seen, 4)?;
                (0..=MAX_TIME_MS).contains(&s.integer()?).then_some(())?;
            }
            _ => return None,
        }
    }
    (seen & 3 == 3).then_some(())
}

fn spool<'a, S: Src<'a>>(s: &mut S) -> Option<()> {
    let (mut seen, mut first_pending, mut last) = (0u32, 0i64, 0i64);
    let mut m = s.map()?;
    while let Some(k) = s.key(&mut m)? {
        let (bit, max) = match k {
            b"pending_reports" => (1, i64::MAX),
            b"pending_bytes" => (2, i64::MAX),
            b"oldest_pending_ms" => (4, MAX_TIME_MS),
            b"first_pending_seq" => (8, i64::MAX),
            b"last_seq" => (16, i64::MAX),
            _ => return None,
        };
        once(&mut seen, bit)?;
        let v = s.integer()?;
        (0..=max).contains(&v).then_some(())?;
        match bit {
            8 => first_pending = v,
            16 => last = v,
            _ => {}
        }
    }
    (seen == 31 && (last == 0 || first_pending <= last)).then_some(())
}

struct Summary<'a> {
    agent: &'a str,
    incarnation: &'a str,
    seqs: Vec<i64>,
    points: u64,
}

fn request<'a, S: Src<'a>>(s: &mut S) -> Option<Summary<'a>> {
    let mut seen = 0u32;
    let mut out = Summary {
        agent: "",
        incarnation: "",
        seqs: Vec::new(),
        points: 0,
    };
    let mut m = s.map()?;
    while let Some(k) = s.key(&mut m)? {
        match k {
            b"agent" => {
                once(&mut seen, 1)?;
                out.agent = s.string()?;
                // the agent becomes a text column, and PostgreSQL text cannot hold NUL
                let a = out.agent.as_bytes();
                (chars_within(a, 1, MAX_AGENT) && !a.contains(&0)).then_some(())?;
            }
            b"reports" => {
                once(&mut seen, 2)?;
                let mut a = s.array()?;
                while s.next(&mut a)? {
                    report(s, &mut out.seqs, &mut out.points)?;
                }
            }
            b"incarnation" => {
                once(&mut seen, 4)?;
                out.incarnation = s.string()?;
                let printable = out.incarnation.bytes().all(|c| (b'!'..=b'~').contains(&c));
                (out.incarnation.len() <= MAX_INCARNATION && printable).then_some(())?;
            }
            b"first_seq" => {
                once(&mut seen, 8)?;
                (s.integer()? >= 1).then_some(())?;
            }
            b"dropped" => {
                once(&mut seen, 16)?;
                let mut a = s.array()?;
                if s.next(&mut a)? {
                    return None;
                }
            }
            b"spool" => {
                once(&mut seen, 32)?;
                spool(s)?;
            }
            _ => return None,
        }
    }
    s.at_end().then_some(())?;
    if seen & 3 != 3 || out.seqs.is_empty() {
        return None;
    }
    let mut sorted = out.seqs.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return None; // a resend of one report twice, or a conflict: the exact path tells them apart
    }
    out.seqs = sorted;
    Some(out)
}

/// `(agent, incarnation, seqs sorted, points)` of a body that certainly passes
/// `lossproof.protocol.native.decode`, or None (see the module's comment).
#[pyo3::pyfunction]
pub fn reports_check(body: &[u8], msgpack: bool) -> Option<(String, String, Vec<i64>, u64)> {
    let s = if msgpack {
        request(&mut Rd::new(body))
    } else {
        request(&mut Js::new(body))
    }?;
    Some((s.agent.to_owned(), s.incarnation.to_owned(), s.seqs, s.points))
}
