//! Committed versions on disk: `versions/v{N}.safetensors` (the weights contributors
//! download) beside `versions/v{N}.momentum.safetensors` (the outer optimizer's
//! momentum, which a restarted relay needs to continue).
//!
//! Both are written durably, tensor by tensor ([`files`]), so that a version of a large
//! model is never whole in memory twice. The momentum goes first: a commit computes the
//! new momentum, and from it the new weights, one tensor at a time as the momentum file
//! is written. The weights file's metadata then records the momentum file's blake3
//! (`momentum_blake3`), so a version whose ledger row was lost can be recognised as
//! whole and adopted ([`Store::read_unrecorded`]). Files the ledger does not know are
//! never deleted: what cannot be adopted is moved aside into `versions/unadopted/`.

mod files;
mod parts;
mod steps;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use crowdgrad_runtime::checkpoint::{self, hash_hex};
use crowdgrad_runtime::model::ParamEntry;
use crowdgrad_runtime::trained::Trained;
pub use files::write_bytes_durably;
use files::{MadeTensor, hash_file, read_tensor, write_durably};
pub use parts::Part;
use safetensors::tensor::{Dtype, TensorView};
pub use steps::{ResidualReader, ResidualWriter};

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
    /// Half-written temporary files (`v*.tmp`, and the safetensors crate's `.tmp*`).
    pub temporary: Vec<PathBuf>,
    /// Files that are none of these.
    pub unknown: Vec<PathBuf>,
}

/// The weights file of a version as written: what serving it needs.
#[derive(Clone, Debug)]
pub struct WeightsFile {
    /// Its blake3, lowercase hex.
    pub hash: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its bytes, kept in memory when it is at most [`MEMORY_FILE_MAX`] (a small model's
    /// file is served from memory to every tab; a large one is read from disk).
    pub bytes: Option<Bytes>,
}

/// Largest weights file served from memory.
pub const MEMORY_FILE_MAX: u64 = 64 << 20;

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

    /// Writes `version`'s momentum file durably, tensor by tensor: `tensor(entry)` makes
    /// each one's little-endian f32 bytes when the writer reaches it (in the file's
    /// order, each once), so that the caller computes the new momentum, and from it the
    /// new weights, one tensor at a time. Returns the file's blake3 (hex).
    pub fn write_momentum(
        &self,
        trained: &Trained,
        version: u64,
        job: &str,
        tensor: impl FnMut(&ParamEntry) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<String> {
        fs::create_dir_all(&self.dir)?;
        let layout = trained.layout();
        let (make, failed) = (RefCell::new(tensor), RefCell::new(None));
        let tensors = layout.entries.iter().map(|e| (e.name.clone(), MadeTensor::new(e, &make, &failed))).collect();
        let mut metadata =
            HashMap::from([("version".to_string(), version.to_string()), ("job".to_string(), job.to_string())]);
        metadata.extend(trained_metadata(trained));
        let path = self.momentum_path(version);
        write_durably(&path, tensors, metadata)?;
        if let Some(e) = failed.into_inner() {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(hash_file(&path)?.0)
    }

    /// The little-endian f32 bytes of tensor `entry` of `version`'s momentum file.
    pub fn momentum_tensor(&self, version: u64, entry: &ParamEntry) -> std::io::Result<Vec<u8>> {
        read_tensor(&self.momentum_path(version), &entry.name, 4 * entry.len)
    }

    /// Writes the weights file of `meta.version` durably from `params` (tensor by tensor,
    /// from where they are), its metadata recording the momentum file's blake3
    /// (`momentum_blake3`), once that file is written.
    pub fn write_weights(
        &self,
        trained: &Trained,
        params: &[f32],
        meta: &Meta,
        momentum_hash: &str,
    ) -> std::io::Result<WeightsFile> {
        fs::create_dir_all(&self.dir)?;
        let layout = trained.layout();
        assert_eq!(params.len(), layout.total, "parameter count");
        let bytes: &[u8] = bytemuck::cast_slice(params);
        let view = |e: &ParamEntry| {
            TensorView::new(Dtype::F32, e.shape.clone(), &bytes[4 * e.offset..4 * (e.offset + e.len)])
                .expect("shape matches data")
        };
        let mut tensors: Vec<(String, TensorView)> = layout.entries.iter().map(|e| (e.name.clone(), view(e))).collect();
        // nanoGPT's state dict names the tied head too (adapters have none).
        if let Some(wte) = layout.find("transformer.wte.weight") {
            tensors.push(("lm_head.weight".into(), view(wte)));
        }
        let mut metadata = HashMap::from([
            ("version".to_string(), meta.version.to_string()),
            ("job".to_string(), meta.job.to_string()),
            ("receipts_root".to_string(), meta.receipts_root.to_string()),
            ("round".to_string(), meta.round.to_string()),
            ("units_below".to_string(), meta.units_below.to_string()),
            ("val_loss".to_string(), meta.val_loss.to_string()),
            ("tokenizer".to_string(), meta.tokenizer.to_string()),
            ("momentum_blake3".to_string(), momentum_hash.to_string()),
        ]);
        metadata.extend(trained_metadata(trained));
        let path = self.weights_path(meta.version);
        write_durably(&path, tensors, metadata)?;
        let (hash, len) = hash_file(&path)?;
        let bytes = if len <= MEMORY_FILE_MAX { Some(Bytes::from(fs::read(&path)?)) } else { None };
        Ok(WeightsFile { hash, len, bytes })
    }

    /// Writes a whole version from `params` and `momentum` in memory (`[parameters]`
    /// each), momentum then weights, for tests and benches (a commit writes tensor by
    /// tensor); returns the weights file and the momentum file's blake3.
    pub fn write(
        &self,
        trained: &Trained,
        params: &[f32],
        momentum: &[f32],
        meta: &Meta,
    ) -> std::io::Result<(WeightsFile, String)> {
        let tensor = |e: &ParamEntry| Ok(bytemuck::cast_slice(&momentum[e.offset..e.offset + e.len]).to_vec());
        let momentum_hash = self.write_momentum(trained, meta.version, meta.job, tensor)?;
        let weights = self.write_weights(trained, params, meta, &momentum_hash)?;
        Ok((weights, momentum_hash))
    }

    /// Reads `version` back, checking both files against their recorded hashes: its
    /// weights file and the parameters in it.
    pub fn read(
        &self,
        trained: &Trained,
        version: u64,
        weights_hash: &str,
        momentum_hash: &str,
    ) -> anyhow::Result<(WeightsFile, Vec<f32>)> {
        let weights = read_checked(&self.weights_path(version), weights_hash)?;
        let momentum = self.momentum_path(version);
        let (actual, _) = hash_file(&momentum).map_err(|e| anyhow::anyhow!("{}: {e}", momentum.display()))?;
        anyhow::ensure!(
            actual == momentum_hash,
            "{} is corrupt: blake3 {actual}, ledger says {momentum_hash}",
            momentum.display()
        );
        let params = trained.decode(&weights)?;
        let len = weights.len() as u64;
        let bytes = (len <= MEMORY_FILE_MAX).then(|| Bytes::from(weights));
        Ok((WeightsFile { hash: weights_hash.to_string(), len, bytes }, params))
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
                Some(v) if [".safetensors", ".delta", ".residual"].iter().any(|end| name.ends_with(end)) => {
                    listing.versions.insert(v);
                }
                Some(_) if name.ends_with(".tmp") => listing.temporary.push(path),
                // The safetensors crate's own temporary files, left by a crash mid-write.
                None if name.starts_with(".tmp") => listing.temporary.push(path),
                _ => listing.unknown.push(path),
            }
        }
        Ok(listing)
    }

    /// Reads a version the ledger has no row for, and checks it: its weights decode for
    /// `trained`, name `version`, and record the momentum file's blake3 (older files: the
    /// momentum file records the weights file's), and every momentum tensor reads.
    pub fn read_unrecorded(&self, trained: &Trained, version: u64) -> anyhow::Result<Unrecorded> {
        let weights_path = self.weights_path(version);
        let weights = fs::read(&weights_path).map_err(|e| anyhow::anyhow!("{}: {e}", weights_path.display()))?;
        let momentum_path = self.momentum_path(version);
        let (momentum_hash, _) =
            hash_file(&momentum_path).map_err(|e| anyhow::anyhow!("{}: {e}", momentum_path.display()))?;
        let weights_hash = hash_hex(&weights);
        let field = |key: &str| checkpoint::metadata(&weights, key);
        match field("momentum_blake3") {
            Some(recorded) => anyhow::ensure!(
                recorded == momentum_hash,
                "the momentum file's blake3 is {momentum_hash}, its weights file records {recorded}"
            ),
            None => {
                let momentum = fs::read(&momentum_path)?;
                let recorded = checkpoint::metadata(&momentum, "weights_blake3");
                anyhow::ensure!(
                    recorded.as_deref() == Some(weights_hash.as_str()),
                    "the weights file's blake3 is {weights_hash}, its momentum file records {recorded:?}"
                );
            }
        }
        let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
        anyhow::ensure!(number("version") == Some(version), "its metadata names version {:?}", field("version"));
        let params = trained.decode(&weights)?;
        for entry in &trained.layout().entries {
            self.momentum_tensor(version, entry)?;
        }
        Ok(Unrecorded {
            momentum_hash,
            weights_hash,
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
        for path in self.files(version) {
            if path.exists() {
                let name = path.file_name().expect("checkpoint paths have a name");
                fs::rename(&path, aside.join(name))?;
            }
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(aside)
    }

    /// Every file of `version` but its Hugging Face copy.
    fn files(&self, version: u64) -> [PathBuf; 4] {
        [self.weights_path(version), self.momentum_path(version), self.delta_path(version), self.residual_path(version)]
    }

    /// Deletes a half-written temporary file.
    pub fn remove_temporary(&self, path: &Path) -> std::io::Result<()> {
        fs::remove_file(path)
    }

    /// Deletes `version`'s checkpoint: its weights, momentum and Hugging Face copy
    /// (missing ones are fine). Its step and residual go with [`Store::remove_step`], once
    /// newer steps are out, whether or not the version is kept.
    pub fn remove(&self, version: u64) -> std::io::Result<()> {
        let paths = [self.weights_path(version), self.momentum_path(version), self.hf_weights_path(version)];
        for path in paths {
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

/// The metadata that says what a version's files hold: the model's config (`config`),
/// and the adapters' (`lora`) where adapters train.
fn trained_metadata(trained: &Trained) -> Vec<(String, String)> {
    let mut pairs = vec![("config".to_string(), serde_json::to_string(&trained.model).expect("a config serialises"))];
    if let Some(lora) = &trained.lora {
        pairs.push(("lora".to_string(), serde_json::to_string(lora).expect("a config serialises")));
        // What PEFT's and transformers' loaders expect of a PyTorch safetensors file.
        pairs.push(("format".to_string(), "pt".to_string()));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdgrad_runtime::model::GptConfig;

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
        let model = Trained::whole(model);
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
        // Version 3's weights replaced by version 1's: they record another momentum file.
        fs::copy(store.weights_path(1), store.weights_path(3)).unwrap();
        let err = store.read_unrecorded(&model, 3).err().expect("mismatched files are refused");
        assert!(err.to_string().contains("weights file records"), "{err}");
        let aside = store.move_aside(3).expect("moved aside");
        assert!(
            aside.join("v00000003.safetensors").is_file() && aside.join("v00000003.momentum.safetensors").is_file()
        );
        assert_eq!(store.list().unwrap().versions, BTreeSet::from([1, 2]), "nothing deleted, version 3 set aside");
    }
}
