//! `bench relay` (d): what old versions' chunks cost the relay. The storage folder is
//! laid out with 5 versions of a 10.8M-parameter model (nanoGPT's 6 × 6 × 384 "baby
//! GPT"), which the relay adopts at startup; then N clients ask at once for random
//! 64 KiB chunks of versions 1–3, which live only on disk. The relay reads each chunk
//! from its offset, a bounded number at a time, so its RSS grows by about that bound ×
//! 64 KiB, not N × the file.

use std::time::{Duration, Instant};

use crowdgrad_relay::store::{Meta, Store};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::protocol::WEIGHT_CHUNK;
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::trained::Trained;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{LOOSE_LIMITS, RelayProcess};

/// nanoGPT's shakespeare_char model, with a byte vocabulary (the relay's built-in corpus).
pub const MODEL: GptConfig = GptConfig { vocab: 256, context: 256, layers: 6, heads: 6, width: 384, bias: false };

/// One raw HTTP/1.1 GET on its own connection: the status code and the body's length.
async fn get(addr: std::net::SocketAddr, path: String) -> (u16, usize) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return (0, 0) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, 0);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 4);
    let status = std::str::from_utf8(&response[..head_end.min(12)])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (status, response.len() - head_end)
}

/// Runs (d) with `requests` concurrent chunk requests.
pub async fn run(requests: usize) {
    let job = format!(
        "[model]\nvocab = {}\ncontext = {}\nlayers = {}\nheads = {}\nwidth = {}\nbias = false\n[data]\neval_batches = 1\n\
         {LOOSE_LIMITS}",
        MODEL.vocab, MODEL.context, MODEL.layers, MODEL.heads, MODEL.width
    );
    let params = MODEL.init(1);
    let mut file_bytes = 0usize;
    let relay = RelayProcess::start_with(&job, |dir| {
        let store = Store::new(dir);
        for version in 0..5 {
            let meta = Meta {
                version,
                job: "bench",
                receipts_root: "",
                round: version,
                units_below: 1,
                val_loss: 5.5,
                tokenizer: "bytes",
            };
            file_bytes =
                store.write(&Trained::whole(MODEL), &params, &params, &meta).expect("write a version").0.len as usize;
        }
    });
    let chunks = file_bytes.div_ceil(WEIGHT_CHUNK) as u64;
    let before = relay.rss_kib();
    let mut rng = Rng::new(7);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let path = format!("/api/weights/{}/chunks/{}", 1 + rng.below(3), rng.below(chunks));
            tokio::spawn(get(relay.addr, path))
        })
        .collect();
    let mut peak = before;
    let sampling = async {
        loop {
            peak = peak.max(relay.rss_kib());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mut results = Vec::with_capacity(requests);
    let finished = async {
        for task in tasks {
            results.push(task.await.expect("request task"));
        }
    };
    tokio::select! {
        () = finished => {}
        () = sampling => {}
    }
    let seconds = t0.elapsed().as_secs_f64();
    peak = peak.max(relay.rss_kib());
    let served = results.iter().filter(|(status, len)| *status == 200 && *len > 0).count();
    let refused: Vec<u16> = results.iter().map(|r| r.0).filter(|s| *s != 200).collect();
    println!(
        "(d) {requests} concurrent chunk requests for versions 1–3 of a {:.1}M-parameter model ({:.1} MB a file): \
         {served} served in {seconds:.2} s, {} refused {refused:?}; relay RSS {before} KiB → peak {peak} KiB \
         (+{} KiB; {requests} whole files would be +{} KiB)",
        params.len() as f64 / 1e6,
        file_bytes as f64 / 1e6,
        refused.len(),
        peak.saturating_sub(before),
        requests * file_bytes / 1024
    );
}
