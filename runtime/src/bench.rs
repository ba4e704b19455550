//! Measurements shared by the native bench and the browser bench, so both time the
//! same work. The clock is passed in: `Instant` natively, `performance.now()` in a tab.

use serde::Serialize;

use crate::backend::{Backend, BackendError, DeviceInfo};
use crate::data::Corpus;
use crate::model::GptConfig;
use crate::train::{InnerOptim, Trainer, run_unit};

/// Untimed steps before a throughput measurement (pipelines compile, caches fill).
const WARM_UP: u32 = 2;

/// Training throughput of one device.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// The device measured.
    pub device: DeviceInfo,
    /// Steps timed (after 2 warm-up steps).
    pub steps: u32,
    /// Tokens per step (`rows · context`).
    pub tokens_per_step: usize,
    /// Wall time of the timed steps, seconds (including the final readback).
    pub seconds: f64,
}

impl Throughput {
    /// Training steps per second.
    pub fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds
    }

    /// Training tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.steps_per_second() * self.tokens_per_step as f64
    }
}

/// Times `steps` training steps of `rows` windows of model `cfg` on the built-in corpus.
pub async fn training_throughput<B: Backend>(
    backend: B,
    cfg: GptConfig,
    rows: usize,
    steps: u32,
    clock: impl Fn() -> f64,
) -> Result<Throughput, BackendError> {
    let device = backend.info();
    let corpus = Corpus::builtin();
    let mut trainer = Trainer::new(backend, cfg, rows, steps.max(WARM_UP) as usize + 1)?;
    let (start, optim) = (cfg.init(1), InnerOptim::default());
    run_unit(&mut trainer, &start, corpus.train(), 0, WARM_UP, &optim).await?;
    let t0 = clock();
    run_unit(&mut trainer, &start, corpus.train(), 1, steps, &optim).await?;
    Ok(Throughput { device, steps, tokens_per_step: rows * cfg.context, seconds: clock() - t0 })
}

/// The calibration a contributor sends in its hello: GFLOP/s of a 256×256×256 matmul
/// on `backend`, 0 if it fails. Its three matrices (0.75 MB) stay allocated there, which
/// costs less than a second device (every pipeline compiled again).
pub async fn calibrate<B: Backend>(backend: &mut B, clock: impl Fn() -> f64) -> f32 {
    matmul_gflops(backend, (256, 256, 256), 8, clock).await.map_or(0.0, |(_, gflops)| gflops as f32)
}

/// GFLOP/s of `reps` forward matmuls `[rows, k] · [n, k]ᵀ` (2·rows·k·n flops each),
/// timed from first record to a readback that waits for the last.
pub async fn matmul_gflops<B: Backend>(
    backend: &mut B,
    (rows, k, n): (usize, usize, usize),
    reps: u32,
    clock: impl Fn() -> f64,
) -> Result<(DeviceInfo, f64), BackendError> {
    let device = backend.info();
    let inp = backend.alloc(rows * k, "bench input")?;
    let weight = backend.alloc(n * k, "bench weight")?;
    let out = backend.alloc(rows * n, "bench output")?;
    backend.write(inp, &vec![0.5; rows * k]);
    backend.write(weight, &vec![0.25; n * k]);
    backend.matmul_forward(out, inp, weight, None, rows, k, n);
    backend.read(out.slice(0, 1)).await?;
    let t0 = clock();
    for _ in 0..reps {
        backend.matmul_forward(out, inp, weight, None, rows, k, n);
        backend.flush();
    }
    backend.read(out.slice(0, 1)).await?;
    let seconds = clock() - t0;
    Ok((device, 2.0 * (rows * k * n) as f64 * reps as f64 / seconds / 1e9))
}
