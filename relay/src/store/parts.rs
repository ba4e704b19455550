//! A version's files by kind, as the federation's engine stores and fetches them: each
//! is hashed with blake3 (its name in the engine's object store) and installed
//! durably from a downloaded temporary file.

use std::fs;
use std::path::{Path, PathBuf};

use super::Store;
use super::files::hash_file;

/// One of a version's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `v{N}.safetensors`, the weights contributors download.
    Weights,
    /// `v{N}.momentum.safetensors`, the outer optimizer's momentum.
    Momentum,
    /// `v{N}.delta`, the published step from version N − 1.
    Step,
    /// `v{N}.residual`, what no published step has sent yet.
    Residual,
}

impl Store {
    /// Path of `version`'s file of kind `part`.
    pub fn part_path(&self, version: u64, part: Part) -> PathBuf {
        match part {
            Part::Weights => self.weights_path(version),
            Part::Momentum => self.momentum_path(version),
            Part::Step => self.delta_path(version),
            Part::Residual => self.residual_path(version),
        }
    }

    /// `(blake3 hex, length)` of `version`'s file of kind `part`; `None` when it has none.
    pub fn part_hash(&self, version: u64, part: Part) -> std::io::Result<Option<(String, u64)>> {
        match hash_file(&self.part_path(version, part)) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A temporary path in the store's folder for downloading `version`'s `part` into
    /// (created), which [`Store::install_part`] then moves into place.
    pub fn download_path(&self, version: u64, part: Part) -> std::io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        Ok(self.part_path(version, part).with_extension("download.tmp"))
    }

    /// Moves the downloaded file `from` into place as `version`'s `part` once its
    /// blake3 is `hash`, durably; an error (and `from` deleted) when it is not.
    pub fn install_part(&self, from: &Path, version: u64, part: Part, hash: &str) -> std::io::Result<()> {
        fs::File::open(from)?.sync_all()?;
        let (actual, _) = hash_file(from)?;
        if actual != hash {
            let _ = fs::remove_file(from);
            return Err(std::io::Error::other(format!(
                "{part:?} of version {version}: blake3 {actual}, expected {hash}"
            )));
        }
        fs::rename(from, self.part_path(version, part))?;
        fs::File::open(&self.dir)?.sync_all()
    }
}
