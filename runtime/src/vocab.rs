//! A model's vocabulary as bytes: what each token id stands for, so that a page can show
//! samples of a BPE model without a tokenizer. The relay tokenizes the data (GPT-2's
//! byte-level BPE, `relay/src/tokenizer.rs`) and serves this table at `/api/vocab`;
//! tabs train on token ids and only decode.
//!
//! Wire format: the magic `CGV1`, the token count (u32, little-endian), then for each
//! token in id order its length in bytes (u16, little-endian) and its bytes.

/// Four bytes that open a vocabulary file.
const MAGIC: [u8; 4] = *b"CGV1";
/// Most tokens a vocabulary may hold: token ids are at most u16.
pub const MAX_TOKENS: usize = 65_536;
/// Longest token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The bytes of every token id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// Concatenated token bytes.
    bytes: Vec<u8>,
    /// Token `i` is `bytes[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
}

impl Vocab {
    /// One token per byte value: the vocabulary of byte-level models.
    pub fn bytes() -> Self {
        Self::from_tokens((0..=255u8).map(|b| vec![b])).expect("256 one-byte tokens fit")
    }

    /// A vocabulary of `tokens` in id order; an error when there are more than
    /// [`MAX_TOKENS`] or one is longer than [`MAX_TOKEN_BYTES`].
    pub fn from_tokens<T: AsRef<[u8]>>(tokens: impl IntoIterator<Item = T>) -> Result<Self, String> {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for token in tokens {
            let token = token.as_ref();
            if token.len() > MAX_TOKEN_BYTES {
                return Err(format!("token {} has {} bytes, over {MAX_TOKEN_BYTES}", ends.len(), token.len()));
            }
            if ends.len() == MAX_TOKENS {
                return Err(format!("more than {MAX_TOKENS} tokens"));
            }
            bytes.extend_from_slice(token);
            ends.push(bytes.len() as u32);
        }
        Ok(Vocab { bytes, ends })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of token `id`, `None` past the end.
    pub fn token(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }

    /// The id of the token whose bytes are exactly `piece`, the lowest if several are.
    pub fn id_of(&self, piece: &[u8]) -> Option<u32> {
        (0..self.len() as u32).find(|&id| self.token(id) == Some(piece))
    }

    /// `ids` as text: their bytes joined, invalid UTF-8 replaced; ids past the end
    /// (padding rows of the embedding) are left out.
    pub fn render(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&id| self.token(id)).flatten().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The wire format (module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 * self.len() + self.bytes.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        for id in 0..self.len() as u32 {
            let token = self.token(id).expect("id below len");
            out.extend_from_slice(&(token.len() as u16).to_le_bytes());
            out.extend_from_slice(token);
        }
        out
    }

    /// Reads the wire format, checking every length against the bytes there are.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, String> {
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            if bytes.len() < n {
                return Err(format!("the vocabulary ends inside {what}"));
            }
            let (head, rest) = bytes.split_at(n);
            bytes = rest;
            Ok(head)
        };
        if take(4, "its magic")? != MAGIC {
            return Err("not a crowdgrad vocabulary (no CGV1 magic)".into());
        }
        let count = u32::from_le_bytes(take(4, "its count")?.try_into().expect("4 bytes")) as usize;
        if count > MAX_TOKENS {
            return Err(format!("{count} tokens, over {MAX_TOKENS}"));
        }
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u16::from_le_bytes(take(2, "a token's length")?.try_into().expect("2 bytes")) as usize;
            tokens.push(take(len, "a token")?.to_vec());
        }
        if !bytes.is_empty() {
            return Err(format!("{} bytes after the last token", bytes.len()));
        }
        Self::from_tokens(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabulary_travels_and_renders() {
        let vocab = Vocab::from_tokens([&b"Hello"[..], b" world", b"\n", b"\xE2\x82", b"\xAC"]).unwrap();
        let back = Vocab::decode(&vocab.encode()).unwrap();
        assert_eq!(back, vocab);
        assert_eq!(back.render(&[0, 1, 2]), "Hello world\n");
        assert_eq!(back.render(&[3, 4]), "€", "a character split across tokens is whole once joined");
        assert_eq!(back.render(&[0, 99]), "Hello", "ids past the vocabulary are left out");
        assert_eq!((back.id_of(b"\n"), back.id_of(b"nope")), (Some(2), None));
        assert_eq!(Vocab::bytes().render(&[72, 105]), "Hi");
    }

    #[test]
    fn a_bad_vocabulary_is_refused_with_a_reason() {
        let good = Vocab::from_tokens([&b"ab"[..], b"c"]).unwrap().encode();
        assert!(Vocab::decode(&good[..good.len() - 1]).unwrap_err().contains("ends inside a token"));
        assert!(Vocab::decode(&[good.as_slice(), b"x"].concat()).unwrap_err().contains("after the last token"));
        assert!(Vocab::decode(b"CGV0\0\0\0\0").unwrap_err().contains("magic"));
        let huge = [&MAGIC[..], &u32::MAX.to_le_bytes()].concat();
        assert!(Vocab::decode(&huge).unwrap_err().contains("over 65536"));
    }
}
