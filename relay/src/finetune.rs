//! A fine-tuning job (`[finetune]` in the job file): LoRA adapters train on a frozen
//! base, which is a Hugging Face GPT-2 folder or one of our checkpoints. The adapters are
//! the job's parameters everywhere (versions, units, updates, replays); the base is read
//! once and kept in memory for the relay's replays and evaluations, and written once as a
//! checkpoint file named by its blake3 (`storage.dir/base/{hash}.safetensors`), which
//! contributors download (`GET /api/base/{hash}`, [`crate::weights::base`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::lora::{LoraConfig, LoraTarget};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::protocol::BaseRef;
use serde::{Deserialize, Serialize};

use crate::hf_dir;

/// `[finetune]`: the base, and the adapters trained on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The frozen base: a Hugging Face GPT-2 folder (`config.json`, `model.safetensors`),
    /// or a checkpoint file of ours. Its config decides the model's shape.
    pub base: PathBuf,
    /// The projections adapted in every block: `c_attn`, `attn.c_proj`, `c_fc`, `mlp.c_proj`.
    pub targets: Vec<LoraTarget>,
    /// The adapters' rank r.
    pub rank: usize,
    /// The update's scale is `alpha / rank`.
    pub alpha: f32,
    /// Dropout on the adapters' input while training, as a probability.
    pub dropout: f32,
}

impl Default for FinetuneConfig {
    /// Rank 8 on `c_attn`, alpha 16, dropout 0.05 (a common PEFT recipe); no base.
    fn default() -> Self {
        FinetuneConfig {
            base: PathBuf::new(),
            targets: vec![LoraTarget::Attention],
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
        }
    }
}

impl FinetuneConfig {
    /// The adapters' settings.
    pub fn lora(&self) -> LoraConfig {
        LoraConfig { targets: self.targets.clone(), rank: self.rank, alpha: self.alpha, dropout: self.dropout }
    }
}

/// The shape of the base at `path` (a folder or a checkpoint file); `context` may ask a
/// folder for fewer positions.
pub fn base_shape(path: &Path, context: Option<usize>) -> anyhow::Result<GptConfig> {
    if path.is_dir() {
        return hf_dir::read_shape(path, context);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = checkpoint::read_config(&bytes).with_context(|| format!("{}", path.display()))?;
    if let Some(context) = context.filter(|&c| c != cfg.context) {
        anyhow::bail!("{} is a checkpoint of context {}, not {context}", path.display(), cfg.context);
    }
    Ok(cfg)
}

/// The frozen base, as the relay holds and serves it.
pub struct Base {
    /// Its values, in `model`'s layout.
    pub values: Arc<Vec<f32>>,
    /// The checkpoint file contributors download.
    pub file: PathBuf,
    /// Bytes of `file`.
    pub bytes: u64,
    /// blake3 of `file`, lowercase hex.
    pub hash: String,
}

impl Base {
    /// Reads the base at `path` as a model of `model` (from [`base_shape`]), and writes
    /// its checkpoint file into `storage`'s `base/` unless a file of that hash is there.
    pub fn read(path: &Path, model: &GptConfig, storage: &Path) -> anyhow::Result<Base> {
        let values = if path.is_dir() {
            hf_dir::read_weights(path, model)?
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            checkpoint::decode(model, &bytes).with_context(|| format!("{}", path.display()))?
        };
        let bytes = checkpoint::encode(model, &values, &[]);
        let hash = checkpoint::hash_hex(&bytes);
        let folder = storage.join("base");
        let file = folder.join(format!("{hash}.safetensors"));
        let kept = std::fs::read(&file).is_ok_and(|kept| checkpoint::hash_hex(&kept) == hash);
        if !kept {
            std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
            let partial = folder.join(format!("{hash}.tmp"));
            std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &file).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(Base { values: Arc::new(values), file, bytes: bytes.len() as u64, hash })
    }

    /// How units name it.
    pub fn reference(&self) -> BaseRef {
        BaseRef { hash: self.hash.clone(), bytes: self.bytes }
    }
}
