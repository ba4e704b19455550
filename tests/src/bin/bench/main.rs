//! `cargo xtask bench [backends | gpt | gpt2 | lora | relay | diloco | adversarial | budgets]`.
//!
//! - `backends [STEPS] [ROWS]`: training throughput of the default model on the CPU
//!   reference, the GPU natively, and the GPU and the wasm CPU backend in headless
//!   Chromium, with every ratio against the CPU reference.
//! - `gpt [--iters N] [--gpu-iters N] [--browser-iters N] [--dataset PATH]`: nanoGPT's
//!   shakespeare_char run: quality (val loss at 2000 iterations), the GPU's loss curve
//!   against the CPU's, tokens/s per backend beside PyTorch, and matmul GFLOP/s.
//! - `gpt2 [--only memory,backends,rounds] [--context N] [--rows N] [--results N]
//!   [--steps N] [--browser-steps N] [--slow-warm-up N]`: GPT-2 small through the pipeline (see `gpt2/`).
//! - `lora [--pretrain-steps N] [--versions N] [--rank N] [--targets LIST] …`: LoRA
//!   against full fine-tuning of a pretrained base on a new text, through relays with
//!   native contributors and a tab (see `lora.rs`).
//! - `relay [--federated] [--idle N] [--active N] [--seconds S]`: the relay under load, or
//!   three federated relays against one (see `relay.rs`).
//! - `diloco [--steps N] [--k LIST] [--h LIST] [--plot PATH]`: K simulated contributors
//!   against one trainer at equal tokens, compression on and off (see `diloco.rs`).
//! - `adversarial [--rounds N] [--steps H] [--honest N] [--dense]`: each attack against
//!   the relay's checks and aggregation (see `adversarial.rs`).
//! - `budgets`: the wasm bundle gzipped and the page's time to its first unit (see
//!   `budgets.rs`).

mod adversarial;
mod backends;
mod browser;
mod budgets;
mod diloco;
mod gpt;
mod gpt2;
mod lora;
mod plot;
mod relay;
mod rss;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("backends") => backends::run(args.get(1..).unwrap_or_default()).await,
        Some("gpt") => gpt::run(&args[1..]).await,
        Some("gpt2") => gpt2::run(&args[1..]).await,
        Some("lora") => lora::run(&args[1..]).await,
        Some("relay") => relay::run(&args[1..]).await,
        Some("diloco") => diloco::run(&args[1..]),
        Some("adversarial") => adversarial::run(&args[1..]),
        Some("budgets") => budgets::run().await,
        Some(other) => {
            eprintln!(
                "unknown bench {other:?}; use `backends`, `gpt`, `gpt2`, `lora`, `relay`, `diloco`, `adversarial` or \
                 `budgets`"
            );
            std::process::exit(2);
        }
    }
}

/// Seconds since an arbitrary start, for the shared measurement helpers.
fn clock() -> impl Fn() -> f64 {
    let start = std::time::Instant::now();
    move || start.elapsed().as_secs_f64()
}
