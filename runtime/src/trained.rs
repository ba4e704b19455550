//! What a job trains: a whole model, or LoRA adapters on a frozen base of that model's
//! shape. Everything that handles "the parameters" (versions, units, updates, replays)
//! asks this for their layout, their first values, their file and their trainer.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::checkpoint::{self, CheckpointError};
use crate::lora::LoraConfig;
use crate::model::{GptConfig, ParamLayout};
use crate::train::{Trainer, TrainerShape};

/// A model's shape, and the adapters trained on it where it is a frozen base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    /// The model's shape (the base's, when adapters train).
    pub model: GptConfig,
    /// The adapters, where the model is a frozen base.
    pub lora: Option<LoraConfig>,
}

impl Trained {
    /// The whole of `model` trains.
    pub fn whole(model: GptConfig) -> Self {
        Trained { model, lora: None }
    }

    /// The trained parameters' layout: the model's, or the adapters' (PEFT's names).
    pub fn layout(&self) -> ParamLayout {
        match &self.lora {
            Some(lora) => lora.layout(&self.model),
            None => self.model.layout(),
        }
    }

    /// The first version's parameters from `seed`: the model's init, or fresh adapters
    /// (`B` zero, so that the adapted model starts as the base).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        match &self.lora {
            Some(lora) => lora.init(&self.model, seed),
            None => self.model.init(seed),
        }
    }

    /// The parameters as a safetensors file, with `metadata` (see
    /// [`checkpoint::encode_layout`]): adapters under PEFT's names, as
    /// `adapter_model.safetensors` holds them.
    pub fn encode(&self, params: &[f32], metadata: &[(&str, String)]) -> Vec<u8> {
        checkpoint::encode_layout(&self.model, &self.layout(), params, metadata)
    }

    /// The parameters of a file made by [`Trained::encode`].
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
        checkpoint::decode_layout(&self.layout(), bytes)
    }

    /// The most bytes [`Trained::encode`] can give: what a weights download may be.
    pub fn max_file_bytes(&self) -> u64 {
        checkpoint::max_layout_bytes(&self.layout())
    }

    /// A trainer of these parameters on `be`, shaped `shape`: of the whole model, or of
    /// the adapters (its base still to be loaded with [`Trainer::load_base`]).
    pub fn trainer<B: Backend>(&self, be: B, shape: TrainerShape) -> Result<Trainer<B>, BackendError> {
        match &self.lora {
            Some(lora) => Trainer::with_lora(be, self.model, lora, shape),
            None => Trainer::with_shape(be, self.model, shape),
        }
    }

    /// Checks the model and the adapters against it.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        match &self.lora {
            Some(lora) => lora.validate(&self.model),
            None => Ok(()),
        }
    }
}
