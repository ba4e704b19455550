//! Parameters as safetensors files: one f32 tensor per named view, with nanoGPT's
//! state-dict names, plus `lm_head.weight` (a copy of the tied token embedding, as
//! nanoGPT's state dict has it) and the model config as JSON in the metadata (`config`).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::{GptConfig, ParamLayout};

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The metadata has no usable `config`.
    #[error("no model config in the checkpoint's metadata: {0}")]
    Config(String),
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// A tensor the layout needs is absent.
    #[error("tensor `{0}` is missing")]
    Missing(String),
    /// A tensor has another shape or dtype than the layout says.
    #[error("tensor `{name}` is {dtype:?} {shape:?}, expected F32 {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Its dtype in the file.
        dtype: Dtype,
        /// Its shape in the file.
        shape: Vec<usize>,
        /// The shape the layout needs.
        expected: Vec<usize>,
    },
}

/// Bytes of a checkpoint's header beyond its tensors' names and shapes: the metadata
/// (config and the relay's keys) and JSON punctuation.
const HEADER_SLACK: usize = 16 * 1024;
/// Bytes of a tensor's entry in the header, at most (name, dtype, shape, offsets).
const HEADER_PER_TENSOR: usize = 256;

/// The most bytes a checkpoint of `cfg` can have ([`encode`]'s output): its tensors,
/// the tied head's copy, and a header. What contributors accept as a weights download.
pub fn max_file_bytes(cfg: &GptConfig) -> u64 {
    max_layout_bytes(&cfg.layout())
}

/// The most bytes a file of `layout`'s tensors can have ([`encode_layout`]'s output).
pub fn max_layout_bytes(layout: &ParamLayout) -> u64 {
    let tied = layout.find(TIED_EMBEDDING).map_or(0, |wte| wte.len as u64);
    4 * (layout.total as u64 + tied) + ((layout.entries.len() + 1) * HEADER_PER_TENSOR + HEADER_SLACK) as u64
}

/// The token embedding, which the LM head shares.
const TIED_EMBEDDING: &str = "transformer.wte.weight";

/// Serialises `params` (`cfg.layout().total` floats) with `metadata` (string pairs).
pub fn encode(cfg: &GptConfig, params: &[f32], metadata: &[(&str, String)]) -> Vec<u8> {
    encode_layout(cfg, &cfg.layout(), params, metadata)
}

/// Serialises `params` (`layout.total` floats: a model of `cfg`, or adapters for one)
/// with `metadata`; `lm_head.weight` copies the token embedding where the layout has it.
pub fn encode_layout(cfg: &GptConfig, layout: &ParamLayout, params: &[f32], metadata: &[(&str, String)]) -> Vec<u8> {
    assert_eq!(params.len(), layout.total, "parameter count");
    let bytes: &[u8] = bytemuck::cast_slice(params);
    let view = |offset: usize, len: usize, shape: &[usize]| {
        TensorView::new(Dtype::F32, shape.to_vec(), &bytes[offset * 4..(offset + len) * 4]).expect("shape matches data")
    };
    let mut views: Vec<(&str, TensorView)> =
        layout.entries.iter().map(|e| (e.name.as_str(), view(e.offset, e.len, &e.shape))).collect();
    if let Some(wte) = layout.find(TIED_EMBEDDING) {
        views.push(("lm_head.weight", view(wte.offset, wte.len, &wte.shape)));
    }
    let mut info: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    info.insert("config".into(), serde_json::to_string(cfg).expect("a config serialises"));
    safetensors::serialize(views, Some(info)).expect("serialising well-formed tensors cannot fail")
}

/// The metadata entry `key` of a checkpoint (`version`, `job`, `receipts_root`, …).
pub fn metadata(bytes: &[u8], key: &str) -> Option<String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
    meta.metadata().as_ref()?.get(key).cloned()
}

/// The model config stored in a checkpoint's metadata.
pub fn read_config(bytes: &[u8]) -> Result<GptConfig, CheckpointError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(|| CheckpointError::Config("absent".into()))?;
    let cfg: GptConfig = serde_json::from_str(json).map_err(|e| CheckpointError::Config(e.to_string()))?;
    cfg.validate().map_err(CheckpointError::Config)?;
    Ok(cfg)
}

/// Reads the tensors of `cfg`'s layout from `bytes` into one flat buffer.
pub fn decode(cfg: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    decode_layout(&cfg.layout(), bytes)
}

/// Reads the tensors of `layout` from `bytes` into one flat buffer.
pub fn decode_layout(layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let mut params = vec![0f32; layout.total];
    for e in &layout.entries {
        let t = file.tensor(&e.name).map_err(|_| CheckpointError::Missing(e.name.clone()))?;
        if t.dtype() != Dtype::F32 || t.shape() != e.shape.as_slice() {
            return Err(CheckpointError::Shape {
                name: e.name.clone(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                expected: e.shape.clone(),
            });
        }
        // The data may be unaligned for f32, so copy bytewise.
        for (dst, chunk) in params[e.offset..e.offset + e.len].iter_mut().zip(t.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
    }
    Ok(params)
}

/// blake3 of `bytes` as lowercase hex: how weights and shards are named and checked.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
