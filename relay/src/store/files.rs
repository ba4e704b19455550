//! Safetensors files written tensor by tensor and read a tensor at a time, so that a
//! version of a large model is never whole in memory twice: each tensor's bytes are
//! made when the writer (the `safetensors` crate) reaches it.
//!
//! Every file is written durably: to a temporary name, fsynced, renamed into place, and
//! its folder fsynced, so that a crash leaves the whole file or none of it. Its header's
//! keys are sorted, so that the same tensors and metadata make the same bytes on every
//! relay (the crate writes its metadata from a hash map, in another order each time).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crowdgrad_runtime::model::ParamEntry;
use safetensors::tensor::{Dtype, View};

/// Bytes read at a time when hashing a file.
const HASH_BLOCK: usize = 1 << 20;
/// Largest safetensors header read (the crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// An f32 tensor whose little-endian bytes `make` gives when the writer asks for them,
/// once; an error is kept in `failed` and zeros written in its place.
pub struct MadeTensor<'a, F: FnMut(&ParamEntry) -> std::io::Result<Vec<u8>>> {
    entry: &'a ParamEntry,
    make: &'a RefCell<F>,
    failed: &'a RefCell<Option<std::io::Error>>,
}

impl<'a, F: FnMut(&ParamEntry) -> std::io::Result<Vec<u8>>> MadeTensor<'a, F> {
    /// The tensor `entry`, made by `make`; a failure goes to `failed`.
    pub fn new(entry: &'a ParamEntry, make: &'a RefCell<F>, failed: &'a RefCell<Option<std::io::Error>>) -> Self {
        MadeTensor { entry, make, failed }
    }
}

impl<F: FnMut(&ParamEntry) -> std::io::Result<Vec<u8>>> View for MadeTensor<'_, F> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.entry.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let made = (self.make.borrow_mut())(self.entry).and_then(|bytes| {
            if bytes.len() == self.data_len() {
                Ok(bytes)
            } else {
                Err(std::io::Error::other(format!("{} bytes made for {}", bytes.len(), self.entry.name)))
            }
        });
        match made {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }

    fn data_len(&self) -> usize {
        4 * self.entry.len
    }
}

/// Writes `tensors` with `metadata` to `path` durably (module docs).
pub fn write_durably<V: View>(
    path: &Path,
    tensors: Vec<(String, V)>,
    metadata: HashMap<String, String>,
) -> std::io::Result<()> {
    let dir = path.parent().expect("checkpoint paths have a folder");
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(std::io::Error::other)?;
    sort_header(&tmp)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Rewrites the JSON header of the safetensors file at `path` with its keys sorted (the
/// same length: only the order changes).
fn sort_header(path: &Path) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(std::io::Error::other(format!("a safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)?;
    // serde_json's maps are sorted by key; the crate pads the header with spaces.
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
    let mut sorted = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    if sorted.len() > header.len() {
        return Err(std::io::Error::other("a sorted safetensors header is longer than the original"));
    }
    sorted.resize(header.len(), b' ');
    file.seek(SeekFrom::Start(8))?;
    std::io::Write::write_all(&mut file, &sorted)
}

/// Writes `bytes` to `path` durably (module docs).
pub fn write_bytes_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("checkpoint paths have a folder");
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// blake3 (lowercase hex) and length of the file at `path`, read a block at a time.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let (mut hasher, mut block, mut len) = (blake3::Hasher::new(), vec![0u8; HASH_BLOCK], 0u64);
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok((hasher.finalize().to_hex().to_string(), len));
        }
        hasher.update(&block[..n]);
        len += n as u64;
    }
}

/// The raw bytes of tensor `name` (f32, `expected` bytes) of the safetensors file at
/// `path`, read from its offset alone.
pub fn read_tensor(path: &Path, name: &str, expected: usize) -> std::io::Result<Vec<u8>> {
    let bad = |why: String| std::io::Error::other(format!("{}: {why}", path.display()));
    let mut file = File::open(path)?;
    let mut size = [0u8; 8];
    file.read_exact(&mut size)?;
    let header_len = u64::from_le_bytes(size);
    if header_len > MAX_HEADER {
        return Err(bad(format!("a header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let info = &header[name];
    let offsets = info["data_offsets"].as_array().and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
    let Some((start, end)) = offsets.filter(|_| info["dtype"] == "F32") else {
        return Err(bad(format!("no F32 tensor {name}")));
    };
    if end < start || (end - start) as usize != expected {
        return Err(bad(format!("{name} has {} bytes, not {expected}", end.saturating_sub(start))));
    }
    file.seek(SeekFrom::Start(8 + header_len + start))?;
    let mut bytes = vec![0u8; expected];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdgrad_runtime::model::GptConfig;

    #[test]
    fn tensors_made_as_written_read_back_one_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v.safetensors");
        let layout = GptConfig { layers: 1, width: 8, heads: 1, context: 4, ..GptConfig::default() }.layout();
        let (make, failed) = (RefCell::new(|e: &ParamEntry| Ok(vec![e.len as u8; 4 * e.len])), RefCell::new(None));
        let tensors = layout.entries.iter().map(|e| (e.name.clone(), MadeTensor::new(e, &make, &failed))).collect();
        write_durably(&path, tensors, HashMap::from([("k".to_string(), "v".to_string())])).expect("written");
        assert!(failed.borrow().is_none());
        for e in &layout.entries {
            assert_eq!(read_tensor(&path, &e.name, 4 * e.len).expect("read"), vec![e.len as u8; 4 * e.len]);
        }
        assert!(read_tensor(&path, "nope", 4).is_err());
        let (hash, len) = hash_file(&path).expect("hashed");
        let whole = fs::read(&path).unwrap();
        assert_eq!((hash, len), (blake3::hash(&whole).to_hex().to_string(), whole.len() as u64));
        // A tensor that cannot be made fails the file's writer, which says why.
        let broken = RefCell::new(|_: &ParamEntry| Err(std::io::Error::other("disk gone")));
        let tensors = layout.entries.iter().map(|e| (e.name.clone(), MadeTensor::new(e, &broken, &failed))).collect();
        write_durably(&dir.path().join("w.safetensors"), tensors, HashMap::new()).expect("the file itself is written");
        assert_eq!(failed.borrow().as_ref().map(|e| e.to_string()).as_deref(), Some("disk gone"));
    }

    #[test]
    fn the_same_tensors_and_metadata_make_the_same_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = GptConfig { layers: 1, width: 8, heads: 1, context: 4, ..GptConfig::default() }.layout();
        let write = |name: &str| {
            let (make, failed) = (RefCell::new(|e: &ParamEntry| Ok(vec![1u8; 4 * e.len])), RefCell::new(None));
            let tensors = layout.entries.iter().map(|e| (e.name.clone(), MadeTensor::new(e, &make, &failed))).collect();
            // A map of its own each time: its order differs from one map to the next.
            let metadata: HashMap<String, String> = (0..32).map(|i| (format!("key{i}"), format!("value{i}"))).collect();
            let path = dir.path().join(name);
            write_durably(&path, tensors, metadata).expect("written");
            fs::read(&path).expect("read")
        };
        let (a, b) = (write("a.safetensors"), write("b.safetensors"));
        assert!(a == b, "two writes of one version differ");
        let parsed = safetensors::SafeTensors::read_metadata(&a).expect("a safetensors file").1;
        assert_eq!(parsed.metadata().as_ref().and_then(|m| m.get("key7")).map(String::as_str), Some("value7"));
    }
}
