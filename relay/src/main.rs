//! `crowdgrad`: run a relay (`serve`) or contribute to one (`contribute`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use crowdgrad_relay::config::{JobConfig, ServeConfig, TlsFiles};
use crowdgrad_relay::contribute::{Device, contribute_forever};
use crowdgrad_relay::hf_dir;
use crowdgrad_relay::ledger::Ledger;
use crowdgrad_relay::tokenizer::Tokenizer;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::cpu::CpuBackend;
#[cfg(feature = "gpu")]
use crowdgrad_runtime::gpu::GpuBackend;
use crowdgrad_runtime::identity::{Identity, hex};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::sample::{SampleOptions, encode_prompt, generate, render};

#[derive(Parser)]
#[command(name = "crowdgrad", version, about = "Train a shared model on the GPUs of whoever opens the page")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `crowdgrad serve`'s arguments.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CROWDGRAD_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Folder of the static site (the page and its wasm bundle).
    #[arg(long, env = "CROWDGRAD_WWW", default_value = "www")]
    www: PathBuf,
    /// The job, as a TOML file (see docs/jobs.md); without one, the default job.
    #[arg(long, env = "CROWDGRAD_CONFIG")]
    config: Option<PathBuf>,
    /// Secret for job control (`/api/admin/pause|resume|job`); without it, off.
    #[arg(long, env = "CROWDGRAD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// HTTPS: the certificate chain, PEM (with --tls-key). Browsers give WebGPU only
    /// to secure pages: a relay reached by name needs HTTPS, here or in a proxy.
    #[arg(long, env = "CROWDGRAD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS: the private key, PEM (with --tls-cert).
    #[arg(long, env = "CROWDGRAD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also listen for plain HTTP here, answering every request with a redirect to
    /// the HTTPS address (e.g. 0.0.0.0:80).
    #[arg(long, env = "CROWDGRAD_REDIRECT_HTTP", requires = "tls_cert")]
    redirect_http: Option<SocketAddr>,
    #[command(flatten)]
    overrides: JobOverrides,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay: the page, the work queue and the aggregation.
    Serve(Box<ServeArgs>),
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
    /// Write a checkpoint as a Hugging Face GPT-2 folder (`config.json`,
    /// `model.safetensors`) that `transformers.GPT2LMHeadModel.from_pretrained` loads.
    Export {
        /// Export as a Hugging Face `GPT2LMHeadModel` folder (the one format there is).
        #[arg(long, required = true)]
        hf: bool,
        /// The safetensors checkpoint (a version file from `/api/weights/{version}`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`)
        /// for that model, merged into its weights before they are written.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The folder to write (created if missing).
        dir: PathBuf,
    },
    /// Read a relay's ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Contribute this machine's CPU (or GPU) to a relay.
    Contribute {
        /// The job's relays' WebSocket URLs, comma-separated: when one dies, the
        /// contributor moves to the next.
        #[arg(long, env = "CROWDGRAD_RELAY", default_value = "ws://127.0.0.1:8080/ws", value_delimiter = ',')]
        relay: Vec<String>,
        /// Train on the GPU through wgpu (fails if there is no adapter).
        #[arg(long)]
        gpu: bool,
        /// With --gpu: store activations and the weights that the matmuls read in f16
        /// where the adapter has `shader-f16` (master weights, gradients and sums stay f32).
        #[arg(long, requires = "gpu")]
        mixed_precision: bool,
        /// File holding this contributor's ed25519 secret key (64 hex digits), made on
        /// first use; without it, a key lives as long as the process.
        #[arg(long, env = "CROWDGRAD_KEY")]
        key: Option<PathBuf>,
    },
}

/// What to do with a ledger.
#[derive(Subcommand)]
enum LedgerCommand {
    /// Print every receipt (unit, contributor key, versions, tokens, FLOPs, the relay's
    /// key and signature, the receipt's hash), so that a contributor can prove its share.
    Export {
        /// The relay's storage folder (`storage.dir`).
        #[arg(long, env = "CROWDGRAD_DATA_DIR", default_value = "crowdgrad-data")]
        data_dir: PathBuf,
        /// `csv` or `json`.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
    },
}

/// Flags that override the job file's keys.
#[derive(clap::Args)]
struct JobOverrides {
    /// `data.path`: text file to train on.
    #[arg(long, env = "CROWDGRAD_DATASET")]
    dataset: Option<PathBuf>,
    /// `storage.dir`: folder of the ledger and the checkpoints.
    #[arg(long, env = "CROWDGRAD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `inner.steps`: inner steps per work unit.
    #[arg(long)]
    inner_steps: Option<u32>,
    /// `round.target`: results that close a round.
    #[arg(long)]
    target_results: Option<usize>,
    /// `round.deadline_secs`: seconds a round waits for its target.
    #[arg(long)]
    round_deadline: Option<f64>,
    /// `federation.nats`: run the job with the other relays of a NATS JetStream
    /// cluster, any of whose nodes these URLs name (`nats://host:4222,…`).
    #[arg(long, env = "CROWDGRAD_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// `federation.relay_url`: this relay's public URL in a federated job (default
    /// `http://` and the listening address).
    #[arg(long, env = "CROWDGRAD_RELAY_URL")]
    relay_url: Option<String>,
}

impl JobOverrides {
    /// The job from `file` (or the default), with these flags applied and checked.
    fn job(self, file: Option<&Path>) -> anyhow::Result<JobConfig> {
        let mut job = JobConfig::load_with_env(file)?;
        job.data.path = self.dataset.or(job.data.path);
        job.storage.dir = self.data_dir.unwrap_or(job.storage.dir);
        job.inner.steps = self.inner_steps.unwrap_or(job.inner.steps);
        job.round.target = self.target_results.unwrap_or(job.round.target);
        job.round.deadline_secs = self.round_deadline.unwrap_or(job.round.deadline_secs);
        if !self.nats.is_empty() || self.relay_url.is_some() {
            let mut federation = job.federation.take().unwrap_or_default();
            if !self.nats.is_empty() {
                federation.nats = self.nats;
            }
            federation.relay_url = self.relay_url.unwrap_or(federation.relay_url);
            job.federation = Some(federation);
        }
        job.validate()?;
        Ok(job)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    crowdgrad_relay::exit_on_panic();
    match Cli::parse().command {
        Command::Serve(serve) => {
            let ServeArgs { addr, www, config, admin_token, tls_cert, tls_key, redirect_http, overrides } = *serve;
            let job = overrides.job(config.as_deref())?;
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| TlsFiles { cert, key });
            let tls_given = tls.is_some();
            let relay = crowdgrad_relay::start(ServeConfig { addr, www, job, admin_token, tls, redirect_http }).await?;
            let scheme = if tls_given { "https" } else { "http" };
            println!("crowdgrad relay on {scheme}://{}", relay.addr);
            relay.serve_until_stopped().await?;
        }
        Command::Sample { checkpoint, prompt, tokens, temperature, top_k, seed, gpu } => {
            let options = SampleOptions { tokens, temperature, top_k, seed };
            let text = sample(&checkpoint, &prompt, options, gpu).await?;
            println!("{prompt}{text}");
        }
        Command::Export { hf: _, checkpoint: file, adapter, dir } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let cfg = checkpoint::read_config(&bytes).with_context(|| format!("{}", file.display()))?;
            let mut params = checkpoint::decode(&cfg, &bytes).with_context(|| format!("{}", file.display()))?;
            drop(bytes);
            if let Some(adapter) = &adapter {
                params = hf_dir::merge_adapter(adapter, &cfg, &params)?;
            }
            hf_dir::write(&dir, &cfg, &params)?;
            let merged = adapter.map(|a| format!(", {} merged in", a.display())).unwrap_or_default();
            println!("wrote {} ({} parameters{merged}) as a Hugging Face GPT-2 folder", dir.display(), params.len());
        }
        Command::Ledger { command: LedgerCommand::Export { data_dir, format } } => {
            let receipts = Ledger::open_read_only(&data_dir)?.receipts(None)?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&receipts)?);
            } else {
                println!("unit,contributor_key,version,in_version,tokens,flops,relay_key,signature,hash");
                for r in receipts {
                    let in_version = r.in_version.map(|v| v.to_string()).unwrap_or_default();
                    println!(
                        "{},{},{},{in_version},{},{},{},{},{}",
                        r.unit, r.contributor_key, r.version, r.tokens, r.flops, r.relay_key, r.signature, r.hash
                    );
                }
            }
        }
        Command::Contribute { relay, gpu, mixed_precision, key } => {
            let identity = match key {
                Some(path) => Identity::load_or_create(&path).with_context(|| format!("--key {}", path.display()))?,
                None => Identity::generate(),
            };
            tracing::info!(key = %hex(&identity.public()), "contributing");
            let device = if gpu { Device::Gpu { mixed_precision } } else { Device::Cpu };
            contribute_forever(&relay, device, Default::default(), identity.secret()).await;
        }
    }
    Ok(())
}

/// Loads `path` and continues `prompt` with it on the CPU or the GPU: text for
/// byte-level models and models whose checkpoint names their tokenizer (`gpt2`), token
/// ids (prompt and output) for other vocabularies.
async fn sample(path: &std::path::Path, prompt: &str, options: SampleOptions, gpu: bool) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = checkpoint::read_config(&bytes)?;
    let params = checkpoint::decode(&cfg, &bytes)?;
    let tokenizer = checkpoint::metadata(&bytes, "tokenizer").and_then(|name| Tokenizer::from_name(&name));
    if let Some(tokenizer @ Tokenizer::Gpt2) = tokenizer {
        let prompt = tokenizer.encode(if prompt.is_empty() { "\n" } else { prompt });
        let tokens = generate_on(gpu, cfg, &params, &prompt, options).await?;
        return Ok(tokenizer.vocab().render(&tokens));
    }
    let prompt = encode_prompt(cfg.vocab, prompt).map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
    let tokens = generate_on(gpu, cfg, &params, &prompt, options).await?;
    let separator = if cfg.vocab > 256 && !prompt.is_empty() { " " } else { "" };
    Ok(format!("{separator}{}", render(cfg.vocab, &tokens)))
}

/// [`generate`] on the GPU through wgpu, or on the CPU reference.
async fn generate_on(
    gpu: bool,
    cfg: GptConfig,
    params: &[f32],
    prompt: &[u32],
    options: SampleOptions,
) -> anyhow::Result<Vec<u32>> {
    if gpu {
        #[cfg(feature = "gpu")]
        return Ok(generate(GpuBackend::new().await.context("--gpu")?, cfg, params, prompt, options).await?);
        #[cfg(not(feature = "gpu"))]
        anyhow::bail!(crowdgrad_relay::contribute::NO_GPU);
    }
    Ok(generate(CpuBackend::new(), cfg, params, prompt, options).await?)
}
