//! How a job's text becomes tokens: one per byte, or GPT-2's byte-level BPE (the
//! `r50k_base` ranks that `tiktoken-rs` ships). A text is tokenized once, on the relay,
//! into little-endian u16 tokens cached in `storage.dir/tokens/`, named by the text's
//! blake3 and the tokenizer, so a restart or a second job on the same text reads them
//! back instead. Contributors train on token ids; pages decode samples with the
//! [`Vocab`] served at `/api/vocab`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use axum::body::Bytes;
use crowdgrad_runtime::data::TokenWidth;
use crowdgrad_runtime::vocab::Vocab;
use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use crate::store::write_bytes_durably;

/// GPT-2's vocabulary: 50,256 merges and bytes, and `<|endoftext|>` (id 50,256).
pub const GPT2_VOCAB: usize = 50_257;

/// How text is cut into tokens (`[data] tokenizer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte (vocabularies up to 256).
    #[default]
    Bytes,
    /// GPT-2's byte-level BPE: 50,257 tokens, stored as u16.
    Gpt2,
}

impl Tokenizer {
    /// The name in job files and checkpoint metadata.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Bytes => "bytes",
            Tokenizer::Gpt2 => "gpt2",
        }
    }

    /// The tokenizer called `name` in a checkpoint's metadata.
    pub fn from_name(name: &str) -> Option<Self> {
        [Tokenizer::Bytes, Tokenizer::Gpt2].into_iter().find(|t| t.name() == name)
    }

    /// Token ids it produces are below this.
    pub fn vocab_size(self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Gpt2 => GPT2_VOCAB,
        }
    }

    /// How its tokens are stored.
    pub fn width(self) -> TokenWidth {
        match self {
            Tokenizer::Bytes => TokenWidth::Byte,
            Tokenizer::Gpt2 => TokenWidth::U16,
        }
    }

    /// What each of its token ids stands for.
    pub fn vocab(self) -> Vocab {
        match self {
            Tokenizer::Bytes => Vocab::bytes(),
            Tokenizer::Gpt2 => {
                let bpe = gpt2();
                let tokens = (0..GPT2_VOCAB as u32).map(|id| bpe.decode_bytes(&[id]).expect("every GPT-2 id decodes"));
                Vocab::from_tokens(tokens).expect("GPT-2's tokens fit a vocabulary")
            }
        }
    }

    /// The tokens of `text`, stored as [`Tokenizer::width`] says. GPT-2's BPE reads
    /// UTF-8 text; an error says where the bytes stop being UTF-8.
    pub fn tokenize(self, text: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Tokenizer::Bytes => Ok(text.to_vec()),
            Tokenizer::Gpt2 => {
                let text = std::str::from_utf8(text).map_err(|e| {
                    anyhow::anyhow!(
                        "GPT-2's tokenizer reads UTF-8 text; the bytes stop being UTF-8 at {}",
                        e.valid_up_to()
                    )
                })?;
                Ok(gpt2().encode_ordinary(text).into_iter().flat_map(|t| (t as u16).to_le_bytes()).collect())
            }
        }
    }

    /// The token ids of `text` (a prompt).
    pub fn encode(self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2 => gpt2().encode_ordinary(text),
        }
    }

    /// The tokens of `text`, from the cache in `cache_dir` when it holds them, else
    /// tokenized and written there (atomically) for next time. Bytes need no cache.
    pub fn tokenize_cached(self, text: &[u8], cache_dir: &Path) -> anyhow::Result<Vec<u8>> {
        if self == Tokenizer::Bytes {
            return self.tokenize(text);
        }
        let path = cache_path(self, text, cache_dir);
        if let Ok(tokens) = std::fs::read(&path)
            && tokens.len() % 2 == 0
        {
            tracing::info!(path = %path.display(), tokens = tokens.len() / 2, "tokens read from the cache");
            return Ok(tokens);
        }
        let started = std::time::Instant::now();
        let tokens = self.tokenize(text)?;
        tracing::info!(
            tokenizer = self.name(),
            bytes = text.len(),
            tokens = tokens.len() / 2,
            secs = started.elapsed().as_secs_f32(),
            "text tokenized"
        );
        std::fs::create_dir_all(path.parent().expect("a cache file has a folder"))
            .and_then(|()| write_bytes_durably(&path, &tokens))
            .with_context(|| format!("caching tokens in {}", path.display()))?;
        Ok(tokens)
    }
}

/// Each tokenizer's vocabulary in its wire format ([`Vocab::encode`]), built on its
/// first request and kept: what `/api/vocab` serves.
#[derive(Default)]
pub struct VocabFiles(Mutex<Vec<(Tokenizer, Bytes)>>);

impl VocabFiles {
    /// The vocabulary file of `tokenizer`.
    pub fn get(&self, tokenizer: Tokenizer) -> Bytes {
        let mut files = self.0.lock().expect("vocabulary files lock");
        if let Some((_, bytes)) = files.iter().find(|(t, _)| *t == tokenizer) {
            return bytes.clone();
        }
        let bytes = Bytes::from(tokenizer.vocab().encode());
        files.push((tokenizer, bytes.clone()));
        bytes
    }
}

/// Where the tokens of `text` under `tokenizer` are cached.
pub fn cache_path(tokenizer: Tokenizer, text: &[u8], cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{}.{}.u16", blake3::hash(text).to_hex(), tokenizer.name()))
}

/// GPT-2's BPE, built once per process.
fn gpt2() -> &'static CoreBPE {
    tiktoken_rs::r50k_base_singleton()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tokens: &[u8]) -> Vec<u16> {
        tokens.chunks_exact(2).map(|t| u16::from_le_bytes([t[0], t[1]])).collect()
    }

    #[test]
    fn gpt2_tokens_are_gpt2s() {
        // GPT-2's own ids for these, as its tokenizer gives them.
        let tokens = Tokenizer::Gpt2.tokenize(b"Hello world").unwrap();
        assert_eq!(ids(&tokens), [15496, 995]);
        assert_eq!(Tokenizer::Gpt2.encode("\n"), [198]);
        let vocab = Tokenizer::Gpt2.vocab();
        assert_eq!(vocab.len(), GPT2_VOCAB);
        assert_eq!(vocab.render(&[15496, 995, 198]), "Hello world\n");
        assert_eq!(vocab.token(50_256), Some(&b"<|endoftext|>"[..]));
        let err = Tokenizer::Gpt2.tokenize(b"ok \xFF").unwrap_err().to_string();
        assert!(err.contains("stop being UTF-8 at 3"), "{err}");
    }

    #[test]
    fn tokens_are_cached_by_the_texts_hash() {
        let dir = tempfile::tempdir().unwrap();
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20);
        let tokens = Tokenizer::Gpt2.tokenize_cached(text.as_bytes(), dir.path()).unwrap();
        let cached = cache_path(Tokenizer::Gpt2, text.as_bytes(), dir.path());
        assert_eq!(std::fs::read(&cached).unwrap(), tokens, "written to the cache");
        // A cached file is what is read back: mark it to tell.
        let marked: Vec<u8> = [7u8, 0].repeat(tokens.len() / 2);
        std::fs::write(&cached, &marked).unwrap();
        assert_eq!(Tokenizer::Gpt2.tokenize_cached(text.as_bytes(), dir.path()).unwrap(), marked);
        // Another text has another file.
        let other = Tokenizer::Gpt2.tokenize_cached(b"Another text.", dir.path()).unwrap();
        assert_eq!(other, Tokenizer::Gpt2.tokenize(b"Another text.").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
