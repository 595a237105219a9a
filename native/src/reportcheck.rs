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

const MAX_NAME: usize = 1024;
const MAX_LABEL_VALUE: usize = 4096;
const MAX_LABELS: usize = 64;
const MAX_AGENT: usize = 256;
const MAX_INCARNATION: usize = 64;
const MAX_TIME_MS: i64 = 4_102_444_800_000;
const MIN_POINT_TIME_MS: i64 = 100_000_000_000;

/// One format's tokens, read in the order the schema walks them. `None`: not certainly valid.
trait Src<'a> {
    fn map(&mut self) -> Option<()>;
    /// The next key of the innermost map, `Some(None)` at its end.
    fn key(&mut self) -> Option<Option<&'a [u8]>>;
    fn array(&mut self) -> Option<()>;
    /// Whether another item follows in the innermost array.
    fn item(&mut self) -> Option<bool>;
    /// A string, valid UTF-8.
    fn text(&mut self) -> Option<&'a [u8]>;
    /// An integer token that fits an i64.
    fn int(&mut self) -> Option<i64>;
    /// A value msgspec decodes into a float.
    fn float(&mut self) -> Option<()>;
    /// Nothing left after the top-level value.
    fn end(&mut self) -> Option<()>;
}

struct Json<'a> {
    b: &'a [u8],
    p: usize,
    /// Per open map or array: whether its first entry is still to come.
    first: Vec<bool>,
}

impl<'a> Json<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.p), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.p += 1;
        }
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.p) == Some(&c)).then(|| self.p += 1)
    }

    /// Whether the innermost container ends here (consumed with its `close`); else past its `,`.
    fn next(&mut self, close: u8) -> Option<bool> {
        self.ws();
        if self.b.get(self.p) == Some(&close) {
            self.p += 1;
            self.first.pop()?;
            return Some(false);
        }
        let first = self.first.last_mut()?;
        if *first {
            *first = false;
        } else {
            self.byte(b',')?;
        }
        Some(true)
    }

    fn digits(&mut self) -> usize {
        let s = self.p;
        while self.b.get(self.p).is_some_and(u8::is_ascii_digit) {
            self.p += 1;
        }
        self.p - s
    }
}

impl<'a> Src<'a> for Json<'a> {
    fn map(&mut self) -> Option<()> {
        self.byte(b'{')?;
        self.first.push(true);
        Some(())
    }

    fn key(&mut self) -> Option<Option<&'a [u8]>> {
        if !self.next(b'}')? {
            return Some(None);
        }
        let k = self.text()?;
        self.byte(b':')?;
        Some(Some(k))
    }

    fn array(&mut self) -> Option<()> {
        self.byte(b'[')?;
        self.first.push(true);
        Some(())
    }

    fn item(&mut self) -> Option<bool> {
        self.next(b']')
    }

    fn text(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let s = self.p;
        let mut ascii = true;
        loop {
            match *self.b.get(self.p)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                c => {
                    ascii &= c < 0x80;
                    self.p += 1;
                }
            }
        }
        let out = &self.b[s..self.p];
        self.p += 1;
        if ascii {
            Some(out)
        } else {
            utf8(out)
        }
    }

    fn int(&mut self) -> Option<i64> {
        self.ws();
        let s = self.p;
        let n = self.digits();
        // JSON has no leading zeros; more than 19 digits cannot fit; a fraction or exponent makes
        // it a float (a minus sign is left to the exact path: no int field here takes one).
        if n == 0 || n > 19 || (n > 1 && self.b[s] == b'0') {
            return None;
        }
        if matches!(self.b.get(self.p), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.b[s..self.p]).ok()?.parse::<i64>().ok()
    }

    fn float(&mut self) -> Option<()> {
        self.ws();
        let s = self.p;
        if self.b.get(self.p) == Some(&b'-') {
            self.p += 1;
        }
        let lead = self.p;
        let n = self.digits();
        if n == 0 || (n > 1 && self.b[lead] == b'0') {
            return None;
        }
        if self.b.get(self.p) == Some(&b'.') {
            self.p += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.p), Some(b'e' | b'E')) {
            self.p += 1;
            if matches!(self.b.get(self.p), Some(b'+' | b'-')) {
                self.p += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let x: f64 = std::str::from_utf8(&self.b[s..self.p]).ok()?.parse().ok()?;
        // msgspec refuses a number beyond the float range ("Number out of range"); stay well inside.
        (x.abs() <= 1e300).then_some(())
    }

    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.p == self.b.len() && self.first.is_empty()).then_some(())
    }
}

struct Msgpack<'a> {
    b: &'a [u8],
    p: usize,
    /// Per open map or array: entries still to come.
    left: Vec<u32>,
}

impl<'a> Msgpack<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(out)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    fn tag(&mut self) -> Option<u8> {
        let t = *self.b.get(self.p)?;
        self.p += 1;
        Some(t)
    }

    fn open(&mut self, fix: u8, wide16: u8, wide32: u8) -> Option<()> {
        let t = self.tag()?;
        let n = match t {
            _ if t & 0xf0 == fix => (t & 0x0f) as u64,
            _ if t == wide16 => self.uint(2)?,
            _ if t == wide32 => self.uint(4)?,
            _ => return None,
        };
        self.left.push(n as u32);
        Some(())
    }

    fn next(&mut self) -> Option<bool> {
        let left = self.left.last_mut()?;
        if *left == 0 {
            self.left.pop();
            return Some(false);
        }
        *left -= 1;
        Some(true)
    }
}

impl<'a> Src<'a> for Msgpack<'a> {
    fn map(&mut self) -> Option<()> {
        self.open(0x80, 0xde, 0xdf)
    }

    fn key(&mut self) -> Option<Option<&'a [u8]>> {
        if !self.next()? {
            return Some(None);
        }
        self.text().map(Some)
    }

    fn array(&mut self) -> Option<()> {
        self.open(0x90, 0xdc, 0xdd)
    }

    fn item(&mut self) -> Option<bool> {
        self.next()
    }

    fn text(&mut self) -> Option<&'a [u8]> {
        let t = self.tag()?;
        let n = match t {
            0xa0..=0xbf => (t & 0x1f) as usize,
            0xd9 => self.uint(1)? as usize,
            0xda => self.uint(2)? as usize,
            0xdb => self.uint(4)? as usize,
            _ => return None,
        };
        utf8(self.take(n)?)
    }

    fn int(&mut self) -> Option<i64> {
        let t = self.tag()?;
        Some(match t {
            0x00..=0x7f => t as i64,
            0xe0..=0xff => t as i8 as i64,
            0xcc => self.uint(1)? as i64,
            0xcd => self.uint(2)? as i64,
            0xce => self.uint(4)? as i64,
            0xcf => i64::try_from(self.uint(8)?).ok()?,
            0xd0 => self.uint(1)? as u8 as i8 as i64,
            0xd1 => self.uint(2)? as u16 as i16 as i64,
            0xd2 => self.uint(4)? as u32 as i32 as i64,
            0xd3 => self.uint(8)? as i64,
            _ => return None,
        })
    }

    fn float(&mut self) -> Option<()> {
        match *self.b.get(self.p)? {
            0xca => self.take(5).map(|_| ()),
            0xcb => self.take(9).map(|_| ()),
            0xcf => self.take(9).map(|_| ()), // a uint64 beyond i64 is still a float's value
            _ => self.int().map(|_| ()),
        }
    }

    fn end(&mut self) -> Option<()> {
        (self.p == self.b.len() && self.left.is_empty()).then_some(())
    }
}

fn utf8(b: &[u8]) -> Option<&[u8]> {
    (b.is_ascii() || std::str::from_utf8(b).is_ok()).then_some(b)
}

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
    let mut names: Vec<&[u8]> = Vec::new();
    s.map()?;
    while let Some(name) = s.key()? {
        if names.len() == MAX_LABELS || names.contains(&name) || !chars_within(name, 1, MAX_NAME) {
            return None;
        }
        names.push(name);
        if !chars_within(s.text()?, 0, MAX_LABEL_VALUE) {
            return None;
        }
    }
    Some(())
}

fn point<'a, S: Src<'a>>(s: &mut S) -> Option<()> {
    let mut seen = 0u32;
    s.map()?;
    while let Some(k) = s.key()? {
        match k {
            b"metric" => {
                once(&mut seen, 1)?;
                chars_within(s.text()?, 1, MAX_NAME).then_some(())?;
            }
            b"t" => {
                once(&mut seen, 2)?;
                (MIN_POINT_TIME_MS..=MAX_TIME_MS).contains(&s.int()?).then_some(())?;
            }
            b"v" => {
                once(&mut seen, 4)?;
                s.float()?;
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
    s.map()?;
    while let Some(k) = s.key()? {
        match k {
            b"seq" => {
                once(&mut seen, 1)?;
                let seq = s.int()?;
                (seq >= 1).then_some(())?;
                seqs.push(seq);
            }
            b"points" => {
                once(&mut seen, 2)?;
                s.array()?;
                while s.item()? {
                    point(s)?;
                    *points += 1;
                }
            }
            b"time" => {
                once(&mut seen, 4)?;
                (0..=MAX_TIME_MS).contains(&s.int()?).then_some(())?;
            }
            _ => return None,
        }
    }
    (seen & 3 == 3).then_some(())
}

fn spool<'a, S: Src<'a>>(s: &mut S) -> Option<()> {
    let (mut seen, mut first_pending, mut last) = (0u32, 0i64, 0i64);
    s.map()?;
    while let Some(k) = s.key()? {
        let (bit, max) = match k {
            b"pending_reports" => (1, i64::MAX),
            b"pending_bytes" => (2, i64::MAX),
            b"oldest_pending_ms" => (4, MAX_TIME_MS),
            b"first_pending_seq" => (8, i64::MAX),
            b"last_seq" => (16, i64::MAX),
            _ => return None,
        };
        once(&mut seen, bit)?;
        let v = s.int()?;
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
    agent: &'a [u8],
    incarnation: &'a [u8],
    seqs: Vec<i64>,
    points: u64,
}

fn request<'a, S: Src<'a>>(s: &mut S) -> Option<Summary<'a>> {
    let mut seen = 0u32;
    let mut out = Summary { agent: b"", incarnation: b"", seqs: Vec::new(), points: 0 };
    s.map()?;
    while let Some(k) = s.key()? {
        match k {
            b"agent" => {
                once(&mut seen, 1)?;
                out.agent = s.text()?;
                // the agent becomes a text column, and PostgreSQL text cannot hold NUL
                (chars_within(out.agent, 1, MAX_AGENT) && !out.agent.contains(&0)).then_some(())?;
            }
            b"reports" => {
                once(&mut seen, 2)?;
                s.array()?;
                while s.item()? {
                    report(s, &mut out.seqs, &mut out.points)?;
                }
            }
            b"incarnation" => {
                once(&mut seen, 4)?;
                out.incarnation = s.text()?;
                let printable = out.incarnation.iter().all(|c| (b'!'..=b'~').contains(c));
                (out.incarnation.len() <= MAX_INCARNATION && printable).then_some(())?;
            }
            b"first_seq" => {
                once(&mut seen, 8)?;
                (s.int()? >= 1).then_some(())?;
            }
            b"dropped" => {
                once(&mut seen, 16)?;
                s.array()?;
                if s.item()? {
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
    s.end()?;
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
        request(&mut Msgpack { b: body, p: 0, left: Vec::new() })
    } else {
        request(&mut Json { b: body, p: 0, first: Vec::new() })
    }?;
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    Some((text(s.agent)?, text(s.incarnation)?, s.seqs, s.points))
}
