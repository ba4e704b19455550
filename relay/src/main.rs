//! `crowdgrad`: run a relay (`serve`) or contribute to one (`contribute`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_relay::contribute::contribute_forever;

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
        Command::Contribute { relay, gpu } => {
            contribute_forever(&relay, gpu, Default::default()).await;
        }
    }
    Ok(())
}
