//! Hugging Face GPT-2 directories in and out: `config.json` plus `model.safetensors`, as
//! `transformers.GPT2LMHeadModel.save_pretrained` writes them and `from_pretrained`
//! reads them, with no conversion script.
//!
//! GPT-2's checkpoints differ from ours (nanoGPT's names and layout) in two ways:
//! - its four projections are `Conv1D`s, stored `[in, out]`, where ours are `Linear`s
//!   stored `[out, in]`: `attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj` are
//!   transposed on the way in and out;
//! - it always has biases (a model without them exports zeros, which is the same model)
//!   and stores the tied LM head once, as `transformer.wte.weight`.
//!
//! Names may come with the `transformer.` prefix (`save_pretrained` of the LM model) or
//! without it (the hub's `gpt2` files); `attn.bias` and `attn.masked_bias` (causal-mask
//! buffers of older files) are ignored. A model with fewer positions than the file
//! (`[model] context` under `n_positions`) takes the first rows of `wpe`.

use std::borrow::Cow;
use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::Deserialize;

use crate::model::GptConfig;
use crate::ops::LN_EPS;

/// What is wrong with a Hugging Face directory, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// `config.json` is unreadable, or describes a model crowdgrad does not run.
    #[error("config.json: {0}")]
    Config(String),
    /// `model.safetensors` is unreadable, lacks a tensor, or has one of another shape.
    #[error("model.safetensors: {0}")]
    Tensors(String),
}

/// The keys of GPT-2's `config.json` that decide the model; the rest are ignored.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
}

fn default_activation() -> String {
    "gelu_new".into()
}

fn default_epsilon() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

/// The model a GPT-2 `config.json` describes, with `context` positions (at most its
/// `n_positions`; `None` takes them all). An error names what crowdgrad's model
/// cannot be: another architecture, activation, epsilon, MLP width or attention scale.
pub fn read_config(json: &str, context: Option<usize>) -> Result<GptConfig, HfError> {
    let c: HfConfig = serde_json::from_str(json).map_err(|e| HfError::Config(e.to_string()))?;
    let unsupported = |what: String| Err(HfError::Config(format!("{what}; crowdgrad runs GPT-2's architecture only")));
    if let Some(kind) = c.model_type.as_deref().filter(|&t| t != "gpt2") {
        return unsupported(format!("model_type is {kind:?}"));
    }
    if !["gelu_new", "gelu_pytorch_tanh", "gelu_fast"].contains(&c.activation_function.as_str()) {
        return unsupported(format!("activation_function is {:?}, not the tanh GELU", c.activation_function));
    }
    if (c.layer_norm_epsilon - LN_EPS as f64).abs() > 1e-12 {
        return unsupported(format!("layer_norm_epsilon is {}, not {LN_EPS}", c.layer_norm_epsilon));
    }
    if c.n_inner.is_some_and(|inner| inner != 4 * c.n_embd) {
        return unsupported(format!("n_inner is {:?}, not 4 × n_embd", c.n_inner));
    }
    if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
        return unsupported("attention is not scaled by 1/√head_dim alone".into());
    }
    if !c.tie_word_embeddings {
        return unsupported("the LM head is not tied to the token embedding".into());
    }
    let context = context.unwrap_or(c.n_positions);
    if context > c.n_positions {
        return Err(HfError::Config(format!(
            "model.context {context} is over the file's n_positions {}",
            c.n_positions
        )));
    }
    let cfg =
        GptConfig { vocab: c.vocab_size, context, layers: c.n_layer, heads: c.n_head, width: c.n_embd, bias: true };
    cfg.validate().map_err(HfError::Config)?;
    Ok(cfg)
}

/// GPT-2's `config.json` for a model of `cfg`, as `GPT2Config` writes it (the keys
/// `from_pretrained` needs, dropout off).
pub fn config_json(cfg: &GptConfig) -> String {
    let config = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab,
        "n_positions": cfg.context,
        "n_ctx": cfg.context,
        "n_embd": cfg.width,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LN_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "bos_token_id": cfg.vocab.min(50_257) - 1,
        "eos_token_id": cfg.vocab.min(50_257) - 1,
        "torch_dtype": "float32",
    });
    serde_json::to_string_pretty(&config).expect("a JSON value serialises")
}

/// Whether a tensor of our layout is one of GPT-2's `Conv1D` weights, stored transposed.
fn is_conv1d(name: &str) -> bool {
    ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// The parameters of a model of `cfg` from a GPT-2 `model.safetensors` (f32).
pub fn import(cfg: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>, HfError> {
    let bad = |e: String| HfError::Tensors(e);
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let layout = cfg.layout();
    let mut params = vec![0f32; layout.total];
    for e in &layout.entries {
        let short = e.name.strip_prefix("transformer.").expect("every layout name starts with transformer.");
        let t = file
            .tensor(&e.name)
            .or_else(|_| file.tensor(short))
            .map_err(|_| bad(format!("`{}` is missing", e.name)))?;
        let expected: Vec<usize> = match e.shape.as_slice() {
            [out, inp] if is_conv1d(&e.name) => vec![*inp, *out],
            [_, c] if short == "wpe.weight" => vec![t.shape().first().copied().unwrap_or(0).max(cfg.context), *c],
            shape => shape.to_vec(),
        };
        if t.dtype() != Dtype::F32 || t.shape() != expected.as_slice() {
            return Err(bad(format!("`{}` is {:?} {:?}, expected F32 {expected:?}", e.name, t.dtype(), t.shape())));
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let dst = &mut params[e.offset..e.offset + e.len];
        match e.shape.as_slice() {
            [out, inp] if is_conv1d(&e.name) => transpose_into(&values, *inp, *out, dst),
            _ => dst.copy_from_slice(&values[..e.len]),
        }
    }
    if let Ok(head) = file.tensor("lm_head.weight") {
        let wte = layout.find("transformer.wte.weight").expect("every GPT has wte");
        let same = head
            .data()
            .chunks_exact(4)
            .zip(&params[wte.offset..wte.offset + wte.len])
            .all(|(b, w)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) == *w);
        if head.shape() != wte.shape.as_slice() || !same {
            return Err(bad("`lm_head.weight` differs from the token embedding; crowdgrad ties them".into()));
        }
    }
    Ok(params)
}

/// `dst: [cols, rows] = srcᵀ` for `src: [rows, cols]`, row-major.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for (r, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dst[c * rows + r] = v;
        }
    }
}

/// One tensor of an exported file, made when the writer asks for its bytes, so that
/// writing a large model holds one transposed tensor at a time.
pub struct HfTensor<'a> {
    shape: Vec<usize>,
    /// The values in our layout; `None` for a bias the model does not have (zeros).
    values: Option<&'a [f32]>,
    /// Whether `values` (`[shape[1], shape[0]]` in our layout) are written transposed.
    transposed: bool,
}

impl View for HfTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match (self.values, self.transposed) {
            (Some(values), false) => Cow::Borrowed(bytemuck::cast_slice(values)),
            (Some(values), true) => {
                let mut out = vec![0f32; values.len()];
                transpose_into(values, self.shape[1], self.shape[0], &mut out);
                Cow::Owned(bytemuck::cast_slice(&out).to_vec())
            }
            (None, _) => Cow::Owned(vec![0; self.data_len()]),
        }
    }

    fn data_len(&self) -> usize {
        4 * self.shape.iter().product::<usize>()
    }
}

/// The tensors of a GPT-2 `model.safetensors` for the parameters `params` of `cfg`,
/// named as `save_pretrained` names them, for [`safetensors::serialize`] or
/// `serialize_to_file`.
pub fn tensors<'a>(cfg: &GptConfig, params: &'a [f32]) -> Vec<(String, HfTensor<'a>)> {
    let layout = cfg.layout();
    assert_eq!(params.len(), layout.total, "parameter count");
    let with_bias = GptConfig { bias: true, ..*cfg }.layout();
    with_bias
        .entries
        .iter()
        .map(|e| {
            let ours = layout.find(&e.name);
            let transposed = is_conv1d(&e.name);
            let shape = if transposed { vec![e.shape[1], e.shape[0]] } else { e.shape.clone() };
            let values = ours.map(|o| &params[o.offset..o.offset + o.len]);
            (e.name.clone(), HfTensor { shape, values, transposed })
        })
        .collect()
}

/// The metadata `from_pretrained` expects of a PyTorch safetensors file.
pub fn metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// A whole GPT-2 `model.safetensors` in memory (small models; native code writes large
/// ones to a file tensor by tensor with `safetensors::serialize_to_file`).
pub fn export(cfg: &GptConfig, params: &[f32]) -> Vec<u8> {
    safetensors::serialize(tensors(cfg, params), Some(metadata())).expect("well-formed tensors serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_goes_out_and_back_the_same() {
        for bias in [true, false] {
            let cfg = GptConfig { vocab: 50, context: 8, layers: 2, heads: 2, width: 16, bias };
            let params = cfg.init(7);
            let file = export(&cfg, &params);
            let read = read_config(&config_json(&cfg), None).expect("our config reads back");
            assert_eq!(read, GptConfig { bias: true, ..cfg });
            let back = import(&read, &file).expect("our file reads back");
            if bias {
                assert_eq!(back, params);
            } else {
                // The same model with zero biases.
                let layout = read.layout();
                for e in cfg.layout().entries {
                    let b = layout.find(&e.name).unwrap();
                    assert_eq!(&back[b.offset..b.offset + b.len], &params[e.offset..e.offset + e.len], "{}", e.name);
                }
            }
        }
    }

    #[test]
    fn what_crowdgrad_cannot_run_is_named() {
        let cfg = GptConfig::default();
        let json = config_json(&cfg);
        let with = |key: &str, value: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v[key] = value;
            read_config(&v.to_string(), None).unwrap_err().to_string()
        };
        assert!(with("activation_function", "relu".into()).contains("activation_function is \"relu\""));
        assert!(with("model_type", "llama".into()).contains("model_type is \"llama\""));
        assert!(with("n_inner", 100.into()).contains("n_inner"));
        assert!(with("tie_word_embeddings", false.into()).contains("not tied"));
        let long = read_config(&json, Some(cfg.context + 1)).unwrap_err().to_string();
        assert!(long.contains("over the file's n_positions"), "{long}");
        let short = read_config(&json, Some(8)).unwrap();
        let params = cfg.init(1);
        let imported = import(&short, &export(&cfg, &params)).expect("fewer positions take wpe's first rows");
        assert_eq!(imported.len(), short.layout().total);
        assert!(import(&cfg, b"not safetensors").unwrap_err().to_string().starts_with("model.safetensors:"));
    }
}
