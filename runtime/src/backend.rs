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

use crate::codec::CodecConfig;
use crate::ops::{AdamW, DropoutMask};

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

/// One tensor of a buffer made of several ([`Backend::alloc_parts`]): `len` elements in
/// rows of `row` (its last dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Elements.
    pub len: usize,
    /// Elements per row; `len` is a multiple.
    pub row: usize,
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
    #[error("{what} needs {needed} bytes but the device's limit `{limit}` is {allowed}")]
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
    /// The most bytes one buffer may bind (a GPU's `maxStorageBufferBindingSize`, or the
    /// page it cuts larger buffers into); `None` where there is no such bound.
    fn binding_bytes(&self) -> Option<u64> {
        None
    }
    /// The most bytes this backend's buffers may take in all, where it is known: the CPU
    /// backend in wasm32 has 4 GiB of linear memory; a WebGPU device does not say.
    fn memory_limit(&self) -> Option<u64> {
        None
    }
    /// A new zeroed buffer of `len` f32 elements, returned as a view of all of it.
    fn alloc(&mut self, len: usize, what: &str) -> Result<View, BackendError>;
    /// A new zeroed buffer of `len` u32 elements (token ids).
    fn alloc_u32(&mut self, len: usize, what: &str) -> Result<View, BackendError>;
    /// A new zeroed buffer of `parts` one after the other (`Σ len` f32 elements), as a view
    /// of all of it: the parameters, their gradients and moments. A backend whose bindings
    /// are bounded keeps each part within one, and cuts a part larger than one only
    /// between rows (see `gpu`); by default, one buffer.
    fn alloc_parts(&mut self, parts: &[Part], what: &str) -> Result<View, BackendError> {
        self.alloc(parts.iter().map(|p| p.len).sum(), what)
    }
    /// Whether [`Backend::alloc_f16`] and [`Backend::alloc_parts_f16`] give buffers of
    /// f16 values (mixed precision); by default they give f32 ones.
    fn stores_f16(&self) -> bool {
        false
    }
    /// A new buffer of `len` elements that holds f16 values where [`Backend::stores_f16`],
    /// else f32 ([`Backend::alloc`]). The ops read and write it as f32 (rounded to f16 on
    /// the way in); the host never does.
    fn alloc_f16(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.alloc(len, what)
    }
    /// [`Backend::alloc_parts`], of f16 values where [`Backend::stores_f16`].
    fn alloc_parts_f16(&mut self, parts: &[Part], what: &str) -> Result<View, BackendError> {
        self.alloc_parts(parts, what)
    }
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
    /// `dlogits: [rows, vocab] = (probs − onehot(targets)) / divisor`: the gradient of the
    /// summed loss divided by `divisor`, the positions of the whole batch (`rows`, or more
    /// when these rows are one microbatch of it).
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_backward(
        &mut self,
        dlogits: View,
        probs: View,
        targets: View,
        rows: usize,
        vocab: usize,
        divisor: usize,
    );
    /// `out: [1] = mean(values)`, in a fixed reduction order.
    fn mean(&mut self, out: View, values: View);
    /// `out: [b·t, c] = wte[tokens] + wpe[position]`, `tokens: [b·t]` u32, `wte: [vocab, c]`, `wpe: [≥t, c]`.
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward(&mut self, out: View, tokens: View, wte: View, wpe: View, t: usize, c: usize, vocab: usize);
    /// `dwpe: [t, c] += Σ_b dout: [b, t, c]`.
    fn position_backward(&mut self, dwpe: View, dout: View, b: usize, t: usize, c: usize);
    /// LayerNorm of `inp: [rows, c]` with `weight, bias: [c]` → `out: [rows, c]`, `mean, rstd: [rows]`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &mut self,
        out: View,
        mean: View,
        rstd: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        rows: usize,
        c: usize,
    );
    /// LayerNorm backward: `dinp: [rows, c]` (overwritten), `dweight, dbias: [c]` (accumulated).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &mut self,
        dinp: View,
        dweight: View,
        dbias: Option<View>,
        dout: View,
        inp: View,
        weight: View,
        mean: View,
        rstd: View,
        rows: usize,
        c: usize,
    );
    /// Causal attention: `qkv: [b, t, 3c]` → `out: [b, t, c]`, `att: [b, heads, t, t]`.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(&mut self, out: View, att: View, qkv: View, b: usize, t: usize, c: usize, heads: usize);
    /// Attention backward: `dqkv: [b, t, 3c]` (overwritten) from `dout: [b, t, c]`; `scratch: [b, heads, t, t]`
    /// holds the score gradients between the two passes a GPU needs.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &mut self,
        dqkv: View,
        scratch: View,
        dout: View,
        qkv: View,
        att: View,
        b: usize,
        t: usize,
        c: usize,
        heads: usize,
    );
    /// `out = a + b`, elementwise, equal lengths.
    fn add(&mut self, out: View, a: View, b: View);
    /// `out = factor · inp`, elementwise, equal lengths.
    fn scale(&mut self, out: View, inp: View, factor: f32);
    /// `out[i] = mask.factor · inp[i]` where `mask` keeps element `i`, else 0, equal lengths
    /// (see [`crate::ops::dropout`]):
    /// dropout, or, applied to an output's gradient with the same mask, its backward pass.
    fn dropout(&mut self, out: View, inp: View, mask: DropoutMask);
    /// `out: [1] = Σ values²`, in a fixed reduction order.
    fn sum_squares(&mut self, out: View, values: View);
    /// One AdamW update of `params` from `grads`, with moments `m`, `v` (equal lengths),
    /// clipping by the global norm whose square is in `grad_sumsq: [1]` (see
    /// [`crate::ops::clip_factor`]).
    fn adamw(&mut self, params: View, grads: View, m: View, v: View, grad_sumsq: View, h: AdamW);
    /// Error feedback and top-k selection of an update (see [`crate::codec::pick`]):
    /// `residual += start − params` over the model's values (equal lengths), and
    /// `picked: [codec::picked_len]` gets each chunk's scale, count, indices and levels,
    /// as f32 bit patterns. Only `picked` needs reading back to send the update.
    fn pick_top_k(&mut self, picked: View, residual: View, start: View, params: View, cfg: CodecConfig);
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

    /// See [`super::Backend::encoder_forward`].
    pub fn encoder_forward(out: View, tokens: View, wte: View, wpe: View, t: usize, c: usize, vocab: usize) {
        check_len("encoder_forward", "out", out, tokens.len * c);
        check_len("encoder_forward", "wte", wte, vocab * c);
        assert!(wpe.len >= t * c && tokens.len.is_multiple_of(t), "encoder_forward: wpe or tokens do not fit t = {t}");
        check_distinct("encoder_forward", out, &[tokens, wte, wpe]);
    }

    /// See [`super::Backend::position_backward`].
    pub fn position_backward(dwpe: View, dout: View, b: usize, t: usize, c: usize) {
        check_len("position_backward", "dwpe", dwpe, t * c);
        check_len("position_backward", "dout", dout, b * t * c);
        check_distinct("position_backward", dwpe, &[dout]);
    }

    /// See [`super::Backend::layernorm_forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_forward(
        out: View,
        mean: View,
        rstd: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        rows: usize,
        c: usize,
    ) {
        check_len("layernorm_forward", "out", out, rows * c);
        check_len("layernorm_forward", "inp", inp, rows * c);
        check_len("layernorm_forward", "mean", mean, rows);
        check_len("layernorm_forward", "rstd", rstd, rows);
        check_len("layernorm_forward", "weight", weight, c);
        let inputs = [inp, weight, bias.unwrap_or(weight)];
        for o in [out, mean, rstd] {
            check_distinct("layernorm_forward", o, &inputs);
        }
        assert!(
            out.buf != mean.buf && out.buf != rstd.buf && mean.buf != rstd.buf,
            "layernorm_forward: outputs share a buffer"
        );
    }

    /// See [`super::Backend::layernorm_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        dinp: View,
        dweight: View,
        dbias: Option<View>,
        dout: View,
        inp: View,
        weight: View,
        mean: View,
        rstd: View,
        rows: usize,
        c: usize,
    ) {
        check_len("layernorm_backward", "dinp", dinp, rows * c);
        check_len("layernorm_backward", "dout", dout, rows * c);
        check_len("layernorm_backward", "dweight", dweight, c);
        let inputs = [dout, inp, weight, mean, rstd];
        check_distinct("layernorm_backward", dinp, &inputs);
        check_distinct("layernorm_backward", dweight, &inputs);
        if let Some(db) = dbias {
            check_len("layernorm_backward", "dbias", db, c);
            check_distinct("layernorm_backward", db, &inputs);
        }
    }

    /// See [`super::Backend::attention_forward`].
    pub fn attention_forward(out: View, att: View, qkv: View, b: usize, t: usize, c: usize, heads: usize) {
        assert!(
            heads > 0 && c.is_multiple_of(heads),
            "attention_forward: {c} channels do not split into {heads} heads"
        );
        check_len("attention_forward", "out", out, b * t * c);
        check_len("attention_forward", "att", att, b * heads * t * t);
        check_len("attention_forward", "qkv", qkv, b * t * 3 * c);
        check_distinct("attention_forward", out, &[qkv, att]);
        check_distinct("attention_forward", att, &[qkv]);
    }

    /// See [`super::Backend::attention_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        dqkv: View,
        scratch: View,
        dout: View,
        qkv: View,
        att: View,
        b: usize,
        t: usize,
        c: usize,
        heads: usize,
    ) {
        attention_forward(dout, att, qkv, b, t, c, heads);
        check_len("attention_backward", "dqkv", dqkv, b * t * 3 * c);
        check_len("attention_backward", "scratch", scratch, b * heads * t * t);
        check_distinct("attention_backward", dqkv, &[dout, qkv, att, scratch]);
        check_distinct("attention_backward", scratch, &[dout, qkv, att]);
    }

    /// See [`super::Backend::add`].
    pub fn add(out: View, a: View, b: View) {
        check_len("add", "a", a, out.len);
        check_len("add", "b", b, out.len);
        check_distinct("add", out, &[a, b]);
    }

    /// See [`super::Backend::scale`].
    pub fn scale(out: View, inp: View) {
        check_len("scale", "inp", inp, out.len);
        check_distinct("scale", out, &[inp]);
    }

    /// See [`super::Backend::dropout`].
    pub fn dropout(out: View, inp: View) {
        check_len("dropout", "inp", inp, out.len);
        check_distinct("dropout", out, &[inp]);
    }

    /// See [`super::Backend::sum_squares`].
    pub fn sum_squares(out: View, values: View) {
        check_len("sum_squares", "out", out, 1);
        check_distinct("sum_squares", out, &[values]);
    }

    /// See [`super::Backend::pick_top_k`].
    pub fn pick_top_k(picked: View, residual: View, start: View, params: View, cfg: &crate::codec::CodecConfig) {
        cfg.validate().expect("a valid codec config");
        check_len("pick_top_k", "start", start, residual.len);
        check_len("pick_top_k", "params", params, residual.len);
        check_len("pick_top_k", "picked", picked, crate::codec::picked_len(cfg, residual.len));
        check_distinct("pick_top_k", residual, &[picked, start, params]);
        check_distinct("pick_top_k", picked, &[start, params]);
    }

    /// See [`super::Backend::adamw`].
    pub fn adamw(params: View, grads: View, m: View, v: View, grad_sumsq: View) {
        for (name, view) in [("grads", grads), ("m", m), ("v", v)] {
            check_len("adamw", name, view, params.len);
        }
        check_len("adamw", "grad_sumsq", grad_sumsq, 1);
        check_distinct("adamw", params, &[grads, m, v, grad_sumsq]);
        check_distinct("adamw", m, &[grads, v, grad_sumsq]);
        check_distinct("adamw", v, &[grads, grad_sumsq]);
    }
}
