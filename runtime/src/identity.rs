//! Who sent what: ed25519 keys for contributors (who sign every submission) and for the
//! relay (which signs a receipt for every accepted unit).
//!
//! Signatures cover a blake3 digest of the message's fields under a domain tag, so a
//! signature for one kind of message can never be replayed as another.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::protocol::Submission;

/// Bytes of a public key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a signature.
pub const SIGNATURE_BYTES: usize = 64;

/// An ed25519 key pair.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// The key pair of a 32-byte secret (from a key file or browser storage).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity { key: SigningKey::from_bytes(&secret) }
    }

    /// A fresh key pair from the operating system's randomness.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS provides randomness");
        Self::from_secret(secret)
    }

    /// The key pair in `path` (64 hex digits), or a new one written there, readable by
    /// its owner only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind, Write};
        match std::fs::read_to_string(path) {
            Ok(text) => parse_hex32(&text)
                .map(Self::from_secret)
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("{} is not 64 hex digits", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let identity = Self::generate();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                file.write_all(format!("{}\n", hex(&identity.secret())).as_bytes())?;
                file.sync_all()?;
                Ok(identity)
            }
            Err(e) => Err(e),
        }
    }

    /// The secret, to store.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> [u8; KEY_BYTES] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `sub` (every field, the update included).
    pub fn sign_submission(&self, sub: &Submission) -> Vec<u8> {
        self.key.sign(&submission_digest(sub)).to_bytes().to_vec()
    }

    /// Signs a receipt's fields and returns the receipt.
    pub fn sign_receipt(&self, fields: ReceiptFields) -> Receipt {
        let signature = self.key.sign(&fields.digest(&self.public())).to_bytes().to_vec();
        Receipt { relay: self.public(), fields, signature }
    }
}

/// Lowercase hex of `bytes` (keys in URLs, files and the ledger).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
    text
}

/// The 32 bytes written as 64 hex digits in `text` (surrounding whitespace ignored).
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    parse_hex(text)?.try_into().ok()
}

/// The bytes written as hex digits, two a byte, in `text` (surrounding whitespace
/// ignored); `None` for anything else.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// Whether `signature` is `key`'s signature of `digest`.
fn verify(key: &[u8; KEY_BYTES], digest: &[u8; 32], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (VerifyingKey::from_bytes(key), Signature::from_slice(signature)) else {
        return false;
    };
    key.verify(digest, &signature).is_ok()
}

/// The digest a contributor signs: every field of the submission but the signature.
pub fn submission_digest(sub: &Submission) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"crowdgrad submission v1");
    hasher.update(&sub.unit_id.to_le_bytes());
    hasher.update(&sub.version.to_le_bytes());
    hasher.update(&sub.steps.to_le_bytes());
    hasher.update(&sub.loss_before.to_le_bytes());
    hasher.update(&sub.loss_after.to_le_bytes());
    hasher.update(&postcard::to_allocvec(&sub.update).expect("serialising into a Vec cannot fail"));
    *hasher.finalize().as_bytes()
}

/// A contributor's public key, parsed once for all its submissions: parsing
/// decompresses a curve point, which costs a third of a verification.
#[derive(Clone, Copy)]
pub struct SubmitterKey {
    bytes: [u8; KEY_BYTES],
    /// `None` when `bytes` is no curve point: nothing verifies with it.
    parsed: Option<VerifyingKey>,
}

impl SubmitterKey {
    /// The key whose 32 bytes are `bytes` (one that is no valid key verifies nothing).
    pub fn parse(bytes: [u8; KEY_BYTES]) -> SubmitterKey {
        SubmitterKey { bytes, parsed: VerifyingKey::from_bytes(&bytes).ok() }
    }

    /// Its 32 bytes.
    pub fn bytes(&self) -> [u8; KEY_BYTES] {
        self.bytes
    }

    /// Whether `sub` carries this key's signature of its contents.
    pub fn verifies(&self, sub: &Submission) -> bool {
        let (Some(key), Ok(signature)) = (self.parsed, Signature::from_slice(&sub.signature)) else { return false };
        key.verify(&submission_digest(sub), &signature).is_ok()
    }
}

/// The Merkle root of `leaves` (in the given order): pairs hash as
/// `blake3("crowdgrad node" ‖ left ‖ right)`, an odd last node moves up unchanged, one
/// leaf is its own root, and no leaves give 32 zero bytes.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut level = leaves.to_vec();
    if level.is_empty() {
        return [0; 32];
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(b"crowdgrad node").update(left).update(right);
                    *hasher.finalize().as_bytes()
                }
                [odd] => *odd,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    level[0]
}

/// What a receipt attests: this contributor's result for this unit was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFields {
    /// The contributor's public key.
    pub contributor: [u8; KEY_BYTES],
    /// The unit.
    pub unit_id: u64,
    /// The version the unit started from.
    pub version: u64,
    /// Tokens the unit trained on.
    pub tokens: u64,
    /// Training FLOPs of the unit (6 × parameters × tokens).
    pub flops: u64,
}

impl ReceiptFields {
    fn digest(&self, relay: &[u8; KEY_BYTES]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"crowdgrad receipt v1");
        hasher.update(relay);
        hasher.update(&self.contributor);
        for field in [self.unit_id, self.version, self.tokens, self.flops] {
            hasher.update(&field.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }
}

/// The relay's signed statement that a unit was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The relay's public key.
    pub relay: [u8; KEY_BYTES],
    /// What it attests.
    pub fields: ReceiptFields,
    /// The relay's signature of `fields` (64 bytes).
    pub signature: Vec<u8>,
}

impl Receipt {
    /// Whether the relay's signature holds.
    pub fn verify(&self) -> bool {
        verify(&self.relay, &self.fields.digest(&self.relay), &self.signature)
    }

    /// blake3 of the whole receipt: a leaf of its version's receipts Merkle tree.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&postcard::to_allocvec(self).expect("serialising into a Vec cannot fail")).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Update;

    fn submission() -> Submission {
        Submission {
            unit_id: 7,
            version: 3,
            steps: 20,
            loss_before: 2.5,
            loss_after: 2.25,
            update: Update::Compressed(vec![1, 2, 3]),
            signature: Vec::new(),
        }
    }

    #[test]
    fn a_signed_submission_verifies_and_any_change_breaks_it() {
        let me = Identity::from_secret([9; 32]);
        let mut sub = submission();
        sub.signature = me.sign_submission(&sub);
        assert!(SubmitterKey::parse(me.public()).verifies(&sub));
        assert!(!SubmitterKey::parse(Identity::from_secret([8; 32]).public()).verifies(&sub), "another key");
        for tamper in [
            |s: &mut Submission| s.unit_id += 1,
            |s: &mut Submission| s.loss_after = 0.1,
            |s: &mut Submission| s.update = Update::Compressed(vec![1, 2, 4]),
        ] {
            let mut forged = sub.clone();
            tamper(&mut forged);
            assert!(!SubmitterKey::parse(me.public()).verifies(&forged));
        }
        sub.signature.truncate(10);
        assert!(!SubmitterKey::parse(me.public()).verifies(&sub), "a short signature");
    }

    #[test]
    fn the_merkle_root_commits_to_every_leaf_and_their_order() {
        let leaves: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        assert_eq!(merkle_root(&[]), [0; 32]);
        assert_eq!(merkle_root(&leaves[..1]), leaves[0]);
        let root = merkle_root(&leaves);
        let mut swapped = leaves.clone();
        swapped.swap(1, 2);
        assert_ne!(merkle_root(&swapped), root);
        let mut changed = leaves.clone();
        changed[4][0] = 9;
        assert_ne!(merkle_root(&changed), root, "the odd last leaf counts too");
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let me = Identity::from_secret([0xab; 32]);
        assert_eq!(parse_hex32(&format!(" {}\n", hex(&me.secret()))), Some(me.secret()));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(parse_hex32("abc"), None);
        assert_eq!(parse_hex32(&"zz".repeat(32)), None);
    }

    #[test]
    fn receipts_verify_and_hash_differently() {
        let relay = Identity::from_secret([1; 32]);
        let fields = ReceiptFields { contributor: [2; 32], unit_id: 1, version: 0, tokens: 100, flops: 600 };
        let receipt = relay.sign_receipt(fields.clone());
        assert!(receipt.verify());
        let other = relay.sign_receipt(ReceiptFields { unit_id: 2, ..fields });
        assert_ne!(receipt.hash(), other.hash());
        let mut forged = receipt.clone();
        forged.fields.tokens = 1_000_000;
        assert!(!forged.verify());
    }
}
