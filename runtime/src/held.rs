//! The weights a contributor holds between units, how it steps them to a newer version,
//! and the view its host reads them through (a tab samples text from them).

use std::sync::{Arc, Mutex, Weak};

use crate::codec::{ChunkReader, CodecError};
use crate::model::GptConfig;

/// Subtracts a published step ([`crate::codec`]'s format) from `params`, a chunk at a
/// time, as the relay made the version it steps to.
pub fn apply_step(params: &mut [f32], step: &[u8]) -> Result<(), CodecError> {
    let mut reader = ChunkReader::new(step, params.len())?;
    let mut values = Vec::new();
    while reader.next_chunk(&mut values)?.is_some() {
        values.iter().for_each(|&(i, v)| params[i as usize] -= v);
    }
    Ok(())
}

/// A contributor's weights: their version, the blake3 hex of the weights file that
/// version was published as, the model and the values (`model.layout().total` f32s).
pub struct HeldWeights {
    /// The model version.
    pub version: u64,
    /// blake3 hex of the version's weights file.
    pub file_hash: String,
    /// The model the values are laid out for.
    pub model: GptConfig,
    params: Arc<Vec<f32>>,
}

impl HeldWeights {
    /// `params` of `model` at `version`, published as the file whose blake3 hex is
    /// `file_hash`.
    pub fn new(version: u64, file_hash: String, model: GptConfig, params: Vec<f32>) -> Self {
        HeldWeights { version, file_hash, model, params: Arc::new(params) }
    }

    /// The values.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Steps the values to `version` by its published `step`. A host reading them at
    /// that moment keeps the values it has, and the step goes to a copy.
    pub fn step(&mut self, version: u64, step: &[u8]) -> Result<(), CodecError> {
        apply_step(Arc::<Vec<f32>>::make_mut(&mut self.params), step)?;
        self.version = version;
        Ok(())
    }
}

/// What a contributor holds, for its host to read without a download: the contributor
/// keeps only a weak handle here, so it never copies its weights for the host, and the
/// host's handle lives only while it reads.
#[derive(Clone, Default)]
pub struct HeldView(Arc<Mutex<Option<Shown>>>);

/// What a [`HeldView`] shows.
struct Shown {
    version: u64,
    model: GptConfig,
    params: Weak<Vec<f32>>,
}

impl HeldView {
    /// The version, model and values (`model.layout().total` f32s) held now, if any.
    pub fn get(&self) -> Option<(u64, GptConfig, Arc<Vec<f32>>)> {
        let shown = self.0.lock().expect("held view lock");
        let Shown { version, model, params } = shown.as_ref()?;
        Some((*version, *model, params.upgrade()?))
    }

    /// Shows `held` (or nothing).
    pub fn show(&self, held: Option<&HeldWeights>) {
        *self.0.lock().expect("held view lock") =
            held.map(|h| Shown { version: h.version, model: h.model, params: Arc::downgrade(&h.params) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_reading_keeps_its_values_while_the_contributor_steps() {
        let model = GptConfig::default();
        let params = vec![1.0; model.layout().total];
        let mut held = HeldWeights::new(3, "hash".into(), model, params.clone());
        let view = HeldView::default();
        view.show(Some(&held));
        let (version, _, reading) = view.get().expect("held");
        assert_eq!(version, 3);

        let codec = crate::codec::CodecConfig { chunk: 4, k: 1, bits: 8, decay: 1.0 };
        let mut update = vec![0.0; params.len()];
        update[0] = 0.5;
        let step = crate::codec::encode(&update, &mut vec![0.0; params.len()], &codec);
        let mut expected = params.clone();
        apply_step(&mut expected, &step).expect("the step applies");
        assert_ne!(expected[0], 1.0, "the step moves the first value");
        held.step(4, &step).expect("the step applies");
        assert_eq!(reading[0], 1.0, "the host's values did not change under it");
        assert_eq!(held.params(), expected.as_slice());
        drop(reading);

        view.show(Some(&held));
        let (version, _, now) = view.get().expect("held");
        assert_eq!((version, now[0]), (4, expected[0]));
        view.show(None);
        assert!(view.get().is_none());
    }
}
