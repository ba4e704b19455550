//! The compute pipelines, one per WGSL entry point, compiled once per device.

/// Every kernel the GPU backend dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `matmul.wgsl`: strided tiled GEMM with optional bias and accumulation.
    Matmul,
    /// `embedding.wgsl` gather.
    EmbeddingForward,
    /// `embedding.wgsl` deterministic scatter-add.
    EmbeddingBackward,
    /// `gelu.wgsl` forward.
    GeluForward,
    /// `gelu.wgsl` backward.
    GeluBackward,
    /// `xent.wgsl` softmax and per-row loss.
    XentForward,
    /// `xent.wgsl` gradient of the mean loss.
    XentBackward,
    /// `reduce.wgsl` mean of a vector.
    Mean,
    /// `reduce.wgsl` column sums into a bias gradient.
    BiasBackward,
    /// `adamw.wgsl` update.
    AdamW,
}

impl Kernel {
    /// All kernels, in pipeline-table order.
    pub const ALL: [Kernel; 10] = [
        Kernel::Matmul,
        Kernel::EmbeddingForward,
        Kernel::EmbeddingBackward,
        Kernel::GeluForward,
        Kernel::GeluBackward,
        Kernel::XentForward,
        Kernel::XentBackward,
        Kernel::Mean,
        Kernel::BiasBackward,
        Kernel::AdamW,
    ];

    /// `(file name, WGSL source, entry point)`.
    fn source(self) -> (&'static str, &'static str, &'static str) {
        const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
        const EMBEDDING: &str = include_str!("../../../shaders/embedding.wgsl");
        const GELU: &str = include_str!("../../../shaders/gelu.wgsl");
        const XENT: &str = include_str!("../../../shaders/xent.wgsl");
        const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
        const ADAMW: &str = include_str!("../../../shaders/adamw.wgsl");
        match self {
            Kernel::Matmul => ("matmul.wgsl", MATMUL, "main"),
            Kernel::EmbeddingForward => ("embedding.wgsl", EMBEDDING, "forward"),
            Kernel::EmbeddingBackward => ("embedding.wgsl", EMBEDDING, "backward"),
            Kernel::GeluForward => ("gelu.wgsl", GELU, "forward"),
            Kernel::GeluBackward => ("gelu.wgsl", GELU, "backward"),
            Kernel::XentForward => ("xent.wgsl", XENT, "forward"),
            Kernel::XentBackward => ("xent.wgsl", XENT, "backward"),
            Kernel::Mean => ("reduce.wgsl", REDUCE, "mean"),
            Kernel::BiasBackward => ("reduce.wgsl", REDUCE, "bias_backward"),
            Kernel::AdamW => ("adamw.wgsl", ADAMW, "main"),
        }
    }
}

/// Compiled pipelines, indexed like [`Kernel::ALL`].
pub struct Pipelines {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Pipelines {
    /// Compiles every kernel. Each shader file is parsed once; layouts are derived
    /// from the entry points (bindings 0 = uniform params, 1.. = storage buffers).
    pub fn compile(device: &wgpu::Device) -> Self {
        let mut modules: Vec<(&str, wgpu::ShaderModule)> = Vec::new();
        let mut pipelines = Vec::new();
        for kernel in Kernel::ALL {
            let (file, source, entry) = kernel.source();
            if !modules.iter().any(|(f, _)| *f == file) {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(file),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                modules.push((file, module));
            }
            let module = &modules.iter().find(|(f, _)| *f == file).expect("module compiled above").1;
            pipelines.push(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            }));
        }
        Pipelines { pipelines }
    }

    /// The pipeline of `kernel`.
    pub fn get(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[Kernel::ALL.iter().position(|k| *k == kernel).expect("every kernel is in ALL")]
    }
}
