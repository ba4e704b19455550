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
    /// `elementwise.wgsl` GELU forward.
    GeluForward,
    /// `elementwise.wgsl` GELU backward.
    GeluBackward,
    /// `elementwise.wgsl` sum of two tensors.
    Add,
    /// `encoder.wgsl` token plus position embedding.
    EncoderForward,
    /// `encoder.wgsl` position-table gradient.
    PositionBackward,
    /// `layernorm.wgsl` forward.
    LayerNorm,
    /// `layernorm_backward.wgsl` input gradient.
    LayerNormBackwardInput,
    /// `layernorm_backward.wgsl` weight gradient.
    LayerNormBackwardWeight,
    /// `attention.wgsl` causal attention forward.
    Attention,
    /// `attention_backward.wgsl` pass 1: score gradients and dq.
    AttentionBackwardQueries,
    /// `attention_backward.wgsl` pass 2: dk and dv.
    AttentionBackwardKeysValues,
    /// `reduce.wgsl` sum of squares.
    SumSquares,
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
    /// `topk.wgsl` error feedback and top-k selection of an update.
    TopK,
}

impl Kernel {
    /// All kernels, in pipeline-table order.
    pub const ALL: [Kernel; 21] = [
        Kernel::Matmul,
        Kernel::EmbeddingForward,
        Kernel::EmbeddingBackward,
        Kernel::GeluForward,
        Kernel::GeluBackward,
        Kernel::Add,
        Kernel::EncoderForward,
        Kernel::PositionBackward,
        Kernel::LayerNorm,
        Kernel::LayerNormBackwardInput,
        Kernel::LayerNormBackwardWeight,
        Kernel::Attention,
        Kernel::AttentionBackwardQueries,
        Kernel::AttentionBackwardKeysValues,
        Kernel::SumSquares,
        Kernel::XentForward,
        Kernel::XentBackward,
        Kernel::Mean,
        Kernel::BiasBackward,
        Kernel::AdamW,
        Kernel::TopK,
    ];

    /// `(file name, WGSL source, entry point)`.
    fn source(self) -> (&'static str, &'static str, &'static str) {
        const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
        const EMBEDDING: &str = include_str!("../../../shaders/embedding.wgsl");
        const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
        const ENCODER: &str = include_str!("../../../shaders/encoder.wgsl");
        const LAYERNORM: &str = include_str!("../../../shaders/layernorm.wgsl");
        const LAYERNORM_BACKWARD: &str = include_str!("../../../shaders/layernorm_backward.wgsl");
        const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
        const ATTENTION_BACKWARD: &str = include_str!("../../../shaders/attention_backward.wgsl");
        const XENT: &str = include_str!("../../../shaders/xent.wgsl");
        const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
        const ADAMW: &str = include_str!("../../../shaders/adamw.wgsl");
        const TOPK: &str = include_str!("../../../shaders/topk.wgsl");
        match self {
            Kernel::Matmul => ("matmul.wgsl", MATMUL, "main"),
            Kernel::EmbeddingForward => ("embedding.wgsl", EMBEDDING, "forward"),
            Kernel::EmbeddingBackward => ("embedding.wgsl", EMBEDDING, "backward"),
            Kernel::GeluForward => ("elementwise.wgsl", ELEMENTWISE, "forward"),
            Kernel::GeluBackward => ("elementwise.wgsl", ELEMENTWISE, "backward"),
            Kernel::Add => ("elementwise.wgsl", ELEMENTWISE, "add"),
            Kernel::EncoderForward => ("encoder.wgsl", ENCODER, "forward"),
            Kernel::PositionBackward => ("encoder.wgsl", ENCODER, "position_backward"),
            Kernel::LayerNorm => ("layernorm.wgsl", LAYERNORM, "main"),
            Kernel::LayerNormBackwardInput => ("layernorm_backward.wgsl", LAYERNORM_BACKWARD, "input"),
            Kernel::LayerNormBackwardWeight => ("layernorm_backward.wgsl", LAYERNORM_BACKWARD, "weight_grad"),
            Kernel::Attention => ("attention.wgsl", ATTENTION, "main"),
            Kernel::AttentionBackwardQueries => ("attention_backward.wgsl", ATTENTION_BACKWARD, "queries"),
            Kernel::AttentionBackwardKeysValues => ("attention_backward.wgsl", ATTENTION_BACKWARD, "keys_values"),
            Kernel::SumSquares => ("reduce.wgsl", REDUCE, "sum_squares"),
            Kernel::XentForward => ("xent.wgsl", XENT, "forward"),
            Kernel::XentBackward => ("xent.wgsl", XENT, "backward"),
            Kernel::Mean => ("reduce.wgsl", REDUCE, "mean"),
            Kernel::BiasBackward => ("reduce.wgsl", REDUCE, "bias_backward"),
            Kernel::AdamW => ("adamw.wgsl", ADAMW, "main"),
            Kernel::TopK => ("topk.wgsl", TOPK, "main"),
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
