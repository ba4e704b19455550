//! Hugging Face GPT-2 folders in and out of a relay: a job starts from the tiny
//! `GPT2LMHeadModel` that `transformers` saved (`runtime/tests/fixtures/hf/`), whose
//! `config.json` decides the model's shape; each version downloads as a folder
//! `from_pretrained` loads; and `crowdgrad export --hf` writes the same folder from a
//! checkpoint file. `runtime/tests/hf.rs` checks the model's logits against
//! `transformers`' own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::hf;
use crowdgrad_runtime::model::GptConfig;
use safetensors::SafeTensors;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("relay/ has a parent").to_path_buf()
}

/// The folder `transformers`' `save_pretrained` wrote.
fn fixture() -> PathBuf {
    repo().join("runtime/tests/fixtures/hf/gpt2-tiny")
}

/// The tensors of two safetensors files are the same: names, shapes and bytes.
fn same_tensors(ours: &[u8], theirs: &[u8]) {
    let (ours, theirs) =
        (SafeTensors::deserialize(ours).expect("ours"), SafeTensors::deserialize(theirs).expect("theirs"));
    let sorted = |file: &SafeTensors| {
        let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
        names.sort();
        names
    };
    assert_eq!(sorted(&ours), sorted(&theirs), "tensor names");
    for name in sorted(&theirs) {
        let (a, b) = (ours.tensor(&name).expect("ours"), theirs.tensor(&name).expect("theirs"));
        assert_eq!(a.shape(), b.shape(), "{name}");
        assert!(a.data() == b.data(), "{name}: other values");
    }
}

fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut response = ureq::get(&format!("http://{addr}{path}")).call().expect(path);
    response.body_mut().with_config().limit(64 << 20).read_to_vec().expect("body")
}

#[test]
fn the_init_folder_decides_the_models_shape() {
    let dir = fixture().display().to_string();
    let job = JobConfig::parse(&format!("[model]\ninit = {dir:?}\ncontext = 8\n")).expect("the job parses");
    assert_eq!(job.model, GptConfig { vocab: 96, context: 8, layers: 2, heads: 2, width: 32, bias: true });
    assert_eq!(job.model_init.as_deref(), Some(fixture().as_path()));
    let err = JobConfig::parse(&format!("[model]\ninit = {dir:?}\nwidth = 64\n")).unwrap_err().to_string();
    assert!(err.starts_with("model.width: 64 differs from 32"), "{err}");
    let err = JobConfig::parse(&format!("[model]\ninit = {dir:?}\ncontext = 17\n")).unwrap_err().to_string();
    assert!(err.contains("model.context 17 is over the file's n_positions 16"), "{err}");
    let err = JobConfig::parse("[model]\ninit = \"/no/such/folder\"\n").unwrap_err().to_string();
    assert!(err.starts_with("model.init: ") && err.contains("config.json"), "{err}");
    // Keys after it keep their lines in errors.
    let err = JobConfig::parse(&format!("[model]\ninit = {dir:?}\n\n[round]\nnope = 1\n")).unwrap_err().to_string();
    assert!(err.contains("line 5") && err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_from_a_hugging_face_folder_and_serves_each_version_as_one() {
    let storage = tempfile::tempdir().expect("temp dir");
    // Tokens below the fixture's vocabulary of 96.
    let tokens: Vec<u8> = (0..20_000u32).map(|i| ((i * 7 + i / 13) % 96) as u16).flat_map(u16::to_le_bytes).collect();
    let data = storage.path().join("train.bin");
    std::fs::write(&data, tokens).expect("write tokens");
    let text = format!(
        "[model]\ninit = {:?}\n[data]\npath = {:?}\n[storage]\ndir = {:?}\n",
        fixture().display().to_string(),
        data.display().to_string(),
        storage.path().join("job").display().to_string()
    );
    let job = JobConfig::parse(&text).expect("the job parses");
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().expect("literal"),
        www: repo().join("www"),
        job,
        admin_token: None,
        tls: None,
        redirect_http: None,
    };
    let relay = crowdgrad_relay::start(config).await.expect("the relay starts");
    let addr = relay.addr;
    let theirs = std::fs::read(fixture().join("model.safetensors")).expect("the fixture");

    let version0 = get(addr, "/api/weights/0");
    let cfg = checkpoint::read_config(&version0).expect("a config");
    let imported = hf::import(&cfg, &theirs).expect("the fixture imports");
    assert_eq!(checkpoint::decode(&cfg, &version0).expect("weights"), imported, "version 0 is the folder's model");

    let config = String::from_utf8(get(addr, "/api/hf/0/config.json")).expect("UTF-8");
    assert_eq!(hf::read_config(&config, None).expect("GPT-2's config"), cfg);
    let served = get(addr, "/api/hf/0/model.safetensors");
    same_tensors(&served, &theirs);
    assert_eq!(get(addr, "/api/hf/0/model.safetensors"), served, "served again from its file");
    let missing = ureq::get(&format!("http://{addr}/api/hf/7/model.safetensors")).call();
    assert!(matches!(missing, Err(ureq::Error::StatusCode(404))), "{missing:?}");
    relay.stop().await;
}

/// `crowdgrad export --hf --checkpoint FILE ARGS… OUT`, run to its end.
fn export(file: &Path, args: &[&std::ffi::OsStr], out: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_crowdgrad"))
        .args(["export", "--hf", "--checkpoint"])
        .arg(file)
        .args(args)
        .arg(out)
        .output()
        .expect("crowdgrad runs")
}

/// The fixture as a checkpoint file in a temporary folder: the folder, the file, the
/// model, its parameters, and the fixture's `model.safetensors`.
fn fixture_checkpoint() -> (tempfile::TempDir, PathBuf, GptConfig, Vec<f32>, Vec<u8>) {
    let theirs = std::fs::read(fixture().join("model.safetensors")).expect("the fixture");
    let cfg = hf::read_config(&std::fs::read_to_string(fixture().join("config.json")).expect("config"), None)
        .expect("GPT-2's config");
    let params = hf::import(&cfg, &theirs).expect("the fixture imports");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("v3.safetensors");
    std::fs::write(&file, checkpoint::encode(&cfg, &params, &[])).expect("a checkpoint");
    (dir, file, cfg, params, theirs)
}

#[test]
fn crowdgrad_export_writes_the_folder_transformers_wrote() {
    let (dir, file, cfg, _, theirs) = fixture_checkpoint();
    let out = dir.path().join("exported");
    assert!(export(&file, &[], &out).status.success());
    same_tensors(&std::fs::read(out.join("model.safetensors")).expect("written"), &theirs);
    let config = std::fs::read_to_string(out.join("config.json")).expect("written");
    assert_eq!(hf::read_config(&config, None).expect("GPT-2's config"), cfg);
}

#[test]
fn crowdgrad_export_merges_a_peft_adapter_and_names_a_bad_one() {
    let (dir, file, cfg, params, _) = fixture_checkpoint();
    let adapter = repo().join("runtime/tests/fixtures/peft/lora-tiny");
    let with_adapter = |adapter: &Path, out: &Path| export(&file, &["--adapter".as_ref(), adapter.as_os_str()], out);
    let out = dir.path().join("merged");
    assert!(with_adapter(&adapter, &out).status.success());
    let merged = crowdgrad_relay::hf_dir::merge_adapter(&adapter, &cfg, &params).expect("the fixture adapter merges");
    let written = hf::import(&cfg, &std::fs::read(out.join("model.safetensors")).expect("written")).expect("GPT-2");
    assert_eq!(written, merged, "the merged weights");
    assert_ne!(written, params, "the adapter changed them");

    let empty = dir.path().join("no-adapter");
    std::fs::create_dir_all(&empty).expect("a folder");
    let failed = with_adapter(&empty, &dir.path().join("never"));
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && said.contains("adapter_config.json"), "{said}");
    assert!(!dir.path().join("never").exists(), "nothing written");
}
