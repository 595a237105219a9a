//! msgpack and plain JSON read token by token as msgspec reads them (`Src`: `Rd`, `Js`), for the two
//! readers of native-protocol requests: ingest's check (reportcheck.rs) and the worker's decode into
//! columns (reports.rs). Each answers `None` for anything it is not certain msgspec reads the same
//! way; what a caller then does (refuse, or leave the body to msgspec) is its own rule.

pub(crate) struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Rd { b, p: 0 }
    }

    fn byte(&mut self) -> Option<u8> {
        let x = *self.b.get(self.p)?;
        self.p += 1;
        Some(x)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() - self.p {
            return None;
        }
        let out = &self.b[self.p..self.p + n];
        self.p += n;
        Some(out)
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        Some(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len_of(&mut self, m: u8, fix_lo: u8, fix_hi: u8, w16: u8, w32: u8) -> Option<usize> {
        if (fix_lo..=fix_hi).contains(&m) {
            Some((m - fix_lo) as usize)
        } else if m == w16 {
            Some(u16::from_be_bytes(self.be()?) as usize)
        } else if m == w32 {
            Some(u32::from_be_bytes(self.be()?) as usize)
        } else {
            None
        }
    }

    /// A str's bytes, not checked to be UTF-8 (a field name, compared to ASCII names).
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let m = self.byte()?;
        let n = if m == 0xd9 {
            self.byte()? as usize
        } else {
            self.len_of(m, 0xa0, 0xbf, 0xda, 0xdb)?
        };
        self.take(n)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// Where the next byte is read.
    pub(crate) fn pos(&self) -> usize {
        self.p
    }

    /// Pass over one whole value of any type, nested at most `depth` deep (None past it, or for a
    /// value that is not msgpack: 0xc1, a length past the end).
    pub(crate) fn skip(&mut self, depth: u32) -> Option<()> {
        let m = self.byte()?;
        let (fixed, items): (usize, usize) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (m - 0x80) as usize),
            0x90..=0x9f => (0, (m - 0x90) as usize),
            0xa0..=0xbf => ((m - 0xa0) as usize, 0),
            0xc4 | 0xd9 => (self.byte()? as usize, 0),
            0xc5 | 0xda => (u16::from_be_bytes(self.be()?) as usize, 0),
            0xc6 | 0xdb => (u32::from_be_bytes(self.be()?) as usize, 0),
            0xc7 => (1 + self.byte()? as usize, 0),
            0xc8 => (1 + u16::from_be_bytes(self.be()?) as usize, 0),
            0xc9 => (1 + u32::from_be_bytes(self.be()?) as usize, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, u16::from_be_bytes(self.be()?) as usize),
            0xdd => (0, u32::from_be_bytes(self.be()?) as usize),
            0xde => (0, 2 * u16::from_be_bytes(self.be()?) as usize),
            0xdf => (0, 2 * u32::from_be_bytes(self.be()?) as usize),
            0xc1 => return None,
        };
        self.take(fixed)?;
        if items > 0 {
            // each item takes a byte at least: a count past the end is malformed
            if depth == 0 || items > self.left() {
                return None;
            }
            for _ in 0..items {
                self.skip(depth - 1)?;
            }
        }
        Some(())
    }

    fn map_len(&mut self) -> Option<usize> {
        let m = self.byte()?;
        self.len_of(m, 0x80, 0x8f, 0xde, 0xdf)
    }

    fn array_len(&mut self) -> Option<usize> {
        let m = self.byte()?;
        self.len_of(m, 0x90, 0x9f, 0xdc, 0xdd)
    }

    fn int_after(&mut self, m: u8) -> Option<i64> {
        Some(match m {
            0x00..=0x7f => m as i64,
            0xe0..=0xff => m as i8 as i64,
            0xcc => self.byte()? as i64,
            0xcd => u16::from_be_bytes(self.be()?) as i64,
            0xce => u32::from_be_bytes(self.be()?) as i64,
            0xcf => i64::try_from(u64::from_be_bytes(self.be()?)).ok()?,
            0xd0 => self.byte()? as i8 as i64,
            0xd1 => i16::from_be_bytes(self.be()?) as i64,
            0xd2 => i32::from_be_bytes(self.be()?) as i64,
            0xd3 => i64::from_be_bytes(self.be()?),
            _ => return None,
        })
    }

    fn int(&mut self) -> Option<i64> {
        let m = self.byte()?;
        self.int_after(m)
    }

    fn float(&mut self) -> Option<f64> {
        let m = self.byte()?;
        match m {
            0xcb => Some(f64::from_bits(u64::from_be_bytes(self.be()?))),
            0xca => {
                let f = f32::from_bits(u32::from_be_bytes(self.be()?));
                // a NaN's payload through the widening is the one place the two could differ
                (!f.is_nan()).then_some(f as f64)
            }
            _ => {
                let i = self.int_after(m)?;
                (i.unsigned_abs() <= 1 << 53).then_some(i as f64)
            }
        }
    }
}

/// What the report reader needs of a format: msgpack (`Rd`) or JSON (`Js`). A map or an array is
/// opened, then asked for its next key or element until it says it has ended (None: malformed or
/// not certain, the report is left to Python).
pub(crate) trait Src<'a> {
    type Open;
    fn map(&mut self) -> Option<Self::Open>;
    /// The next key's bytes (compared to ASCII field names only), or None at the map's end.
    fn key(&mut self, m: &mut Self::Open) -> Option<Option<&'a [u8]>>;
    fn array(&mut self) -> Option<Self::Open>;
    fn next(&mut self, m: &mut Self::Open) -> Option<bool>;
    /// How many elements an opened array holds, where the format says so (else 0): room to
    /// reserve.
    fn count(&self, m: &Self::Open) -> usize;
    /// The next label (name, value) of a map of strings, or None at its end.
    fn entry(&mut self, m: &mut Self::Open) -> Option<Option<(&'a str, &'a str)>>;
    fn string(&mut self) -> Option<&'a str>;
    fn integer(&mut self) -> Option<i64>;
    fn number(&mut self) -> Option<f64>;
    /// A value msgspec decodes into a float, its value not needed: any float or int in msgpack;
    /// in JSON, a number of valid grammar well inside the float range (msgspec refuses one beyond
    /// it as "Number out of range").
    fn valid_number(&mut self) -> Option<()>;
    /// Whether all was read (what may follow the value is allowed).
    fn at_end(&mut self) -> bool;
    /// At most how many more elements there may be (what is left of the input).
    fn left(&self) -> usize;
}

impl<'a> Src<'a> for Rd<'a> {
    type Open = usize;
    fn map(&mut self) -> Option<usize> {
        self.map_len()
    }
    fn key(&mut self, m: &mut usize) -> Option<Option<&'a [u8]>> {
        if *m == 0 {
            return Some(None);
        }
        *m -= 1;
        Some(Some(self.str_bytes()?))
    }
    fn array(&mut self) -> Option<usize> {
        let n = self.array_len()?;
        // each element takes at least a byte: a count past the end is malformed
        (n <= self.left()).then_some(n)
    }
    fn count(&self, m: &usize) -> usize {
        *m
    }
    fn next(&mut self, m: &mut usize) -> Option<bool> {
        if *m == 0 {
            return Some(false);
        }
        *m -= 1;
        Some(true)
    }
    fn entry(&mut self, m: &mut usize) -> Option<Option<(&'a str, &'a str)>> {
        if *m == 0 {
            return Some(None);
        }
        *m -= 1;
        Some(Some((self.str()?, self.str()?)))
    }
    fn string(&mut self) -> Option<&'a str> {
        self.str()
    }
    fn integer(&mut self) -> Option<i64> {
        self.int()
    }
    fn number(&mut self) -> Option<f64> {
        self.float()
    }
    fn valid_number(&mut self) -> Option<()> {
        match self.byte()? {
            0xca => self.take(4).map(|_| ()),
            0xcb | 0xcf => self.take(8).map(|_| ()), // a uint64 beyond i64 is a float's value still
            m => self.int_after(m).map(|_| ()),
        }
    }
    fn at_end(&mut self) -> bool {
        self.p == self.b.len()
    }
    fn left(&self) -> usize {
        self.b.len() - self.p
    }
}

/// JSON as msgspec reads it, only what is plain: a string with an escape or a control character, a
/// `t` that is not a plain integer of at most 18 digits, a `v` that is not a number of at most 15
/// significant digits times a power of ten within 1e±22 (exact in a double, so any parser gives the
/// same one), a negative zero `v`, or a literal (true, false, null) leaves the report to Python.
pub(crate) struct Js<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Js<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Js { b, p: 0 }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.p) {
            self.p += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.p).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.p += 1)
    }

    fn raw_str(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.p;
        loop {
            match *self.b.get(self.p)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.p += 1,
            }
        }
        self.p += 1;
        Some(&self.b[start..self.p - 1])
    }

    /// Before the next member of an object or array that was `first` so far: false at its end.
    fn more(&mut self, first: &mut bool, close: u8) -> Option<bool> {
        if self.peek()? == close {
            self.p += 1;
            return Some(false);
        }
        if !*first {
            self.eat(b',')?;
        }
        *first = false;
        Some(true)
    }

    fn digits(&mut self) -> usize {
        let start = self.p;
        while self.b.get(self.p).is_some_and(u8::is_ascii_digit) {
            self.p += 1;
        }
        self.p - start
    }
}

impl<'a> Src<'a> for Js<'a> {
    type Open = bool;
    fn map(&mut self) -> Option<bool> {
        self.eat(b'{').map(|_| true)
    }
    fn key(&mut self, m: &mut bool) -> Option<Option<&'a [u8]>> {
        if !self.more(m, b'}')? {
            return Some(None);
        }
        let k = self.raw_str()?;
        self.eat(b':')?;
        Some(Some(k))
    }
    fn array(&mut self) -> Option<bool> {
        self.eat(b'[').map(|_| true)
    }
    fn count(&self, _: &bool) -> usize {
        0
    }
    fn next(&mut self, m: &mut bool) -> Option<bool> {
        self.more(m, b']')
    }
    fn entry(&mut self, m: &mut bool) -> Option<Option<(&'a str, &'a str)>> {
        if !self.more(m, b'}')? {
            return Some(None);
        }
        let k = self.string()?;
        self.eat(b':')?;
        Some(Some((k, self.string()?)))
    }
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_str()?).ok()
    }
    fn integer(&mut self) -> Option<i64> {
        self.ws();
        let start = self.p;
        if self.b.get(self.p) == Some(&b'-') {
            self.p += 1;
        }
        let n = self.digits();
        let text = &self.b[start..self.p];
        let digits = &text[text.len() - n..];
        if n == 0 || n > 18 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.b.get(self.p), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok()
    }
    fn number(&mut self) -> Option<f64> {
        self.ws();
        let start = self.p;
        let negative = self.b.get(self.p) == Some(&b'-');
        if negative {
            self.p += 1;
        }
        let int_at = self.p;
        let n_int = self.digits();
        if n_int == 0 || (n_int > 1 && self.b[int_at] == b'0') {
            return None;
        }
        let mut mantissa: Vec<u8> = self.b[int_at..self.p].to_vec();
        let mut exp: i64 = 0;
        if self.b.get(self.p) == Some(&b'.') {
            self.p += 1;
            let at = self.p;
            let n = self.digits();
            if n == 0 {
                return None;
            }
            mantissa.extend_from_slice(&self.b[at..self.p]);
            exp -= n as i64;
        }
        if let Some(b'e' | b'E') = self.b.get(self.p) {
            self.p += 1;
            let sign_neg = match self.b.get(self.p) {
                Some(b'-') => {
                    self.p += 1;
                    true
                }
                Some(b'+') => {
                    self.p += 1;
                    false
                }
                _ => false,
            };
            let at = self.p;
            let n = self.digits();
            if n == 0 || n > 4 {
                return None;
            }
            let e: i64 = std::str::from_utf8(&self.b[at..self.p]).ok()?.parse().ok()?;
            exp += if sign_neg { -e } else { e };
        }
        // the significant digits: leading and trailing zeros dropped (the latter into the exponent)
        let lead = mantissa.iter().take_while(|&&d| d == b'0').count();
        let mut sig = &mantissa[lead..];
        while let [rest @ .., b'0'] = sig {
            sig = rest;
            exp += 1;
        }
        if sig.is_empty() {
            // zero: its sign is the one thing a parser might not keep
            return (!negative).then_some(0.0);
        }
        if sig.len() > 15 || !(-22..=22).contains(&exp) {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.p]).ok()?.parse().ok()
    }
    fn valid_number(&mut self) -> Option<()> {
        self.ws();
        let start = self.p;
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
        let x: f64 = std::str::from_utf8(&self.b[start..self.p]).ok()?.parse().ok()?;
        (x.abs() <= 1e300).then_some(())
    }
    fn at_end(&mut self) -> bool {
        self.ws();
        self.p == self.b.len()
    }
    fn left(&self) -> usize {
        self.b.len() - self.p
    }
}
