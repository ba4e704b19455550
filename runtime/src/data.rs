//! Training text and deterministic batches.
//!
//! A corpus is bytes, split 90% train / 10% validation like nanoGPT, and the training
//! split is cut into shards that contributors download. A batch is fully determined by
//! `(shard bytes, seed, step)`, so the relay can replay any unit exactly.

use crate::rng::Rng;

/// Smallest corpus accepted, in bytes: enough for a validation split of real batches.
pub const MIN_CORPUS_BYTES: usize = 4096;

/// Training text, split into a train and a validation part.
#[derive(Clone, Debug)]
pub struct Corpus {
    bytes: Vec<u8>,
    train_end: usize,
}

/// Why a corpus could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// Fewer bytes than [`MIN_CORPUS_BYTES`].
    #[error("the corpus has {0} bytes; at least {MIN_CORPUS_BYTES} are needed")]
    TooSmall(usize),
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
    /// A corpus over `bytes`, the first 90% for training.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CorpusError> {
        if bytes.len() < MIN_CORPUS_BYTES {
            return Err(CorpusError::TooSmall(bytes.len()));
        }
        let train_end = bytes.len() * 9 / 10;
        Ok(Corpus { bytes, train_end })
    }

    /// Reads a plain text (or any byte) file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self, CorpusError> {
        let bytes =
            std::fs::read(path).map_err(|source| CorpusError::Io { path: path.display().to_string(), source })?;
        Self::from_bytes(bytes)
    }

    /// The built-in corpus: about 200 KB of generated sentences with real structure
    /// (agreement, fixed phrases), made by code so that no download is needed.
    pub fn builtin() -> Self {
        Self::from_bytes(generate_text(0xC0FFEE, 200_000)).expect("generated corpus is large enough")
    }

    /// The training part.
    pub fn train(&self) -> &[u8] {
        &self.bytes[..self.train_end]
    }

    /// The validation part.
    pub fn val(&self) -> &[u8] {
        &self.bytes[self.train_end..]
    }

    /// Shard `index` of `count`: an equal contiguous piece of the training split, plus
    /// the `overlap` bytes after it so that windows can reach its last position.
    pub fn shard(&self, index: u32, count: u32, overlap: usize) -> &[u8] {
        let train = self.train();
        let count = count.max(1) as usize;
        let len = train.len() / count;
        let start = len * (index as usize % count);
        &train[start..(start + len + overlap).min(train.len())]
    }
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
pub fn sample_batch(data: &[u8], seed: u64, step: u32, rows: usize, context: usize) -> Batch {
    assert!(data.len() > context, "{} bytes cannot hold a window of {context} + 1", data.len());
    let span = (data.len() - context) as u64;
    let mut rng = Rng::from_parts(&[seed, step as u64]);
    let mut tokens = Vec::with_capacity(rows * context);
    let mut targets = Vec::with_capacity(rows * context);
    for _ in 0..rows {
        let pos = rng.below(span) as usize;
        tokens.extend(data[pos..pos + context].iter().map(|&b| b as u32));
        targets.extend(data[pos + 1..pos + context + 1].iter().map(|&b| b as u32));
    }
    Batch { tokens, targets }
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
