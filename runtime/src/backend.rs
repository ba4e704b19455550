//! The op set that the model is written against, implemented once per device.
//!
//! A backend owns buffers; the model only holds [`View`]s into them. Ops are recorded
//! in order and may run later (the GPU backend batches a whole training step into one
//! queue submission); [`Backend::flush`] submits what was recorded and
//! [`Backend::read`] is the only way back to the host.
//!
//! Aliasing rule, shared by both backends because WebGPU enforces it: an op's output
//! buffer is never one of its input buffers. Views of *different* buffers are always fine.

use std::future::Future;

use crate::ops::AdamW;

/// Handle of one buffer owned by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// `len` elements (f32 or u32, 4 bytes each) starting at element `offset` of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    /// The buffer the view points into.
    pub buf: BufId,
    /// First element, in elements (not bytes).
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl View {
    /// The sub-view of `len` elements starting `offset` elements into this one.
    pub fn slice(self, offset: usize, len: usize) -> View {
        assert!(offset + len <= self.len, "sub-view {offset}+{len} past a view of {} elements", self.len);
        View { buf: self.buf, offset: self.offset + offset, len }
    }
}

/// What a backend runs on, for display and for the relay's records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    /// `"cpu"`, `"webgpu"` (browser), `"vulkan"`, `"metal"`, `"dx12"` or `"gl"`.
    pub kind: String,
    /// The adapter's name, or the CPU's description.
    pub adapter: String,
    /// True for software adapters (SwiftShader, lavapipe) and the CPU reference.
    pub software: bool,
}

/// Error from a backend: device loss, a failed readback, or a config that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model or batch needs more than the adapter allows.
    #[error("{what} needs {needed} but the adapter's limit `{limit}` is {allowed}")]
    Limit {
        /// What was being allocated.
        what: String,
        /// The adapter limit's WebGPU name.
        limit: &'static str,
        /// Bytes (or counts) needed.
        needed: u64,
        /// The limit's value.
        allowed: u64,
    },
    /// Reading a buffer back failed (device lost, mapping refused).
    #[error("readback failed: {0}")]
    Readback(String),
    /// No adapter or device could be obtained.
    #[error("no GPU: {0}")]
    NoDevice(String),
}

/// The ops the model needs, forward and backward, plus AdamW. Shapes are in elements;
/// every op checks its views against them before recording anything.
pub trait Backend {
    /// What this backend runs on.
    fn info(&self) -> DeviceInfo;
    /// A new zeroed buffer of `len` f32 elements, returned as a view of all of it.
    fn alloc(&mut self, len: usize, what: &str) -> Result<View, BackendError>;
    /// A new zeroed buffer of `len` u32 elements (token ids).
    fn alloc_u32(&mut self, len: usize, what: &str) -> Result<View, BackendError>;
    /// Overwrite `dst` with `data` (`data.len() == dst.len`).
    fn write(&mut self, dst: View, data: &[f32]);
    /// Overwrite the u32 view `dst` with `data`.
    fn write_u32(&mut self, dst: View, data: &[u32]);
    /// Set `dst` to zeros.
    fn zero(&mut self, dst: View);
    /// Submit everything recorded so far.
    fn flush(&mut self);
    /// Submit what is recorded and read `src` back to the host.
    fn read(&mut self, src: View) -> impl Future<Output = Result<Vec<f32>, BackendError>>;

    /// `tokens: [rows]` u32, `table: [vocab, dim]` → `out: [rows, dim]`.
    fn embedding_forward(&mut self, out: View, tokens: View, table: View, vocab: usize, dim: usize);
    /// `dtable: [vocab, dim] += scatter(dout: [rows, dim])` by `tokens: [rows]`.
    fn embedding_backward(&mut self, dtable: View, tokens: View, dout: View, vocab: usize, dim: usize);
    /// `out: [rows, n] = inp: [rows, k] · weight: [n, k]ᵀ + bias: [n]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &mut self,
        out: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        rows: usize,
        k: usize,
        n: usize,
    );
    /// `dinp: [rows, k] = dout: [rows, n] · weight: [n, k]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_input(&mut self, dinp: View, dout: View, weight: View, rows: usize, k: usize, n: usize);
    /// `dweight: [n, k] += dout: [rows, n]ᵀ · inp: [rows, k]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_weight(&mut self, dweight: View, dout: View, inp: View, rows: usize, k: usize, n: usize);
    /// `dbias: [n] += Σ_rows dout: [rows, n]`.
    fn bias_backward(&mut self, dbias: View, dout: View, rows: usize, n: usize);
    /// `out = gelu(inp)`, elementwise, equal lengths.
    fn gelu_forward(&mut self, out: View, inp: View);
    /// `dinp = gelu'(inp) · dout`, elementwise, equal lengths.
    fn gelu_backward(&mut self, dinp: View, inp: View, dout: View);
    /// `logits: [rows, vocab]`, `targets: [rows]` → `probs: [rows, vocab]`, `losses: [rows]`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_forward(
        &mut self,
        probs: View,
        losses: View,
        logits: View,
        targets: View,
        rows: usize,
        vocab: usize,
    );
    /// `dlogits: [rows, vocab] = (probs − onehot(targets)) / rows`.
    fn softmax_xent_backward(&mut self, dlogits: View, probs: View, targets: View, rows: usize, vocab: usize);
    /// `out: [1] = mean(values)`, in a fixed reduction order.
    fn mean(&mut self, out: View, values: View);
    /// One AdamW update of `params` from `grads`, with moments `m`, `v` (equal lengths).
    fn adamw(&mut self, params: View, grads: View, m: View, v: View, h: AdamW);
}

/// Panics with a message naming the op when a view's length is not what its shape says.
/// Shapes come from the model config, never from the network, so a mismatch is a bug.
pub fn check_len(op: &str, name: &str, view: View, expected: usize) {
    assert!(view.len == expected, "{op}: `{name}` has {} elements, its shape needs {expected}", view.len);
}

/// Panics when an op's output buffer is also one of its inputs (see the module docs).
pub fn check_distinct(op: &str, out: View, inputs: &[View]) {
    for input in inputs {
        assert!(input.buf != out.buf, "{op}: output and input share buffer {:?}", out.buf);
    }
}

/// Shape checks shared by every backend, one function per op, named after the op.
pub mod checks {
    use super::{View, check_distinct, check_len};

    /// See [`super::Backend::embedding_forward`].
    pub fn embedding_forward(out: View, tokens: View, table: View, vocab: usize, dim: usize) {
        check_len("embedding_forward", "out", out, tokens.len * dim);
        check_len("embedding_forward", "table", table, vocab * dim);
        check_distinct("embedding_forward", out, &[tokens, table]);
    }

    /// See [`super::Backend::embedding_backward`].
    pub fn embedding_backward(dtable: View, tokens: View, dout: View, vocab: usize, dim: usize) {
        check_len("embedding_backward", "dout", dout, tokens.len * dim);
        check_len("embedding_backward", "dtable", dtable, vocab * dim);
        check_distinct("embedding_backward", dtable, &[tokens, dout]);
    }

    /// See [`super::Backend::matmul_forward`].
    pub fn matmul_forward(out: View, inp: View, weight: View, bias: Option<View>, rows: usize, k: usize, n: usize) {
        check_len("matmul_forward", "out", out, rows * n);
        check_len("matmul_forward", "inp", inp, rows * k);
        check_len("matmul_forward", "weight", weight, n * k);
        if let Some(b) = bias {
            check_len("matmul_forward", "bias", b, n);
            check_distinct("matmul_forward", out, &[b]);
        }
        check_distinct("matmul_forward", out, &[inp, weight]);
    }

    /// See [`super::Backend::matmul_backward_input`].
    pub fn matmul_backward_input(dinp: View, dout: View, weight: View, rows: usize, k: usize, n: usize) {
        check_len("matmul_backward_input", "dinp", dinp, rows * k);
        check_len("matmul_backward_input", "dout", dout, rows * n);
        check_len("matmul_backward_input", "weight", weight, n * k);
        check_distinct("matmul_backward_input", dinp, &[dout, weight]);
    }

    /// See [`super::Backend::matmul_backward_weight`].
    pub fn matmul_backward_weight(dweight: View, dout: View, inp: View, rows: usize, k: usize, n: usize) {
        check_len("matmul_backward_weight", "dweight", dweight, n * k);
        check_len("matmul_backward_weight", "dout", dout, rows * n);
        check_len("matmul_backward_weight", "inp", inp, rows * k);
        check_distinct("matmul_backward_weight", dweight, &[dout, inp]);
    }

    /// See [`super::Backend::bias_backward`].
    pub fn bias_backward(dbias: View, dout: View, rows: usize, n: usize) {
        check_len("bias_backward", "dbias", dbias, n);
        check_len("bias_backward", "dout", dout, rows * n);
        check_distinct("bias_backward", dbias, &[dout]);
    }

    /// See [`super::Backend::gelu_forward`].
    pub fn gelu_forward(out: View, inp: View) {
        check_len("gelu_forward", "out", out, inp.len);
        check_distinct("gelu_forward", out, &[inp]);
    }

    /// See [`super::Backend::gelu_backward`].
    pub fn gelu_backward(dinp: View, inp: View, dout: View) {
        check_len("gelu_backward", "dinp", dinp, inp.len);
        check_len("gelu_backward", "dout", dout, inp.len);
        check_distinct("gelu_backward", dinp, &[inp, dout]);
    }

    /// See [`super::Backend::softmax_xent_forward`].
    pub fn softmax_xent_forward(probs: View, losses: View, logits: View, targets: View, rows: usize, vocab: usize) {
        check_len("softmax_xent_forward", "probs", probs, rows * vocab);
        check_len("softmax_xent_forward", "losses", losses, rows);
        check_len("softmax_xent_forward", "logits", logits, rows * vocab);
        check_len("softmax_xent_forward", "targets", targets, rows);
        check_distinct("softmax_xent_forward", probs, &[logits, targets, losses]);
        check_distinct("softmax_xent_forward", losses, &[logits, targets]);
    }

    /// See [`super::Backend::softmax_xent_backward`].
    pub fn softmax_xent_backward(dlogits: View, probs: View, targets: View, rows: usize, vocab: usize) {
        check_len("softmax_xent_backward", "dlogits", dlogits, rows * vocab);
        check_len("softmax_xent_backward", "probs", probs, rows * vocab);
        check_len("softmax_xent_backward", "targets", targets, rows);
        check_distinct("softmax_xent_backward", dlogits, &[probs, targets]);
    }

    /// See [`super::Backend::mean`].
    pub fn mean(out: View, values: View) {
        check_len("mean", "out", out, 1);
        check_distinct("mean", out, &[values]);
    }

    /// See [`super::Backend::adamw`].
    pub fn adamw(params: View, grads: View, m: View, v: View) {
        for (name, view) in [("grads", grads), ("m", m), ("v", v)] {
            check_len("adamw", name, view, params.len);
        }
        check_distinct("adamw", params, &[grads, m, v]);
        check_distinct("adamw", m, &[grads, v]);
        check_distinct("adamw", v, &[grads]);
    }
}
