//! The GPU backend's ops: each checks its views, places them in their physical buffers
//! and records its dispatches.
//!
//! Views of activations, and of tensors no larger than a page, lie within one binding:
//! one dispatch. The others run over the pieces of a buffer made of several
//! (`pages.rs`): an elementwise op once per span; the sum of squares as partial sums, then
//! their sum; the update's top-k once per run of whole chunks, and a chunk that straddles
//! two pieces through a scratch copy; and the ops on a tensor larger than a page (the
//! tied token embedding, `[vocab, width]`) once per block of its rows: the matmuls over
//! blocks of their `n` (the LM head's logits, written with a row stride; its input
//! gradient accumulated over the blocks), the embeddings over blocks of the vocabulary.

use std::future::Future;

use super::pages::Span;
use super::{GROUP, GpuBackend, ROW_GROUP, groups, matmul_groups, w};
use crate::backend::{Backend, BackendError, DeviceInfo, Part, View, checks};
use crate::codec::{self, CodecConfig};
use crate::gpu::kernels::Kernel;
use crate::ops::{AdamW, DropoutMask};

/// The matmul kernel's flags: add the bias; accumulate into C.
const BIAS: u32 = 1;
const ACCUMULATE: u32 = 2;

/// One GEMM `C[m, n] (+)= A[m, k] · B[k, n]` through strides: `(buffer, offset, row
/// stride, column stride)` of A and B, `(buffer, offset, row stride)` of C, the bias's
/// `(buffer, offset)` when added.
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a: (u32, usize, usize, usize),
    b: (u32, usize, usize, usize),
    c: (u32, usize, usize),
    bias: Option<(u32, usize)>,
    accumulate: bool,
}

impl GpuBackend {
    fn gemm(&mut self, g: Gemm) {
        // Without a bias, binding 4 holds a stand-in that is never read (B may be f16).
        let (bias_buf, bias_off) = match g.bias {
            Some(bias) => bias,
            None => {
                let stand_in = self.scratch("no bias", 1);
                (self.at("matmul", stand_in).0, 0)
            }
        };
        let flags = if g.bias.is_some() { BIAS } else { 0 } | if g.accumulate { ACCUMULATE } else { 0 };
        let params = [
            w(g.m),
            w(g.n),
            w(g.k),
            w(g.a.1),
            w(g.a.2),
            w(g.a.3),
            w(g.b.1),
            w(g.b.2),
            w(g.b.3),
            w(g.c.1),
            w(bias_off),
            flags,
            w(g.c.2),
        ];
        self.dispatch(Kernel::Matmul, &params, &[g.c.0, g.a.0, g.b.0, bias_buf], matmul_groups(g.m, g.n));
    }

    /// The blocks of rows of a `[rows, row]` tensor view: `(first row, rows, span)`.
    fn row_blocks(&self, v: View, row: usize) -> Vec<(usize, usize, Span)> {
        self.spans(v)
            .into_iter()
            .map(|s| {
                assert!(s.at % row == 0 && s.len % row == 0, "a tensor is cut between its rows only");
                (s.at / row, s.len / row, s)
            })
            .collect()
    }

    /// One chunk of an update's selection whose values straddle two pieces: copied into
    /// scratch, selected there, its residual copied back.
    fn pick_straddling(&mut self, chunk: usize, picked: View, views: [View; 3], cfg: &CodecConfig) {
        let (c, len) = (cfg.chunk as usize, views[0].len);
        let (from, to) = (chunk * c, ((chunk + 1) * c).min(len));
        let scratch = ["topk residual", "topk start", "topk params"].map(|name| self.scratch(name, to - from));
        for (view, scratch) in views.iter().zip(&scratch) {
            let (phys, local) = self.at("pick_top_k", *scratch);
            for span in self.spans(view.slice(from, to - from)) {
                self.copy((span.phys, span.local), (phys, local + span.at), span.len);
            }
        }
        let (p, picked_off) = self.at("pick_top_k", picked);
        let words = codec::picked_words(cfg);
        let placed = scratch.map(|s| self.at("pick_top_k", s));
        self.topk(p, picked_off + chunk * words, placed, to - from, cfg);
        let (phys, local) = placed[0];
        for span in self.spans(views[0].slice(from, to - from)) {
            self.copy((phys, local + span.at), (span.phys, span.local), span.len);
        }
    }

    /// One dispatch of the top-k kernel over `len` values from the placed residual, start
    /// and params, its table from `picked_off`.
    fn topk(&mut self, picked: u32, picked_off: usize, at: [(u32, usize); 3], len: usize, cfg: &CodecConfig) {
        let words = [
            w(len),
            cfg.chunk,
            cfg.k,
            cfg.levels() as u32,
            w(picked_off),
            w(at[0].1),
            w(at[1].1),
            w(at[2].1),
            cfg.decay.to_bits(),
        ];
        let chunks = len.div_ceil(cfg.chunk as usize);
        self.dispatch(Kernel::TopK, &words, &[picked, at[0].0, at[1].0, at[2].0], groups(chunks, 1));
    }
}

impl Backend for GpuBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn binding_bytes(&self) -> Option<u64> {
        Some(self.page_bytes())
    }

    fn alloc(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.alloc_f32(len, what)
    }

    fn alloc_u32(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.alloc_f32(len, what)
    }

    fn alloc_parts(&mut self, parts: &[Part], what: &str) -> Result<View, BackendError> {
        self.alloc_of_parts(parts, what, false)
    }

    fn stores_f16(&self) -> bool {
        self.stores_f16
    }

    fn alloc_f16(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.alloc_half(len, what)
    }

    fn alloc_parts_f16(&mut self, parts: &[Part], what: &str) -> Result<View, BackendError> {
        self.alloc_of_parts(parts, what, true)
    }

    fn write(&mut self, dst: View, data: &[f32]) {
        self.write_bytes(dst, bytemuck::cast_slice(data));
    }

    fn write_u32(&mut self, dst: View, data: &[u32]) {
        self.write_bytes(dst, bytemuck::cast_slice(data));
    }

    fn zero(&mut self, dst: View) {
        self.zero_view(dst);
    }

    fn flush(&mut self) {
        self.submit();
    }

    fn read(&mut self, src: View) -> impl Future<Output = Result<Vec<f32>, BackendError>> {
        self.read_view(src)
    }

    fn embedding_forward(&mut self, out: View, tokens: View, table: View, vocab: usize, dim: usize) {
        checks::embedding_forward(out, tokens, table, vocab, dim);
        let ((o, out_off), (t, tok_off)) = (self.at("embedding_forward", out), self.at("embedding_forward", tokens));
        for (first, rows, span) in self.row_blocks(table, dim) {
            let params = [w(tokens.len), w(vocab), w(dim), w(out_off), w(tok_off), w(span.local), w(first), w(rows)];
            self.dispatch(Kernel::EmbeddingForward, &params, &[o, t, span.phys], groups(out.len, GROUP));
        }
    }

    fn embedding_backward(&mut self, dtable: View, tokens: View, dout: View, vocab: usize, dim: usize) {
        checks::embedding_backward(dtable, tokens, dout, vocab, dim);
        let ((t, tok_off), (d, dout_off)) =
            (self.at("embedding_backward", tokens), self.at("embedding_backward", dout));
        for (first, rows, span) in self.row_blocks(dtable, dim) {
            let params = [w(tokens.len), w(vocab), w(dim), w(span.local), w(tok_off), w(dout_off), w(first), w(rows)];
            self.dispatch(Kernel::EmbeddingBackward, &params, &[span.phys, t, d], groups(span.len, GROUP));
        }
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
        let ((o, out_off), (i, inp_off)) = (self.at("matmul_forward", out), self.at("matmul_forward", inp));
        let bias = bias.map(|b| self.at("matmul_forward", b));
        // C = out [rows, n]; A = inp [rows, k]; B[l, j] = weight[j, l], a block of n at a time.
        for (first, block, span) in self.row_blocks(weight, k) {
            self.gemm(Gemm {
                m: rows,
                n: block,
                k,
                a: (i, inp_off, k, 1),
                b: (span.phys, span.local, 1, k),
                c: (o, out_off + first, n),
                bias: bias.map(|(b, off)| (b, off + first)),
                accumulate: false,
            });
        }
    }

    fn matmul_backward_input(&mut self, dinp: View, dout: View, weight: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_input(dinp, dout, weight, rows, k, n);
        let ((di, dinp_off), (d, dout_off)) =
            (self.at("matmul_backward_input", dinp), self.at("matmul_backward_input", dout));
        // C = dinp [rows, k] = Σ over blocks of n: A = dout[:, block] · B = weight[block, :].
        for (index, (first, block, span)) in self.row_blocks(weight, k).into_iter().enumerate() {
            self.gemm(Gemm {
                m: rows,
                n: k,
                k: block,
                a: (d, dout_off + first, n, 1),
                b: (span.phys, span.local, k, 1),
                c: (di, dinp_off, k),
                bias: None,
                accumulate: index > 0,
            });
        }
    }

    fn matmul_backward_weight(&mut self, dweight: View, dout: View, inp: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_weight(dweight, dout, inp, rows, k, n);
        let ((d, dout_off), (i, inp_off)) =
            (self.at("matmul_backward_weight", dout), self.at("matmul_backward_weight", inp));
        // C = dweight[block, :] (accumulated); A[o, r] = dout[r, first + o]; B = inp [rows, k].
        for (first, block, span) in self.row_blocks(dweight, k) {
            self.gemm(Gemm {
                m: block,
                n: k,
                k: rows,
                a: (d, dout_off + first, 1, n),
                b: (i, inp_off, k, 1),
                c: (span.phys, span.local, k),
                bias: None,
                accumulate: true,
            });
        }
    }

    fn bias_backward(&mut self, dbias: View, dout: View, rows: usize, n: usize) {
        checks::bias_backward(dbias, dout, rows, n);
        let ((b, dbias_off), (d, dout_off)) = (self.at("bias_backward", dbias), self.at("bias_backward", dout));
        let params = [w(rows), w(n), w(dbias_off), w(dout_off)];
        self.dispatch(Kernel::BiasBackward, &params, &[b, d], groups(n, GROUP));
    }

    fn gelu_forward(&mut self, out: View, inp: View) {
        checks::gelu_forward(out, inp);
        self.each_span(&[out, inp], |be, s| {
            let params = [w(s[0].len), w(s[0].local), w(s[1].local), 0];
            be.dispatch(Kernel::GeluForward, &params, &[s[0].phys, s[1].phys], groups(s[0].len, GROUP));
        });
    }

    fn gelu_backward(&mut self, dinp: View, inp: View, dout: View) {
        checks::gelu_backward(dinp, inp, dout);
        self.each_span(&[dinp, inp, dout], |be, s| {
            let params = [w(s[0].len), w(s[0].local), w(s[1].local), w(s[2].local)];
            let buffers = [s[0].phys, s[1].phys, s[2].phys];
            be.dispatch(Kernel::GeluBackward, &params, &buffers, groups(s[0].len, GROUP));
        });
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
        let op = "softmax_xent_forward";
        let [(p, probs_off), (l, losses_off), (g, logits_off), (t, targets_off)] =
            [probs, losses, logits, targets].map(|v| self.at(op, v));
        let params = [w(rows), w(vocab), w(probs_off), w(losses_off), w(logits_off), w(targets_off)];
        self.dispatch(Kernel::XentForward, &params, &[p, g, t, l], groups(rows, 1));
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
        let op = "softmax_xent_backward";
        let [(d, dlogits_off), (p, probs_off), (t, targets_off)] = [dlogits, probs, targets].map(|v| self.at(op, v));
        let params = [w(rows), w(vocab), w(probs_off), w(divisor), w(dlogits_off), w(targets_off)];
        self.dispatch(Kernel::XentBackward, &params, &[d, p, t], groups(dlogits.len, GROUP));
    }

    fn mean(&mut self, out: View, values: View) {
        checks::mean(out, values);
        let ((o, out_off), (v, values_off)) = (self.at("mean", out), self.at("mean", values));
        let params = [w(values.len), 0, w(out_off), w(values_off)];
        self.dispatch(Kernel::Mean, &params, &[o, v], (1, 1));
    }

    fn encoder_forward(&mut self, out: View, tokens: View, wte: View, wpe: View, t: usize, c: usize, vocab: usize) {
        checks::encoder_forward(out, tokens, wte, wpe, t, c, vocab);
        let op = "encoder_forward";
        let [(o, out_off), (k, tok_off), (p, wpe_off)] = [out, tokens, wpe].map(|v| self.at(op, v));
        for (first, rows, span) in self.row_blocks(wte, c) {
            let params = [
                w(tokens.len),
                w(t),
                w(c),
                w(vocab),
                w(out_off),
                w(tok_off),
                w(span.local),
                w(wpe_off),
                w(first),
                w(rows),
            ];
            self.dispatch(Kernel::EncoderForward, &params, &[o, span.phys, p, k], groups(out.len, GROUP));
        }
    }

    fn position_backward(&mut self, dwpe: View, dout: View, b: usize, t: usize, c: usize) {
        checks::position_backward(dwpe, dout, b, t, c);
        let ((p, dwpe_off), (d, dout_off)) = (self.at("position_backward", dwpe), self.at("position_backward", dout));
        let params = [w(b * t), w(t), w(c), 0, w(dwpe_off), 0, w(dout_off), 0];
        self.dispatch(Kernel::PositionBackward, &params, &[p, d], groups(dwpe.len, GROUP));
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
        let op = "layernorm_forward";
        let b = bias.unwrap_or(weight);
        let [(o, out_off), (m, mean_off), (r, rstd_off), (i, inp_off), (g, weight_off), (bb, bias_off)] =
            [out, mean, rstd, inp, weight, b].map(|v| self.at(op, v));
        let params = [
            w(rows),
            w(c),
            w(out_off),
            w(mean_off),
            w(rstd_off),
            w(inp_off),
            w(weight_off),
            w(bias_off),
            u32::from(bias.is_some()),
        ];
        self.dispatch(Kernel::LayerNorm, &params, &[o, m, r, i, g, bb], groups(rows, ROW_GROUP));
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
        let op = "layernorm_backward";
        let [
            (di, dinp_off),
            (dw, dweight_off),
            (d, dout_off),
            (i, inp_off),
            (g, weight_off),
            (m, mean_off),
            (r, rstd_off),
        ] = [dinp, dweight, dout, inp, weight, mean, rstd].map(|v| self.at(op, v));
        // Params: rows, c, destination offset, then dout, inp, mean, rstd, weight offsets.
        let mut params = [w(rows), w(c), w(dinp_off), w(dout_off), w(inp_off), w(mean_off), w(rstd_off), w(weight_off)];
        self.dispatch(Kernel::LayerNormBackwardInput, &params, &[di, d, i, m, r, g], groups(rows, ROW_GROUP));
        params[2] = w(dweight_off);
        self.dispatch(Kernel::LayerNormBackwardWeight, &params, &[dw, d, i, m, r], groups(c, ROW_GROUP));
        if let Some(db) = dbias {
            self.bias_backward(db, dout, rows, c);
        }
    }

    fn attention_forward(&mut self, out: View, att: View, qkv: View, b: usize, t: usize, c: usize, heads: usize) {
        checks::attention_forward(out, att, qkv, b, t, c, heads);
        let [(o, out_off), (a, att_off), (q, qkv_off)] = [out, att, qkv].map(|v| self.at("attention_forward", v));
        let scale = 1.0 / ((c / heads) as f32).sqrt();
        let params = [w(b), w(t), w(c), w(heads), w(out_off), w(att_off), w(qkv_off), scale.to_bits()];
        self.dispatch(Kernel::Attention, &params, &[o, a, q], groups(b * heads * t, ROW_GROUP));
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
        let op = "attention_backward";
        let [(dq, dqkv_off), (s, scratch_off), (d, dout_off), (q, qkv_off), (a, att_off)] =
            [dqkv, scratch, dout, qkv, att].map(|v| self.at(op, v));
        let scale = 1.0 / ((c / heads) as f32).sqrt();
        let params = [
            w(b),
            w(t),
            w(c),
            w(heads),
            w(dqkv_off),
            w(scratch_off),
            w(dout_off),
            w(qkv_off),
            w(att_off),
            scale.to_bits(),
        ];
        let rows = groups(b * heads * t, ROW_GROUP);
        self.dispatch(Kernel::AttentionBackwardQueries, &params, &[dq, s, d, q, a], rows);
        self.dispatch(Kernel::AttentionBackwardKeysValues, &params, &[dq, s, d, q, a], rows);
    }

    fn add(&mut self, out: View, a: View, b: View) {
        checks::add(out, a, b);
        self.each_span(&[out, a, b], |be, s| {
            let params = [w(s[0].len), w(s[0].local), w(s[1].local), w(s[2].local)];
            be.dispatch(Kernel::Add, &params, &[s[0].phys, s[1].phys, s[2].phys], groups(s[0].len, GROUP));
        });
    }

    fn scale(&mut self, out: View, inp: View, factor: f32) {
        checks::scale(out, inp);
        self.each_span(&[out, inp], |be, s| {
            let params = [w(s[0].len), w(s[0].local), w(s[1].local), 0, factor.to_bits()];
            be.dispatch(Kernel::Scale, &params, &[s[0].phys, s[1].phys], groups(s[0].len, GROUP));
        });
    }

    fn dropout(&mut self, out: View, inp: View, mask: DropoutMask) {
        checks::dropout(out, inp);
        self.each_span(&[out, inp], |be, s| {
            let (len, dst, src, at) = (w(s[0].len), w(s[0].local), w(s[1].local), w(s[0].at));
            let params = [len, dst, src, 0, mask.factor.to_bits(), mask.threshold, mask.salt, at];
            be.dispatch(Kernel::Dropout, &params, &[s[0].phys, s[1].phys], groups(s[0].len, GROUP));
        });
    }

    fn sum_squares(&mut self, out: View, values: View) {
        checks::sum_squares(out, values);
        let (o, out_off) = self.at("sum_squares", out);
        let spans = self.spans(values);
        if let [span] = spans.as_slice() {
            let params = [w(span.len), 0, w(out_off), w(span.local)];
            self.dispatch(Kernel::SumSquares, &params, &[o, span.phys], (1, 1));
            return;
        }
        // Over several pieces: each piece's sum, then their sum, in order.
        let partials = self.scratch("partial sums", spans.len());
        let (p, partials_off) = self.at("sum_squares", partials);
        for (i, span) in spans.iter().enumerate() {
            let params = [w(span.len), 0, w(partials_off + i), w(span.local)];
            self.dispatch(Kernel::SumSquares, &params, &[p, span.phys], (1, 1));
        }
        let params = [w(spans.len()), 0, w(out_off), w(partials_off)];
        self.dispatch(Kernel::Sum, &params, &[o, p], (1, 1));
    }

    fn adamw(&mut self, params: View, grads: View, m: View, v: View, grad_sumsq: View, h: AdamW) {
        checks::adamw(params, grads, m, v, grad_sumsq);
        let (bc1, bc2) = h.bias_corrections();
        let (s, sumsq_off) = self.at("adamw", grad_sumsq);
        self.each_span(&[params, grads, m, v], |be, x| {
            let words = [
                w(x[0].len),
                w(x[0].local),
                w(x[1].local),
                w(x[2].local),
                w(x[3].local),
                w(sumsq_off),
                h.lr.to_bits(),
                h.beta1.to_bits(),
                h.beta2.to_bits(),
                h.eps.to_bits(),
                h.weight_decay.to_bits(),
                bc1.to_bits(),
                bc2.to_bits(),
                h.max_grad_norm.to_bits(),
            ];
            let buffers = [x[0].phys, x[1].phys, x[2].phys, x[3].phys, s];
            be.dispatch(Kernel::AdamW, &words, &buffers, groups(x[0].len, GROUP));
        });
    }

    fn pick_top_k(&mut self, picked: View, residual: View, start: View, params: View, cfg: CodecConfig) {
        checks::pick_top_k(picked, residual, start, params, &cfg);
        let (p, picked_off) = self.at("pick_top_k", picked);
        let (c, len, words) = (cfg.chunk as usize, residual.len, codec::picked_words(&cfg));
        let views = [residual, start, params];
        // Runs of whole chunks within one piece of every view; the chunks that straddle a
        // cut between pieces, one at a time through scratch.
        let mut cuts: Vec<usize> = views
            .iter()
            .flat_map(|v| self.logical[v.buf.0 as usize].cuts(v.offset, v.len).collect::<Vec<_>>())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let straddling: Vec<usize> = cuts.iter().filter(|&&cut| cut % c != 0).map(|&cut| cut / c).collect();
        let mut bounds: Vec<usize> = cuts.iter().map(|&cut| cut.div_ceil(c)).collect();
        bounds.extend(straddling.iter().copied());
        bounds.extend([0, len.div_ceil(c)]);
        bounds.sort_unstable();
        bounds.dedup();
        for pair in bounds.windows(2) {
            let (first, end) = (pair[0], pair[1]);
            if straddling.contains(&first) {
                // This run is the straddling chunk alone.
                self.pick_straddling(first, picked, views, &cfg);
                continue;
            }
            let (from, to) = (first * c, (end * c).min(len));
            let at = views.map(|v| self.at("pick_top_k", v.slice(from, to - from)));
            self.topk(p, picked_off + first * words, at, to - from, &cfg);
        }
    }
}
