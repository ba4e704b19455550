//! crowdgrad's runtime: everything a contributor and the relay share.
//!
//! - [`model`]: the GPT and its parameter layout (nanoGPT names).
//! - [`ops`]: CPU reference implementations of every op (the ground truth).
//! - [`backend`]: the op set, implemented by [`cpu::CpuBackend`] and [`gpu::GpuBackend`].
//! - [`train`]: forward, backward and AdamW written once against any backend.
//! - [`data`]: corpora and deterministic batches.
//! - [`protocol`]: the versioned binary frames between relay and contributors.
//! - [`checkpoint`]: safetensors encoding of parameters.
//! - [`hf`]: Hugging Face GPT-2 directories in and out.
//! - [`lora`]: LoRA adapters on a frozen base, and PEFT's adapter folders in and out.
//! - [`trained`]: what a job trains: a whole model, or adapters on a frozen base.
//! - [`codec`]: compressed updates (chunked top-k, quantised, error feedback).
//! - [`identity`]: ed25519 keys, signed submissions and receipts.
//! - [`contributor`]: the contributor loop, behind a [`contributor::Transport`] trait.
//! - [`backoff`]: how long a contributor waits before reconnecting.
//! - [`sample`]: text generation from a trained model.
//! - [`bench`]: throughput measurements shared by the native and browser benches.
//! - [`vocab`]: what each token id stands for, so that pages can decode samples.

pub mod backend;
pub mod backoff;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod contributor;
pub mod cpu;
pub mod data;
pub mod feedback;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod held;
pub mod hf;
pub mod identity;
pub mod lora;
pub mod model;
pub mod ops;
pub mod protocol;
pub mod rng;
pub mod sample;
pub mod train;
pub mod trained;
pub mod vocab;
