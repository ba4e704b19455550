//! A submitted Δ as the relay keeps it: dense, or a compressed update as it came (its
//! bytes, checked once), decoded chunk by chunk wherever its values are read. Measuring
//! a compressed Δ (finite, norm, hash, sketch) reads its few percent of sent values,
//! and a round of 32 results of a 124M-parameter model holds about a quarter of one
//! copy of the model (`cargo xtask bench gpt2`); its dense form is never made.

use std::ops::Range;

use axum::body::Bytes;
use crowdgrad_runtime::codec::{ChunkReader, CodecError};

/// One result's Δ (`θ_start − θ_end`), `[parameters]` values.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// A full f32 Δ.
    Dense(Vec<f32>),
    /// An encoded top-k update (`crowdgrad_runtime::codec`), whose every field was
    /// checked when it was made ([`Delta::encoded`]).
    Encoded {
        /// The update as sent.
        bytes: Bytes,
        /// Values it decodes to (the model's parameters).
        len: usize,
    },
}

impl Delta {
    /// The encoded update `bytes` of `len` values, checked whole (every field, every
    /// value finite or not; see [`Delta::measures`]).
    pub fn encoded(bytes: Bytes, len: usize) -> Result<Delta, CodecError> {
        let mut reader = ChunkReader::new(&bytes, len)?;
        let mut values = Vec::new();
        while reader.next_chunk(&mut values)?.is_some() {}
        Ok(Delta::Encoded { bytes, len })
    }

    /// Values in the dense Δ.
    pub fn len(&self) -> usize {
        match self {
            Delta::Dense(values) => values.len(),
            Delta::Encoded { len, .. } => *len,
        }
    }

    /// Whether it has no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit(index, value)` for each nonzero value, in increasing index order.
    pub fn for_each_nonzero(&self, mut visit: impl FnMut(usize, f32)) {
        match self {
            Delta::Dense(values) => {
                values.iter().enumerate().filter(|(_, v)| **v != 0.0).for_each(|(i, &v)| visit(i, v));
            }
            Delta::Encoded { bytes, len } => {
                let mut reader = ChunkReader::new(bytes, *len).expect("checked when made");
                let mut values = Vec::new();
                while reader.next_chunk(&mut values).expect("checked when made").is_some() {
                    values.iter().for_each(|&(i, v)| visit(i as usize, v));
                }
            }
        }
    }

    /// `(‖Δ‖, whether every value is finite)`, from the values it holds.
    pub fn measures(&self) -> (f32, bool) {
        let (mut sum, mut finite) = (0f32, true);
        self.for_each_nonzero(|_, v| {
            sum += v * v;
            finite &= v.is_finite();
        });
        (sum.sqrt(), finite)
    }

    /// The dense Δ, `[parameters]`.
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            Delta::Dense(values) => values.clone(),
            Delta::Encoded { len, .. } => {
                let mut dense = vec![0f32; *len];
                self.for_each_nonzero(|i, v| dense[i] = v);
                dense
            }
        }
    }

    /// blake3 of what it holds: the values of a dense Δ; the length, the indices of its
    /// nonzero values and those values of an encoded one (which has one such form per
    /// dense Δ, zeros being left out).
    pub fn hash(&self) -> [u8; 32] {
        match self {
            Delta::Dense(values) => *blake3::hash(bytemuck::cast_slice(values)).as_bytes(),
            Delta::Encoded { len, .. } => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&(*len as u64).to_le_bytes());
                self.for_each_nonzero(|i, _| {
                    hasher.update(&(i as u32).to_le_bytes());
                });
                self.for_each_nonzero(|_, v| {
                    hasher.update(&v.to_le_bytes());
                });
                *hasher.finalize().as_bytes()
            }
        }
    }

    /// A reader of its values range by range ([`Cursor::fill`]).
    pub fn cursor(&self) -> Cursor<'_> {
        let source = match self {
            Delta::Dense(values) => Source::Dense(values),
            Delta::Encoded { bytes, len } => Source::Encoded(ChunkReader::new(bytes, *len).expect("checked when made")),
        };
        Cursor { source, held: Vec::new(), next: 0, read_to: 0 }
    }
}

/// Where a [`Cursor`] reads from.
enum Source<'a> {
    Dense(&'a [f32]),
    Encoded(ChunkReader<'a>),
}

/// Reads a Δ's values over increasing ranges of indices, decoding an encoded one a chunk
/// at a time: what the commit's aggregation needs of each result.
pub struct Cursor<'a> {
    source: Source<'a>,
    /// The last chunk decoded, `(index, value)`.
    held: Vec<(u32, f32)>,
    /// The first of `held` not yet passed.
    next: usize,
    /// Indices below this are decoded.
    read_to: usize,
}

impl Cursor<'_> {
    /// Writes the values at `range` into `out` (`range.len()` long; zeros where the Δ has
    /// none). Ranges must come in increasing order; values before `range.start` not yet
    /// read are skipped.
    pub fn fill(&mut self, range: Range<usize>, out: &mut [f32]) {
        assert_eq!(out.len(), range.len(), "one value per index of the range");
        out.fill(0.0);
        let reader = match &mut self.source {
            Source::Dense(values) => {
                out.copy_from_slice(&values[range]);
                return;
            }
            Source::Encoded(reader) => reader,
        };
        loop {
            while let Some(&(i, v)) = self.held.get(self.next) {
                let i = i as usize;
                if i >= range.end {
                    return;
                }
                if i >= range.start {
                    out[i - range.start] = v;
                }
                self.next += 1;
            }
            if self.read_to >= range.end {
                return;
            }
            match reader.next_chunk(&mut self.held).expect("checked when made") {
                Some(chunk) => (self.read_to, self.next) = (chunk.end, 0),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdgrad_runtime::codec::{self, CodecConfig};

    #[test]
    fn an_encoded_delta_reads_as_its_dense_form_and_hashes_by_what_it_sent() {
        let n = 10_000;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-6 - 5e-4).collect();
        let cfg = CodecConfig { chunk: 1000, ..CodecConfig::default() };
        let bytes = Bytes::from(codec::encode(&values, &mut vec![0.0; n], &cfg));
        let encoded = Delta::encoded(bytes.clone(), n).expect("decodes");
        let dense = Delta::Dense(codec::decode(&bytes, n).unwrap());
        assert_eq!(encoded.to_dense(), dense.to_dense());
        assert_eq!(encoded.measures(), dense.measures());
        let (mut from_encoded, mut from_dense) = (Vec::new(), Vec::new());
        encoded.for_each_nonzero(|i, v| from_encoded.push((i, v)));
        dense.for_each_nonzero(|i, v| from_dense.push((i, v)));
        assert_eq!(from_encoded, from_dense);
        assert_eq!(from_encoded.len(), 10 * 120, "k = 120 values of each chunk of 1000 held");
        let doubled: Vec<f32> = values.iter().map(|v| 2.0 * v).collect();
        let other = Bytes::from(codec::encode(&doubled, &mut vec![0.0; n], &cfg));
        assert_ne!(encoded.hash(), Delta::encoded(other, n).unwrap().hash());
        assert_eq!(encoded.hash(), Delta::encoded(bytes.clone(), n).unwrap().hash());
        assert!(Delta::encoded(bytes.slice(..bytes.len() - 1), n).is_err(), "checked whole when made");
        // Ranges that do not follow the chunks read the same values.
        let (mut a, mut b) = (encoded.cursor(), dense.cursor());
        for range in [0..1, 5..1500, 1500..1500, 1700..4000, 4000..n] {
            let (mut x, mut y) = (vec![1.0; range.len()], vec![1.0; range.len()]);
            a.fill(range.clone(), &mut x);
            b.fill(range.clone(), &mut y);
            assert_eq!(x, y, "{range:?}");
        }
    }
}
