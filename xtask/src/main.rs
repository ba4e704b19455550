//! `cargo xtask serve | test | bench`: builds the wasm bundle, installs what is
//! missing, and runs the relay, every test, or the benchmarks.

mod tools;
mod wasm;

use std::process::{Command, ExitCode};

use wasm::WasmConfig;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  serve [ARGS…]   build the wasm bundle into www/pkg and run the relay (`crowdgrad serve ARGS…`)
  test            install what is missing, then run every test: native, WebGPU on lavapipe,
                  WebGPU in headless Chromium, and the end-to-end relay tests
  bench [backends] [STEPS ROWS]
                  training throughput on the CPU reference, native GPU and GPU in headless Chromium
  bench gpt [--iters N --gpu-iters N --browser-iters N --torch-iters N --dataset PATH]
                  nanoGPT's shakespeare_char run: val loss at 2000 iterations, GPU against CPU,
                  tokens/s beside PyTorch, matmul GFLOP/s
  bench gpt2 [--only memory,backends,rounds,precision --context N --rows N --results N
              --steps N --browser-steps N --slow-warm-up N
              --backends cpu,gpu,gpu-mixed,wasm,webgpu,torch --precision-steps N
              --precision-model gpt2|narrow --dataset PATH]
                  GPT-2 small (124M, BPE): relay RSS during a round of N results, tokens/s
                  and peak memory per backend beside PyTorch, two DiLoCo rounds through a
                  relay with two native contributors and a Chromium tab (bytes per unit),
                  and (on request) the loss curve of mixed precision against f32
  bench lora [--pretrain-steps N --versions N --steps N --rank N --targets LIST
              --lora-lr X --full-lr X --dataset PATH]
                  LoRA against full fine-tuning of a base pretrained on tinyshakespeare, on
                  this repository's docs, through relays with native contributors and a
                  tab: held-out loss, bytes up per unit and down per version, tab memory
  bench relay [--only a,b,… --idle N --active N --seconds S --downloads N --honest N
               --garbage N --flood-seconds S --commit-active N --commit-seconds S]
                  the relay under load: (a) RSS per idle session, (b) results/s and latency
                  of active contributors, lost results, (c) the outer step's time for a 10M
                  model, (d) RSS under concurrent chunk requests, (e) honest acks beside a
                  flood of garbage, (f) acks while a 10.8M model commits
  bench diloco [--steps N --k 4,8 --h 10,50,100 --plot PATH]
                  K simulated contributors against one trainer at equal tokens, compression
                  on and off: val loss, upload bytes per round, and a PNG of the curves
  bench adversarial [--rounds N --steps H --honest N --dense --budget-flops F]
                  each attack (1 contributor in 5) against the relay's checks: how it was
                  rejected, the share caught, val loss against the clean run, check seconds
                  per accepted result
  bench budgets   the wasm bundle gzipped (budget 1 MB) and, on localhost, the time from
                  opening the page to its first unit training (budget 3 s)
  fuzz [SECONDS]  runs each cargo-fuzz target in fuzz/ (the update decoder, the relay's
                  frame parser) for SECONDS (default 60); installs nightly and cargo-fuzz";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cmd`, failing with its name when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() { Ok(()) } else { Err(format!("{:?} failed with {status}", cmd.get_program())) }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn serve(args: &[String]) -> Result<(), String> {
    let config = WasmConfig::load()?;
    tools::ensure_wasm_tools()?;
    wasm::build_bundle(&config)?;
    // Serving needs no GPU backend: without wgpu the relay builds in less time.
    let relay = ["run", "--release", "-p", "crowdgrad-relay", "--no-default-features", "--bin", "crowdgrad"];
    run(cargo().args(relay).arg("--").arg("serve").args(args))
}

fn test() -> Result<(), String> {
    let config = WasmConfig::load()?;
    tools::ensure_wasm_tools()?;
    tools::ensure_wasm_pack()?;
    tools::ensure_system_packages()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The relay as `cargo xtask serve` builds it, without its GPU backend.
    run(cargo().args(["clippy", "-p", "crowdgrad-relay", "--no-default-features", "--", "-D", "warnings"]))?;
    // The browser-side code too: it only compiles for wasm32.
    let wasm_crates = ["-p", "crowdgrad-runtime", "-p", "crowdgrad-web"];
    run(cargo()
        .args(["clippy", "--target", "wasm32-unknown-unknown", "--all-targets"])
        .args(wasm_crates)
        .args(["--", "-D", "warnings"]))?;
    wasm::build_bundle(&config)?;
    wasm::build_node_package(&config)?;
    let mut tests = cargo();
    tests.args(["test", "--workspace"]);
    tools::test_env(&mut tests);
    run(&mut tests)?;
    wasm::browser_tests(&config)?;
    eprintln!("xtask: every test passed");
    Ok(())
}

fn fuzz(args: &[String]) -> Result<(), String> {
    let seconds: u32 = match args.first() {
        Some(s) => s.parse().map_err(|_| format!("fuzz takes a number of seconds, not {s:?}"))?,
        None => 60,
    };
    tools::ensure_fuzz_tools()?;
    for target in ["codec_decode", "client_frame"] {
        // Through rustup: the cargo that runs xtask may not understand `+nightly`.
        run(Command::new("rustup")
            .current_dir(wasm::root())
            .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    let config = WasmConfig::load()?;
    tools::ensure_wasm_tools()?;
    tools::ensure_system_packages()?;
    wasm::build_bundle(&config)?;
    // `bench relay` runs the relay as its own process.
    run(cargo().args(["build", "--release", "-p", "crowdgrad-relay", "--bin", "crowdgrad"]))?;
    let mut bench = cargo();
    bench.args(["run", "--release", "-p", "crowdgrad-tests", "--bin", "bench", "--"]).args(args);
    tools::test_env(&mut bench);
    run(&mut bench)
}
