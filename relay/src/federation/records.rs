//! What relays of a federated job tell each other through the engine: each committed
//! version's entry in the version index, and each accepted result.

use crowdgrad_runtime::identity::Receipt;
use serde::{Deserialize, Serialize};

/// A committed version, as the version index (a KV bucket) records it under
/// [`version_key`]. Its files are in the object store, named by their blake3 hex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// The version.
    pub version: u64,
    /// blake3 hex of its weights file (`v{N}.safetensors`).
    pub weights: String,
    /// blake3 hex of its momentum file.
    pub momentum: String,
    /// blake3 hex of its published step from the version before, if it has one.
    pub step: Option<String>,
    /// blake3 hex of its residual (what no step has sent yet), if it has one.
    pub residual: Option<String>,
    /// The public URL of the relay that committed it.
    pub committed_by: String,
    /// Held-out loss, nats per token.
    pub val_loss: f32,
    /// Mean last-step training loss of its results, nats per token.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: u32,
    /// The results stream's sequence number of the last result it took (0: none): the
    /// next committer reads the stream from the one after.
    pub results_through: u64,
    /// When it was committed, ms since the Unix epoch.
    pub committed_ms: i64,
    /// Merkle root (hex) of the receipts averaged into it, as its weights file records.
    pub receipts_root: String,
    /// blake3 (hex) of each receipt averaged into it, ascending: the leaves of
    /// `receipts_root`, by which each relay's ledger marks them.
    #[serde(default)]
    pub receipts: Vec<String>,
}

/// The version index's key of `version` (zero-padded, so keys sort by version).
pub fn version_key(version: u64) -> String {
    format!("v{version:012}")
}

/// An accepted result as a relay shares it on the results stream, for whichever relay
/// commits: judged (screened, replayed or loss-checked) by the relay that accepted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedResult {
    /// The public URL of the relay that accepted it.
    pub relay: String,
    /// Its unit's id on that relay.
    pub unit: u64,
    /// The version it trained from.
    pub version: u64,
    /// Whether that relay replayed it.
    pub replayed: bool,
    /// Its steps as a fraction of H.
    pub share: f32,
    /// Its weight before the discount for staleness, which the committing relay applies.
    pub weight: f32,
    /// Its last step's training loss, nats per token.
    pub train_loss: f32,
    /// blake3 of its signed receipt.
    pub receipt: [u8; 32],
    /// Its Δ.
    pub delta: SharedDelta,
}

/// An accepted result and its signed receipt, as the federation's agent publishes
/// them: the receipt to the receipts stream (the job's ledger), then the result.
pub struct Accepted {
    /// The receipt the contributor was given.
    pub receipt: Receipt,
    /// The result.
    pub result: SharedResult,
}

/// A shared result's Δ (`θ_start − θ_end`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SharedDelta {
    /// Little-endian f32 values, one per parameter.
    Dense(Vec<u8>),
    /// An encoded top-k update as the contributor sent it, of `len` values.
    Encoded {
        /// The update's bytes.
        bytes: Vec<u8>,
        /// Values it decodes to.
        len: usize,
    },
}

impl SharedResult {
    /// The message's bytes (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a result serialises")
    }

    /// A message's result; an error for bytes that are not one.
    pub fn from_bytes(bytes: &[u8]) -> Result<SharedResult, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_result_survives_its_bytes_and_garbage_is_an_error() {
        let result = SharedResult {
            relay: "http://127.0.0.1:1".into(),
            unit: 7,
            version: 3,
            replayed: true,
            share: 0.5,
            weight: 0.25,
            train_loss: 2.5,
            receipt: [9; 32],
            delta: SharedDelta::Encoded { bytes: vec![1, 2, 3], len: 10 },
        };
        assert_eq!(SharedResult::from_bytes(&result.to_bytes()).expect("decodes"), result);
        assert!(SharedResult::from_bytes(&[0xff; 3]).is_err());
        assert!(version_key(3) < version_key(12), "keys sort by version");
    }
}
