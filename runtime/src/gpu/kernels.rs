//! The compute pipelines, one per WGSL entry point and per choice of the bindings that
//! hold f16 values (mixed precision), compiled once per device.

use std::cell::OnceCell;

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
    /// `elementwise.wgsl` a tensor times a number.
    Scale,
    /// `elementwise.wgsl` a tensor times a dropout mask.
    Dropout,
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
    /// `reduce.wgsl` sum (of the partial sums of squares of a vector larger than a binding).
    Sum,
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
    pub const ALL: [Kernel; 24] = [
        Kernel::Matmul,
        Kernel::EmbeddingForward,
        Kernel::EmbeddingBackward,
        Kernel::GeluForward,
        Kernel::GeluBackward,
        Kernel::Add,
        Kernel::Scale,
        Kernel::Dropout,
        Kernel::EncoderForward,
        Kernel::PositionBackward,
        Kernel::LayerNorm,
        Kernel::LayerNormBackwardInput,
        Kernel::LayerNormBackwardWeight,
        Kernel::Attention,
        Kernel::AttentionBackwardQueries,
        Kernel::AttentionBackwardKeysValues,
        Kernel::SumSquares,
        Kernel::Sum,
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
            Kernel::Scale => ("elementwise.wgsl", ELEMENTWISE, "scale"),
            Kernel::Dropout => ("elementwise.wgsl", ELEMENTWISE, "dropout"),
            Kernel::EncoderForward => ("encoder.wgsl", ENCODER, "forward"),
            Kernel::PositionBackward => ("encoder.wgsl", ENCODER, "position_backward"),
            Kernel::LayerNorm => ("layernorm.wgsl", LAYERNORM, "main"),
            Kernel::LayerNormBackwardInput => ("layernorm_backward.wgsl", LAYERNORM_BACKWARD, "input"),
            Kernel::LayerNormBackwardWeight => ("layernorm_backward.wgsl", LAYERNORM_BACKWARD, "weight_grad"),
            Kernel::Attention => ("attention.wgsl", ATTENTION, "main"),
            Kernel::AttentionBackwardQueries => ("attention_backward.wgsl", ATTENTION_BACKWARD, "queries"),
            Kernel::AttentionBackwardKeysValues => ("attention_backward.wgsl", ATTENTION_BACKWARD, "keys_values"),
            Kernel::SumSquares => ("reduce.wgsl", REDUCE, "sum_squares"),
            Kernel::Sum => ("reduce.wgsl", REDUCE, "sum"),
            Kernel::XentForward => ("xent.wgsl", XENT, "forward"),
            Kernel::XentBackward => ("xent.wgsl", XENT, "backward"),
            Kernel::Mean => ("reduce.wgsl", REDUCE, "mean"),
            Kernel::BiasBackward => ("reduce.wgsl", REDUCE, "bias_backward"),
            Kernel::AdamW => ("adamw.wgsl", ADAMW, "main"),
            Kernel::TopK => ("topk.wgsl", TOPK, "main"),
        }
    }
}

/// Which of a kernel's storage bindings 1..=[`HALF_BINDINGS`] hold f16 values (bit `i`
/// for binding `i`): `0` for the all-f32 kernel. A shader lets binding `i` hold f16 by
/// declaring `alias Store{i} = f32;` and reading and writing it through that type.
pub type HalfMask = u8;

/// The highest binding that may hold f16 values.
pub const HALF_BINDINGS: u32 = 3;

/// Variants a kernel may have: every mask of bindings `1..=HALF_BINDINGS`.
const VARIANTS: usize = 1 << (HALF_BINDINGS + 1);

/// The WGSL of `file` with the bindings in `half` stored as f16: `enable f16;` and each
/// `alias Store{i} = f32;` made `f16`. Panics when the shader does not declare one.
fn variant_source(file: &str, source: &str, half: HalfMask) -> String {
    if half == 0 {
        return source.to_owned();
    }
    let mut text = format!("enable f16;\n{source}");
    for binding in 1..=HALF_BINDINGS {
        if half & (1 << binding) == 0 {
            continue;
        }
        let alias = format!("alias Store{binding} = f32;");
        assert!(text.contains(&alias), "{file}: binding {binding} holds f16 values but the shader has no `{alias}`");
        text = text.replace(&alias, &format!("alias Store{binding} = f16;"));
    }
    text
}

/// The pipelines, indexed like [`Kernel::ALL`] and by [`HalfMask`], each compiled on its
/// first use or by [`Pipelines::compile_all`]. Shader modules are shared by the kernels
/// of one file.
pub struct Pipelines {
    device: wgpu::Device,
    /// By the index in [`Kernel::ALL`] of the first kernel of each file, then the mask.
    modules: Vec<OnceCell<wgpu::ShaderModule>>,
    pipelines: Vec<OnceCell<wgpu::ComputePipeline>>,
}

impl Pipelines {
    /// An empty table for `device`; nothing is compiled yet.
    pub fn new(device: &wgpu::Device) -> Self {
        let cells = Kernel::ALL.len() * VARIANTS;
        Pipelines {
            device: device.clone(),
            modules: (0..cells).map(|_| OnceCell::new()).collect(),
            pipelines: (0..cells).map(|_| OnceCell::new()).collect(),
        }
    }

    /// Compiles every all-f32 kernel not compiled yet (the f16 variants compile on their
    /// first use). Layouts are derived from the entry points (bindings 0 = uniform
    /// params, 1.. = storage buffers).
    pub fn compile_all(&self) {
        for kernel in Kernel::ALL {
            self.get(kernel, 0);
        }
    }

    /// The pipeline of `kernel` with the bindings in `half` stored as f16, compiled now
    /// if it was not.
    pub fn get(&self, kernel: Kernel, half: HalfMask) -> &wgpu::ComputePipeline {
        self.pipelines[index(kernel) * VARIANTS + half as usize].get_or_init(|| {
            let (_, _, entry) = kernel.source();
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: self.module(kernel, half),
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    }

    /// The shader module of `kernel`'s file with the bindings in `half` as f16, parsed once.
    fn module(&self, kernel: Kernel, half: HalfMask) -> &wgpu::ShaderModule {
        let (file, source, _) = kernel.source();
        let first = Kernel::ALL.iter().position(|k| k.source().0 == file).expect("every kernel is in ALL");
        self.modules[first * VARIANTS + half as usize].get_or_init(|| {
            self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(variant_source(file, source, half).into()),
            })
        })
    }
}

fn index(kernel: Kernel) -> usize {
    Kernel::ALL.iter().position(|k| *k == kernel).expect("every kernel is in ALL")
}
