//! The bit streams inside an encoded chunk: fixed-width fields and Rice-coded index gaps,
//! least significant bit first.

/// Largest Rice parameter: a gap below 2^16 (every gap, chunks being at most 2^16 values)
/// then takes one bit of quotient.
pub const MAX_RICE: u8 = 16;

/// Appends bits to a byte vector, least significant first.
pub struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pending: u64,
    used: u32,
}

impl<'a> BitWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter { out, pending: 0, used: 0 }
    }

    /// Writes the low `bits` (at most 32) of `value`.
    pub fn write(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32);
        let mask = if bits == 32 { u32::MAX } else { (1u32 << bits) - 1 };
        self.pending |= ((value & mask) as u64) << self.used;
        self.used += bits;
        while self.used >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.used -= 8;
        }
    }

    /// Writes `gap` Rice-coded with parameter `rice`: `gap >> rice` one-bits, a zero-bit,
    /// then the low `rice` bits.
    pub fn write_rice(&mut self, gap: u32, rice: u8) {
        for _ in 0..gap >> rice {
            self.write(1, 1);
        }
        self.write(0, 1);
        self.write(gap, rice as u32);
    }

    /// Pads the last byte with zeros.
    pub fn finish(self) {
        if self.used > 0 {
            self.out.push(self.pending as u8);
        }
    }
}

/// Bits of one Rice-coded `gap` with parameter `rice`.
pub fn rice_bits(gap: u32, rice: u8) -> u64 {
    (gap >> rice) as u64 + 1 + rice as u64
}

/// Reads bits from a byte slice, least significant first.
pub struct BitReader<'a> {
    bytes: &'a [u8],
    /// The next bit, counted from the slice's start.
    at: usize,
}

impl<'a> BitReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, at: 0 }
    }

    /// The bits from the next one on, as the low bits of a word (zeros past the end of
    /// the slice), and how many of them are in the slice (at least 57 unless it ends).
    #[inline]
    fn peek(&self) -> (u64, u32) {
        let (byte, shift) = (self.at / 8, self.at % 8);
        if let Some(&eight) = self.bytes.get(byte..byte + 8).and_then(|s| s.as_array::<8>()) {
            return (u64::from_le_bytes(eight) >> shift, 64 - shift as u32);
        }
        let rest = self.bytes.get(byte..).unwrap_or_default();
        let take = rest.len().min(8);
        let mut word = [0u8; 8];
        word[..take].copy_from_slice(&rest[..take]);
        (u64::from_le_bytes(word) >> shift, (take * 8).saturating_sub(shift) as u32)
    }

    /// Reads `bits` (at most 32) bits; `None` past the end.
    pub fn read(&mut self, bits: u32) -> Option<u32> {
        debug_assert!(bits <= 32);
        let (word, available) = self.peek();
        if available < bits {
            return None;
        }
        self.at += bits as usize;
        Some((word & ((1u64 << bits) - 1)) as u32)
    }

    /// Reads a Rice-coded gap with parameter `rice` that must stay below `limit`; `None`
    /// past the end or at the limit (so a run of one-bits stops early).
    pub fn read_rice(&mut self, rice: u8, limit: u32) -> Option<u32> {
        let mut quotient = 0u64;
        loop {
            let (word, available) = self.peek();
            if available == 0 {
                return None;
            }
            // The one-bits of the quotient in this word; past `available` the word is zero.
            let ones = (!word).trailing_zeros().min(available);
            quotient += ones as u64;
            if quotient << rice >= limit as u64 {
                return None;
            }
            self.at += ones as usize;
            if ones < available {
                self.at += 1;
                break;
            }
        }
        let gap = ((quotient as u32) << rice) | self.read(rice as u32)?;
        (gap < limit).then_some(gap)
    }

    /// Bytes consumed, counting a partly read last byte.
    pub fn bytes_used(&self) -> usize {
        self.at.div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_rice_gaps_read_back() {
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        let gaps = [0u32, 1, 5, 31, 32, 100, 4095];
        for (i, &gap) in gaps.iter().enumerate() {
            w.write_rice(gap, (i % 6) as u8);
            w.write(i as u32 & 3, 2);
        }
        w.write(0xdead_beef, 32);
        w.finish();
        let expected: u64 = gaps.iter().enumerate().map(|(i, &g)| rice_bits(g, (i % 6) as u8) + 2).sum::<u64>() + 32;
        assert_eq!(out.len() as u64, expected.div_ceil(8));
        let mut r = BitReader::new(&out);
        for (i, &gap) in gaps.iter().enumerate() {
            assert_eq!(r.read_rice((i % 6) as u8, 4096), Some(gap));
            assert_eq!(r.read(2), Some(i as u32 & 3));
        }
        assert_eq!(r.read(32), Some(0xdead_beef));
        assert_eq!(r.bytes_used(), out.len());
        assert_eq!(r.read(8), None, "nothing past the end");
    }

    #[test]
    fn a_gap_at_its_limit_or_a_run_past_the_end_is_refused() {
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.write_rice(64, 3);
        w.finish();
        assert_eq!(BitReader::new(&out).read_rice(3, 64), None);
        assert_eq!(BitReader::new(&[0xff; 4]).read_rice(0, u32::MAX), None, "ones to the end");
        assert_eq!(BitReader::new(&[0xff; 12]).read_rice(0, 70), None, "a run across words reaching the limit");
        let mut long = vec![0xff; 9];
        long.push(0b10);
        assert_eq!(BitReader::new(&long).read_rice(0, 100), Some(72), "a run across words");
    }
}
