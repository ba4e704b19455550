//! Measurements shared by the native bench and the browser bench, so both time the
//! same work. The clock is passed in: `Instant` natively, `performance.now()` in a tab.

use serde::Serialize;

use crate::backend::{Backend, BackendError, DeviceInfo};
use crate::data::Corpus;
use crate::model::GptConfig;
use crate::train::{InnerOptim, Trainer, TrainerShape, run_unit};

/// Untimed steps before a throughput measurement (pipelines compile, caches fill), where
/// a step is quick enough to spare them.
pub const WARM_UP_STEPS: u32 = 2;

/// Training throughput of one device.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// The device measured.
    pub device: DeviceInfo,
    /// Steps timed, after [`Throughput::warm_up`] untimed ones.
    pub steps: u32,
    /// Untimed steps run first.
    pub warm_up: u32,
    /// Tokens per step (`rows · context`).
    pub tokens_per_step: usize,
    /// Wall time of the timed steps, seconds (including the final readback).
    pub seconds: f64,
    /// About how many bytes the trainer holds on the device ([`TrainerShape::bytes`]).
    pub trainer_bytes: u64,
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

/// Times `steps` training steps of `rows` windows of model `cfg` on the built-in corpus
/// (its byte tokens are valid in any vocabulary, and cost the same), after `warm_up`
/// untimed ones (usually [`WARM_UP_STEPS`]; one at least, which compiles the pipelines).
pub async fn training_throughput<B: Backend>(
    backend: B,
    cfg: GptConfig,
    rows: usize,
    (warm_up, steps): (u32, u32),
    clock: impl Fn() -> f64,
) -> Result<Throughput, BackendError> {
    let warm_up = warm_up.max(1);
    let device = backend.info();
    let corpus = Corpus::builtin();
    // Large vocabularies train in microbatches, as on a contributor.
    let shape =
        TrainerShape::train(rows, steps.max(warm_up) as usize + 1).fitting_device(&cfg, backend.binding_bytes());
    let trainer_bytes = shape.bytes(&cfg);
    let mut trainer = Trainer::with_shape(backend, cfg, shape)?;
    let (start, optim) = (cfg.init(1), InnerOptim::default());
    run_unit(&mut trainer, &start, corpus.train(), 0, warm_up, &optim).await?;
    let t0 = clock();
    run_unit(&mut trainer, &start, corpus.train(), 1, steps, &optim).await?;
    let seconds = clock() - t0;
    Ok(Throughput { device, steps, warm_up, tokens_per_step: rows * cfg.context, seconds, trainer_bytes })
}

/// The calibration a contributor sends in its hello: GFLOP/s of a 256×256×256 matmul
/// on `backend`, 0 if it fails. One timed matmul where that takes at least
/// [`CALIBRATION_SECONDS`] (a software adapter or a CPU, where more would delay the
/// first unit by seconds), else 8. Its three matrices (0.75 MB) stay allocated there,
/// which costs less than a second device (every pipeline compiled again).
pub async fn calibrate<B: Backend>(backend: &mut B, clock: impl Fn() -> f64) -> f32 {
    const SHAPE: (usize, usize, usize) = (256, 256, 256);
    let seconds = |gflops: f64| 2.0 * (SHAPE.0 * SHAPE.1 * SHAPE.2) as f64 / (gflops * 1e9);
    let Ok((_, once)) = matmul_gflops(backend, SHAPE, 1, &clock).await else { return 0.0 };
    if seconds(once) >= CALIBRATION_SECONDS {
        return once as f32;
    }
    matmul_gflops(backend, SHAPE, 8, &clock).await.map_or(0.0, |(_, gflops)| gflops as f32)
}

/// A timed calibration matmul at least this long (seconds) is measured once only.
pub const CALIBRATION_SECONDS: f64 = 0.02;

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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::cpu::CpuBackend;

    /// 2·256³ flops in GFLOP.
    const GFLOP: f64 = 2.0 * 256.0 * 256.0 * 256.0 / 1e9;

    /// A clock that advances `step` seconds each time it is read.
    fn ticking(step: f64) -> impl Fn() -> f64 {
        let now = Cell::new(0.0);
        move || {
            now.set(now.get() + step);
            now.get()
        }
    }

    #[test]
    fn a_slow_matmul_is_timed_once_a_fast_one_eight_times() {
        let slow = pollster::block_on(calibrate(&mut CpuBackend::new(), ticking(1.0)));
        assert!((slow as f64 - GFLOP).abs() < 1e-6, "one matmul in 1 s: {slow}");
        let fast = pollster::block_on(calibrate(&mut CpuBackend::new(), ticking(1e-3)));
        assert!((fast as f64 - 8.0 * GFLOP / 1e-3).abs() < 1e-2, "eight matmuls in 1 ms: {fast}");
    }
}
