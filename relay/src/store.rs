//! Committed versions on disk: `versions/v{N}.safetensors` (the weights contributors
//! download) beside `versions/v{N}.momentum.safetensors` (the outer optimizer's
//! momentum, which a restarted relay needs to continue).
//!
//! Each file is written to a temporary name, fsynced, renamed into place, and the
//! folder fsynced, so a crash leaves either the whole file or none of it. The weights
//! go first; the momentum file's metadata carries the weights file's blake3
//! (`weights_blake3`), so a version whose ledger row was lost can be recognised as
//! whole and adopted ([`Store::read_unrecorded`]). Files the ledger does not know are
//! never deleted: what cannot be adopted is moved aside into `versions/unadopted/`.

use std::collections::BTreeSet;
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

/// What a version's files record besides its tensors, in their metadata.
pub struct Meta<'a> {
    /// The model version.
    pub version: u64,
    /// The job's name.
    pub job: &'a str,
    /// Merkle root (hex) of the receipts averaged into it.
    pub receipts_root: &'a str,
    /// The round it closed (0 for version 0).
    pub round: u64,
    /// Every unit id the relay issued or may issue before the next version is below this.
    pub units_below: u64,
    /// Its held-out loss, nats per token.
    pub val_loss: f32,
    /// The tokenizer its token ids come from (`bytes`, `gpt2`), so that samplers and
    /// exports know how to read them.
    pub tokenizer: &'a str,
}

/// A version found on disk without a ledger row, whose files check out.
pub struct Unrecorded {
    /// The weights file's bytes.
    pub weights: Vec<u8>,
    /// blake3 of the weights file, hex.
    pub weights_hash: String,
    /// blake3 of the momentum file, hex.
    pub momentum_hash: String,
    /// The parameters.
    pub params: Vec<f32>,
    /// The metadata's receipts root.
    pub receipts_root: String,
    /// The metadata's round.
    pub round: u64,
    /// The metadata's `units_below`.
    pub units_below: u64,
    /// The metadata's held-out loss (nats per token), if it is there and finite: files
    /// written before it was recorded have none.
    pub val_loss: Option<f32>,
}

/// What the folder holds: versions with at least one file, and temporary files.
pub struct Listing {
    /// Versions that have a weights or a momentum file.
    pub versions: BTreeSet<u64>,
    /// Half-written temporary files (`*.tmp`).
    pub temporary: Vec<PathBuf>,
    /// Files that are none of these.
    pub unknown: Vec<PathBuf>,
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

    /// Path of `version`'s weights as a Hugging Face GPT-2 `model.safetensors`, written
    /// when first asked for (`/api/hf/{version}/model.safetensors`) and deleted with the
    /// version.
    pub fn hf_weights_path(&self, version: u64) -> PathBuf {
        self.dir.join("hf").join(format!("v{version:08}.safetensors"))
    }

    fn momentum_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:08}.momentum.safetensors"))
    }

    /// Writes a version durably: weights first, then momentum, whose metadata also
    /// carries the weights file's blake3; both carry `meta`.
    pub fn write(&self, model: &GptConfig, params: &[f32], momentum: &[f32], meta: &Meta) -> std::io::Result<Written> {
        fs::create_dir_all(&self.dir)?;
        let mut pairs = vec![
            ("version", meta.version.to_string()),
            ("job", meta.job.to_string()),
            ("receipts_root", meta.receipts_root.to_string()),
            ("round", meta.round.to_string()),
            ("units_below", meta.units_below.to_string()),
            ("val_loss", meta.val_loss.to_string()),
            ("tokenizer", meta.tokenizer.to_string()),
        ];
        let weights = checkpoint::encode(model, params, &pairs);
        write_atomically(&self.weights_path(meta.version), &weights)?;
        let weights_hash = hash_hex(&weights);
        pairs.push(("weights_blake3", weights_hash.clone()));
        let momentum_bytes = checkpoint::encode(model, momentum, &pairs);
        write_atomically(&self.momentum_path(meta.version), &momentum_bytes)?;
        Ok(Written { weights_hash, momentum_hash: hash_hex(&momentum_bytes), weights })
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

    /// What the folder holds (nothing when it does not exist yet).
    pub fn list(&self) -> std::io::Result<Listing> {
        let mut listing = Listing { versions: BTreeSet::new(), temporary: Vec::new(), unknown: Vec::new() };
        let Ok(entries) = fs::read_dir(&self.dir) else { return Ok(listing) };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let version = name.strip_prefix('v').and_then(|rest| rest.get(..8)).and_then(|v| v.parse::<u64>().ok());
            match version {
                Some(v) if name.ends_with(".safetensors") => {
                    listing.versions.insert(v);
                }
                Some(_) if name.ends_with(".tmp") => listing.temporary.push(path),
                _ => listing.unknown.push(path),
            }
        }
        Ok(listing)
    }

    /// Reads a version the ledger has no row for, and checks it: both files decode for
    /// `model`, name `version`, and the momentum file's `weights_blake3` is the weights
    /// file's hash.
    pub fn read_unrecorded(&self, model: &GptConfig, version: u64) -> anyhow::Result<Unrecorded> {
        let read = |path: PathBuf| fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        let weights = read(self.weights_path(version))?;
        let momentum = read(self.momentum_path(version))?;
        let weights_hash = hash_hex(&weights);
        let recorded = checkpoint::metadata(&momentum, "weights_blake3");
        anyhow::ensure!(
            recorded.as_deref() == Some(weights_hash.as_str()),
            "the weights file's blake3 is {weights_hash}, its momentum file records {recorded:?}"
        );
        let field = |key: &str| checkpoint::metadata(&momentum, key);
        let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
        anyhow::ensure!(number("version") == Some(version), "its metadata names version {:?}", field("version"));
        let params = checkpoint::decode(model, &weights)?;
        checkpoint::decode(model, &momentum)?;
        Ok(Unrecorded {
            momentum_hash: hash_hex(&momentum),
            weights_hash,
            weights,
            params,
            receipts_root: field("receipts_root").unwrap_or_default(),
            round: number("round").unwrap_or(0),
            units_below: number("units_below").unwrap_or(0),
            val_loss: field("val_loss").and_then(|v| v.parse::<f32>().ok()).filter(|v| v.is_finite()),
        })
    }

    /// Moves `version`'s files into `versions/unadopted/`, keeping them for the
    /// operator; returns where they went.
    pub fn move_aside(&self, version: u64) -> std::io::Result<PathBuf> {
        let aside = self.dir.join("unadopted");
        fs::create_dir_all(&aside)?;
        for path in [self.weights_path(version), self.momentum_path(version)] {
            if path.exists() {
                let name = path.file_name().expect("checkpoint paths have a name");
                fs::rename(&path, aside.join(name))?;
            }
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(aside)
    }

    /// Deletes a half-written temporary file.
    pub fn remove_temporary(&self, path: &Path) -> std::io::Result<()> {
        fs::remove_file(path)
    }

    /// Deletes `version`'s files (missing ones are fine).
    pub fn remove(&self, version: u64) -> std::io::Result<()> {
        for path in [self.weights_path(version), self.momentum_path(version), self.hf_weights_path(version)] {
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

    fn meta(version: u64) -> Meta<'static> {
        Meta {
            version,
            job: "test",
            receipts_root: "",
            round: version,
            units_below: 10 * version,
            val_loss: 2.5,
            tokenizer: "bytes",
        }
    }

    #[test]
    fn a_whole_unrecorded_version_reads_back_and_a_mismatched_one_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        let model = GptConfig { layers: 1, width: 8, heads: 1, context: 4, ..GptConfig::default() };
        let params = model.init(1);
        for version in 1..=3 {
            store.write(&model, &params, &params, &meta(version)).expect("write");
        }
        fs::write(store.dir.join("v00000004.tmp"), b"half written").unwrap();
        let listing = store.list().expect("list");
        assert_eq!(listing.versions, BTreeSet::from([1, 2, 3]));
        assert_eq!(listing.temporary.len(), 1);
        let found = store.read_unrecorded(&model, 2).expect("version 2 is whole");
        assert_eq!((found.params, found.round, found.units_below), (params.clone(), 2, 20));
        assert_eq!(found.val_loss, Some(2.5), "adopting it needs no evaluation");
        // Version 3's weights replaced by version 1's: its momentum file no longer matches.
        fs::copy(store.weights_path(1), store.weights_path(3)).unwrap();
        let err = store.read_unrecorded(&model, 3).err().expect("mismatched files are refused");
        assert!(err.to_string().contains("momentum file records"), "{err}");
        let aside = store.move_aside(3).expect("moved aside");
        assert!(
            aside.join("v00000003.safetensors").is_file() && aside.join("v00000003.momentum.safetensors").is_file()
        );
        assert_eq!(store.list().unwrap().versions, BTreeSet::from([1, 2]), "nothing deleted, version 3 set aside");
    }
}
