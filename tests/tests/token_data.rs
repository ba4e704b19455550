//! A job on nanoGPT-style u16 token files (`train.bin`, `val.bin`) with a vocabulary
//! over 256: native contributors train it and its held-out loss falls; a vocabulary too
//! small for the file's ids is refused at start, naming the key. A text tokenized with
//! GPT-2's BPE trains the same way, and its vocabulary is served for samples.

use std::path::Path;
use std::time::Duration;

use crowdgrad_relay::config::{JobConfig, ServeConfig};
use crowdgrad_relay::tokenizer::Tokenizer;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::vocab::Vocab;
use crowdgrad_tests::{loss_history, repo_root, spawn_native_contributor, start_relay, status, test_job, wait_for};

/// Writes `len` u16 tokens of a learnable sequence below 300 (each token mostly
/// determines the next) to `path`, nanoGPT style: no header.
fn write_tokens(path: &Path, len: usize, seed: u32) {
    let mut t = seed % 300;
    let mut bytes = Vec::with_capacity(2 * len);
    for i in 0..len {
        t = if i % 17 == 0 { (t * 31 + 11) % 300 } else { (t * 7 + 3) % 300 };
        bytes.extend_from_slice(&(t as u16).to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write tokens");
}

fn token_job(dir: &Path, vocab: usize) -> JobConfig {
    let (train, val) = (dir.join("train.bin"), dir.join("val.bin"));
    write_tokens(&train, 60_000, 1);
    write_tokens(&val, 6_000, 2);
    let mut job = test_job(2, &dir.join("storage"));
    job.model.vocab = vocab;
    (job.data.path, job.data.val_path) = (Some(train), Some(val));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_contributors_train_on_u16_token_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(token_job(dir.path(), 320)).await;
    let addr = relay.addr;
    let contributors: Vec<_> = (0..2).map(|_| spawn_native_contributor(addr)).collect();
    let s = wait_for("4 committed versions", Duration::from_secs(120), || {
        let s = status(addr);
        (s["version"].as_u64()? >= 4).then_some(s)
    })
    .await;
    let history = loss_history(&s);
    let (first, last) = (history.first().expect("version 0"), history.last().expect("latest"));
    assert!(last.1 < first.1 - 0.3, "held-out loss went {first:?} → {last:?}");
    relay.stop().await;
    for (handle, _) in contributors {
        let _ = handle.join().expect("contributor thread");
    }
}

#[tokio::test]
async fn a_vocabulary_smaller_than_the_token_ids_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().expect("literal"),
        www: repo_root().join("www"),
        job: token_job(dir.path(), 256),
        admin_token: None,
        tls: None,
        redirect_http: None,
    };
    let err = crowdgrad_relay::start(config).await.err().expect("refused").to_string();
    assert!(err.starts_with("model.vocab: 256 is too small for the dataset"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_tokenized_with_gpt2_trains_and_its_vocabulary_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut job = test_job(2, &dir.path().join("storage"));
    job.data.tokenizer = Tokenizer::Gpt2;
    job.model = GptConfig { vocab: 50_257, context: 16, layers: 1, heads: 2, width: 32, bias: true };
    job.inner.lr = 3e-3;
    let relay = start_relay(job).await;
    let addr = relay.addr;
    let get = |path: &str| {
        let mut response = ureq::get(&format!("http://{addr}{path}")).call().expect(path);
        response.body_mut().with_config().limit(64 << 20).read_to_vec().expect("body")
    };
    let cached = std::fs::read_dir(dir.path().join("storage/tokens")).expect("a token cache").count();
    assert_eq!(cached, 1, "the built-in text's GPT-2 tokens are cached");
    let vocab = Vocab::decode(&get("/api/vocab")).expect("the vocabulary decodes");
    assert_eq!((vocab.len(), vocab.render(&[15496, 995])), (50_257, "Hello world".to_string()));
    assert_eq!(status(addr)["tokenizer"], "gpt2");
    let contributors: Vec<_> = (0..2).map(|_| spawn_native_contributor(addr)).collect();
    let s = wait_for("3 committed versions", Duration::from_secs(180), || {
        let s = status(addr);
        (s["version"].as_u64()? >= 3).then_some(s)
    })
    .await;
    let history = loss_history(&s);
    let (first, last) = (history.first().expect("version 0"), history.last().expect("latest"));
    assert!(last.1 < first.1 - 0.3, "held-out loss went {first:?} → {last:?}");
    let weights = get(&format!("/api/weights/{}", last.0));
    assert_eq!(checkpoint::metadata(&weights, "tokenizer").as_deref(), Some("gpt2"), "the checkpoint names it");
    relay.stop().await;
    for (handle, _) in contributors {
        let _ = handle.join().expect("contributor thread");
    }
}
