//! Hugging Face GPT-2 folders (`config.json` + `model.safetensors`, see
//! [`crowdgrad_runtime::hf`]) on the relay's side: a job that starts from one
//! (`[model] init = "DIR"`), `crowdgrad export --hf` (with a PEFT LoRA adapter folder
//! merged in, `--adapter DIR`), and each version's files at `/api/hf/{version}/…`
//! ([`crate::hf_routes`]).

use std::path::Path;

use anyhow::Context;
use crowdgrad_runtime::hf;
use crowdgrad_runtime::lora::peft;
use crowdgrad_runtime::model::GptConfig;

/// The model's description in a folder.
pub const CONFIG_FILE: &str = "config.json";
/// The model's tensors in a folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A LoRA adapter's description in a PEFT folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// A LoRA adapter's factors in a PEFT folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The shape of the model in `dir`, with `context` positions (`None`: all of its
/// `n_positions`).
pub fn read_shape(dir: &Path, context: Option<usize>) -> anyhow::Result<GptConfig> {
    let path = dir.join(CONFIG_FILE);
    let json = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    hf::read_config(&json, context).with_context(|| format!("{}", dir.display()))
}

/// The parameters of `dir`'s model, for a model of `cfg` (from [`read_shape`]).
pub fn read_weights(dir: &Path, cfg: &GptConfig) -> anyhow::Result<Vec<f32>> {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    hf::import(cfg, &bytes).with_context(|| format!("{}", dir.display()))
}

/// Writes `params` of a model of `cfg` as a GPT-2 folder that
/// `transformers.GPT2LMHeadModel.from_pretrained(dir)` loads: `config.json`, then
/// `model.safetensors`, written tensor by tensor to a temporary file that is renamed
/// into place (one transposed tensor in memory at a time).
pub fn write(dir: &Path, cfg: &GptConfig, params: &[f32]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(CONFIG_FILE), hf::config_json(cfg))
        .with_context(|| format!("writing {}", dir.join(CONFIG_FILE).display()))?;
    write_weights(&dir.join(WEIGHTS_FILE), cfg, params)
}

/// Writes the GPT-2 `model.safetensors` of `params` to `path` (see [`write`]).
pub fn write_weights(path: &Path, cfg: &GptConfig, params: &[f32]) -> anyhow::Result<()> {
    safetensors::serialize_to_file(hf::tensors(cfg, params), Some(hf::metadata()), path)
        .with_context(|| format!("writing {}", path.display()))
}

/// `params` of a model of `cfg` with the PEFT LoRA adapter of folder `adapter`
/// (`adapter_config.json` + `adapter_model.safetensors`) merged into its weights.
pub fn merge_adapter(adapter: &Path, cfg: &GptConfig, params: &[f32]) -> anyhow::Result<Vec<f32>> {
    let path = adapter.join(ADAPTER_CONFIG_FILE);
    let json = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let lora = peft::read_config(&json, cfg).with_context(|| format!("{}", adapter.display()))?;
    let path = adapter.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let adapters = peft::import(&lora, cfg, &bytes).with_context(|| format!("{}", adapter.display()))?;
    Ok(lora.merge(cfg, params, &adapters))
}
