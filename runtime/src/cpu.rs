//! The CPU reference backend: every op runs at once through [`crate::ops`].

use std::future::Future;
use std::sync::Arc;

use crate::backend::{Backend, BackendError, BufId, DeviceInfo, View, checks};
use crate::codec::{self, CodecConfig};
use crate::ops::{self, AdamW, DropoutMask};

/// One buffer's contents.
enum Storage {
    F32(Vec<f32>),
    U32(Vec<u32>),
    /// f32 values shared with the caller ([`CpuBackend::share`]), copied on first write.
    Shared(Arc<Vec<f32>>),
}

/// Runs each op immediately on the host, single-threaded and deterministic.
#[derive(Default)]
pub struct CpuBackend {
    buffers: Vec<Storage>,
}

impl CpuBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn f32(&self, v: View) -> &[f32] {
        match &self.buffers[v.buf.0 as usize] {
            Storage::F32(data) => &data[v.offset..v.offset + v.len],
            Storage::Shared(data) => &data[v.offset..v.offset + v.len],
            Storage::U32(_) => panic!("buffer {:?} holds u32, an f32 view was asked", v.buf),
        }
    }

    /// The f32 values of `v`, borrowed.
    pub fn view(&self, v: View) -> &[f32] {
        self.f32(v)
    }

    /// Elements (4 bytes each) in every buffer allocated so far.
    pub fn allocated(&self) -> usize {
        self.buffers
            .iter()
            .map(|b| match b {
                Storage::F32(values) => values.len(),
                Storage::U32(values) => values.len(),
                Storage::Shared(values) => values.len(),
            })
            .sum()
    }

    /// Makes the whole buffer `v` hold `data` (its length) without copying it: reads see
    /// `data`, and the first write copies it (the caller's stays as it was). The buffer's
    /// own values are dropped.
    pub fn share(&mut self, v: View, data: Arc<Vec<f32>>) {
        let len = match &self.buffers[v.buf.0 as usize] {
            Storage::F32(values) => values.len(),
            Storage::Shared(values) => values.len(),
            Storage::U32(_) => panic!("buffer {:?} holds u32, f32 values were shared into it", v.buf),
        };
        assert!(v.offset == 0 && v.len == len && data.len() == len, "a shared buffer is replaced whole");
        self.buffers[v.buf.0 as usize] = Storage::Shared(data);
    }

    fn u32(&self, v: View) -> &[u32] {
        match &self.buffers[v.buf.0 as usize] {
            Storage::U32(data) => &data[v.offset..v.offset + v.len],
            Storage::F32(_) | Storage::Shared(_) => panic!("buffer {:?} holds f32, a u32 view was asked", v.buf),
        }
    }

    /// Moves an f32 buffer out of the table (a placeholder stays until [`Self::put`]);
    /// a shared one is copied unless this backend holds its last reference.
    fn take(&mut self, buf: BufId) -> Vec<f32> {
        match std::mem::replace(&mut self.buffers[buf.0 as usize], Storage::U32(Vec::new())) {
            Storage::F32(data) => data,
            Storage::Shared(data) => Arc::unwrap_or_clone(data),
            Storage::U32(_) => panic!("buffer {buf:?} holds u32, an f32 output was asked"),
        }
    }

    fn put(&mut self, buf: BufId, data: Vec<f32>) {
        self.buffers[buf.0 as usize] = Storage::F32(data);
    }

    /// Lends `out`'s slice to `f` alongside `self`, whose other buffers `f` reads as
    /// inputs; the aliasing rule guarantees the inputs are elsewhere.
    fn with_out(&mut self, out: View, f: impl FnOnce(&Self, &mut [f32])) {
        let mut data = self.take(out.buf);
        f(self, &mut data[out.offset..out.offset + out.len]);
        self.put(out.buf, data);
    }

    fn push(&mut self, storage: Storage, len: usize) -> View {
        self.buffers.push(storage);
        View { buf: BufId(self.buffers.len() as u32 - 1), offset: 0, len }
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> DeviceInfo {
        // The wasm bundle is built twice, with and without 128-bit SIMD (`www/wasm.js`).
        let simd = if cfg!(target_feature = "simd128") { ", simd128" } else { "" };
        DeviceInfo {
            kind: "cpu".into(),
            adapter: format!("CPU reference ({}{simd})", std::env::consts::ARCH),
            software: true,
        }
    }

    fn memory_limit(&self) -> Option<u64> {
        cfg!(target_arch = "wasm32").then_some(4 << 30)
    }

    fn alloc(&mut self, len: usize, _what: &str) -> Result<View, BackendError> {
        Ok(self.push(Storage::F32(vec![0.0; len]), len))
    }

    fn alloc_u32(&mut self, len: usize, _what: &str) -> Result<View, BackendError> {
        Ok(self.push(Storage::U32(vec![0; len]), len))
    }

    fn write(&mut self, dst: View, data: &[f32]) {
        let storage = &mut self.buffers[dst.buf.0 as usize];
        if let Storage::Shared(shared) = storage
            && dst.offset == 0
            && dst.len == shared.len()
        {
            // Overwritten whole: no need to copy the shared values first.
            *storage = Storage::F32(data.to_vec());
            return;
        }
        self.with_out(dst, |_, out| out.copy_from_slice(data));
    }

    fn write_u32(&mut self, dst: View, data: &[u32]) {
        match &mut self.buffers[dst.buf.0 as usize] {
            Storage::U32(buf) => buf[dst.offset..dst.offset + dst.len].copy_from_slice(data),
            Storage::F32(_) | Storage::Shared(_) => panic!("buffer {:?} holds f32, u32 data was written", dst.buf),
        }
    }

    fn zero(&mut self, dst: View) {
        self.with_out(dst, |_, out| out.fill(0.0));
    }

    fn flush(&mut self) {}

    fn read(&mut self, src: View) -> impl Future<Output = Result<Vec<f32>, BackendError>> {
        std::future::ready(Ok(self.f32(src).to_vec()))
    }

    fn embedding_forward(&mut self, out: View, tokens: View, table: View, vocab: usize, dim: usize) {
        checks::embedding_forward(out, tokens, table, vocab, dim);
        self.with_out(out, |s, o| ops::embedding_forward(o, s.u32(tokens), s.f32(table), vocab, dim));
    }

    fn embedding_backward(&mut self, dtable: View, tokens: View, dout: View, vocab: usize, dim: usize) {
        checks::embedding_backward(dtable, tokens, dout, vocab, dim);
        self.with_out(dtable, |s, o| ops::embedding_backward(o, s.u32(tokens), s.f32(dout), vocab, dim));
    }

    fn matmul_forward(
        &mut self,
        out: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        rows: usize,
        k: usize,
        n: usize,
    ) {
        checks::matmul_forward(out, inp, weight, bias, rows, k, n);
        self.with_out(out, |s, o| {
            ops::matmul_forward(o, s.f32(inp), s.f32(weight), bias.map(|b| s.f32(b)), rows, k, n)
        });
    }

    fn matmul_backward_input(&mut self, dinp: View, dout: View, weight: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_input(dinp, dout, weight, rows, k, n);
        self.with_out(dinp, |s, o| ops::matmul_backward_input(o, s.f32(dout), s.f32(weight), rows, k, n));
    }

    fn matmul_backward_weight(&mut self, dweight: View, dout: View, inp: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_weight(dweight, dout, inp, rows, k, n);
        self.with_out(dweight, |s, o| ops::matmul_backward_weight(o, s.f32(dout), s.f32(inp), rows, k, n));
    }

    fn bias_backward(&mut self, dbias: View, dout: View, rows: usize, n: usize) {
        checks::bias_backward(dbias, dout, rows, n);
        self.with_out(dbias, |s, o| ops::bias_backward(o, s.f32(dout), rows, n));
    }

    fn gelu_forward(&mut self, out: View, inp: View) {
        checks::gelu_forward(out, inp);
        self.with_out(out, |s, o| ops::gelu_forward(o, s.f32(inp)));
    }

    fn gelu_backward(&mut self, dinp: View, inp: View, dout: View) {
        checks::gelu_backward(dinp, inp, dout);
        self.with_out(dinp, |s, o| ops::gelu_backward(o, s.f32(inp), s.f32(dout)));
    }

    fn softmax_xent_forward(
        &mut self,
        probs: View,
        losses: View,
        logits: View,
        targets: View,
        rows: usize,
        vocab: usize,
    ) {
        checks::softmax_xent_forward(probs, losses, logits, targets, rows, vocab);
        let mut row_losses = vec![0.0; rows];
        self.with_out(probs, |s, p| {
            ops::softmax_xent_forward(p, &mut row_losses, s.f32(logits), s.u32(targets), rows, vocab)
        });
        self.write(losses, &row_losses);
    }

    fn softmax_xent_backward(
        &mut self,
        dlogits: View,
        probs: View,
        targets: View,
        rows: usize,
        vocab: usize,
        divisor: usize,
    ) {
        checks::softmax_xent_backward(dlogits, probs, targets, rows, vocab);
        self.with_out(dlogits, |s, o| {
            ops::softmax_xent_backward(o, s.f32(probs), s.u32(targets), rows, vocab, divisor)
        });
    }

    fn mean(&mut self, out: View, values: View) {
        checks::mean(out, values);
        self.with_out(out, |s, o| o[0] = ops::mean(s.f32(values)));
    }

    fn encoder_forward(&mut self, out: View, tokens: View, wte: View, wpe: View, t: usize, c: usize, vocab: usize) {
        checks::encoder_forward(out, tokens, wte, wpe, t, c, vocab);
        self.with_out(out, |s, o| ops::encoder_forward(o, s.u32(tokens), s.f32(wte), s.f32(wpe), t, c, vocab));
    }

    fn position_backward(&mut self, dwpe: View, dout: View, b: usize, t: usize, c: usize) {
        checks::position_backward(dwpe, dout, b, t, c);
        self.with_out(dwpe, |s, o| ops::position_backward(o, s.f32(dout), b, t, c));
    }

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
    ) {
        checks::layernorm_forward(out, mean, rstd, inp, weight, bias, rows, c);
        let (mut mean_data, mut rstd_data) = (self.take(mean.buf), self.take(rstd.buf));
        let (m, r) = (&mut mean_data[mean.offset..][..mean.len], &mut rstd_data[rstd.offset..][..rstd.len]);
        self.with_out(out, |s, o| {
            ops::layernorm_forward(o, m, r, s.f32(inp), s.f32(weight), bias.map(|b| s.f32(b)), rows, c)
        });
        self.put(mean.buf, mean_data);
        self.put(rstd.buf, rstd_data);
    }

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
    ) {
        checks::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, c);
        let mut dweight_data = self.take(dweight.buf);
        let dw = &mut dweight_data[dweight.offset..][..dweight.len];
        self.with_out(dinp, |s, o| {
            let (g, x, w, m, r) = (s.f32(dout), s.f32(inp), s.f32(weight), s.f32(mean), s.f32(rstd));
            ops::layernorm_backward(o, dw, None, g, x, w, m, r, rows, c)
        });
        self.put(dweight.buf, dweight_data);
        // The bias gradient is the column sum of dout, as for a linear layer.
        if let Some(db) = dbias {
            self.bias_backward(db, dout, rows, c);
        }
    }

    fn attention_forward(&mut self, out: View, att: View, qkv: View, b: usize, t: usize, c: usize, heads: usize) {
        checks::attention_forward(out, att, qkv, b, t, c, heads);
        let mut att_data = self.take(att.buf);
        let a = &mut att_data[att.offset..][..att.len];
        self.with_out(out, |s, o| ops::attention_forward(o, a, s.f32(qkv), b, t, c, heads));
        self.put(att.buf, att_data);
    }

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
    ) {
        checks::attention_backward(dqkv, scratch, dout, qkv, att, b, t, c, heads);
        self.with_out(dqkv, |s, o| ops::attention_backward(o, s.f32(dout), s.f32(qkv), s.f32(att), b, t, c, heads));
    }

    fn add(&mut self, out: View, a: View, b: View) {
        checks::add(out, a, b);
        self.with_out(out, |s, o| ops::add(o, s.f32(a), s.f32(b)));
    }

    fn scale(&mut self, out: View, inp: View, factor: f32) {
        checks::scale(out, inp);
        self.with_out(out, |s, o| ops::scale(o, s.f32(inp), factor));
    }

    fn dropout(&mut self, out: View, inp: View, mask: DropoutMask) {
        checks::dropout(out, inp);
        self.with_out(out, |s, o| ops::dropout(o, s.f32(inp), mask));
    }

    fn sum_squares(&mut self, out: View, values: View) {
        checks::sum_squares(out, values);
        self.with_out(out, |s, o| o[0] = ops::sum_squares(s.f32(values)));
    }

    fn adamw(&mut self, params: View, grads: View, m: View, v: View, grad_sumsq: View, h: AdamW) {
        checks::adamw(params, grads, m, v, grad_sumsq);
        let clip = ops::clip_factor(self.f32(grad_sumsq)[0], h.max_grad_norm);
        let (mut m_data, mut v_data) = (self.take(m.buf), self.take(v.buf));
        let (m_slice, v_slice) = (&mut m_data[m.offset..m.offset + m.len], &mut v_data[v.offset..v.offset + v.len]);
        self.with_out(params, |s, p| ops::adamw(p, s.f32(grads), m_slice, v_slice, h, clip));
        self.put(m.buf, m_data);
        self.put(v.buf, v_data);
    }

    fn pick_top_k(&mut self, picked: View, residual: View, start: View, params: View, cfg: CodecConfig) {
        checks::pick_top_k(picked, residual, start, params, &cfg);
        let mut table = self.take(picked.buf);
        let slice = &mut table[picked.offset..picked.offset + picked.len];
        self.with_out(residual, |s, r| codec::pick(slice, r, s.f32(start), s.f32(params), &cfg));
        self.put(picked.buf, table);
    }
}
