//! `bench lora`: fine-tuning a base that crowdgrad's own trainer pretrained on
//! tinyshakespeare (bytes, nanoGPT's shakespeare_char CPU shape) on a text it has not
//! seen (this repository's documentation), with LoRA adapters (`[finetune]`) and with the
//! whole model (`[model] init`), at equal steps: each through a relay with three native
//! contributors and one headless Chromium tab.
//!
//! Prints, for each: the held-out loss on the new text before and after; bytes uploaded
//! per unit and downloaded per version, per contributor (the base apart); Chromium's peak
//! memory; the crowd's tokens/s. Goals: LoRA's uploads ≥ 50× smaller than full
//! fine-tuning's (both compressed); its held-out loss within 5% of full fine-tuning's; a
//! tab that holds the base downloads under 2 MB per version.
//!
//! Flags: `--pretrain-steps N` (1500), `--versions N` (12 rounds), `--steps N` (inner
//! steps a unit, 20), `--rank N` (4), `--targets LIST` (`c_attn`), `--lora-lr X` (3e-3),
//! `--full-lr X` (1e-3), `--dataset PATH` (tinyshakespeare).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::contributor::SharedStats;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, run_unit};
use crowdgrad_tests::browser::Chromedriver;
use crowdgrad_tests::{repo_root, spawn_native_contributor};
use fantoccini::Locator;
use serde_json::Value;

use crate::relay::RelayProcess;
use crate::rss::{RssPeak, chromium_rss_kib};

/// Native contributors in each run, besides the tab.
const NATIVES: usize = 3;
/// Rows a batch (nanoGPT's CPU run).
const BATCH: u32 = 12;

/// What the flags ask for.
struct Flags {
    pretrain_steps: u32,
    versions: u64,
    steps: u32,
    rank: usize,
    targets: String,
    lora_lr: f32,
    full_lr: f32,
    dataset: PathBuf,
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        pretrain_steps: 1500,
        versions: 12,
        steps: 20,
        rank: 4,
        targets: "c_attn".into(),
        lora_lr: 3e-3,
        full_lr: 1e-3,
        dataset: repo_root().join("../shared/datasets/tinyshakespeare.txt"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = |what: &str| -> f64 { value.parse().unwrap_or_else(|_| panic!("{flag} takes {what}")) };
        match flag.as_str() {
            "--pretrain-steps" => f.pretrain_steps = number("a count") as u32,
            "--versions" => f.versions = number("a count") as u64,
            "--steps" => f.steps = number("a count") as u32,
            "--rank" => f.rank = number("a count") as usize,
            "--targets" => f.targets = value.clone(),
            "--lora-lr" => f.lora_lr = number("a rate") as f32,
            "--full-lr" => f.full_lr = number("a rate") as f32,
            "--dataset" => f.dataset = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// One run's figures.
struct Run {
    name: &'static str,
    parameters: u64,
    loss_before: f64,
    loss_after: f64,
    /// `(who, bytes up per unit, bytes down per version, base bytes)` of each contributor.
    contributors: Vec<(String, f64, f64, u64)>,
    tab_peak_mb: f64,
    tokens_per_second: f64,
}

/// Pretrains the base, fine-tunes it both ways and prints the comparison.
pub async fn run(args: &[String]) {
    let f = flags(args);
    let work = tempfile::tempdir().expect("temp dir");
    let model = GptConfig::shakespeare_char();
    let started = Instant::now();
    let base = pretrain(&f, model);
    println!(
        "(lora) base: {} parameters pretrained {} steps of {BATCH} × {} bytes of {} in {:.0} s",
        model.layout().total,
        f.pretrain_steps,
        model.context,
        f.dataset.display(),
        started.elapsed().as_secs_f64()
    );
    let checkpoint_path = work.path().join("base.safetensors");
    std::fs::write(&checkpoint_path, checkpoint::encode(&model, &base, &[])).expect("write the base");
    let hf_folder = work.path().join("base-hf");
    crowdgrad_relay::hf_dir::write(&hf_folder, &model, &base).expect("write the base as a GPT-2 folder");
    let text = new_text(work.path());

    let common = |lr: f32| {
        format!(
            "name = \"lora-bench\"\nseed = 5\n[data]\npath = {:?}\neval_batches = 8\n\
             [inner]\nsteps = {}\nbatch = {BATCH}\nlr = {lr}\nmin_lr = {lr}\n\
             [round]\ntarget = {}\nmin = {}\ndeadline_secs = 120\nunit_deadline_secs = 600\nmax_staleness = 2\n\
             [compression]\nenabled = true\n",
            text.display().to_string(),
            f.steps,
            NATIVES + 1,
            NATIVES
        )
    };
    let targets: Vec<String> = f.targets.split(',').map(|t| format!("{t:?}")).collect();
    let lora_job = format!(
        "{}[finetune]\nbase = {:?}\ntargets = [{}]\nrank = {}\nalpha = {}\ndropout = 0.0\n",
        common(f.lora_lr),
        checkpoint_path.display().to_string(),
        targets.join(", "),
        f.rank,
        2 * f.rank
    );
    let full_job = format!("{}[model]\ninit = {:?}\n", common(f.full_lr), hf_folder.display().to_string());
    let lora = crowd("LoRA", &lora_job, &f).await;
    let full = crowd("full fine-tuning", &full_job, &f).await;

    println!(
        "\n{:<18} {:>11} {:>12} {:>12} {:>14} {:>16} {:>13} {:>10}",
        "run", "parameters", "loss before", "loss after", "up/unit KB", "down/version KB", "tab peak MB", "tokens/s"
    );
    for r in [&lora, &full] {
        let mean = |i: usize| {
            r.contributors.iter().map(|c| if i == 1 { c.1 } else { c.2 }).sum::<f64>() / r.contributors.len() as f64
        };
        println!(
            "{:<18} {:>11} {:>12.4} {:>12.4} {:>14.1} {:>16.1} {:>13.0} {:>10.0}",
            r.name,
            r.parameters,
            r.loss_before,
            r.loss_after,
            mean(1) / 1e3,
            mean(2) / 1e3,
            r.tab_peak_mb,
            r.tokens_per_second
        );
        for (who, up, down, base) in &r.contributors {
            println!("    {who:<28} up {:.1} KB/unit, down {:.1} KB/version, base {base} bytes", up / 1e3, down / 1e3);
        }
    }
    let up = |r: &Run| r.contributors.iter().map(|c| c.1).sum::<f64>() / r.contributors.len() as f64;
    let smaller = up(&full) / up(&lora);
    let gap = 100.0 * (lora.loss_after - full.loss_after) / full.loss_after;
    let tab_down = lora.contributors.iter().find(|c| c.0.starts_with("Chromium")).map_or(f64::NAN, |c| c.2);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "\n(lora) LoRA's uploads are {smaller:.0}× smaller than full fine-tuning's (goal ≥ 50×: {})",
        verdict(smaller >= 50.0)
    );
    println!(
        "(lora) held-out loss on the new text: LoRA {:.4}, full {:.4}: LoRA {gap:+.2}% (goal within 5%: {})",
        lora.loss_after,
        full.loss_after,
        verdict(gap <= 5.0)
    );
    println!(
        "(lora) the tab, holding the base, downloaded {:.1} KB a version (goal under 2 MB: {})",
        tab_down / 1e3,
        verdict(tab_down < 2e6)
    );
}

/// `f.pretrain_steps` AdamW steps of `model` from its init on the dataset's bytes.
fn pretrain(f: &Flags, model: GptConfig) -> Vec<f32> {
    let corpus = Corpus::from_file(&f.dataset).unwrap_or_else(|e| panic!("{}: {e}", f.dataset.display()));
    let mut trainer =
        Trainer::new(CpuBackend::new(), model, BATCH as usize, f.pretrain_steps as usize + 1).expect("a CPU trainer");
    let optim = InnerOptim { lr: 1e-3, ..InnerOptim::default() };
    let start = model.init(1);
    let outcome = pollster::block_on(run_unit(&mut trainer, &start, corpus.train(), 1, f.pretrain_steps, &optim))
        .expect("pretraining");
    start.iter().zip(&outcome.delta).map(|(p, d)| p - d).collect()
}

/// The new text: this repository's README and documentation, one after the other.
fn new_text(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, repo_root().join("README.md"));
    let text: Vec<u8> = files.iter().flat_map(|p| std::fs::read(p).expect("a documentation file")).collect();
    let path = dir.join("new-text.txt");
    std::fs::write(&path, &text).expect("write the new text");
    println!("(lora) the new text: {} bytes of README.md and docs/*.md (the last 10% held out)", text.len());
    path
}

/// Runs `job` until it has committed `f.versions` versions, with the native
/// contributors and a tab, and measures it.
async fn crowd(name: &'static str, job: &str, f: &Flags) -> Run {
    let relay = RelayProcess::start_within(job, |_| {}, Duration::from_secs(120));
    let addr = relay.addr;
    let peak = RssPeak::start(chromium_rss_kib);
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&[]).await.expect("a Chromium session");
    tab.goto(&format!("http://{addr}/")).await.expect("open the page");
    tab.find(Locator::Id("contribute")).await.expect("the button").click().await.expect("consent");
    let natives: Vec<SharedStats> = (0..NATIVES).map(|_| spawn_native_contributor(addr).1).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let status = loop {
        let status = relay.status().unwrap_or_default();
        if status["version"].as_u64().is_some_and(|v| v >= f.versions) {
            break status;
        }
        assert!(Instant::now() < deadline, "{name}: {} versions took over 30 minutes: {status}", f.versions);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let tab_stats: Value = tab.execute("return window.crowdgrad.stats();", vec![]).await.expect("the tab's stats");
    let _ = tab.close().await;
    let tab_peak_mb = peak.stop() as f64 * 1024.0 / 1e6;
    let history = status["history"].as_array().expect("history");
    let loss = |i: usize| history[i]["val_loss"].as_f64().expect("a loss");
    let per = |total: u64, count: u64| total as f64 / count.max(1) as f64;
    let mut contributors = Vec::new();
    let n = |key: &str| tab_stats[key].as_u64().unwrap_or(0);
    contributors.push((
        "Chromium tab".to_string(),
        per(n("upload_bytes"), n("units_done")),
        per(n("weights_downloaded"), n("versions_fetched")),
        n("base_downloaded"),
    ));
    for (i, stats) in natives.iter().enumerate() {
        let s = stats.lock().expect("stats lock");
        contributors.push((
            format!("native contributor {}", i + 1),
            per(s.upload_bytes, u64::from(s.units_done)),
            per(s.weights_downloaded, u64::from(s.versions_fetched)),
            s.base_downloaded,
        ));
    }
    eprintln!("  [lora] {name}: {} versions in {seconds:.0} s", f.versions);
    Run {
        name,
        parameters: status["parameters"].as_u64().unwrap_or(0),
        loss_before: loss(0),
        loss_after: loss(history.len() - 1),
        contributors,
        tab_peak_mb,
        tokens_per_second: status["counters"]["tokens"].as_f64().unwrap_or(0.0) / seconds,
    }
}
