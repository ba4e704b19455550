//! Parameters as safetensors files: one f32 tensor per named view, in layout order.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::ParamLayout;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// A tensor the layout needs is absent.
    #[error("tensor `{0}` is missing")]
    Missing(String),
    /// A tensor has another shape or dtype than the layout says.
    #[error("tensor `{name}` is {dtype:?} {shape:?}, expected F32 {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Its dtype in the file.
        dtype: Dtype,
        /// Its shape in the file.
        shape: Vec<usize>,
        /// The shape the layout needs.
        expected: Vec<usize>,
    },
}

/// Serialises `params` (`layout.total` floats) with `metadata` (string pairs).
pub fn encode(layout: &ParamLayout, params: &[f32], metadata: &[(&str, String)]) -> Vec<u8> {
    assert_eq!(params.len(), layout.total, "parameter count");
    let bytes: &[u8] = bytemuck::cast_slice(params);
    let views = layout.entries.iter().map(|e| {
        let data = &bytes[e.offset * 4..(e.offset + e.len) * 4];
        (
            e.name.as_str(),
            TensorView::new(Dtype::F32, e.shape.clone(), data).expect("shape matches data by construction"),
        )
    });
    let info: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    safetensors::serialize(views, Some(info)).expect("serialising well-formed tensors cannot fail")
}

/// Reads the tensors of `layout` from `bytes` into one flat buffer.
pub fn decode(layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CheckpointError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
    let mut params = vec![0f32; layout.total];
    for e in &layout.entries {
        let t = file.tensor(&e.name).map_err(|_| CheckpointError::Missing(e.name.clone()))?;
        if t.dtype() != Dtype::F32 || t.shape() != e.shape.as_slice() {
            return Err(CheckpointError::Shape {
                name: e.name.clone(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                expected: e.shape.clone(),
            });
        }
        // The data may be unaligned for f32, so copy bytewise.
        for (dst, chunk) in params[e.offset..e.offset + e.len].iter_mut().zip(t.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
    }
    Ok(params)
}

/// blake3 of `bytes` as lowercase hex: how weights and shards are named and checked.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
