//! The WebGPU backend (wgpu): WGSL kernels from `shaders/`, run natively (Vulkan,
//! Metal, DX12) or in the browser (WebGPU).
//!
//! Ops are recorded into one command encoder, each as a compute pass, and submitted
//! together by [`crate::backend::Backend::flush`]: a training step is one queue
//! submission. Each
//! dispatch within a submission uses its own *slot*: a 64-byte uniform buffer with the
//! op's sizes and offsets, and a bind group cached for as long as the slot sees the same
//! kernel and buffers, so a steady training loop creates no GPU objects at all.
//!
//! The device is asked for the adapter's own limits. A buffer larger than one binding
//! allows is made of several physical buffers (`pages.rs`); the ops (`ops.rs`) run over
//! its pieces. [`GpuOptions::max_binding_bytes`] forces a smaller page, to test that path
//! on any adapter.
//!
//! Mixed precision ([`GpuOptions::mixed_precision`], where the adapter has `shader-f16`):
//! buffers from [`crate::backend::Backend::alloc_f16`] hold f16 values, 2 bytes each. The
//! kernels that read or write one are compiled with f16 at that binding
//! (`kernels.rs`); they compute and accumulate in f32.

mod kernels;
mod ops;
mod pages;

use std::collections::HashMap;
use std::future::Future;

use crate::backend::{BackendError, BufId, DeviceInfo, Part, View};
use kernels::{HALF_BINDINGS, HalfMask, Kernel, Pipelines};
use pages::{Logical, Piece, Span};

/// Bytes of each op's uniform parameter block (16 words).
const PARAM_BYTES: u64 = 64;
/// Threads per workgroup of the 1-D elementwise kernels.
const GROUP: u32 = 256;
/// Threads per workgroup of the one-thread-per-row kernels (layernorm, attention).
const ROW_GROUP: u32 = 64;
/// Workgroups per dispatch dimension that WebGPU guarantees.
const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// How the backend uses its adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Bind at most this many bytes at once even where the adapter allows more: buffers
    /// larger than this are made of several (for tests of that path).
    pub max_binding_bytes: Option<u64>,
    /// Store in f16 what the trainer asks to (the activations that feed matmuls, and a
    /// copy of the weights that they read), where the adapter has `shader-f16`; f32
    /// elsewhere. Master weights, gradients and moments stay f32.
    pub mixed_precision: bool,
}

/// One physical buffer.
struct Physical {
    buffer: wgpu::Buffer,
    /// Whether it holds f16 values (2 bytes each) rather than f32 or u32 (4).
    f16: bool,
}

/// One dispatch position within a submission.
struct Slot {
    uniform: wgpu::Buffer,
    bound: Option<(Kernel, Vec<u32>, wgpu::BindGroup)>,
}

/// A wgpu device with crowdgrad's kernels compiled.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    /// Largest buffer the device takes, bytes.
    max_buffer_bytes: u64,
    /// Elements in a page: what one binding holds.
    page: usize,
    /// Whether buffers from `alloc_f16` hold f16 values (mixed precision asked for, and
    /// the device has `shader-f16`).
    stores_f16: bool,
    pipelines: Pipelines,
    /// The physical buffers.
    physical: Vec<Physical>,
    /// The logical buffers (what [`BufId`]s name), each of physical pieces.
    logical: Vec<Logical>,
    encoder: Option<wgpu::CommandEncoder>,
    slots: Vec<Slot>,
    next_slot: usize,
    staging: HashMap<u64, wgpu::Buffer>,
    /// Small buffers the split ops borrow: partial sums, and one straddling chunk of an
    /// update's selection ([`ops`]).
    scratch: HashMap<&'static str, View>,
}

impl GpuBackend {
    /// Opens the best adapter: WebGPU in the browser, Vulkan/Metal/DX12 natively.
    /// Fails (never falls back silently) when there is none.
    pub async fn new() -> Result<Self, BackendError> {
        Self::with_options(GpuOptions::default()).await
    }

    /// [`GpuBackend::new`] with `options`.
    pub async fn with_options(options: GpuOptions) -> Result<Self, BackendError> {
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
        let stores_f16 = options.mixed_precision && adapter.features().contains(wgpu::Features::SHADER_F16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("crowdgrad"),
                required_features: if stores_f16 { wgpu::Features::SHADER_F16 } else { wgpu::Features::empty() },
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
        let binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let binding = options.max_binding_bytes.map_or(binding, |forced| forced.min(binding));
        // Whole 256-byte blocks, so that every piece starts where a binding may.
        let page = (binding / 256 * 64).max(64) as usize;
        Ok(GpuBackend {
            device,
            queue,
            info,
            max_buffer_bytes: limits.max_buffer_size,
            page,
            stores_f16,
            pipelines,
            physical: Vec::new(),
            logical: Vec::new(),
            encoder: None,
            slots: Vec::new(),
            next_slot: 0,
            staging: HashMap::new(),
            scratch: HashMap::new(),
        })
    }

    /// Compiles every kernel now rather than on its first use. In the browser this
    /// returns at once and the GPU process compiles while the tab goes on (connects and
    /// downloads the weights); a kernel's first dispatch waits for its compilation.
    pub fn compile_kernels(&self) {
        self.pipelines.compile_all();
    }

    /// Replaces the adapter name shown by [`crate::backend::Backend::info`] (browsers hide the name
    /// from wgpu; the page reads it from `GPUAdapterInfo` instead).
    pub fn set_adapter_name(&mut self, name: String) {
        self.info.adapter = name;
    }

    /// Bytes one binding holds here (the page of buffers made of several).
    pub fn page_bytes(&self) -> u64 {
        4 * self.page as u64
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()))
    }

    /// A new logical buffer of pieces of `lengths` elements, f16 ones (2 bytes) or not
    /// (4); `what` names it in errors. An f16 piece is padded to whole 4-byte words.
    fn create(&mut self, lengths: &[usize], what: &str, f16: bool) -> Result<View, BackendError> {
        let mut pieces = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &len in lengths {
            let bytes = if f16 { (len.max(1) * 2).next_multiple_of(4) } else { len.max(1) * 4 } as u64;
            for (limit, allowed) in
                [("maxStorageBufferBindingSize", self.page_bytes()), ("maxBufferSize", self.max_buffer_bytes)]
            {
                if bytes > allowed {
                    return Err(BackendError::Limit {
                        what: format!("{what} ({len} elements in one binding)"),
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
            self.physical.push(Physical { buffer, f16 });
            pieces.push(Piece { start, len, phys: self.physical.len() as u32 - 1 });
            start += len;
        }
        self.logical.push(Logical { pieces });
        Ok(View { buf: BufId(self.logical.len() as u32 - 1), offset: 0, len: start })
    }

    /// The pieces under `v`.
    fn spans(&self, v: View) -> Vec<Span> {
        self.logical[v.buf.0 as usize].spans(v.offset, v.len)
    }

    /// `(physical buffer, offset in it)` of `v`, which an op needs within one binding: a
    /// view of an activation, or of one tensor no larger than a page.
    fn at(&self, op: &str, v: View) -> (u32, usize) {
        self.logical[v.buf.0 as usize]
            .place(v.offset, v.len)
            .unwrap_or_else(|| panic!("{op}: a view of {} elements spans bindings of {} elements", v.len, self.page))
    }

    /// Runs `op(spans)` over sub-ranges of `views` (equal lengths), each within one piece
    /// of every view: `spans[i]` places view `i`'s sub-range.
    fn each_span(&mut self, views: &[View], mut op: impl FnMut(&mut Self, &[Span])) {
        let len = views[0].len;
        let mut cuts: Vec<usize> = views
            .iter()
            .flat_map(|v| self.logical[v.buf.0 as usize].cuts(v.offset, v.len).collect::<Vec<_>>())
            .collect();
        cuts.extend([0, len]);
        cuts.sort_unstable();
        cuts.dedup();
        for pair in cuts.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let spans: Vec<Span> = views
                .iter()
                .map(|v| {
                    let (phys, local) =
                        self.logical[v.buf.0 as usize].place(v.offset + from, to - from).expect("cut at every edge");
                    Span { at: from, len: to - from, phys, local }
                })
                .collect();
            op(self, &spans);
        }
    }

    /// A small buffer of `len` elements for the split ops, made once per name.
    fn scratch(&mut self, name: &'static str, len: usize) -> View {
        if let Some(v) = self.scratch.get(name).filter(|v| v.len >= len) {
            return v.slice(0, len);
        }
        let v = self.create(&[len], name, false).expect("a scratch buffer of one chunk fits a binding");
        self.scratch.insert(name, v);
        v
    }

    /// Writes go through the queue, which runs them before the *next* submission; so
    /// recorded-but-unsubmitted ops are flushed first to keep program order.
    fn write_bytes(&mut self, dst: View, bytes: &[u8]) {
        assert_eq!(bytes.len(), dst.len * 4, "write of {} bytes into a view of {} elements", bytes.len(), dst.len);
        self.assert_f32("write", dst);
        if self.encoder.is_some() {
            self.submit();
        }
        for span in self.spans(dst) {
            let part = &bytes[span.at * 4..(span.at + span.len) * 4];
            self.queue.write_buffer(&self.physical[span.phys as usize].buffer, (span.local * 4) as u64, part);
        }
    }

    /// Copies element ranges between physical buffers, in the encoder's order.
    fn copy(&mut self, from: (u32, usize), to: (u32, usize), len: usize) {
        let (source, target) = (&self.physical[from.0 as usize], &self.physical[to.0 as usize]);
        assert!(!source.f16 && !target.f16, "copies are of f32 buffers");
        let (source, target) = (source.buffer.clone(), target.buffer.clone());
        let bytes = (len * 4) as u64;
        self.encoder().copy_buffer_to_buffer(&source, (from.1 * 4) as u64, &target, (to.1 * 4) as u64, bytes);
    }

    /// Records one dispatch of `kernel` with `params` (≤ 16 words, in the shader's
    /// `Params` order) at binding 0 and the physical `buffers` at bindings 1, 2, ….
    /// A binding that holds f16 values makes the dispatch use the kernel's variant with
    /// f16 there (see `kernels.rs`).
    fn dispatch(&mut self, kernel: Kernel, params: &[u32], buffers: &[u32], groups: (u32, u32)) {
        let mut half: HalfMask = 0;
        for (i, &id) in buffers.iter().enumerate() {
            let binding = i as u32 + 1;
            if self.physical[id as usize].f16 {
                assert!(
                    binding <= HALF_BINDINGS,
                    "{kernel:?}: binding {binding} holds f16 values, which it reads as f32"
                );
                half |= 1 << binding;
            }
        }
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
        let pipeline = self.pipelines.get(kernel, half);
        let slot = &mut self.slots[slot_index];
        let cached = matches!(&slot.bound, Some((k, ids, _)) if *k == kernel && ids.as_slice() == buffers);
        // The same buffers mean the same variant: each holds f16 values or not for life.
        if !cached {
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: slot.uniform.as_entire_binding() }];
            for (i, &id) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: self.physical[id as usize].buffer.as_entire_binding(),
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

    /// A staging buffer of `bytes` for readback, kept for the next read of that size.
    fn staging(&mut self, bytes: u64) -> wgpu::Buffer {
        self.staging
            .entry(bytes)
            .or_insert_with(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .clone()
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

/// Workgroups of the tiled matmul: one per 64×64 tile of the `[rows, cols]` output.
fn matmul_groups(rows: usize, cols: usize) -> (u32, u32) {
    (w(cols.div_ceil(64)), w(rows.div_ceil(64)))
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

/// Element offset as a shader word; offsets are within one binding.
fn w(x: usize) -> u32 {
    u32::try_from(x).expect("offsets and sizes within one binding fit in u32")
}

/// The GPU backend's buffers and transfers; the ops are in `ops.rs`.
impl GpuBackend {
    fn alloc_f32(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.create(&[len], what, false)
    }

    /// A buffer of `parts` (see [`pages::plan`]), of f16 values where `f16` and the
    /// device stores them.
    fn alloc_of_parts(&mut self, parts: &[Part], what: &str, f16: bool) -> Result<View, BackendError> {
        let lengths = pages::plan(parts, self.page);
        self.create(&lengths, what, f16 && self.stores_f16)
    }

    /// A buffer of `len` f16 values where the device stores them, else f32.
    fn alloc_half(&mut self, len: usize, what: &str) -> Result<View, BackendError> {
        self.create(&[len], what, self.stores_f16)
    }

    /// Panics when `v` is in a buffer of f16 values: the host reads and writes f32 only,
    /// and what is stored in f16 is written and read by the ops alone.
    fn assert_f32(&self, op: &str, v: View) {
        let f16 = self.spans(v).iter().any(|s| self.physical[s.phys as usize].f16);
        assert!(!f16, "{op}: the host reads and writes f32 buffers only, and {:?} holds f16 values", v.buf);
    }

    fn zero_view(&mut self, dst: View) {
        self.assert_f32("zero", dst);
        for span in self.spans(dst) {
            let buffer = self.physical[span.phys as usize].buffer.clone();
            self.encoder().clear_buffer(&buffer, (span.local * 4) as u64, Some((span.len * 4) as u64));
        }
    }

    fn submit(&mut self) {
        if let Some(encoder) = self.encoder.take() {
            self.queue.submit([encoder.finish()]);
        }
        self.next_slot = 0;
    }

    /// Copies `src` to staging buffers (one per piece it spans), submits, and reads them
    /// back in order once mapped.
    fn read_view(&mut self, src: View) -> impl Future<Output = Result<Vec<f32>, BackendError>> + use<> {
        self.assert_f32("read", src);
        let mut stagings = Vec::new();
        for span in self.spans(src) {
            let bytes = (span.len * 4) as u64;
            // A read within one piece reuses its staging buffer; a large one, spanning
            // pieces, gets its own for each (once a step at most: parameters, residual).
            let staging = if span.len == src.len {
                self.staging(bytes)
            } else {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let source = self.physical[span.phys as usize].buffer.clone();
            self.encoder().copy_buffer_to_buffer(&source, (span.local * 4) as u64, &staging, 0, bytes);
            stagings.push(staging);
        }
        self.submit();
        let receivers: Vec<_> = stagings
            .iter()
            .map(|staging| {
                let (tx, rx) = futures_channel::oneshot::channel();
                staging.map_async(wgpu::MapMode::Read, .., move |result| {
                    let _ = tx.send(result);
                });
                rx
            })
            .collect();
        // Natively the maps complete only when the device is polled; in the browser they
        // complete once control returns to the event loop, so we only await there.
        #[cfg(not(target_arch = "wasm32"))]
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| e.to_string());
        #[cfg(target_arch = "wasm32")]
        let polled: Result<(), String> = Ok(());
        async move {
            polled.map_err(BackendError::Readback)?;
            let mut values = Vec::with_capacity(src.len);
            for (staging, rx) in stagings.iter().zip(receivers) {
                rx.await
                    .map_err(|_| BackendError::Readback("device dropped the map request".into()))?
                    .map_err(|e| BackendError::Readback(e.to_string()))?;
                {
                    let view = staging.get_mapped_range(..).map_err(|e| BackendError::Readback(e.to_string()))?;
                    values.extend_from_slice(bytemuck::cast_slice::<u8, f32>(&view));
                }
                staging.unmap();
            }
            values.truncate(src.len);
            Ok(values)
        }
    }
}
