//! Committed versions on disk: `versions/v{N}.safetensors` (the weights contributors
//! download) beside `versions/v{N}.momentum.safetensors` (the outer optimizer's
//! momentum, which a restarted relay needs to continue).
//!
//! Each file is written to a temporary name, fsynced, renamed into place, and the
//! folder fsynced, so a crash leaves either the whole file or none of it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crowdgrad_runtime::checkpoint::{self, hash_hex};
use crowdgrad_runtime::model::GptConfig;

/// The checkpoint folder.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// One version's two files as written: bytes and blake3 hashes (hex).
pub struct Written {
    /// The weights file, as served for download.
    pub weights: Vec<u8>,
    /// blake3 of `weights`.
    pub weights_hash: String,
    /// blake3 of the momentum file.
    pub momentum_hash: String,
}

impl Store {
    /// The store in `dir/versions`; the folder is created when first written.
    pub fn new(dir: &Path) -> Self {
        Store { dir: dir.join("versions") }
    }

    /// Path of `version`'s weights file.
    pub fn weights_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:08}.safetensors"))
    }

    fn momentum_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:08}.momentum.safetensors"))
    }

    /// Writes `version` durably: momentum first, then weights; both carry the job's
    /// name, the version and the Merkle root of its receipts in their metadata.
    pub fn write(
        &self,
        model: &GptConfig,
        version: u64,
        params: &[f32],
        momentum: &[f32],
        job: &str,
        receipts_root: &str,
    ) -> std::io::Result<Written> {
        fs::create_dir_all(&self.dir)?;
        let meta =
            [("version", version.to_string()), ("job", job.to_string()), ("receipts_root", receipts_root.to_string())];
        let momentum_bytes = checkpoint::encode(model, momentum, &meta);
        write_atomically(&self.momentum_path(version), &momentum_bytes)?;
        let weights = checkpoint::encode(model, params, &meta);
        write_atomically(&self.weights_path(version), &weights)?;
        Ok(Written { weights_hash: hash_hex(&weights), momentum_hash: hash_hex(&momentum_bytes), weights })
    }

    /// Reads `version` back, checking both files against their recorded hashes:
    /// `(weights bytes, params, momentum)`.
    pub fn read(
        &self,
        model: &GptConfig,
        version: u64,
        weights_hash: &str,
        momentum_hash: &str,
    ) -> anyhow::Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
        let weights = read_checked(&self.weights_path(version), weights_hash)?;
        let momentum = read_checked(&self.momentum_path(version), momentum_hash)?;
        let params = checkpoint::decode(model, &weights)?;
        let momentum = checkpoint::decode(model, &momentum)?;
        Ok((weights, params, momentum))
    }

    /// Deletes every file in the folder that does not belong to a version in `kept`:
    /// leftovers of a crash (temporary files, a version written but never recorded, a
    /// version forgotten but not yet deleted). Returns how many were removed.
    pub fn sweep(&self, kept: &[u64]) -> std::io::Result<usize> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Ok(0) };
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let version = name.strip_prefix('v').and_then(|rest| rest.get(..8)).and_then(|v| v.parse::<u64>().ok());
            let current = name.ends_with(".safetensors") && version.is_some_and(|v| kept.contains(&v));
            if !current {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes `version`'s files (missing ones are fine).
    pub fn remove(&self, version: u64) -> std::io::Result<()> {
        for path in [self.weights_path(version), self.momentum_path(version)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads `path` and checks its blake3 against `expected`.
fn read_checked(path: &Path, expected: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let actual = hash_hex(&bytes);
    anyhow::ensure!(actual == expected, "{} is corrupt: blake3 {actual}, ledger says {expected}", path.display());
    Ok(bytes)
}

/// Temp file, fsync, rename over `path`, fsync of the folder.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("checkpoint paths have a folder");
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_keeps_exactly_the_kept_versions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let model = GptConfig { layers: 1, width: 8, heads: 1, context: 4, ..GptConfig::default() };
        let params = model.init(1);
        for version in 1..=3 {
            store.write(&model, version, &params, &params, "test", "").expect("write");
        }
        fs::write(store.dir.join("v00000004.tmp"), b"half written").unwrap();
        assert_eq!(store.sweep(&[2, 3]).expect("sweep"), 3, "version 1's two files and the temporary one");
        let mut left: Vec<String> =
            fs::read_dir(&store.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "v00000002.momentum.safetensors",
                "v00000002.safetensors",
                "v00000003.momentum.safetensors",
                "v00000003.safetensors"
            ]
        );
    }
}
