//! Reads of chunk rows of either kind (lossproof.store.embedded.read._assemble): the rows a chunk
//! query fetched, `(series_id, id, t_min, t_max, data)`, raw or packed, turned into columns in two
//! calls, without a Python object per chunk.
//!
//! `rawchunks` does this for raw chunks only; a read that met a single packed chunk (a day's range
//! right after a load is half raw, half packed, and all packed once compaction is done) went through
//! Python instead: each chunk opened (`chunks.open_many`: header unpacked, zstd frame size read, body
//! decompressed, a tuple made), its columns gathered by generators, then decoded, range-checked and
//! copied by numpy passes. That was a quarter of a day-long `sum by (job) (rate(...))`. Here the
//! frame is decompressed by the same library (libzstd, through the `zstd` crate) into a buffer used
//! again for the next chunk, and decoded by `chunkdecode::decode_one`.
//!
//! Damage is never reported from here: a chunk whose header, frame or body is not exactly what
//! `chunks._opened` accepts makes `row_heads` answer None and `assemble_rows` answer verdict 4, and
//! the caller then opens the rows in Python, which raises the ChunkError that says what is wrong.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple};
use zstd::zstd_safe;

use crate::chunkdecode::decode_one;
use crate::rawchunks::{cells, ints};

const RAW: u8 = 1;
const PACKED: u8 = 2;
const PENDING: u8 = 4;
const V_XOR: u8 = 0;
const V_DECIMAL: u8 = 1;
const MAX_DECIMALS: u8 = 9;
/// `chunks._PACKED_HEAD`: kind, value mode, u32 n, i64 first t (little-endian, packed)
const HEAD: usize = 14;
/// `chunks._MAX_BLOCK`: what a zstd block regenerates at most (it takes at least 4 bytes of its
/// frame), so a frame of f bytes decompresses to at most `MAX_BLOCK * (f / 4 + 1)` bytes
const MAX_BLOCK: u64 = 128 * 1024;

/// A chunk's header as `chunks._opened` reads it: `(kind, n, mode, first t, payload)` (a raw
/// chunk's payload its whole data, a packed one's its zstd frame), or None when `_opened` would
/// raise (or `open_many`'s fast path and `_opened` would disagree): not a raw chunk of 1 + 16 n
/// bytes, nor a packed one with a known mode, n > 0, and a frame declaring 16 n - 8 bytes, as many
/// as a frame of its size can hold (`chunks._frame_can_hold`: a damaged n of a 30-byte chunk is not
/// GBs of columns allocated and zeroed before its frame is found out).
/// A sealed chunk (`seal.rs`) is read without its checksum, which this does not verify: the decode
/// does (`decode_run_with`), once.
pub(crate) fn head(data: &[u8]) -> Option<(u8, usize, u8, i64, &[u8])> {
    let (kind, data, _) = crate::seal::unsealed(data)?;
    match kind {
        RAW if (data.len() - 1).is_multiple_of(16) => Some((RAW, (data.len() - 1) / 16, 0, 0, data)),
        // (a PENDING chunk is a PACKED one that packing is still to merge: read alike)
        PACKED | PENDING if data.len() > HEAD => {
            let mode = data[1];
            let n = u32::from_le_bytes(data[2..6].try_into().unwrap()) as usize;
            let first = i64::from_le_bytes(data[6..14].try_into().unwrap());
            if n == 0 || !(mode == V_XOR || (V_DECIMAL..=V_DECIMAL + MAX_DECIMALS).contains(&mode)) {
                return None;
            }
            let frame = &data[HEAD..];
            let declared = zstd_safe::get_frame_content_size(frame).ok()??;
            let holds = declared <= MAX_BLOCK.saturating_mul(frame.len() as u64 / 4 + 1);
            (declared == 16 * n as u64 - 8 && holds).then_some((PACKED, n, mode, first, frame))
        }
        _ => None,
    }
}

/// Whether `n` points can be a chunk stored as `t_min ..= t_max`: its times strictly increase
/// from one to the other, so it has at most `t_max - t_min + 1` of them (else it is damaged, and
/// its columns are not allocated: the Python path says what is wrong).
pub(crate) fn fits_range(n: usize, t_min: i64, t_max: i64) -> bool {
    n == 0 || (t_max as i128) - (t_min as i128) >= n as i128 - 1
}

/// The data of row `i` (a tuple whose 5th item is bytes).
pub(crate) fn row_data<'py>(row: &Bound<'py, PyTuple>, i: usize) -> PyResult<Bound<'py, PyBytes>> {
    if row.len() != 5 {
        return Err(PyValueError::new_err(format!("row {i}: {} items", row.len())));
    }
    Ok(row.get_item(4)?.cast_into::<PyBytes>()?)
}

/// `slice_rows(sids, order, ts, vs, starts, lens, from_ms, to_ms) -> list`: slices of a part's
/// columns as the chunk rows `(series_id, order, t_min, t_max, data)` of RAW chunks that the rows'
/// readers take (lossproof.store.embedded.read's `_block_rows`): slice k of series `sids[k]` is
/// the points `starts[k] .. starts[k] + lens[k]` of `ts` and `vs` (little-endian int64 and float64
/// bytes), its range its first and last t. Only the slices with points that overlap
/// `[from_ms, to_ms]`, and those whose times do not increase (damage: kept, so that the reader
/// that takes the rows says so). `sids`, `starts`, `lens`: native-endian int64 bytes. A slice
/// outside the columns is a ValueError. (In Python, a slice cost ~1 us: a millisecond of a query
/// over 200 series right after a load, with six parts live.)
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn slice_rows<'py>(
    py: Python<'py>,
    sids: &[u8],
    order: i64,
    ts: &[u8],
    vs: &[u8],
    starts: &[u8],
    lens: &[u8],
    from_ms: i64,
    to_ms: i64,
) -> PyResult<Bound<'py, PyList>> {
    let (sids, starts, lens) = (ints(sids, "sids")?, ints(starts, "starts")?, ints(lens, "lens")?);
    if sids.len() != starts.len() || sids.len() != lens.len() {
        return Err(PyValueError::new_err("sids, starts and lens differ in length"));
    }
    if !ts.len().is_multiple_of(8) || ts.len() != vs.len() {
        return Err(PyValueError::new_err(format!("columns of {} and {} bytes", ts.len(), vs.len())));
    }
    let points = (ts.len() / 8) as i64;
    let t_at = |k: usize| i64::from_le_bytes(ts[8 * k..8 * k + 8].try_into().unwrap());
    let out = PyList::empty(py);
    for (k, ((&sid, &a), &n)) in sids.iter().zip(&starts).zip(&lens).enumerate() {
        if a < 0 || n < 0 || n > points - a {
            return Err(PyValueError::new_err(format!("slice {k}: {n} points from {a} of {points}")));
        }
        if n == 0 {
            continue;
        }
        let (a, n) = (a as usize, n as usize);
        let (t_min, t_max) = (t_at(a), t_at(a + n - 1));
        let overlaps = t_max >= from_ms && t_min <= to_ms;
        if !overlaps && (a + 1..a + n).all(|i| t_at(i) > t_at(i - 1)) {
            continue;
        }
        let (t, v) = (&ts[8 * a..8 * (a + n)], &vs[8 * a..8 * (a + n)]);
        let data = PyBytes::new_with(py, 1 + 16 * n, |b| {
            b[0] = RAW;
            b[1..1 + 8 * n].copy_from_slice(t);
            b[1 + 8 * n..].copy_from_slice(v);
            Ok(())
        })?;
        out.append((sid, order, t_min, t_max, data))?;
    }
    Ok(out)
}

/// `row_heads(rows) -> bytearray | None`: for rows `(series_id, id, t_min, t_max, data)` (tuples;
/// ints and bytes) of raw and packed chunks alike, five columns of native-endian int64 (series ids, chunk ids, t_mins, t_maxes, each
/// chunk's number of points from its header). None when any row's header is not one that
/// `chunks._opened` accepts (see `head`), or declares more points than its row's time range holds
/// (`fits_range`).
#[pyfunction]
pub fn row_heads<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
) -> PyResult<Option<Bound<'py, PyByteArray>>> {
    let m = rows.len();
    let mut cols = vec![0i64; 5 * m];
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let Some((_, n, _, _, _)) = head(data.as_bytes()) else {
            return Ok(None);
        };
        for c in 0..4 {
            cols[c * m + i] = row.get_item(c)?.extract::<i64>()?;
        }
        if !fits_range(n, cols[2 * m + i], cols[3 * m + i]) {
            return Ok(None);
        }
        cols[4 * m + i] = n as i64;
    }
    let out = PyByteArray::new_with(py, 8 * cols.len(), |buf| {
        for (dst, x) in buf.chunks_exact_mut(8).zip(&cols) {
            dst.copy_from_slice(&x.to_ne_bytes());
        }
        Ok(())
    })?;
    Ok(Some(out))
}

/// `assemble_rows(rows, at, total, src_ts, src_vs, seg_src, seg_start, seg_dest, seg_len) ->
/// (columns, verdict)`: `total` points of timestamps (int64) then as many values (float64),
/// little-endian, in one bytearray (positions nothing is given stay 0):
///
/// - row i's chunk (raw: copied; packed: decompressed and decoded, as `chunks.decode_into` lays it
///   out) to positions `at[i]` ..;
/// - segment k, `seg_len[k]` points of source `seg_src[k]` (`src_ts[j]`, `src_vs[j]`: contiguous
///   int64 and float64 buffers, numpy arrays) from `seg_start[k]`, copied to `seg_dest[k]` ..
///
/// (`at` and the `seg_*`: native-endian int64 bytes.) Verdict 0: every chunk's and segment's times
/// strictly increase, and every chunk's begin and end at its row's t_min and t_max; 1: some chunk's
/// times do not increase; 2: they do, but some chunk's first or last time is not its row's range;
/// 3: the chunks are right, but some segment's times do not increase; 4: some packed chunk's frame
/// did not decompress to exactly its body (the columns are then not to be used: the caller opens
/// the rows in Python, which says what is wrong). A row `row_heads` would refuse (its header, or its
/// count against its time range), or anything that does not fit, is a ValueError.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn assemble_rows<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
    src_ts: Vec<PyBuffer<i64>>,
    src_vs: Vec<PyBuffer<f64>>,
    seg_src: &[u8],
    seg_start: &[u8],
    seg_dest: &[u8],
    seg_len: &[u8],
) -> PyResult<(Bound<'py, PyByteArray>, u8)> {
    let (cols, verdict) = assemble(
        py, rows, at, total, src_ts, src_vs, seg_src, seg_start, seg_dest, seg_len, None,
    )?;
    Ok((cols.expect("a fresh bytearray"), verdict))
}

/// `assemble_rows_into(out, rows, at, total, src_ts, src_vs, seg_src, seg_start, seg_dest,
/// seg_len) -> verdict`: what `assemble_rows` answers, its columns written into the first
/// `16 * total` bytes of `out` (a bytearray at least that long; positions nothing is given are
/// zeroed there too) instead of a new bytearray: a read in pieces uses one buffer for all of them,
/// not fresh memory each time (faulting in a piece's pages cost as much as decoding it). It is
/// written without the GIL, an export of it held meanwhile (another thread's resize fails with
/// BufferError); its bytes must be the caller's own, which nothing else reads or writes meanwhile:
/// lossproof.store.embedded.read's scratch of one read.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn assemble_rows_into<'py>(
    py: Python<'py>,
    out: &Bound<'py, PyByteArray>,
    rows: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
    src_ts: Vec<PyBuffer<i64>>,
    src_vs: Vec<PyBuffer<f64>>,
    seg_src: &[u8],
    seg_start: &[u8],
    seg_dest: &[u8],
    seg_len: &[u8],
) -> PyResult<u8> {
    let (_, verdict) = assemble(
        py, rows, at, total, src_ts, src_vs, seg_src, seg_start, seg_dest, seg_len, Some(out),
    )?;
    Ok(verdict)
}

#[allow(clippy::too_many_arguments)]
fn assemble<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
    at: &[u8],
    total: usize,
    src_ts: Vec<PyBuffer<i64>>,
    src_vs: Vec<PyBuffer<f64>>,
    seg_src: &[u8],
    seg_start: &[u8],
    seg_dest: &[u8],
    seg_len: &[u8],
    into: Option<&Bound<'py, PyByteArray>>,
) -> PyResult<(Option<Bound<'py, PyByteArray>>, u8)> {
    let at = ints(at, "at")?;
    if at.len() != rows.len() {
        return Err(PyValueError::new_err(format!(
            "{} offsets for {} rows",
            at.len(),
            rows.len()
        )));
    }
    if total > (isize::MAX as usize) / 16 {
        return Err(PyValueError::new_err(format!("{total} points")));
    }
    let fits = |start: i64, n: u64, within: usize| {
        start >= 0 && (start as u64).checked_add(n).is_some_and(|e| e <= within as u64)
    };
    let mut got: Vec<(Bound<'py, PyBytes>, usize, i64, i64)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = row.cast_into::<PyTuple>()?;
        let data = row_data(&row, i)?;
        let (_, n, _, _, _) = head(data.as_bytes())
            .ok_or_else(|| PyValueError::new_err(format!("row {i}: not a chunk row_heads reads")))?;
        let start = at[i];
        if !fits(start, n as u64, total) {
            return Err(PyValueError::new_err(format!(
                "row {i}: {n} points at {start} of {total}"
            )));
        }
        let t_min = row.get_item(2)?.extract::<i64>()?;
        let t_max = row.get_item(3)?.extract::<i64>()?;
        if !fits_range(n, t_min, t_max) {
            return Err(PyValueError::new_err(format!(
                "row {i}: {n} points in [{t_min}, {t_max}]"
            )));
        }
        got.push((data, start as usize, t_min, t_max));
    }
    if src_ts.len() != src_vs.len() {
        return Err(PyValueError::new_err("src_ts and src_vs differ in length"));
    }
    let mut sources = Vec::with_capacity(src_ts.len());
    for (j, (tb, vb)) in src_ts.iter().zip(&src_vs).enumerate() {
        let (t, v) = (cells(py, tb, "src_ts")?, cells(py, vb, "src_vs")?);
        if t.len() != v.len() {
            return Err(PyValueError::new_err(format!(
                "source {j}: {} times, {} values",
                t.len(),
                v.len()
            )));
        }
        sources.push((t, v));
    }
    let (s_src, s_start) = (ints(seg_src, "seg_src")?, ints(seg_start, "seg_start")?);
    let (s_dest, s_len) = (ints(seg_dest, "seg_dest")?, ints(seg_len, "seg_len")?);
    if s_start.len() != s_src.len() || s_dest.len() != s_src.len() || s_len.len() != s_src.len() {
        return Err(PyValueError::new_err("segment columns differ in length"));
    }
    for k in 0..s_src.len() {
        let j = s_src[k];
        let ok = j >= 0
            && (j as usize) < sources.len()
            && s_len[k] >= 0
            && fits(s_start[k], s_len[k] as u64, sources[j as usize].0.len())
            && fits(s_dest[k], s_len[k] as u64, total);
        if !ok {
            return Err(PyValueError::new_err(format!(
                "segment {k}: {} points of source {j} at {} to {} of {total}",
                s_len[k], s_start[k], s_dest[k]
            )));
        }
    }
    let chunks: Vec<Chunk> = got
        .iter()
        .map(|(data, at, t_min, t_max)| Chunk {
            data: data.as_bytes(),
            at: *at,
            n: head(data.as_bytes()).map_or(0, |h| h.1),
            t_min: *t_min,
            t_max: *t_max,
        })
        .collect();
    let fill = |buf: &mut [u8]| -> u8 {
        let (ts, vs) = buf.split_at_mut(8 * total);
        let mut segs_increasing = true;
        // (the chunks' bytes are immutable, and held by `got`; the columns are this call's own)
        let (increasing, ranges, damaged) = py.detach(|| decode_parallel(&chunks, ts, vs));
        if damaged {
            // (not to be used; zeroed rather than left as what a new buffer held)
            ts.fill(0);
            vs.fill(0);
            return 4;
        }
        for k in 0..s_src.len() {
            let (n, from, to) = (s_len[k] as usize, s_start[k] as usize, s_dest[k] as usize);
            let (st, sv) = sources[s_src[k] as usize];
            let mut prev = i64::MIN;
            for (p, (x, y)) in st[from..from + n].iter().zip(&sv[from..from + n]).enumerate() {
                let (x, y) = (x.get(), y.get());
                segs_increasing &= p == 0 || x > prev;
                prev = x;
                ts[8 * (to + p)..8 * (to + p) + 8].copy_from_slice(&x.to_le_bytes());
                vs[8 * (to + p)..8 * (to + p) + 8].copy_from_slice(&y.to_le_bytes());
            }
        }
        if !increasing {
            1
        } else if !ranges {
            2
        } else if !segs_increasing {
            3
        } else {
            0
        }
    };
    // a new bytearray is not zeroed first: every point of it is written below (zero_gaps then
    // fill), before Python sees it (zeroing 16 bytes a point was a pass of its own)
    let fresh = match into {
        Some(_) => None,
        None => {
            // SAFETY: a new bytearray of 16 * total bytes (at most isize::MAX, checked above),
            // its contents not initialised; owned here
            let ptr = unsafe {
                pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), (16 * total) as isize)
            };
            Some(unsafe { Bound::from_owned_ptr_or_err(py, ptr)? }.cast_into::<PyByteArray>()?)
        }
    };
    let out = into.or(fresh.as_ref()).expect("a buffer");
    // an export of the caller's bytearray held until its columns are written: while it is held,
    // no other thread can resize (reallocate) it (BufferError) while it is written without the GIL
    let _export = match into {
        Some(b) => Some(PyBuffer::<u8>::get(b.as_any())?),
        None => None,
    };
    if out.len() < 16 * total {
        return Err(PyValueError::new_err(format!(
            "a buffer of {} bytes for {total} points",
            out.len()
        )));
    }
    // SAFETY: the bytearray is new, or the caller's own (see assemble_rows_into): nothing else
    // reads, writes or resizes it while this runs; it is at least 16 * total bytes long (raw
    // bytes: any contents are valid u8s)
    let buf = unsafe { &mut out.as_bytes_mut()[..16 * total] };
    let mut covered: Vec<(usize, usize)> = chunks.iter().map(|c| (c.at, c.at + c.n)).collect();
    covered.extend((0..s_src.len()).map(|k| (s_dest[k] as usize, (s_dest[k] + s_len[k]) as usize)));
    zero_gaps(buf, total, covered);
    let verdict = fill(buf);
    Ok((fresh, verdict))
}

/// Zeroes the points of both columns (`buf`: `total` times, then as many values) that no range
/// `[a, b)` of `covered` covers.
fn zero_gaps(buf: &mut [u8], total: usize, mut covered: Vec<(usize, usize)>) {
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut upto = 0usize;
    for (a, b) in covered {
        if a > upto {
            gaps.push((upto, a));
        }
        upto = upto.max(b);
    }
    if upto < total {
        gaps.push((upto, total));
    }
    for (a, b) in gaps {
        buf[8 * a..8 * b].fill(0);
        buf[8 * (total + a)..8 * (total + b)].fill(0);
    }
}

/// Points from which a read's chunks are decoded on two threads (a thread costs ~20 us to start).
const PARALLEL_POINTS: usize = 200_000;

/// `decode_run` on two threads when there are enough points and two CPUs: the chunks in the order
/// of their places, cut in two where the points are halved, each half decoding into its own part
/// of the columns. Chunks whose places overlap (not what the read gives) are decoded in one run, in
/// their order, as before: the answer is the same either way.
fn decode_parallel(chunks: &[Chunk], ts: &mut [u8], vs: &mut [u8]) -> (bool, bool, bool) {
    let total = ts.len() / 8;
    let two = crate::two_cpus();
    if !two || total < PARALLEL_POINTS || chunks.len() < 2 {
        return decode_run(chunks, ts, vs, 0);
    }
    let mut order: Vec<(usize, usize)> = chunks.iter().enumerate().map(|(i, c)| (c.at, i)).collect();
    order.sort_unstable();
    let ends_before = |k: usize| chunks[order[k].1].at + chunks[order[k].1].n;
    if (1..order.len()).any(|k| ends_before(k - 1) > order[k].0) {
        return decode_run(chunks, ts, vs, 0);
    }
    // the first chunk whose place starts at half the points or after (at least one a side)
    let cut = order.partition_point(|&(a, _)| a < total / 2).clamp(1, order.len() - 1);
    let split = order[cut].0;
    let first: Vec<Chunk> = order[..cut].iter().map(|&(_, i)| chunks[i].clone()).collect();
    let second: Vec<Chunk> = order[cut..].iter().map(|&(_, i)| chunks[i].clone()).collect();
    let (t1, t2) = ts.split_at_mut(8 * split);
    let (v1, v2) = vs.split_at_mut(8 * split);
    let (b, a) = crate::join2(|| decode_run(&second, t2, v2, split), || decode_run(&first, t1, v1, 0));
    (a.0 && b.0, a.1 && b.1, a.2 || b.2)
}

/// A row's chunk: its data, where its points go, its stored time range.
#[derive(Clone)]
pub(crate) struct Chunk<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) at: usize,
    pub(crate) n: usize,
    pub(crate) t_min: i64,
    pub(crate) t_max: i64,
}

/// Every chunk decoded to its place in `ts` and `vs` (the columns' bytes, 8 a point); (every
/// chunk's times increase, every chunk is its stored range, some packed frame did not decompress to
/// its body: the columns are then not to be used). One zstd context and one body buffer for all.
/// `ts` and `vs` begin at point `base` of the columns (the chunks' places are in the columns).
pub(crate) fn decode_run(chunks: &[Chunk], ts: &mut [u8], vs: &mut [u8], base: usize) -> (bool, bool, bool) {
    decode_run_with(chunks, ts, vs, base, &mut Decoder::new())
}

/// What `decode_run` decodes with, kept from one call to the next by a caller that decodes many
/// short runs (`raterows`: a series at a time): a zstd context is ~100 kB to allocate and set up.
pub(crate) struct Decoder {
    dctx: zstd_safe::DCtx<'static>,
    body: Vec<u8>,
    words: Vec<u64>,
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Decoder { dctx: zstd_safe::DCtx::create(), body: Vec::new(), words: Vec::new() }
    }
}

/// `decode_run` with the decoder `d`.
pub(crate) fn decode_run_with(
    chunks: &[Chunk],
    ts: &mut [u8],
    vs: &mut [u8],
    base: usize,
    d: &mut Decoder,
) -> (bool, bool, bool) {
    let (mut increasing, mut ranges) = (true, true);
    let Decoder { dctx, body, words } = d;
    for c in chunks {
        if !crate::seal::intact(c.data) {
            return (increasing, ranges, true);
        }
        let Some((kind, n, mode, first, payload)) = head(c.data) else {
            return (increasing, ranges, true); // (assemble_rows checked every head)
        };
        let at = c.at - base;
        let (t, v) = (&mut ts[8 * at..8 * (at + n)], &mut vs[8 * at..8 * (at + n)]);
        let decoded = if kind == PACKED {
            // one frame and nothing after it, as chunks._opened reads it (allow_extra_data=False):
            // a sealed chunk whose seal bit was cleared is otherwise read without its checksum,
            // the checksum taken for bytes after the frame; its size is what the header declared,
            // checked by `head`
            let want = 16 * n - 8;
            body.clear();
            body.reserve(want);
            let whole = zstd_safe::find_frame_compressed_size(payload)
                .ok()
                .filter(|&size| size == payload.len());
            let decompressed = whole.and_then(|size| dctx.decompress(body, &payload[..size]).ok());
            if decompressed == Some(want) && body.len() == want {
                decode_one(PACKED, n, mode, first, body, t, v, words).ok()
            } else {
                None
            }
        } else {
            decode_one(RAW, n, 0, 0, payload, t, v, words).ok()
        };
        let Some(increases) = decoded else {
            return (increasing, ranges, true);
        };
        increasing &= increases;
        if n == 0 {
            continue;
        }
        let tk = |k: usize| i64::from_le_bytes(t[8 * k..8 * k + 8].try_into().unwrap());
        ranges &= tk(0) == c.t_min && tk(n - 1) == c.t_max;
    }
    (increasing, ranges, false)
}
