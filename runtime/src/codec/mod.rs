//! The wire format of an update: chunked top-k with per-chunk quantisation and
//! delta-coded indices (DeMo / SparseLoCo style), with error feedback.
//!
//! The contributor adds its residual (what earlier updates did not send) to Δ, cuts the
//! sum into chunks of `chunk` values, keeps the `k` largest magnitudes of each chunk,
//! quantises them to `bits` bits against the chunk's largest kept magnitude, and keeps
//! everything not sent (the dropped values and the rounding) as the new residual.
//!
//! Layout, little-endian: `CZ`, format version (u8), bits (u8), chunk (u32), k (u32),
//! length (u32); then per chunk: scale (f32), count (u16), Rice parameter `r` (u8,
//! `0..=16`), and a bit stream (least significant bit first, zero-padded to a byte) of
//! `count` index gaps, Rice-coded with parameter `r` (the first index absolute, then each
//! gap minus one: `gap >> r` one-bits, a zero-bit, the low `r` bits), then `count` levels
//! of `bits` bits each (two's complement in `−q..=q`, `q = 2^(bits−1) − 1`). The encoder
//! picks each chunk's `r` for the fewest bits: about 7 bits an index at the default
//! density, against 8 for a byte-aligned varint. [`decode`] checks every field against
//! these bounds and the expected length.

mod bits;

use bits::{BitReader, BitWriter, MAX_RICE, rice_bits};
use serde::{Deserialize, Serialize};

/// Two bytes that open every encoded update.
const MAGIC: [u8; 2] = *b"CZ";
/// This format's version (1 coded indices as LEB128 varints).
const FORMAT: u8 = 2;
/// Bytes of the header.
const HEADER: usize = 2 + 1 + 1 + 4 + 4 + 4;
/// Largest chunk accepted.
pub const MAX_CHUNK: u32 = 1 << 16;
/// Bytes before a chunk's bit stream: scale, count and Rice parameter.
const CHUNK_HEADER: usize = 4 + 2 + 1;

/// How updates are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecConfig {
    /// Values per chunk (4096 is DeMo's 64 × 64).
    pub chunk: u32,
    /// Values kept per chunk.
    pub k: u32,
    /// Bits per kept value: 8, 4 or 2.
    pub bits: u8,
    /// What the residual keeps from one update to the next, `0..=1` (SparseLoCo's β):
    /// 1 keeps every leftover until it is sent; below 1, leftovers that stay unsent fade,
    /// since they were measured on weights that have moved on since.
    pub decay: f32,
}

/// 4096/120 at 2 bits, decay 0.95: `cargo xtask bench diloco` found more values at fewer
/// bits better than 64 at 4 bits (held-out loss 2.40 against 2.44 for K=4, H=10), at about
/// 115× fewer bytes than dense f32, and the decay a little better than none.
impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig { chunk: 4096, k: 120, bits: 2, decay: 0.95 }
    }
}

impl CodecConfig {
    /// Checks the bounds above; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk == 0 || self.chunk > MAX_CHUNK {
            return Err(format!("chunk = {} is outside 1..={MAX_CHUNK}", self.chunk));
        }
        if self.k == 0 || self.k > self.chunk {
            return Err(format!("k = {} is outside 1..=chunk ({})", self.k, self.chunk));
        }
        if ![2, 4, 8].contains(&self.bits) {
            return Err(format!("bits = {} is not 2, 4 or 8", self.bits));
        }
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(format!("decay = {} is outside 0..=1", self.decay));
        }
        Ok(())
    }

    /// The largest quantisation level, `2^(bits−1) − 1`.
    pub fn levels(&self) -> i32 {
        (1 << (self.bits - 1)) - 1
    }

    /// The most bytes an update of `len` values can take (every gap costs at most
    /// `MAX_RICE + 1` bits, the encoder's parameter being the cheapest).
    pub fn max_bytes(&self, len: usize) -> usize {
        let chunks = len.div_ceil(self.chunk as usize);
        let bits_per_value = MAX_RICE as usize + 1 + self.bits as usize;
        HEADER + chunks * (CHUNK_HEADER + (self.k as usize * bits_per_value).div_ceil(8))
    }
}

/// Why an encoded update was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("compressed update: {0}")]
pub struct CodecError(pub String);

fn bad<T>(reason: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(reason.into()))
}

/// Words per chunk in a table of picked values (see [`pick`]): the scale, the count and
/// `k` slots, each an index and its level.
pub fn picked_words(cfg: &CodecConfig) -> usize {
    2 + cfg.k as usize
}

/// A picked value's slot word: its index within the chunk (below [`MAX_CHUNK`], 16 bits)
/// and its level offset by `q` (`0..=2q`, at most 8 bits) above it.
fn slot_word(index: u32, offset_level: u32) -> f32 {
    f32::from_bits(index | offset_level << 16)
}

/// Length of the table of picked values for a model of `len` values, in words.
pub fn picked_len(cfg: &CodecConfig, len: usize) -> usize {
    len.div_ceil(cfg.chunk as usize) * picked_words(cfg)
}

/// Error feedback and selection, the reference of `shaders/topk.wgsl`: for each chunk,
/// `residual += start − params` (a non-finite sum becomes 0), then the `k` largest nonzero
/// magnitudes (ties go to the lower index) are quantised to `cfg.bits` against the chunk's
/// largest magnitude and taken out of `residual`, and what is left is multiplied by
/// `cfg.decay` (so that the next update adds to `decay ·` the leftovers). `picked: [chunks · (2 + k)]` words (as
/// f32 bit patterns) gets, per chunk: the scale (f32), the count, then one word per kept
/// value in increasing index order: the index within the chunk in the low 16 bits and the
/// level offset by `q` (`0..=2q`) above. [`pack`] turns the table into the wire format. All slices but `picked` have the model's length.
pub fn pick(picked: &mut [f32], residual: &mut [f32], start: &[f32], params: &[f32], cfg: &CodecConfig) {
    assert!(residual.len() == start.len() && start.len() == params.len(), "model-length slices differ");
    assert_eq!(picked.len(), picked_len(cfg, residual.len()), "picked table length");
    let chunk = cfg.chunk as usize;
    let mut order: Vec<u32> = Vec::with_capacity(chunk);
    for (((r, s), e), table) in residual
        .chunks_mut(chunk)
        .zip(start.chunks(chunk))
        .zip(params.chunks(chunk))
        .zip(picked.chunks_mut(picked_words(cfg)))
    {
        r.iter_mut().zip(s.iter().zip(e)).for_each(|(r, (s, e))| *r = finite_or_zero(*r + (s - e)));
        pick_chunk(r, cfg, &mut order, table);
    }
}

/// A non-finite sum (a diverged step) is dropped rather than kept forever.
fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() { x } else { 0.0 }
}

/// Selects and quantises one chunk of the residual `r` into its `table` (see [`pick`]).
fn pick_chunk(r: &mut [f32], cfg: &CodecConfig, order: &mut Vec<u32>, table: &mut [f32]) {
    let levels = cfg.levels() as f32;
    order.clear();
    order.extend((0..r.len() as u32).filter(|&i| r[i as usize] != 0.0));
    let keep = (cfg.k as usize).min(order.len());
    if keep < order.len() {
        // Larger magnitude first, then the lower index: the same set the GPU picks.
        let rank = |&a: &u32, &b: &u32| r[b as usize].abs().total_cmp(&r[a as usize].abs()).then(a.cmp(&b));
        order.select_nth_unstable_by(keep, rank);
        order.truncate(keep);
    }
    order.sort_unstable();
    let scale = order.iter().fold(0f32, |m, &i| m.max(r[i as usize].abs()));
    table[0] = scale;
    table[1] = f32::from_bits(order.len() as u32);
    for (slot, &i) in order.iter().enumerate() {
        let level = (r[i as usize] / scale * levels).round().clamp(-levels, levels);
        r[i as usize] -= level / levels * scale;
        table[2 + slot] = slot_word(i, (level as i32 + cfg.levels()) as u32);
    }
    if cfg.decay != 1.0 {
        r.iter_mut().for_each(|x| *x *= cfg.decay);
    }
}

/// Writes a table of picked values (from [`pick`], on any backend) in the wire format for
/// a model of `len` values. The table is checked as strictly as [`decode`] checks bytes.
pub fn pack(picked: &[f32], len: usize, cfg: &CodecConfig) -> Result<Vec<u8>, CodecError> {
    cfg.validate().map_err(CodecError)?;
    if picked.len() != picked_len(cfg, len) {
        return bad(format!("picked table of {} words, {len} values need {}", picked.len(), picked_len(cfg, len)));
    }
    let mut out = Vec::with_capacity(cfg.max_bytes(len));
    write_header(&mut out, len, cfg);
    let chunk = cfg.chunk as usize;
    for (c, table) in picked.chunks(picked_words(cfg)).enumerate() {
        pack_chunk(&mut out, c, table, chunk.min(len - c * chunk), cfg)?;
    }
    Ok(out)
}

/// The header of an update of `len` values.
fn write_header(out: &mut Vec<u8>, len: usize, cfg: &CodecConfig) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[FORMAT, cfg.bits]);
    for field in [cfg.chunk, cfg.k, len as u32] {
        out.extend_from_slice(&field.to_le_bytes());
    }
}

/// Appends chunk `c` (`size` values) of a table of picked values to `out`.
fn pack_chunk(out: &mut Vec<u8>, c: usize, table: &[f32], size: usize, cfg: &CodecConfig) -> Result<(), CodecError> {
    let (scale, count) = (table[0], table[1].to_bits() as usize);
    if !(scale.is_finite() && scale >= 0.0) || count > (cfg.k as usize).min(size) {
        return bad(format!("picked chunk {c}: scale {scale}, count {count}"));
    }
    let slots = &table[2..2 + count];
    let mut gaps = Vec::with_capacity(count);
    let mut next = 0u32;
    for word in slots {
        let index = word.to_bits() & 0xffff;
        if index < next || index as usize >= size {
            return bad(format!("picked chunk {c}: index {index} out of order or past {size}"));
        }
        gaps.push(index - next);
        next = index + 1;
    }
    let rice =
        (0..=MAX_RICE).min_by_key(|&r| gaps.iter().map(|&g| rice_bits(g, r)).sum::<u64>()).expect("a nonempty range");
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.push(rice);
    let mut stream = BitWriter::new(out);
    for &gap in &gaps {
        stream.write_rice(gap, rice);
    }
    for word in slots {
        let level = (word.to_bits() >> 16) as i32 - cfg.levels();
        if level.unsigned_abs() > cfg.levels() as u32 {
            return bad(format!("picked chunk {c}: level {level} outside ±{}", cfg.levels()));
        }
        stream.write(level as u32, cfg.bits as u32);
    }
    stream.finish();
    Ok(())
}

/// An encoder fed one chunk at a time, so that an update of a large model is encoded
/// without its table of picked values in memory: the relay's deltas between versions.
pub struct ChunkWriter {
    out: Vec<u8>,
    cfg: CodecConfig,
    len: usize,
    chunk: usize,
    order: Vec<u32>,
    table: Vec<f32>,
}

impl ChunkWriter {
    /// An encoder of an update of `len` values.
    pub fn new(len: usize, cfg: CodecConfig) -> Self {
        cfg.validate().expect("a valid codec config");
        let mut out = Vec::new();
        write_header(&mut out, len, &cfg);
        let (order, table) = (Vec::with_capacity(cfg.chunk as usize), vec![0f32; picked_words(&cfg)]);
        ChunkWriter { out, cfg, len, chunk: 0, order, table }
    }

    /// Encodes the next chunk of values, `r` (the chunk's length: `cfg.chunk`, or what is
    /// left at the end): its top `k` are sent, and taken out of `r`, which keeps what was
    /// not sent (times the decay), as [`encode`] does with a residual.
    pub fn push(&mut self, r: &mut [f32]) {
        let c = self.chunk;
        let size = (self.cfg.chunk as usize).min(self.len - c * self.cfg.chunk as usize);
        assert_eq!(r.len(), size, "chunk {c} has {size} values");
        r.iter_mut().for_each(|x| *x = finite_or_zero(*x));
        pick_chunk(r, &self.cfg, &mut self.order, &mut self.table);
        pack_chunk(&mut self.out, c, &self.table, size, &self.cfg).expect("the reference's own table packs");
        self.chunk += 1;
    }

    /// The values the last chunk pushed sends, as [`decode`] reads them (zeros where it
    /// sends none), into `out` (that chunk's length).
    pub fn sent(&self, out: &mut [f32]) {
        out.fill(0.0);
        let (scale, count, levels) = (self.table[0], self.table[1].to_bits() as usize, self.cfg.levels());
        for word in &self.table[2..2 + count] {
            let level = (word.to_bits() >> 16) as i32 - levels;
            out[(word.to_bits() & 0xffff) as usize] = level as f32 / levels as f32 * scale;
        }
    }

    /// The encoded update, once every chunk is in.
    pub fn finish(self) -> Vec<u8> {
        assert_eq!(self.chunk, self.len.div_ceil(self.cfg.chunk as usize), "every chunk was pushed");
        self.out
    }
}

/// Encodes `delta + residual` and leaves in `residual` what was not sent, times
/// `cfg.decay`, so that `decode(encoded) + residual / decay == delta + old residual` (up
/// to float rounding; a non-finite sum is dropped). `delta` and `residual` have the same length. This is
/// [`pick`] with `Δ = start − params` given directly, then [`pack`].
///
/// Error bound, per chunk: a kept value is off by at most `scale / (2q)` (`scale` the
/// chunk's largest kept magnitude, `q` the largest level), and a dropped value is no
/// larger in magnitude than the smallest kept one.
pub fn encode(delta: &[f32], residual: &mut [f32], cfg: &CodecConfig) -> Vec<u8> {
    assert_eq!(delta.len(), residual.len(), "Δ and residual lengths differ");
    cfg.validate().expect("a valid codec config");
    let mut picked = vec![0f32; picked_len(cfg, delta.len())];
    let mut order = Vec::with_capacity(cfg.chunk as usize);
    let chunk = cfg.chunk as usize;
    for ((d, r), table) in delta.chunks(chunk).zip(residual.chunks_mut(chunk)).zip(picked.chunks_mut(picked_words(cfg)))
    {
        r.iter_mut().zip(d).for_each(|(r, d)| *r = finite_or_zero(*r + d));
        pick_chunk(r, cfg, &mut order, table);
    }
    pack(&picked, delta.len(), cfg).expect("the reference's own table packs")
}

/// What an encoded update's header says: its chunk, k and bits (the decay, the encoder's
/// business, does not travel and reads as 1) and its number of values. Reads only the
/// first 16 bytes, so a relay can refuse an update of the wrong codec before decoding it.
pub fn header(bytes: &[u8]) -> Result<(CodecConfig, usize), CodecError> {
    if bytes.len() < HEADER || bytes[..2] != MAGIC {
        return bad("not an encoded update (bad magic or too short)");
    }
    if bytes[2] != FORMAT {
        return bad(format!("format {} is not supported (this side reads {FORMAT})", bytes[2]));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let cfg = CodecConfig { bits: bytes[3], chunk: word(4), k: word(8), decay: 1.0 };
    cfg.validate().map_err(CodecError)?;
    Ok((cfg, word(12) as usize))
}

/// Decodes an update that must hold exactly `len` values (`[len]`, zero where nothing
/// was sent); every field is checked.
pub fn decode(bytes: &[u8], len: usize) -> Result<Vec<f32>, CodecError> {
    let mut reader = ChunkReader::new(bytes, len)?;
    let (mut dense, mut values) = (vec![0f32; len], Vec::with_capacity(reader.config().k as usize));
    while reader.next_chunk(&mut values)?.is_some() {
        values.iter().for_each(|&(index, value)| dense[index as usize] = value);
    }
    Ok(dense)
}

/// Reads an encoded update one chunk at a time, checking every field as [`decode`]
/// does, so that a large update can be measured, or several combined, without
/// decoding it whole.
pub struct ChunkReader<'a> {
    bytes: &'a [u8],
    cfg: CodecConfig,
    len: usize,
    /// The next chunk.
    chunk: usize,
    /// Where it starts in `bytes`.
    at: usize,
    indices: Vec<usize>,
}

impl<'a> ChunkReader<'a> {
    /// A reader of `bytes`, which must encode exactly `len` values.
    pub fn new(bytes: &'a [u8], len: usize) -> Result<Self, CodecError> {
        let (cfg, values) = header(bytes)?;
        if values != len {
            return bad(format!("{values} values, the model has {len}"));
        }
        Ok(ChunkReader { bytes, cfg, len, chunk: 0, at: HEADER, indices: Vec::with_capacity(cfg.k as usize) })
    }

    /// The update's chunk, k and bits.
    pub fn config(&self) -> CodecConfig {
        self.cfg
    }

    /// Chunks in the update.
    pub fn chunks(&self) -> usize {
        self.len.div_ceil(self.cfg.chunk as usize)
    }

    /// Puts the next chunk's nonzero values, `(index in the update, value)` in increasing
    /// index order, into `out` (cleared first) and returns the range of indices the
    /// chunk covers; `None` after the last chunk, once no byte is left over.
    pub fn next_chunk(&mut self, out: &mut Vec<(u32, f32)>) -> Result<Option<std::ops::Range<usize>>, CodecError> {
        out.clear();
        let (c, cfg, bytes) = (self.chunk, self.cfg, self.bytes);
        if c == self.chunks() {
            if self.at != bytes.len() {
                return bad(format!("{} trailing bytes", bytes.len() - self.at));
            }
            return Ok(None);
        }
        let first = c * cfg.chunk as usize;
        let chunk_len = (self.len - first).min(cfg.chunk as usize);
        let at = self.at;
        let Some(head) = bytes.get(at..at + CHUNK_HEADER) else { return bad(format!("chunk {c} is cut short")) };
        let scale = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let count = u16::from_le_bytes([head[4], head[5]]) as usize;
        let rice = head[6];
        if !(scale.is_finite() && scale >= 0.0) {
            return bad(format!("chunk {c} has scale {scale}"));
        }
        if count > (cfg.k as usize).min(chunk_len) {
            return bad(format!("chunk {c} lists {count} values; at most {} fit", (cfg.k as usize).min(chunk_len)));
        }
        if rice > MAX_RICE {
            return bad(format!("chunk {c} has Rice parameter {rice}, above {MAX_RICE}"));
        }
        let mut stream = BitReader::new(&bytes[at + CHUNK_HEADER..]);
        self.indices.clear();
        let mut next = 0usize;
        for _ in 0..count {
            let room = (chunk_len - next) as u32;
            let Some(gap) = stream.read_rice(rice, room) else {
                return bad(format!("chunk {c}: an index past its {chunk_len} values or cut short"));
            };
            let index = next + gap as usize;
            self.indices.push(index);
            next = index + 1;
        }
        let levels = cfg.levels() as f32;
        for &index in &self.indices {
            let raw = stream.read(cfg.bits as u32).ok_or_else(|| CodecError(format!("chunk {c}: values cut short")))?;
            let level = signed(raw, cfg.bits);
            if level.unsigned_abs() > cfg.levels() as u32 {
                return bad(format!("chunk {c}: level {level} outside ±{}", cfg.levels()));
            }
            let value = level as f32 / levels * scale;
            if value != 0.0 {
                out.push(((first + index) as u32, value));
            }
        }
        self.at = at + CHUNK_HEADER + stream.bytes_used();
        self.chunk += 1;
        Ok(Some(first..first + chunk_len))
    }
}

/// A `bits`-bit two's-complement field as a signed level.
fn signed(raw: u32, bits: u8) -> i32 {
    let sign = 1u32 << (bits - 1);
    if raw & sign != 0 { raw as i32 - (1 << bits) } else { raw as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_codec_sends_over_100_times_fewer_bytes_than_dense() {
        let n = 1_000_000;
        let delta: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-6 - 5e-4).collect();
        let bytes = encode(&delta, &mut vec![0.0; n], &CodecConfig::default());
        assert!(bytes.len() * 100 <= n * 4, "{} bytes for {} dense", bytes.len(), n * 4);
        assert!(bytes.len() <= CodecConfig::default().max_bytes(n));
    }

    #[test]
    fn a_chunk_at_a_time_encodes_as_the_whole() {
        let cfg = CodecConfig { chunk: 100, k: 7, bits: 8, decay: 0.9 };
        let delta: Vec<f32> = (0..950).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let residual: Vec<f32> = (0..950).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut whole_residual = residual.clone();
        let whole = encode(&delta, &mut whole_residual, &cfg);
        let mut summed: Vec<f32> = delta.iter().zip(&residual).map(|(d, r)| d + r).collect();
        let mut writer = ChunkWriter::new(950, cfg);
        let mut sent = Vec::new();
        for chunk in summed.chunks_mut(100) {
            writer.push(chunk);
            let mut values = vec![0.0; chunk.len()];
            writer.sent(&mut values);
            sent.extend(values);
        }
        assert_eq!(writer.finish(), whole);
        assert_eq!(summed, whole_residual);
        assert_eq!(sent, decode(&whole, 950).unwrap(), "what it says it sent is what decodes, bit for bit");
    }

    #[test]
    fn error_feedback_sends_everything_eventually() {
        let cfg = CodecConfig { chunk: 64, k: 4, bits: 4, decay: 1.0 };
        let delta: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut residual, mut sent) = (vec![0.0; 256], vec![0.0f32; 256]);
        let rounds = 200;
        for _ in 0..rounds {
            let decoded = decode(&encode(&delta, &mut residual, &cfg), 256).expect("decodes");
            sent.iter_mut().zip(&decoded).for_each(|(s, d)| *s += d);
        }
        for ((s, d), r) in sent.iter().zip(&delta).zip(&residual) {
            assert!((s + r - rounds as f32 * d).abs() < 1e-2, "sent + residual = total Δ");
            // Each value waits at most about chunk / k rounds for its turn.
            assert!(r.abs() <= (64 / 4 + 1) as f32, "the residual stays bounded: {r}");
        }
    }

    #[test]
    fn leftovers_fade_by_the_decay() {
        let cfg = CodecConfig { chunk: 16, k: 2, bits: 8, decay: 0.5 };
        let delta: Vec<f32> = (0..40).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut residual = vec![0.0; 40];
        let decoded = decode(&encode(&delta, &mut residual, &cfg), 40).expect("decodes");
        for ((x, d), r) in delta.iter().zip(&decoded).zip(&residual) {
            assert!((r - 0.5 * (x - d)).abs() < 1e-6, "residual {r} for {x} sent as {d}");
        }
        assert!(CodecConfig { decay: 1.5, ..cfg }.validate().unwrap_err().contains("decay = 1.5"));
    }

    #[test]
    fn bad_fields_are_refused_with_a_reason() {
        let cfg = CodecConfig { chunk: 8, k: 2, bits: 8, decay: 1.0 };
        let good = encode(&[1.0, -2.0, 0.5, 0.0, 3.0, 0.0, 0.0, 0.1, 7.0], &mut [0.0; 9], &cfg);
        assert_eq!(decode(&good, 9).map(|v| v.len()), Ok(9));
        assert!(decode(&good, 10).unwrap_err().0.contains("the model has 10"));
        assert!(decode(&good[..good.len() - 1], 9).is_err());
        assert!(decode(&[good.as_slice(), &[0]].concat(), 9).unwrap_err().0.contains("trailing"));
        let mut bad_bits = good.clone();
        bad_bits[3] = 3;
        assert!(decode(&bad_bits, 9).unwrap_err().0.contains("bits = 3"));
        let mut nan_scale = good.clone();
        nan_scale[HEADER..HEADER + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(&nan_scale, 9).unwrap_err().0.contains("scale"));
        let mut too_many = good.clone();
        too_many[HEADER + 4] = 9;
        assert!(decode(&too_many, 9).unwrap_err().0.contains("lists 9 values"));
        let mut bad_rice = good.clone();
        bad_rice[HEADER + 6] = 17;
        assert!(decode(&bad_rice, 9).unwrap_err().0.contains("Rice parameter 17"));
        let mut old_format = good.clone();
        old_format[2] = 1;
        assert!(decode(&old_format, 9).unwrap_err().0.contains("format 1 is not supported"));
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> impl Strategy<Value = CodecConfig> {
            (1u32..600, prop::sample::select(vec![2u8, 4, 8]), prop::sample::select(vec![1.0f32, 0.95, 0.5]))
                .prop_flat_map(|(chunk, bits, decay)| (Just(chunk), 1..=chunk, Just(bits), Just(decay)))
                .prop_map(|(chunk, k, bits, decay)| CodecConfig { chunk, k, bits, decay })
        }

        proptest! {
            #[test]
            fn decoding_an_encoding_stays_within_the_stated_bound(
                cfg in config(),
                x in prop::collection::vec(-1e3f32..1e3, 1..3000),
            ) {
                let mut residual = vec![0.0; x.len()];
                let decoded = decode(&encode(&x, &mut residual, &cfg), x.len()).expect("own encoding decodes");
                for (c, (xs, ds)) in x.chunks(cfg.chunk as usize).zip(decoded.chunks(cfg.chunk as usize)).enumerate() {
                    let kept: Vec<f32> = ds.iter().zip(xs).filter(|(d, _)| **d != 0.0).map(|(_, x)| x.abs()).collect();
                    let scale = kept.iter().fold(0f32, |m, &v| m.max(v));
                    let smallest_kept = kept.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                    let step = scale / (2.0 * cfg.levels() as f32);
                    for (x, d) in xs.iter().zip(ds) {
                        // f32 arithmetic adds a few ulps of the values involved.
                        let slack = 1e-4 * step + 1e-6 * x.abs();
                        let bound = if *d != 0.0 { step } else { smallest_kept.min(scale.max(x.abs())) };
                        prop_assert!((x - d).abs() <= bound.max(step) + slack, "chunk {c}: {x} decoded as {d}, bound {bound}");
                    }
                }
                for ((x, d), r) in x.iter().zip(&decoded).zip(&residual) {
                    let left = r / cfg.decay;
                    prop_assert!((d + left - x).abs() <= 1e-4 * x.abs().max(1.0), "decoded + residual / decay = input");
                }
            }

            #[test]
            fn the_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), len in 0usize..2000) {
                let _ = decode(&bytes, len);
            }

            #[test]
            fn corrupted_encodings_never_panic(
                x in prop::collection::vec(-1.0f32..1.0, 1..500),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let mut bytes = encode(&x, &mut vec![0.0; x.len()], &CodecConfig { chunk: 64, k: 8, bits: 4, decay: 1.0 });
                let i = at.index(bytes.len());
                bytes[i] = byte;
                let _ = decode(&bytes, x.len());
            }
        }
    }
}
