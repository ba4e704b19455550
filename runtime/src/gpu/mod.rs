//! The WebGPU backend (wgpu): WGSL kernels from `shaders/`, run natively (Vulkan,
//! Metal, DX12) or in the browser (WebGPU).
//!
//! Ops are recorded into one command encoder, each as a compute pass, and submitted
//! together by [`Backend::flush`]: a training step is one queue submission. Each
//! dispatch within a submission uses its own *slot*: a 64-byte uniform buffer with the
//! op's sizes and offsets, and a bind group cached for as long as the slot sees the same
//! kernel and buffers, so a steady training loop creates no GPU objects at all.

mod kernels;

use std::collections::HashMap;
use std::future::Future;

use crate::backend::{Backend, BackendError, BufId, DeviceInfo, View, checks};
use crate::codec::CodecConfig;
use crate::ops::AdamW;
use kernels::{Kernel, Pipelines};

/// Bytes of each op's uniform parameter block (16 words).
const PARAM_BYTES: u64 = 64;
/// Threads per workgroup of the 1-D elementwise kernels.
const GROUP: u32 = 256;
/// Threads per workgroup of the one-thread-per-row kernels (layernorm, attention).
const ROW_GROUP: u32 = 64;
/// Workgroups per dispatch dimension that WebGPU guarantees.
const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// One dispatch position within a submission.
struct Slot {
    uniform: wgpu::Buffer,
    bound: Option<(Kernel, Vec<BufId>, wgpu::BindGroup)>,
}

/// A wgpu device with crowdgrad's kernels compiled.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    limits: wgpu::Limits,
    pipelines: Pipelines,
    buffers: Vec<wgpu::Buffer>,
    encoder: Option<wgpu::CommandEncoder>,
    slots: Vec<Slot>,
    next_slot: usize,
    staging: HashMap<u64, wgpu::Buffer>,
}

impl GpuBackend {
    /// Opens the best adapter: WebGPU in the browser, Vulkan/Metal/DX12 natively.
    /// Fails (never falls back silently) when there is none.
    pub async fn new() -> Result<Self, BackendError> {
        // In the browser only WebGPU exists; natively, the primary APIs. Never WebGL:
        // it has no compute shaders.
        let backends =
            if cfg!(target_arch = "wasm32") { wgpu::Backends::BROWSER_WEBGPU } else { wgpu::Backends::PRIMARY };
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| BackendError::NoDevice(e.to_string()))?;
        let adapter_info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("crowdgrad"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: Default::default(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: Default::default(),
            })
            .await
            .map_err(|e| BackendError::NoDevice(e.to_string()))?;
        let pipelines = Pipelines::new(&device);
        let name = adapter_info.name.to_lowercase();
        let info = DeviceInfo {
            kind: backend_kind(adapter_info.backend).into(),
            adapter: if adapter_info.name.is_empty() { "WebGPU adapter".into() } else { adapter_info.name.clone() },
            software: adapter_info.device_type == wgpu::DeviceType::Cpu
                || name.contains("llvmpipe")
                || name.contains("swiftshader"),
        };
        Ok(GpuBackend {
            device,
            queue,
            info,
            limits,
            pipelines,
            buffers: Vec::new(),
            encoder: None,
            slots: Vec::new(),
            next_slot: 0,
            staging: HashMap::new(),
        })
    }

    /// Compiles every kernel now rather than on its first use. In the browser this
    /// returns at once and the GPU process compiles while the tab goes on (connects and
    /// downloads the weights); a kernel's first dispatch waits for its compilation.
    pub fn compile_kernels(&self) {
        self.pipelines.compile_all();
    }

    /// Replaces the adapter name shown by [`Backend::info`] (browsers hide the name
    /// from wgpu; the page reads it from `GPUAdapterInfo` instead).
    pub fn set_adapter_name(&mut self, name: String) {
        self.info.adapter = name;
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()))
    }

    fn buffer(&self, id: BufId) -> &wgpu::Buffer {
        &self.buffers[id.0 as usize]
    }

    fn create(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        let bytes = (len.max(1) * 4) as u64;
        for (limit, allowed) in [
            ("maxStorageBufferBindingSize", self.limits.max_storage_buffer_binding_size),
            ("maxBufferSize", self.limits.max_buffer_size),
        ] {
            if bytes > allowed {
                return Err(BackendError::Limit {
                    what: format!("{what} ({len} elements)"),
                    limit,
                    needed: bytes,
                    allowed,
                });
            }
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.buffers.push(buffer);
        Ok(View { buf: BufId(self.buffers.len() as u32 - 1), offset: 0, len })
    }

    /// Writes go through the queue, which runs them before the *next* submission; so
    /// recorded-but-unsubmitted ops are flushed first to keep program order.
    fn write_bytes(&mut self, dst: View, bytes: &[u8]) {
        assert_eq!(bytes.len(), dst.len * 4, "write of {} bytes into a view of {} elements", bytes.len(), dst.len);
        if self.encoder.is_some() {
            self.flush();
        }
        self.queue.write_buffer(self.buffer(dst.buf), (dst.offset * 4) as u64, bytes);
    }

    /// Records one dispatch of `kernel` with `params` (≤ 16 words, in the shader's
    /// `Params` order) at binding 0 and `buffers` at bindings 1, 2, ….
    fn dispatch(&mut self, kernel: Kernel, params: &[u32], buffers: &[BufId], groups: (u32, u32)) {
        let mut words = [0u32; (PARAM_BYTES / 4) as usize];
        words[..params.len()].copy_from_slice(params);
        if self.next_slot == self.slots.len() {
            let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("op params"),
                size: PARAM_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.slots.push(Slot { uniform, bound: None });
        }
        let slot_index = self.next_slot;
        self.next_slot += 1;
        self.queue.write_buffer(&self.slots[slot_index].uniform, 0, bytemuck::cast_slice(&words));
        let pipeline = self.pipelines.get(kernel);
        let slot = &mut self.slots[slot_index];
        let cached = matches!(&slot.bound, Some((k, ids, _)) if *k == kernel && ids.as_slice() == buffers);
        if !cached {
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: slot.uniform.as_entire_binding() }];
            for (i, id) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: self.buffers[id.0 as usize].as_entire_binding(),
                });
            }
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            slot.bound = Some((kernel, buffers.to_vec(), group));
        }
        let group = &slot.bound.as_ref().expect("bound above").2;
        let encoder = self.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
}

/// Workgroups for `n` work items of `per_group` each, folded into 2-D when the count
/// passes the per-dimension limit. Kernels index `gid.x + gid.y · nwg.x · per_group`.
fn groups(n: usize, per_group: u32) -> (u32, u32) {
    let total = (n as u64).div_ceil(per_group as u64).max(1);
    if total <= MAX_GROUPS_PER_DIM as u64 {
        (total as u32, 1)
    } else {
        (MAX_GROUPS_PER_DIM, total.div_ceil(MAX_GROUPS_PER_DIM as u64) as u32)
    }
}

fn backend_kind(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        _ => "other",
    }
}

/// Element offset as a shader word; views are bounded by the buffer-size limit.
fn w(x: usize) -> u32 {
    u32::try_from(x).expect("offsets and sizes fit in u32 under the buffer-size limit")
}

impl Backend for GpuBackend {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn alloc(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.create(len, what)
    }

    fn alloc_u32(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.create(len, what)
    }

    fn write(&mut self, dst: View, data: &[f32]) {
        self.write_bytes(dst, bytemuck::cast_slice(data));
    }

    fn write_u32(&mut self, dst: View, data: &[u32]) {
        self.write_bytes(dst, bytemuck::cast_slice(data));
    }

    fn zero(&mut self, dst: View) {
        let buffer = self.buffers[dst.buf.0 as usize].clone();
        self.encoder().clear_buffer(&buffer, (dst.offset * 4) as u64, Some((dst.len * 4) as u64));
    }

    fn flush(&mut self) {
        if let Some(encoder) = self.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        self.next_slot = 0;
    }

    fn read(&mut self, src: View) -> impl Future<Output = Result<Vec<f32>, BackendError>> {
        let bytes = (src.len * 4) as u64;
        let staging = self
            .staging
            .entry(bytes)
            .or_insert_with(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .clone();
        let source = self.buffer(src.buf).clone();
        self.encoder().copy_buffer_to_buffer(&source, (src.offset * 4) as u64, &staging, 0, bytes);
        self.flush();
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = tx.send(result);
        });
        // Natively the map completes only when the device is polled; in the browser it
        // completes once control returns to the event loop, so we only await there.
        #[cfg(not(target_arch = "wasm32"))]
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| e.to_string());
        #[cfg(target_arch = "wasm32")]
        let polled: Result<(), String> = Ok(());
        async move {
            polled.map_err(BackendError::Readback)?;
            rx.await
                .map_err(|_| BackendError::Readback("device dropped the map request".into()))?
                .map_err(|e| BackendError::Readback(e.to_string()))?;
            let values = {
                let view = staging.get_mapped_range(..).map_err(|e| BackendError::Readback(e.to_string()))?;
                bytemuck::cast_slice::<u8, f32>(&view).to_vec()
            };
            staging.unmap();
            Ok(values)
        }
    }

    fn embedding_forward(&mut self, out: View, tokens: View, table: View, vocab: usize, dim: usize) {
        checks::embedding_forward(out, tokens, table, vocab, dim);
        let params = [w(tokens.len), w(vocab), w(dim), w(out.offset), w(tokens.offset), w(table.offset)];
        self.dispatch(Kernel::EmbeddingForward, &params, &[out.buf, tokens.buf, table.buf], groups(out.len, GROUP));
    }

    fn embedding_backward(&mut self, dtable: View, tokens: View, dout: View, vocab: usize, dim: usize) {
        checks::embedding_backward(dtable, tokens, dout, vocab, dim);
        let params = [w(tokens.len), w(vocab), w(dim), w(dtable.offset), w(tokens.offset), w(dout.offset)];
        self.dispatch(
            Kernel::EmbeddingBackward,
            &params,
            &[dtable.buf, tokens.buf, dout.buf],
            groups(dtable.len, GROUP),
        );
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
        // A = inp [rows, k]; B[l, j] = weight[j, l].
        let b = bias.unwrap_or(weight);
        let params = [
            w(rows),
            w(n),
            w(k),
            w(inp.offset),
            w(k),
            1,
            w(weight.offset),
            1,
            w(k),
            w(out.offset),
            w(b.offset),
            u32::from(bias.is_some()),
        ];
        self.dispatch(Kernel::Matmul, &params, &[out.buf, inp.buf, weight.buf, b.buf], matmul_groups(rows, n));
    }

    fn matmul_backward_input(&mut self, dinp: View, dout: View, weight: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_input(dinp, dout, weight, rows, k, n);
        // C = dinp [rows, k]; A = dout [rows, n]; B = weight [n, k].
        let params = [w(rows), w(k), w(n), w(dout.offset), w(n), 1, w(weight.offset), w(k), 1, w(dinp.offset), 0, 0];
        self.dispatch(Kernel::Matmul, &params, &[dinp.buf, dout.buf, weight.buf, weight.buf], matmul_groups(rows, k));
    }

    fn matmul_backward_weight(&mut self, dweight: View, dout: View, inp: View, rows: usize, k: usize, n: usize) {
        checks::matmul_backward_weight(dweight, dout, inp, rows, k, n);
        // C = dweight [n, k] (accumulated); A[o, r] = dout[r, o]; B = inp [rows, k].
        let params = [w(n), w(k), w(rows), w(dout.offset), 1, w(n), w(inp.offset), w(k), 1, w(dweight.offset), 0, 2];
        self.dispatch(Kernel::Matmul, &params, &[dweight.buf, dout.buf, inp.buf, inp.buf], matmul_groups(n, k));
    }

    fn bias_backward(&mut self, dbias: View, dout: View, rows: usize, n: usize) {
        checks::bias_backward(dbias, dout, rows, n);
        let params = [w(rows), w(n), w(dbias.offset), w(dout.offset)];
        self.dispatch(Kernel::BiasBackward, &params, &[dbias.buf, dout.buf], groups(n, GROUP));
    }

    fn gelu_forward(&mut self, out: View, inp: View) {
        checks::gelu_forward(out, inp);
        let params = [w(out.len), w(out.offset), w(inp.offset), 0];
        self.dispatch(Kernel::GeluForward, &params, &[out.buf, inp.buf], groups(out.len, GROUP));
    }

    fn gelu_backward(&mut self, dinp: View, inp: View, dout: View) {
        checks::gelu_backward(dinp, inp, dout);
        let params = [w(dinp.len), w(dinp.offset), w(inp.offset), w(dout.offset)];
        self.dispatch(Kernel::GeluBackward, &params, &[dinp.buf, inp.buf, dout.buf], groups(dinp.len, GROUP));
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
        let params = [w(rows), w(vocab), w(probs.offset), w(losses.offset), w(logits.offset), w(targets.offset)];
        let buffers = [probs.buf, logits.buf, targets.buf, losses.buf];
        self.dispatch(Kernel::XentForward, &params, &buffers, groups(rows, 1));
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
        let params = [w(rows), w(vocab), w(probs.offset), w(divisor), w(dlogits.offset), w(targets.offset)];
        let buffers = [dlogits.buf, probs.buf, targets.buf];
        self.dispatch(Kernel::XentBackward, &params, &buffers, groups(dlogits.len, GROUP));
    }

    fn mean(&mut self, out: View, values: View) {
        checks::mean(out, values);
        let params = [w(values.len), 0, w(out.offset), w(values.offset)];
        self.dispatch(Kernel::Mean, &params, &[out.buf, values.buf], (1, 1));
    }

    fn encoder_forward(&mut self, out: View, tokens: View, wte: View, wpe: View, t: usize, c: usize, vocab: usize) {
        checks::encoder_forward(out, tokens, wte, wpe, t, c, vocab);
        let params =
            [w(tokens.len), w(t), w(c), w(vocab), w(out.offset), w(tokens.offset), w(wte.offset), w(wpe.offset)];
        self.dispatch(
            Kernel::EncoderForward,
            &params,
            &[out.buf, wte.buf, wpe.buf, tokens.buf],
            groups(out.len, GROUP),
        );
    }

    fn position_backward(&mut self, dwpe: View, dout: View, b: usize, t: usize, c: usize) {
        checks::position_backward(dwpe, dout, b, t, c);
        let params = [w(b * t), w(t), w(c), 0, w(dwpe.offset), 0, w(dout.offset), 0];
        self.dispatch(Kernel::PositionBackward, &params, &[dwpe.buf, dout.buf], groups(dwpe.len, GROUP));
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
        let b = bias.unwrap_or(weight);
        let params = [
            w(rows),
            w(c),
            w(out.offset),
            w(mean.offset),
            w(rstd.offset),
            w(inp.offset),
            w(weight.offset),
            w(b.offset),
            u32::from(bias.is_some()),
        ];
        let buffers = [out.buf, mean.buf, rstd.buf, inp.buf, weight.buf, b.buf];
        self.dispatch(Kernel::LayerNorm, &params, &buffers, groups(rows, ROW_GROUP));
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
        // Params: rows, c, destination offset, then dout, inp, mean, rstd, weight offsets.
        let mut params = [
            w(rows),
            w(c),
            w(dinp.offset),
            w(dout.offset),
            w(inp.offset),
            w(mean.offset),
            w(rstd.offset),
            w(weight.offset),
        ];
        let buffers = [dinp.buf, dout.buf, inp.buf, mean.buf, rstd.buf, weight.buf];
        self.dispatch(Kernel::LayerNormBackwardInput, &params, &buffers, groups(rows, ROW_GROUP));
        params[2] = w(dweight.offset);
        let buffers = [dweight.buf, dout.buf, inp.buf, mean.buf, rstd.buf];
        self.dispatch(Kernel::LayerNormBackwardWeight, &params, &buffers, groups(c, ROW_GROUP));
        if let Some(db) = dbias {
            self.bias_backward(db, dout, rows, c);
        }
    }

    fn attention_forward(&mut self, out: View, att: View, qkv: View, b: usize, t: usize, c: usize, heads: usize) {
        checks::attention_forward(out, att, qkv, b, t, c, heads);
        let scale = 1.0 / ((c / heads) as f32).sqrt();
        let params = [w(b), w(t), w(c), w(heads), w(out.offset), w(att.offset), w(qkv.offset), scale.to_bits()];
        self.dispatch(Kernel::Attention, &params, &[out.buf, att.buf, qkv.buf], groups(b * heads * t, ROW_GROUP));
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
        let scale = 1.0 / ((c / heads) as f32).sqrt();
        let params = [
            w(b),
            w(t),
            w(c),
            w(heads),
            w(dqkv.offset),
            w(scratch.offset),
            w(dout.offset),
            w(qkv.offset),
            w(att.offset),
            scale.to_bits(),
        ];
        let buffers = [dqkv.buf, scratch.buf, dout.buf, qkv.buf, att.buf];
        let rows = groups(b * heads * t, ROW_GROUP);
        self.dispatch(Kernel::AttentionBackwardQueries, &params, &buffers, rows);
        self.dispatch(Kernel::AttentionBackwardKeysValues, &params, &buffers, rows);
    }

    fn add(&mut self, out: View, a: View, b: View) {
        checks::add(out, a, b);
        let params = [w(out.len), w(out.offset), w(a.offset), w(b.offset)];
        self.dispatch(Kernel::Add, &params, &[out.buf, a.buf, b.buf], groups(out.len, GROUP));
    }

    fn sum_squares(&mut self, out: View, values: View) {
        checks::sum_squares(out, values);
        let params = [w(values.len), 0, w(out.offset), w(values.offset)];
        self.dispatch(Kernel::SumSquares, &params, &[out.buf, values.buf], (1, 1));
    }

    fn adamw(&mut self, params: View, grads: View, m: View, v: View, grad_sumsq: View, h: AdamW) {
        checks::adamw(params, grads, m, v, grad_sumsq);
        let (bc1, bc2) = h.bias_corrections();
        let words = [
            w(params.len),
            w(params.offset),
            w(grads.offset),
            w(m.offset),
            w(v.offset),
            w(grad_sumsq.offset),
            h.lr.to_bits(),
            h.beta1.to_bits(),
            h.beta2.to_bits(),
            h.eps.to_bits(),
            h.weight_decay.to_bits(),
            bc1.to_bits(),
            bc2.to_bits(),
            h.max_grad_norm.to_bits(),
        ];
        let buffers = [params.buf, grads.buf, m.buf, v.buf, grad_sumsq.buf];
        self.dispatch(Kernel::AdamW, &words, &buffers, groups(params.len, GROUP));
    }

    fn pick_top_k(&mut self, picked: View, residual: View, start: View, params: View, cfg: CodecConfig) {
        checks::pick_top_k(picked, residual, start, params, &cfg);
        let words = [
            w(residual.len),
            cfg.chunk,
            cfg.k,
            cfg.levels() as u32,
            w(picked.offset),
            w(residual.offset),
            w(start.offset),
            w(params.offset),
            cfg.decay.to_bits(),
        ];
        let chunks = residual.len.div_ceil(cfg.chunk as usize);
        self.dispatch(Kernel::TopK, &words, &[picked.buf, residual.buf, start.buf, params.buf], groups(chunks, 1));
    }
}

/// Workgroups of the tiled matmul: one per 64×64 tile of the `[rows, cols]` output.
fn matmul_groups(rows: usize, cols: usize) -> (u32, u32) {
    (w(cols.div_ceil(64)), w(rows.div_ceil(64)))
}
