//! A fine-tuning job (`[finetune]`): LoRA adapters train on a frozen base (a checkpoint
//! of ours, briefly pretrained here) with three native CPU contributors. The adapters are
//! the job's parameters: versions are PEFT-named adapter files, replays on the relay's CPU
//! use the same base, and each contributor downloads the base once, by its hash. A tab
//! fine-tunes too, its page says what the crowd fine-tunes and samples the fine-tuned
//! model, and after a reload it reads the base from its Cache Storage.

use std::time::Duration;

use crowdgrad_relay::config::JobConfig;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::lora::peft;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Trainer, run_unit};
use crowdgrad_runtime::{checkpoint, hf};
use crowdgrad_tests::browser::{Chromedriver, require_bundle, text, until};
use crowdgrad_tests::{loss_history, spawn_native_contributor, start_relay, status, test_job, wait_for};
use fantoccini::Locator;
use safetensors::SafeTensors;

/// The default job's model after 60 AdamW steps on the built-in corpus, as a checkpoint.
fn pretrained_base() -> Vec<u8> {
    let model = GptConfig::default();
    let mut trainer = Trainer::new(CpuBackend::new(), model, 4, 61).expect("a CPU trainer");
    let optim = InnerOptim { lr: 3e-3, ..InnerOptim::default() };
    let corpus = Corpus::builtin();
    let outcome =
        pollster::block_on(run_unit(&mut trainer, &model.init(3), corpus.train(), 1, 60, &optim)).expect("pretraining");
    let trained: Vec<f32> = model.init(3).iter().zip(&outcome.delta).map(|(p, d)| p - d).collect();
    checkpoint::encode(&model, &trained, &[])
}

/// The test job (rounds of `target` results) with `[finetune]` on the base at `base`,
/// read as a job file is.
fn finetune_job(base: &std::path::Path, dir: &std::path::Path, target: usize) -> JobConfig {
    let text = format!(
        "[finetune]\nbase = {:?}\ntargets = [\"c_attn\", \"mlp.c_proj\"]\nrank = 4\nalpha = 8.0\ndropout = 0.1\n",
        base.display().to_string()
    );
    let parsed = JobConfig::parse(&text).expect("a fine-tuning job file");
    JobConfig { finetune: parsed.finetune, model: parsed.model, ..test_job(target, dir) }
}

#[test]
fn a_job_file_names_its_base_and_bad_ones_say_which_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("base.safetensors");
    let wide = GptConfig { width: 32, heads: 2, ..GptConfig::default() };
    std::fs::write(&base, checkpoint::encode(&wide, &wide.init(1), &[])).expect("write the base");
    let job = JobConfig::parse(&format!("[finetune]\nbase = {:?}\n", base.display().to_string())).expect("parses");
    assert_eq!(job.model, wide, "the base's config decides the model");
    let lora = job.trained().lora.expect("adapters train");
    assert_eq!((lora.rank, lora.alpha), (8, 16.0), "PEFT-like defaults");
    let cases = [
        (format!("[finetune]\nbase = {:?}\n[model]\nwidth = 64\n", base.display().to_string()), "model.width"),
        (format!("[finetune]\nbase = {:?}\nrank = 0\n", base.display().to_string()), "finetune.rank"),
        (format!("[finetune]\nbase = {:?}\ntargets = []\n", base.display().to_string()), "finetune.targets"),
        ("[finetune]\nbase = \"/nonexistent/base.safetensors\"\n".to_string(), "finetune.base"),
        ("[finetune]\nrank = 4\n".to_string(), "finetune.base"),
    ];
    for (text, key) in cases {
        let err = JobConfig::parse(&text).expect_err(&text).to_string();
        assert!(err.contains(key), "{text}: the error names {key}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contributors_fine_tune_adapters_on_a_frozen_base() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base_path = dir.path().join("base.safetensors");
    let base = pretrained_base();
    std::fs::write(&base_path, &base).expect("write the base");
    let job = finetune_job(&base_path, &dir.path().join("storage"), 3);
    let (adapters, job_lora) = (job.trained().layout(), job.trained().lora);
    let relay = start_relay(job).await;
    let addr = relay.addr;
    let contributors: Vec<_> = (0..3).map(|_| spawn_native_contributor(addr)).collect();
    let s = wait_for("4 committed versions", Duration::from_secs(120), || {
        let s = status(addr);
        (s["version"].as_u64()? >= 4).then_some(s)
    })
    .await;
    let counters = &s["counters"];
    assert_eq!(counters["rejected"].as_object().map(|m| m.len()), Some(0), "honest results rejected: {counters}");
    assert!(counters["replayed"].as_u64() >= Some(4), "newcomers' results are replayed with the base: {counters}");
    assert_eq!(s["parameters"].as_u64(), Some(adapters.total as u64), "the job's parameters are the adapters");
    let history = loss_history(&s);
    println!("held-out loss by version: {history:?}; counters {counters}");
    let (first, last) = (history.first().expect("version 0"), history.last().expect("latest"));
    assert!(last.1 < first.1, "held-out loss with the adapters went {first:?} → {last:?}");

    // A version's file holds the adapters alone, under PEFT's names.
    let file = ureq::get(&format!("http://{addr}/api/weights/{}", last.0))
        .call()
        .expect("a version's file")
        .body_mut()
        .read_to_vec()
        .expect("its bytes");
    let tensors = SafeTensors::deserialize(&file).expect("safetensors");
    let mut names: Vec<_> = tensors.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut expected: Vec<_> = adapters.entries.iter().map(|e| e.name.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(names[0].starts_with("base_model.model.transformer.h.0."), "{names:?}");
    println!("an adapter version: {} bytes; the base: {} bytes", file.len(), base.len());
    assert!(file.len() * 10 < base.len(), "an adapter file ({} bytes) beside the base ({})", file.len(), base.len());

    // Out as a PEFT adapter folder, and merged into the base as a Hugging Face one.
    let get = |path: &str| {
        let mut response = ureq::get(&format!("http://{addr}{path}")).call().expect(path);
        response.body_mut().with_config().limit(64 << 20).read_to_vec().expect(path)
    };
    let model = GptConfig::default();
    let config = String::from_utf8(get(&format!("/api/peft/{}/adapter_config.json", last.0))).expect("UTF-8");
    let lora = peft::read_config(&config, &model).expect("PEFT's config reads");
    assert_eq!(Some(&lora), job_lora.as_ref(), "{config}");
    assert!(config.contains("\"lora_dropout\": 0.1,"), "as the job file wrote it: {config}");
    let adapters = peft::import(&lora, &model, &get(&format!("/api/peft/{}/adapter_model.safetensors", last.0)))
        .expect("PEFT's adapters read");
    let base_values = checkpoint::decode(&model, &base).expect("the base");
    let merged = hf::import(&model, &get(&format!("/api/hf/{}/model.safetensors", last.0))).expect("a GPT-2 file");
    assert_eq!(
        merged,
        lora.merge(&model, &base_values, &adapters),
        "the HF folder is the base with the adapters merged"
    );
    assert!(merged != base_values, "the adapters moved the model");
    // The base is a file on the relay's disk, served with ranges.
    let hash = checkpoint::hash_hex(&base);
    let mut head =
        ureq::get(&format!("http://{addr}/api/base/{hash}")).header("Range", "bytes=0-7").call().expect("a range");
    assert_eq!(head.status(), 206);
    assert_eq!(head.body_mut().read_to_vec().expect("8 bytes"), base[..8].to_vec());
    let other = ureq::get(&format!("http://{addr}/api/base/{}", "0".repeat(64))).call();
    assert!(matches!(other, Err(ureq::Error::StatusCode(404))), "another hash: {other:?}");

    relay.stop().await;
    for (handle, stats) in contributors {
        let _ = handle.join().expect("contributor thread");
        let s = stats.lock().unwrap();
        assert!(s.units_done >= 1, "{s:?}");
        assert_eq!(s.base_downloaded, base.len() as u64, "the base is downloaded once: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_fine_tunes_says_what_samples_the_fine_tuned_model_and_keeps_the_base() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let base_path = dir.path().join("base.safetensors");
    let base = pretrained_base();
    std::fs::write(&base_path, &base).expect("write the base");
    let job = finetune_job(&base_path, &dir.path().join("storage"), 1);
    let relay = start_relay(job).await;
    let driver = Chromedriver::start().expect("chromedriver");
    let tab = driver.session(&[]).await.expect("chromium session");
    tab.goto(&format!("http://{}/", relay.addr)).await.expect("open the page");
    until(&tab, "the page", Duration::from_secs(30), "return window.crowdgrad !== undefined;").await;
    tab.find(Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
    let done = "const s = window.crowdgrad.stats(); return s && s.units_done >= 2 && s;";
    let stats = until(&tab, "2 units of adapters", Duration::from_secs(180), done).await;
    assert_eq!(stats["units_rejected"], 0, "{stats}");
    assert_eq!(stats["base_downloaded"].as_u64(), Some(base.len() as u64), "the base, once: {stats}");
    let job = text(&tab, "job").await;
    assert!(
        job.contains("fine-tuning base.safetensors")
            && job.contains("LoRA adapters of rank 4 on c_attn, mlp.c_proj (4,608 parameters trained)"),
        "{job}"
    );
    let sampled = "const t = document.getElementById('sample').textContent; \
                   return t.length > 20 && !t.startsWith('no sample') && t;";
    let sample = until(&tab, "a sample of the fine-tuned model", Duration::from_secs(60), sampled).await;
    println!("page: {job}\nsample: {sample}");
    assert!(status(relay.addr)["version"].as_u64() >= Some(1));
    // After a reload the base comes from the tab's Cache Storage, checked by its hash.
    tab.refresh().await.expect("reload");
    let done = "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.units_done >= 1 && s;";
    let stats = until(&tab, "a unit after the reload", Duration::from_secs(180), done).await;
    assert_eq!((stats["bases_kept"].as_u64(), stats["base_downloaded"].as_u64()), (Some(1), Some(0)), "{stats}");
    let _ = tab.close().await;
    relay.stop().await;
}
