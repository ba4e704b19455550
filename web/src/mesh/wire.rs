//! Messages between two tabs on their data channel, in postcard encoding.

use crowdgrad_runtime::protocol::WEIGHT_CHUNK;
use serde::{Deserialize, Serialize};

/// Largest message a peer may send, bytes: one chunk and its header.
pub const MAX_PEER_MESSAGE: usize = WEIGHT_CHUNK + 64;
/// Most chunk indices in one [`PeerMsg::Have`] (at most 5 bytes each: within
/// [`MAX_PEER_MESSAGE`]); a longer list goes in several ([`PeerMsg::haves`]).
const MAX_HAVE: usize = 4096;

/// One data-channel message.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// The sender holds these chunks of `version` (checked against their hashes), or,
    /// with none listed, is fetching that version.
    Have {
        /// Model version.
        version: u64,
        /// Chunk indices, each `WEIGHT_CHUNK` bytes of the weights file.
        chunks: Vec<u32>,
    },
    /// Please send chunk `index` of `version`.
    Request {
        /// Model version.
        version: u64,
        /// Chunk index.
        index: u32,
    },
    /// Chunk `index` of `version`.
    Chunk {
        /// Model version.
        version: u64,
        /// Chunk index.
        index: u32,
        /// At most `WEIGHT_CHUNK` bytes.
        bytes: Vec<u8>,
    },
    /// The sender does not hold chunk `index` of `version` (any more).
    Missing {
        /// Model version.
        version: u64,
        /// Chunk index.
        index: u32,
    },
}

impl PeerMsg {
    /// `Have` messages of `chunks` of `version`, [`MAX_HAVE`] at most each (one, empty,
    /// for none: the sender is fetching the version).
    pub fn haves(version: u64, chunks: &[u32]) -> Vec<PeerMsg> {
        if chunks.is_empty() {
            return vec![PeerMsg::Have { version, chunks: Vec::new() }];
        }
        chunks.chunks(MAX_HAVE).map(|part| PeerMsg::Have { version, chunks: part.to_vec() }).collect()
    }

    /// The message as one data-channel frame.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising into a Vec cannot fail")
    }

    /// Parses and bounds-checks a frame from a peer.
    pub fn decode(frame: &[u8]) -> Result<PeerMsg, String> {
        if frame.len() > MAX_PEER_MESSAGE {
            return Err(format!("a {}-byte message is over the {MAX_PEER_MESSAGE}-byte limit", frame.len()));
        }
        let msg: PeerMsg = postcard::from_bytes(frame).map_err(|e| format!("malformed message: {e}"))?;
        match &msg {
            PeerMsg::Have { chunks, .. } if chunks.len() > MAX_HAVE => Err(format!("{} chunks listed", chunks.len())),
            PeerMsg::Chunk { bytes, .. } if bytes.len() > WEIGHT_CHUNK => Err(format!("a {}-byte chunk", bytes.len())),
            _ => Ok(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused() {
        let chunk = PeerMsg::Chunk { version: 3, index: 7, bytes: vec![1; WEIGHT_CHUNK] };
        assert_eq!(PeerMsg::decode(&chunk.encode()), Ok(chunk));
        let too_big = PeerMsg::Chunk { version: 3, index: 7, bytes: vec![1; WEIGHT_CHUNK + 1] }.encode();
        assert!(PeerMsg::decode(&too_big).is_err());
        assert!(PeerMsg::decode(&[9, 9, 9]).is_err(), "an unknown variant");
        let have = PeerMsg::Have { version: 1, chunks: vec![0; MAX_HAVE + 1] }.encode();
        assert!(PeerMsg::decode(&have).is_err());
        // A 124M-parameter model's file has about 7,600 chunks: two messages, each within bounds.
        let many: Vec<u32> = (0..7_600).collect();
        let haves = PeerMsg::haves(9, &many);
        assert_eq!(haves.len(), 2);
        assert!(haves.iter().all(|h| PeerMsg::decode(&h.encode()).as_ref() == Ok(h)));
        assert_eq!(PeerMsg::haves(9, &[]), vec![PeerMsg::Have { version: 9, chunks: vec![] }]);
    }
}
