//! PEFT's LoRA adapter folders in and out: `adapter_config.json` plus
//! `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes them and
//! `PeftModel.from_pretrained(base, DIR)` reads them.
//!
//! On GPT-2, whose projections are `Conv1D`s, PEFT sets `fan_in_fan_out` and stores the
//! factors as it would for a `Linear`: `lora_A.weight: [r, in]`, `lora_B.weight:
//! [out, r]`, which is our layout ([`super::LoraConfig::layout`]); only the merged
//! update is transposed, on PEFT's side. PEFT's `target_modules` name modules by their
//! last parts (`c_attn`, `mlp.c_proj`, or `c_proj` for both projections of that name).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Deserialize;

use super::{LoraConfig, LoraTarget};
use crate::model::GptConfig;

/// What is wrong with a PEFT adapter folder, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// `adapter_config.json` is unreadable, or asks for what crowdgrad does not run.
    #[error("adapter_config.json: {0}")]
    Config(String),
    /// `adapter_model.safetensors` is unreadable, lacks a factor, or has one of another shape.
    #[error("adapter_model.safetensors: {0}")]
    Tensors(String),
}

/// The keys of `adapter_config.json` that decide the adapter; the rest are ignored.
#[derive(Deserialize)]
struct AdapterConfig {
    peft_type: String,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: serde_json::Value,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    rank_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
}

/// The targets that PEFT's `target_modules` entry `name` picks in a model of `layers`
/// blocks: those whose full module name (`transformer.h.3.attn.c_attn`) is `name` or
/// ends with `.name`, in every block.
fn targets_named(name: &str, layers: usize) -> Result<Vec<LoraTarget>, PeftError> {
    let mut picked = Vec::new();
    for target in LoraTarget::ALL {
        let matches = (0..layers)
            .filter(|l| {
                let key = format!("transformer.h.{l}.{}", target.module());
                key == name || key.ends_with(&format!(".{name}"))
            })
            .count();
        if matches == layers {
            picked.push(target);
        } else if matches > 0 {
            return Err(PeftError::Config(format!(
                "target {name:?} adapts some blocks only; crowdgrad adapts every block"
            )));
        }
    }
    if picked.is_empty() {
        return Err(PeftError::Config(format!(
            "target {name:?} is none of GPT-2's projections (c_attn, attn.c_proj, c_fc, mlp.c_proj)"
        )));
    }
    Ok(picked)
}

/// The adapter an `adapter_config.json` describes for `model`. An error names what
/// crowdgrad does not run: another PEFT method, DoRA, rsLoRA, per-module ranks, trained
/// biases or extra modules.
pub fn read_config(json: &str, model: &GptConfig) -> Result<LoraConfig, PeftError> {
    let bad = |e: String| PeftError::Config(e);
    let c: AdapterConfig = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if c.peft_type != "LORA" {
        return Err(bad(format!("peft_type is {:?}; crowdgrad runs LORA", c.peft_type)));
    }
    for (flag, name) in [(c.use_dora, "use_dora"), (c.use_rslora, "use_rslora")] {
        if flag {
            return Err(bad(format!("{name} is set; crowdgrad runs plain LoRA")));
        }
    }
    if c.rank_pattern.is_some_and(|p| !p.is_empty()) || c.alpha_pattern.is_some_and(|p| !p.is_empty()) {
        return Err(bad("rank_pattern or alpha_pattern is set; crowdgrad gives every module one rank".into()));
    }
    if c.bias.as_deref().is_some_and(|b| b != "none") {
        return Err(bad(format!("bias is {:?}; crowdgrad trains no biases", c.bias.unwrap_or_default())));
    }
    if c.modules_to_save.is_some_and(|m| !m.is_empty()) {
        return Err(bad("modules_to_save is set; crowdgrad trains the adapters alone".into()));
    }
    if c.layers_to_transform.is_some_and(|l| !l.is_null()) {
        return Err(bad("layers_to_transform is set; crowdgrad adapts every block".into()));
    }
    let names: Vec<String> = match c.target_modules {
        serde_json::Value::Array(list) => {
            list.into_iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>().unwrap_or_default()
        }
        other => return Err(bad(format!("target_modules is {other}; crowdgrad takes a list of module names"))),
    };
    let mut targets = Vec::new();
    for name in &names {
        targets.extend(targets_named(name, model.layers)?);
    }
    targets.sort();
    targets.dedup();
    let lora = LoraConfig { targets, rank: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout };
    lora.validate(model).map_err(bad)?;
    Ok(lora)
}

/// `adapter_config.json` for `lora` on the base called `base` (its folder or hub name).
pub fn config_json(lora: &LoraConfig, base: &str) -> String {
    let targets: Vec<&str> = lora.ordered_targets().into_iter().map(LoraTarget::module).collect();
    // As written (0.1, not 0.10000000149011612): the f32's shortest decimal, as f64.
    let decimal = |x: f32| x.to_string().parse::<f64>().expect("an f32 prints as a number");
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": decimal(lora.alpha),
        "lora_dropout": decimal(lora.dropout),
        "target_modules": targets,
        "fan_in_fan_out": true,
        "bias": "none",
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
    });
    serde_json::to_string_pretty(&json).expect("JSON values serialise")
}

/// The adapters `lora` lays out for `model`, from an `adapter_model.safetensors` (f32).
pub fn import(lora: &LoraConfig, model: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>, PeftError> {
    let bad = |e: String| PeftError::Tensors(e);
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let layout = lora.layout(model);
    let mut adapters = vec![0f32; layout.total];
    for e in &layout.entries {
        let t = file.tensor(&e.name).map_err(|_| bad(format!("`{}` is missing", e.name)))?;
        if t.dtype() != Dtype::F32 || t.shape() != e.shape.as_slice() {
            return Err(bad(format!("`{}` is {:?} {:?}, expected F32 {:?}", e.name, t.dtype(), t.shape(), e.shape)));
        }
        for (dst, b) in adapters[e.offset..e.offset + e.len].iter_mut().zip(t.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(adapters)
}

/// `adapter_model.safetensors` for `adapters` of `lora` on `model`.
pub fn export(lora: &LoraConfig, model: &GptConfig, adapters: &[f32]) -> Vec<u8> {
    let layout = lora.layout(model);
    assert_eq!(adapters.len(), layout.total, "adapter parameters");
    let tensors = layout.entries.iter().map(|e| {
        let bytes: &[u8] = bytemuck::cast_slice(&adapters[e.offset..e.offset + e.len]);
        (e.name.clone(), TensorView::new(Dtype::F32, e.shape.clone(), bytes).expect("shape and bytes agree"))
    });
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(metadata)).expect("well-formed tensors serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> GptConfig {
        GptConfig { vocab: 40, context: 8, layers: 2, heads: 2, width: 16, bias: true }
    }

    #[test]
    fn an_adapter_goes_out_and_back_the_same() {
        let lora = LoraConfig {
            targets: vec![LoraTarget::AttentionOut, LoraTarget::MlpIn],
            rank: 2,
            alpha: 4.0,
            dropout: 0.1,
        };
        let adapters: Vec<f32> = (0..lora.layout(&model()).total).map(|i| i as f32 * 0.5).collect();
        let read = read_config(&config_json(&lora, "base"), &model()).expect("our config reads back");
        assert_eq!(read, lora);
        assert_eq!(
            import(&read, &model(), &export(&lora, &model(), &adapters)).expect("our file reads back"),
            adapters
        );
    }

    #[test]
    fn targets_follow_peft_name_matching() {
        let targets = |names: &[&str]| {
            let json = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": names});
            read_config(&json.to_string(), &model()).map(|l| l.targets).map_err(|e| e.to_string())
        };
        assert_eq!(targets(&["c_proj"]), Ok(vec![LoraTarget::AttentionOut, LoraTarget::MlpOut]));
        assert_eq!(targets(&["mlp.c_proj", "c_attn"]), Ok(vec![LoraTarget::Attention, LoraTarget::MlpOut]));
        assert!(targets(&["h.0.attn.c_attn"]).unwrap_err().contains("some blocks only"));
        assert!(targets(&["q_proj"]).unwrap_err().contains("none of GPT-2's projections"));
        let dora = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["c_attn"], "use_dora": true});
        assert!(read_config(&dora.to_string(), &model()).unwrap_err().to_string().contains("use_dora"));
    }
}
