//! A submitted Δ as the relay keeps it: dense, or only the values a compressed update
//! sent. Measuring a compressed Δ (finite, norm, hash, sketch) then reads its few
//! percent of sent values, not the whole model, and a round waiting to commit holds
//! 15× less memory; the dense form is made where it is needed (the replay, the loss
//! check, the commit), off the coordinator's lock.

use std::borrow::Cow;

use crowdgrad_runtime::codec::SparseDelta;

/// One result's Δ (`θ_start − θ_end`), `[parameters]` values.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// A full f32 Δ.
    Dense(Vec<f32>),
    /// A decoded top-k update: its nonzero values and their indices.
    Sparse(SparseDelta),
}

impl Delta {
    /// The values it holds: every value of a dense Δ, the nonzero ones of a sparse one
    /// (enough for finiteness and the norm).
    pub fn held_values(&self) -> &[f32] {
        match self {
            Delta::Dense(values) => values,
            Delta::Sparse(sparse) => sparse.values(),
        }
    }

    /// Calls `visit(index, value)` for each nonzero value, in increasing index order.
    pub fn for_each_nonzero(&self, mut visit: impl FnMut(usize, f32)) {
        match self {
            Delta::Dense(values) => {
                values.iter().enumerate().filter(|(_, v)| **v != 0.0).for_each(|(i, &v)| visit(i, v));
            }
            Delta::Sparse(sparse) => {
                sparse.indices().iter().zip(sparse.values()).for_each(|(&i, &v)| visit(i as usize, v));
            }
        }
    }

    /// The dense Δ, `[parameters]`: borrowed when it is dense, made when it is sparse.
    pub fn dense(&self) -> Cow<'_, [f32]> {
        match self {
            Delta::Dense(values) => Cow::Borrowed(values),
            Delta::Sparse(sparse) => Cow::Owned(sparse.to_dense()),
        }
    }

    /// blake3 of what it holds: the values of a dense Δ; the length, indices and values
    /// of a sparse one (which has one form per dense Δ, zeros being left out).
    pub fn hash(&self) -> [u8; 32] {
        match self {
            Delta::Dense(values) => *blake3::hash(bytemuck::cast_slice(values)).as_bytes(),
            Delta::Sparse(sparse) => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&(sparse.len() as u64).to_le_bytes());
                hasher.update(bytemuck::cast_slice(sparse.indices()));
                hasher.update(bytemuck::cast_slice(sparse.values()));
                *hasher.finalize().as_bytes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdgrad_runtime::codec::{self, CodecConfig};

    #[test]
    fn a_sparse_delta_measures_as_its_dense_form_and_hashes_by_what_it_sent() {
        let n = 10_000;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-6 - 5e-4).collect();
        let bytes = codec::encode(&values, &mut vec![0.0; n], &CodecConfig::default());
        let sparse = Delta::Sparse(codec::decode_sparse(&bytes, n).unwrap());
        let dense = Delta::Dense(codec::decode(&bytes, n).unwrap());
        assert_eq!(sparse.dense(), dense.dense());
        assert!(sparse.held_values().len() < n / 10, "{} values held", sparse.held_values().len());
        let (mut from_sparse, mut from_dense) = (Vec::new(), Vec::new());
        sparse.for_each_nonzero(|i, v| from_sparse.push((i, v)));
        dense.for_each_nonzero(|i, v| from_dense.push((i, v)));
        assert_eq!(from_sparse, from_dense);
        let doubled: Vec<f32> = values.iter().map(|v| 2.0 * v).collect();
        let other_bytes = codec::encode(&doubled, &mut vec![0.0; n], &CodecConfig::default());
        let other = Delta::Sparse(codec::decode_sparse(&other_bytes, n).unwrap());
        assert_ne!(sparse.hash(), other.hash());
        assert_eq!(sparse.hash(), Delta::Sparse(codec::decode_sparse(&bytes, n).unwrap()).hash());
    }
}
