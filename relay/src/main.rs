//! `crowdgrad`: run a relay (`serve`) or contribute to one (`contribute`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_relay::contribute::contribute_forever;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::sample::{SampleOptions, generate};

#[derive(Parser)]
#[command(name = "crowdgrad", version, about = "Train a shared model on the GPUs of whoever opens the page")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay: the page, the work queue and the aggregation.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "CROWDGRAD_ADDR", default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Folder of the static site (the page and its wasm bundle).
        #[arg(long, env = "CROWDGRAD_WWW", default_value = "www")]
        www: PathBuf,
        /// Text file to train on (default: a built-in generated corpus).
        #[arg(long, env = "CROWDGRAD_DATASET")]
        dataset: Option<PathBuf>,
        /// Inner steps per work unit.
        #[arg(long, default_value_t = JobConfig::default().inner_steps)]
        inner_steps: u32,
        /// Results that close a round.
        #[arg(long, default_value_t = JobConfig::default().target_results)]
        target_results: usize,
        /// Seconds a round waits for its target before closing with what it has.
        #[arg(long, default_value_t = JobConfig::default().round_deadline.as_secs())]
        round_deadline: u64,
    },
    /// Generate text from a checkpoint (a version file from `/api/weights/{version}`).
    Sample {
        /// The safetensors checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "")]
        prompt: String,
        /// Bytes to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Softmax temperature.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Sample among the k most likely bytes (0: all).
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Seed of the sampling.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run the model on the GPU through wgpu (fails if there is no adapter).
        #[arg(long)]
        gpu: bool,
    },
    /// Contribute this machine's CPU (or GPU) to a relay.
    Contribute {
        /// The relay's WebSocket URL.
        #[arg(long, env = "CROWDGRAD_RELAY", default_value = "ws://127.0.0.1:8080/ws")]
        relay: String,
        /// Train on the GPU through wgpu (fails if there is no adapter).
        #[arg(long)]
        gpu: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Serve { addr, www, dataset, inner_steps, target_results, round_deadline } => {
            let job = JobConfig {
                dataset,
                inner_steps,
                target_results,
                round_deadline: Duration::from_secs(round_deadline),
                ..JobConfig::default()
            };
            let relay = crowdgrad_relay::start(ServeConfig { addr, www, job }).await?;
            println!("crowdgrad relay on http://{}", relay.addr);
            relay.wait().await;
        }
        Command::Sample { checkpoint, prompt, tokens, temperature, top_k, seed, gpu } => {
            let options = SampleOptions { tokens, temperature, top_k, seed };
            let text = sample(&checkpoint, prompt.as_bytes(), options, gpu).await?;
            println!("{prompt}{}", String::from_utf8_lossy(&text));
        }
        Command::Contribute { relay, gpu } => {
            contribute_forever(&relay, gpu, Default::default()).await;
        }
    }
    Ok(())
}

/// Loads `path` and generates from it on the CPU or the GPU.
async fn sample(path: &std::path::Path, prompt: &[u8], options: SampleOptions, gpu: bool) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = checkpoint::read_config(&bytes)?;
    let params = checkpoint::decode(&cfg, &bytes)?;
    Ok(if gpu {
        generate(GpuBackend::new().await.context("--gpu")?, cfg, &params, prompt, options).await?
    } else {
        generate(CpuBackend::new(), cfg, &params, prompt, options).await?
    })
}
