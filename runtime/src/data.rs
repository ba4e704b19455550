//! Training data and deterministic batches.
//!
//! A corpus is a sequence of tokens: bytes of text, or the little-endian u16 tokens of
//! nanoGPT's and llm.c's `.bin` files. Without a separate validation file it is split
//! 90% train / 10% validation like nanoGPT, and the training split is cut into shards
//! that contributors download as bytes. A batch is fully determined by
//! `(shard, seed, step)`, so the relay can replay any unit exactly.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Smallest corpus accepted, in tokens: enough for a validation split of real batches.
pub const MIN_CORPUS_TOKENS: usize = 4096;

/// How tokens are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    /// One byte a token (text; vocabularies up to 256).
    #[default]
    Byte,
    /// Two bytes a token, little-endian (vocabularies up to 65,536, e.g. GPT-2's).
    U16,
}

impl TokenWidth {
    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::Byte => 1,
            TokenWidth::U16 => 2,
        }
    }

    /// The largest vocabulary these tokens can address.
    pub fn max_vocab(self) -> usize {
        match self {
            TokenWidth::Byte => 256,
            TokenWidth::U16 => 65_536,
        }
    }
}

/// A run of tokens stored as bytes (a trailing partial token is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens<'a> {
    bytes: &'a [u8],
    width: TokenWidth,
}

impl<'a> Tokens<'a> {
    /// `bytes` read as tokens of `width`.
    pub fn new(bytes: &'a [u8], width: TokenWidth) -> Self {
        let whole = bytes.len() / width.bytes() * width.bytes();
        Tokens { bytes: &bytes[..whole], width }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.width.bytes()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        match self.width {
            TokenWidth::Byte => self.bytes[i] as u32,
            TokenWidth::U16 => u16::from_le_bytes([self.bytes[2 * i], self.bytes[2 * i + 1]]) as u32,
        }
    }

    /// Tokens `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Tokens<'a> {
        let w = self.width.bytes();
        Tokens { bytes: &self.bytes[start * w..end * w], width: self.width }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How the tokens are stored.
    pub fn width(&self) -> TokenWidth {
        self.width
    }

    /// The largest token id, 0 when empty.
    pub fn max_token(&self) -> u32 {
        (0..self.len()).map(|i| self.get(i)).max().unwrap_or(0)
    }
}

/// Training data: a train and a validation part.
#[derive(Clone, Debug)]
pub struct Corpus {
    train: Vec<u8>,
    val: Vec<u8>,
    width: TokenWidth,
}

/// Why a corpus could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// Fewer tokens than [`MIN_CORPUS_TOKENS`].
    #[error("the corpus has {0} tokens; at least {MIN_CORPUS_TOKENS} are needed")]
    TooSmall(usize),
    /// A token file that is not whole u16 tokens.
    #[error("{path}: {reason}")]
    BadTokenFile {
        /// The path given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("cannot read dataset {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Corpus {
    /// A corpus over the tokens in `bytes`, the first 90% for training.
    pub fn from_bytes(bytes: Vec<u8>, width: TokenWidth) -> Result<Self, CorpusError> {
        let tokens = bytes.len() / width.bytes();
        if tokens < MIN_CORPUS_TOKENS {
            return Err(CorpusError::TooSmall(tokens));
        }
        let split = tokens * 9 / 10 * width.bytes();
        let val = bytes[split..tokens * width.bytes()].to_vec();
        let mut train = bytes;
        train.truncate(split);
        Ok(Corpus { train, val, width })
    }

    /// Reads a plain text (or any byte) file, one token a byte.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self, CorpusError> {
        Self::from_bytes(read(path)?, TokenWidth::Byte)
    }

    /// Reads nanoGPT's or llm.c's u16 token files (`train.bin`, and `val.bin` when given;
    /// otherwise the last 10% of `train` validates).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_token_files(train: &std::path::Path, val: Option<&std::path::Path>) -> Result<Self, CorpusError> {
        let train = read_token_file(train)?;
        let Some(val) = val else { return Self::from_bytes(train, TokenWidth::U16) };
        let val = read_token_file(val)?;
        let tokens = (train.len() + val.len()) / 2;
        if tokens < MIN_CORPUS_TOKENS || val.is_empty() {
            return Err(CorpusError::TooSmall(tokens));
        }
        Ok(Corpus { train, val, width: TokenWidth::U16 })
    }

    /// The built-in corpus: about 200 KB of generated sentences with real structure
    /// (agreement, fixed phrases), made by code so that no download is needed.
    pub fn builtin() -> Self {
        Self::from_bytes(builtin_text(), TokenWidth::Byte).expect("generated corpus is large enough")
    }

    /// How the tokens are stored.
    pub fn width(&self) -> TokenWidth {
        self.width
    }

    /// The training part.
    pub fn train(&self) -> Tokens<'_> {
        Tokens::new(&self.train, self.width)
    }

    /// The validation part.
    pub fn val(&self) -> Tokens<'_> {
        Tokens::new(&self.val, self.width)
    }

    /// Shard `index` of `count`: an equal contiguous piece of the training split, plus
    /// the `overlap` tokens after it so that windows can reach its last position.
    pub fn shard(&self, index: u32, count: u32, overlap: usize) -> Tokens<'_> {
        let train = self.train();
        let count = count.max(1) as usize;
        let len = train.len() / count;
        let start = len * (index as usize % count);
        train.slice(start, (start + len + overlap).min(train.len()))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read(path: &std::path::Path) -> Result<Vec<u8>, CorpusError> {
    std::fs::read(path).map_err(|source| CorpusError::Io { path: path.display().to_string(), source })
}

/// The tokens of a `.bin` file: llm.c's (header, then u16) or nanoGPT's (bare u16).
#[cfg(not(target_arch = "wasm32"))]
fn read_token_file(path: &std::path::Path) -> Result<Vec<u8>, CorpusError> {
    /// The magic number opening an llm.c token file (a 256 × i32 header, then u16 tokens).
    const LLM_C_MAGIC: i32 = 20240520;
    /// Bytes of an llm.c token file's header.
    const LLM_C_HEADER: usize = 256 * 4;
    let mut bytes = read(path)?;
    let bad = |reason: String| CorpusError::BadTokenFile { path: path.display().to_string(), reason };
    let header = |i: usize| bytes.get(4 * i..4 * i + 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if header(0) == Some(LLM_C_MAGIC) {
        let declared = header(2).unwrap_or(-1);
        let present = bytes.len().saturating_sub(LLM_C_HEADER) / 2;
        if declared < 0 || declared as usize != present {
            return Err(bad(format!("llm.c header declares {declared} tokens, the file holds {present}")));
        }
        bytes.drain(..LLM_C_HEADER);
    }
    if bytes.len() % 2 != 0 {
        return Err(bad(format!("{} bytes is not a whole number of u16 tokens", bytes.len())));
    }
    Ok(bytes)
}

/// One batch of `rows` windows: `tokens: [rows, context]` inputs and `targets: [rows,
/// context]`, each window's tokens shifted by one (the next token at every position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Row-major windows, `rows · context` token ids.
    pub tokens: Vec<u32>,
    /// The token after each input token.
    pub targets: Vec<u32>,
}

/// The batch for inner step `step` of a unit with seed `seed`: `rows` windows of
/// `context` tokens, each at a position drawn uniformly from `data`
/// (`data.len() > context`).
pub fn sample_batch(data: Tokens, seed: u64, step: u32, rows: usize, context: usize) -> Batch {
    assert!(data.len() > context, "{} tokens cannot hold a window of {context} + 1", data.len());
    let span = (data.len() - context) as u64;
    let mut rng = Rng::from_parts(&[seed, step as u64]);
    let mut tokens = Vec::with_capacity(rows * context);
    let mut targets = Vec::with_capacity(rows * context);
    for _ in 0..rows {
        let pos = rng.below(span) as usize;
        tokens.extend((pos..pos + context).map(|i| data.get(i)));
        targets.extend((pos + 1..pos + context + 1).map(|i| data.get(i)));
    }
    Batch { tokens, targets }
}

/// The built-in corpus's text (see [`Corpus::builtin`]), for tokenizers other than bytes.
pub fn builtin_text() -> Vec<u8> {
    generate_text(0xC0FFEE, 200_000)
}

/// Generates `len` bytes of sentences from a small grammar, deterministically from `seed`.
pub fn generate_text(seed: u64, len: usize) -> Vec<u8> {
    const SUBJECTS: [(&str, bool); 10] = [
        ("the cat", false),
        ("the dogs", true),
        ("a farmer", false),
        ("the children", true),
        ("my neighbour", false),
        ("the old king", false),
        ("two sailors", true),
        ("the river", false),
        ("our teachers", true),
        ("a small bird", false),
    ];
    const VERBS: [(&str, &str); 8] = [
        ("sees", "see"),
        ("likes", "like"),
        ("follows", "follow"),
        ("finds", "find"),
        ("remembers", "remember"),
        ("carries", "carry"),
        ("watches", "watch"),
        ("greets", "greet"),
    ];
    const OBJECTS: [&str; 10] = [
        "the bread",
        "a red apple",
        "the quiet moon",
        "the garden",
        "an open door",
        "the morning train",
        "a letter",
        "the green hills",
        "the market",
        "a wooden boat",
    ];
    const ENDINGS: [&str; 6] =
        [".", " every day.", " in the evening.", " again.", " near the sea.", " with great care."];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let (subject, plural) = SUBJECTS[rng.below(SUBJECTS.len() as u64) as usize];
        let (singular_verb, plural_verb) = VERBS[rng.below(VERBS.len() as u64) as usize];
        let object = OBJECTS[rng.below(OBJECTS.len() as u64) as usize];
        let ending = ENDINGS[rng.below(ENDINGS.len() as u64) as usize];
        let verb = if plural { plural_verb } else { singular_verb };
        let sentence = format!("{subject} {verb} {object}{ending}");
        let mut chars = sentence.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase().to_string().bytes());
            out.extend(chars.as_str().bytes());
        }
        out.push(if rng.below(5) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_tokens_read_little_endian_and_shards_stay_whole() {
        let bytes: Vec<u8> = (0..5000u16).flat_map(|t| t.to_le_bytes()).collect();
        let corpus = Corpus::from_bytes(bytes, TokenWidth::U16).expect("5000 tokens");
        assert_eq!((corpus.train().len(), corpus.val().len()), (4500, 500));
        assert_eq!((corpus.train().get(300), corpus.val().get(0)), (300, 4500));
        let shard = corpus.shard(1, 4, 65);
        assert_eq!((shard.get(0), shard.len()), (1125, 1125 + 65));
        let batch = sample_batch(shard, 3, 0, 2, 8);
        assert!(batch.tokens.iter().zip(&batch.targets).all(|(t, n)| n == &(t + 1)), "targets follow inputs");
        assert_eq!(Tokens::new(&[1, 2, 3], TokenWidth::U16).len(), 1, "a trailing half token is ignored");
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn token_files_with_and_without_the_llm_c_header() {
        let dir = std::env::temp_dir().join(format!("crowdgrad-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens: Vec<u8> = (0..4096u16).map(|t| t % 50_000).flat_map(|t| t.to_le_bytes()).collect();
        let mut header = vec![0u8; 1024];
        header[..4].copy_from_slice(&20240520i32.to_le_bytes());
        header[4..8].copy_from_slice(&1i32.to_le_bytes());
        header[8..12].copy_from_slice(&4096i32.to_le_bytes());
        let (bare, llm_c, odd) = (dir.join("bare.bin"), dir.join("llmc.bin"), dir.join("odd.bin"));
        std::fs::write(&bare, &tokens).unwrap();
        std::fs::write(&llm_c, [header.as_slice(), &tokens].concat()).unwrap();
        std::fs::write(&odd, &tokens[..101]).unwrap();
        let a = Corpus::from_token_files(&bare, None).expect("nanoGPT file");
        let b = Corpus::from_token_files(&llm_c, Some(&bare)).expect("llm.c file");
        assert_eq!(a.train().get(7), 7);
        assert_eq!((b.train().len(), b.val().len()), (4096, 4096), "a separate validation file");
        let err = Corpus::from_token_files(&odd, None).unwrap_err().to_string();
        assert!(err.contains("not a whole number of u16 tokens"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
