//! Error feedback kept on the trainer's device: the residual and the unit's start weights
//! live beside the parameters, and [`Backend::pick_top_k`] selects the update there, so a
//! compressed update reads back only the table of picked values (`chunks · (2 + k)` words,
//! about 3 % of the model for the default 4096/120), never the full Δ.

use crate::backend::{Backend, BackendError, View};
use crate::codec::{self, CodecConfig, CodecError};
use crate::train::Trainer;

/// Keeps the error-feedback residual between units, so that a restarted contributor
/// (a reloaded tab) still sends what earlier updates left out. The browser keeps it in
/// IndexedDB; native contributors keep it in memory only.
pub trait ResidualStore {
    /// Called with the job's name and the residual (one value per parameter) after the
    /// first compressed update and every [`SAVE_EVERY`] after it.
    fn save(&mut self, job: &str, residual: &[f32]);
}

/// A residual kept from an earlier run: the job it belongs to and its values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedResidual {
    /// The job's name (a residual of another job is dropped).
    pub job: String,
    /// One value per parameter.
    pub values: Vec<f32>,
}

/// The residual goes to the [`ResidualStore`] after the first compressed update and then
/// every this many: each save reads the whole residual back from the device, which is what
/// device-side encoding avoids, so a reload may lose up to this many units' leftovers.
pub const SAVE_EVERY: u64 = 8;

/// A contributor's error feedback across units: the residual on the trainer's device while
/// units are compressed, a host copy (restored from a store, refreshed on saves), and the
/// store that keeps it across reloads.
#[derive(Default)]
pub struct ErrorFeedback {
    /// The host copy and its job; the device residual belongs to this job too.
    saved: SavedResidual,
    device: Option<DeviceFeedback>,
    store: Option<Box<dyn ResidualStore>>,
    encoded: u64,
}

impl ErrorFeedback {
    /// Carries on from `saved` (dropped later if its job or length does not fit) and saves
    /// to `store`.
    pub fn new(saved: SavedResidual, store: Option<Box<dyn ResidualStore>>) -> Self {
        ErrorFeedback { saved, device: None, store, encoded: 0 }
    }

    /// Values of the kept residual that belong to `job`.
    pub fn restored_for(&self, job: &str) -> usize {
        if self.saved.job == job { self.saved.values.len() } else { 0 }
    }

    /// Compresses the trained unit (`start − params` of `trainer`, see [`DeviceFeedback::encode`])
    /// for `job` with `cfg`. The residual starts from zeros when the job or the model changes.
    pub async fn encode<B: Backend>(
        &mut self,
        trainer: &mut Trainer<B>,
        job: &str,
        start: &[f32],
        cfg: CodecConfig,
    ) -> Result<Vec<u8>, FeedbackError> {
        if self.saved.job != job || self.saved.values.len() != start.len() {
            (self.device, self.encoded) = (None, 0);
            self.saved = SavedResidual { job: job.into(), values: vec![0.0; start.len()] };
        }
        if self.device.as_ref().is_some_and(|d| d.config() != cfg) {
            self.detach(trainer).await?;
        }
        if self.device.is_none() {
            self.device = Some(DeviceFeedback::new(trainer, cfg, &self.saved.values)?);
        }
        let device = self.device.as_mut().expect("made above");
        let bytes = device.encode(trainer, start).await?;
        self.encoded += 1;
        if let Some(store) = self.store.as_mut().filter(|_| self.encoded % SAVE_EVERY == 1) {
            self.saved.values = device.residual(trainer).await?;
            store.save(&self.saved.job, &self.saved.values);
        }
        Ok(bytes)
    }

    /// Brings the device residual back to the host copy and lets go of the device buffers;
    /// call before `trainer` is dropped or rebuilt.
    pub async fn detach<B: Backend>(&mut self, trainer: &mut Trainer<B>) -> Result<(), BackendError> {
        if let Some(device) = self.device.take() {
            self.saved.values = device.residual(trainer).await?;
        }
        Ok(())
    }
}

/// Why a compressed update could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// The device failed (readback, device loss).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device's table broke the codec's bounds (a kernel bug, never silently sent).
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Buffers on one trainer's backend: the residual and the start weights (the model's
/// length each) and the picked-values table of one codec config.
pub struct DeviceFeedback {
    residual: View,
    start: View,
    picked: View,
    cfg: CodecConfig,
}

impl DeviceFeedback {
    /// Allocates on `trainer`'s backend and uploads `residual`, which must have the
    /// model's length (`layout().total` floats).
    pub fn new<B: Backend>(trainer: &mut Trainer<B>, cfg: CodecConfig, residual: &[f32]) -> Result<Self, BackendError> {
        let len = trainer.params.len;
        assert_eq!(residual.len(), len, "a residual of the model's length");
        let feedback = DeviceFeedback {
            residual: trainer.alloc_like_params("error-feedback residual")?,
            start: trainer.alloc_like_params("unit start weights")?,
            picked: trainer.backend.alloc(codec::picked_len(&cfg, len), "picked update values")?,
            cfg,
        };
        trainer.backend.write(feedback.residual, residual);
        Ok(feedback)
    }

    /// The codec config the table is sized for.
    pub fn config(&self) -> CodecConfig {
        self.cfg
    }

    /// Encodes `start − params` (the trainer's current parameters, after [`crate::train::train_unit`]
    /// from `start`) plus the residual, which keeps what was not sent. Uploads `start` and
    /// reads back only the table.
    pub async fn encode<B: Backend>(
        &mut self,
        trainer: &mut Trainer<B>,
        start: &[f32],
    ) -> Result<Vec<u8>, FeedbackError> {
        let be = &mut trainer.backend;
        be.write(self.start, start);
        be.pick_top_k(self.picked, self.residual, self.start, trainer.params, self.cfg);
        let table = be.read(self.picked).await?;
        Ok(codec::pack(&table, start.len(), &self.cfg)?)
    }

    /// Reads the residual back (to keep it across reloads).
    pub async fn residual<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<Vec<f32>, BackendError> {
        trainer.backend.read(self.residual).await
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use crate::data::Corpus;
    use crate::model::GptConfig;
    use crate::train::{InnerOptim, Moments, run_unit, train_unit};

    fn tiny() -> (GptConfig, Vec<f32>, Corpus) {
        let cfg = GptConfig { context: 16, layers: 1, width: 32, heads: 2, ..GptConfig::default() };
        (cfg, cfg.init(3), Corpus::builtin())
    }

    #[test]
    fn device_feedback_sends_what_the_host_codec_sends() {
        let (cfg, start, corpus) = tiny();
        let (codec, optim) = (CodecConfig { chunk: 512, k: 16, bits: 4, decay: 0.9 }, InnerOptim::default());
        let mut trainer = Trainer::new(CpuBackend::new(), cfg, 4, 6).unwrap();
        let mut host_residual = vec![0.0; start.len()];
        let mut device = DeviceFeedback::new(&mut trainer, codec, &host_residual).unwrap();
        for seed in 0..3 {
            let dense = pollster::block_on(run_unit(&mut trainer, &start, corpus.train(), seed, 5, &optim)).unwrap();
            pollster::block_on(train_unit(&mut trainer, &start, corpus.train(), seed, 5, &optim, Moments::Fresh))
                .unwrap();
            let sent = pollster::block_on(device.encode(&mut trainer, &start)).unwrap();
            assert_eq!(sent, codec::encode(&dense.delta, &mut host_residual, &codec), "unit {seed}");
        }
        assert_eq!(pollster::block_on(device.residual(&mut trainer)).unwrap(), host_residual);
    }

    /// Records the job and length of each save.
    #[derive(Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>);

    impl ResidualStore for Recorder {
        fn save(&mut self, job: &str, residual: &[f32]) {
            self.0.lock().unwrap().push((job.into(), residual.len()));
        }
    }

    #[test]
    fn the_residual_survives_a_codec_change_and_not_a_job_change() {
        let (cfg, start, corpus) = tiny();
        let optim = InnerOptim::default();
        let mut trainer = Trainer::new(CpuBackend::new(), cfg, 4, 6).unwrap();
        let recorder = Recorder::default();
        let mut feedback = ErrorFeedback::new(SavedResidual::default(), Some(Box::new(recorder.clone())));
        let mut host_residual = vec![0.0; start.len()];
        let small = CodecConfig { chunk: 512, k: 16, bits: 4, decay: 0.9 };
        let wide = CodecConfig { chunk: 256, k: 32, bits: 8, decay: 1.0 };
        for (seed, job, codec) in [(0, "a", small), (1, "a", small), (2, "a", wide), (3, "b", wide)] {
            if job == "b" {
                host_residual.fill(0.0);
            }
            let dense = pollster::block_on(run_unit(&mut trainer, &start, corpus.train(), seed, 5, &optim)).unwrap();
            let sent = pollster::block_on(feedback.encode(&mut trainer, job, &start, codec)).unwrap();
            assert_eq!(sent, codec::encode(&dense.delta, &mut host_residual, &codec), "unit {seed} of job {job}");
        }
        assert_eq!(feedback.restored_for("b"), start.len());
        let saves = vec![("a".to_string(), start.len()), ("b".to_string(), start.len())];
        assert_eq!(*recorder.0.lock().unwrap(), saves, "saved after each job's first unit only");
    }
}
