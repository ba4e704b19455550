//! A version's published step and the relay's carry (see `coordinator::new_version`):
//! - `v{N}.delta`: the compressed step from version N − 1 (`crowdgrad_runtime::codec`),
//!   which contributors holding N − 1 download instead of the weights file;
//! - `v{N}.residual`: what the outer steps up to N wanted and no published step has sent
//!   yet, one raw little-endian f32 per parameter, read and written in order.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use super::Store;
use super::files::{hash_file, write_bytes_durably};

/// Bytes read or written at a time.
const BLOCK: usize = 1 << 20;

impl Store {
    /// Path of `version`'s published step.
    pub fn delta_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:08}.delta"))
    }

    pub(super) fn residual_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version:08}.residual"))
    }

    /// Writes `version`'s published step durably: its blake3 (hex) and length.
    pub fn write_delta(&self, version: u64, bytes: &[u8]) -> std::io::Result<(String, u64)> {
        fs::create_dir_all(&self.dir)?;
        write_bytes_durably(&self.delta_path(version), bytes)?;
        Ok((blake3::hash(bytes).to_hex().to_string(), bytes.len() as u64))
    }

    /// `version`'s published step as `(blake3 hex, length)`, `None` when it has none
    /// (version 0, a job without deltas, or a step lost).
    pub fn delta_file(&self, version: u64) -> std::io::Result<Option<(String, u64)>> {
        match hash_file(&self.delta_path(version)) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `version`'s step and residual (missing ones are fine): once newer
    /// versions' steps are out, nobody steps to it and nothing carries it.
    pub fn remove_step(&self, version: u64) -> std::io::Result<()> {
        for path in [self.delta_path(version), self.residual_path(version)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// A reader of `version`'s residual of `len` values; `None` when it has none (all
    /// zeros: version 0, or a residual lost, which only delays what it held).
    pub fn residual_reader(&self, version: u64, len: usize) -> std::io::Result<Option<ResidualReader>> {
        let path = self.residual_path(version);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() != 4 * len as u64 {
            tracing::warn!(path = %path.display(), "a residual of another model's size is ignored");
            return Ok(None);
        }
        Ok(Some(ResidualReader(BufReader::with_capacity(BLOCK, file))))
    }

    /// A writer of `version`'s residual, durable once [`ResidualWriter::finish`] returns.
    pub fn residual_writer(&self, version: u64) -> std::io::Result<ResidualWriter> {
        fs::create_dir_all(&self.dir)?;
        let path = self.residual_path(version);
        let temporary = path.with_extension("tmp");
        let file = BufWriter::with_capacity(BLOCK, File::create(&temporary)?);
        Ok(ResidualWriter { file, temporary, path })
    }
}

/// Reads a residual in order.
pub struct ResidualReader(BufReader<File>);

impl ResidualReader {
    /// The next `out.len()` values.
    pub fn read(&mut self, out: &mut [f32]) -> std::io::Result<()> {
        let mut bytes = vec![0u8; 4 * out.len()];
        self.0.read_exact(&mut bytes)?;
        for (value, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }
}

/// Writes a residual in order, to a temporary file renamed into place at the end.
pub struct ResidualWriter {
    file: BufWriter<File>,
    temporary: PathBuf,
    path: PathBuf,
}

impl ResidualWriter {
    /// Appends `values`.
    pub fn write(&mut self, values: &[f32]) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all(&bytes)
    }

    /// Flushes, fsyncs and renames the file into place, and fsyncs its folder.
    pub fn finish(self) -> std::io::Result<()> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temporary, &self.path)?;
        File::open(self.path.parent().expect("a version file has a folder"))?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_residual_reads_back_in_order_and_a_missing_one_is_zeros() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::new(dir.path());
        assert!(store.residual_reader(3, 10).unwrap().is_none(), "none written");
        let mut writer = store.residual_writer(3).unwrap();
        writer.write(&[1.0, 2.0, 3.0]).unwrap();
        writer.write(&[4.0]).unwrap();
        writer.finish().unwrap();
        assert!(store.residual_reader(3, 5).unwrap().is_none(), "another size is ignored");
        let mut reader = store.residual_reader(3, 4).unwrap().expect("written");
        let (mut a, mut b) = ([0.0; 3], [0.0; 1]);
        reader.read(&mut a).unwrap();
        reader.read(&mut b).unwrap();
        assert_eq!((a, b), ([1.0, 2.0, 3.0], [4.0]));
        let (hash, len) = store.write_delta(3, b"step").unwrap();
        assert_eq!(store.delta_file(3).unwrap(), Some((hash, len)));
        assert_eq!(store.delta_file(4).unwrap(), None);
    }
}
