//! Every WGSL kernel against the CPU reference, on random inputs, within 1e-4 relative
//! (max |gpu − cpu| / max |cpu|). One suite, instantiated natively (wgpu on Vulkan:
//! lavapipe here) and in the browser (`wasm-pack test --headless --chrome`: WebGPU on
//! SwiftShader). Without an adapter every test fails: `GpuBackend::new` errors loudly.

use crowdgrad_runtime::backend::{Backend, View};
use crowdgrad_runtime::codec::{self, CodecConfig};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::gpu::{GpuBackend, GpuOptions};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::ops::{self, AdamW, DropoutMask};
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::{InnerOptim, Trainer, TrainerShape, run_unit};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

#[macro_use]
#[path = "support/browser.rs"]
mod browser;

use browser::gpu;

const TOLERANCE: f32 = 1e-4;

/// One op's inputs: f32 tensors, u32 tensors, and outputs to read (with initial values,
/// since backward ops accumulate).
#[derive(Clone)]
struct Case {
    floats: Vec<Vec<f32>>,
    ints: Vec<Vec<u32>>,
    outputs: Vec<Vec<f32>>,
}

fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() * scale).collect()
}

/// Uploads `case` to `be`, runs `op` on (outputs, floats, ints) views and reads the outputs.
async fn execute<B: Backend>(be: &mut B, case: &Case, op: impl Fn(&mut B, &[View], &[View], &[View])) -> Vec<Vec<f32>> {
    let upload = |be: &mut B, data: &[f32]| {
        let v = be.alloc(data.len(), "test").unwrap();
        be.write(v, data);
        v
    };
    let floats: Vec<View> = case.floats.iter().map(|d| upload(be, d)).collect();
    let outputs: Vec<View> = case.outputs.iter().map(|d| upload(be, d)).collect();
    let ints: Vec<View> = case
        .ints
        .iter()
        .map(|d| {
            let v = be.alloc_u32(d.len(), "test").unwrap();
            be.write_u32(v, d);
            v
        })
        .collect();
    op(be, &outputs, &floats, &ints);
    let mut results = Vec::new();
    for out in outputs {
        results.push(be.read(out).await.unwrap());
    }
    results
}

/// Asserts every output of the GPU agrees with the CPU reference within [`TOLERANCE`].
fn assert_close(name: &str, expected: &[Vec<f32>], actual: &[Vec<f32>]) {
    for (k, (e, a)) in expected.iter().zip(actual).enumerate() {
        assert_eq!(e.len(), a.len());
        let scale = e.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let err = e.iter().zip(a).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err <= TOLERANCE, "{name} output {k}: relative error {err:e} > {TOLERANCE:e}");
        assert!(a.iter().all(|x| x.is_finite()), "{name} output {k} has non-finite values");
    }
}

/// Runs one op on the CPU reference and on the GPU and compares the outputs. The op is
/// written once as `|backend, outputs, floats, ints| …` and expanded for each backend
/// type, since a closure cannot be generic.
macro_rules! compare {
    ($name:expr, $case:expr, |$be:ident, $o:pat_param, $f:pat_param, $i:pat_param| $op:expr) => {{
        let case = $case;
        let expected =
            execute(&mut CpuBackend::new(), &case, |$be: &mut CpuBackend, $o: &[View], $f: &[View], $i: &[View]| $op)
                .await;
        let actual =
            execute(&mut gpu().await, &case, |$be: &mut GpuBackend, $o: &[View], $f: &[View], $i: &[View]| $op).await;
        assert_close(&$name, &expected, &actual);
    }};
}

/// Shapes that are not multiples of the 64×64×16 matmul tile, plus an exact fit.
const MATMUL_SHAPES: [(usize, usize, usize); 3] = [(37, 70, 129), (64, 128, 64), (5, 3, 300)];

both_ways!(matmul_forward_matches_cpu, async {
    let mut rng = Rng::new(1);
    for (r, k, n) in MATMUL_SHAPES {
        for with_bias in [false, true] {
            let case = Case {
                floats: vec![random(&mut rng, r * k, 1.0), random(&mut rng, n * k, 0.5), random(&mut rng, n, 1.0)],
                ints: vec![],
                outputs: vec![vec![0.0; r * n]],
            };
            compare!(format!("matmul_forward {r}x{k}x{n} bias={with_bias}"), case, |be, o, f, _| {
                be.matmul_forward(o[0], f[0], f[1], with_bias.then_some(f[2]), r, k, n)
            });
        }
    }
});

both_ways!(matmul_backward_input_matches_cpu, async {
    let mut rng = Rng::new(2);
    for (r, k, n) in MATMUL_SHAPES {
        let case = Case {
            floats: vec![random(&mut rng, r * n, 1.0), random(&mut rng, n * k, 0.5)],
            ints: vec![],
            outputs: vec![random(&mut rng, r * k, 1.0)],
        };
        compare!(format!("matmul_backward_input {r}x{k}x{n}"), case, |be, o, f, _| {
            be.matmul_backward_input(o[0], f[0], f[1], r, k, n)
        });
    }
});

both_ways!(matmul_backward_weight_matches_cpu, async {
    let mut rng = Rng::new(3);
    for (r, k, n) in MATMUL_SHAPES {
        let case = Case {
            floats: vec![random(&mut rng, r * n, 1.0), random(&mut rng, r * k, 1.0)],
            ints: vec![],
            outputs: vec![random(&mut rng, n * k, 1.0)],
        };
        compare!(format!("matmul_backward_weight {r}x{k}x{n}"), case, |be, o, f, _| {
            be.matmul_backward_weight(o[0], f[0], f[1], r, k, n)
        });
    }
});

both_ways!(bias_backward_matches_cpu, async {
    let mut rng = Rng::new(4);
    let (rows, n) = (33, 300);
    let case =
        Case { floats: vec![random(&mut rng, rows * n, 1.0)], ints: vec![], outputs: vec![random(&mut rng, n, 1.0)] };
    compare!("bias_backward", case, |be, o, f, _| be.bias_backward(o[0], f[0], rows, n));
});

both_ways!(embedding_matches_cpu, async {
    let mut rng = Rng::new(5);
    let (rows, vocab, dim) = (61, 100, 13);
    // Ids past the vocabulary are clamped by both backends.
    let tokens: Vec<u32> = (0..rows).map(|i| if i == 7 { 1000 } else { rng.below(vocab as u64) as u32 }).collect();
    let forward = Case {
        floats: vec![random(&mut rng, vocab * dim, 1.0)],
        ints: vec![tokens.clone()],
        outputs: vec![vec![0.0; rows * dim]],
    };
    compare!("embedding_forward", forward, |be, o, f, i| be.embedding_forward(o[0], i[0], f[0], vocab, dim));
    let backward = Case {
        floats: vec![random(&mut rng, rows * dim, 1.0)],
        ints: vec![tokens],
        outputs: vec![random(&mut rng, vocab * dim, 1.0)],
    };
    compare!("embedding_backward", backward, |be, o, f, i| be.embedding_backward(o[0], i[0], f[0], vocab, dim));
});

both_ways!(gelu_matches_cpu, async {
    let mut rng = Rng::new(6);
    let len = 1000;
    let forward = Case { floats: vec![random(&mut rng, len, 3.0)], ints: vec![], outputs: vec![vec![0.0; len]] };
    compare!("gelu_forward", forward, |be, o, f, _| be.gelu_forward(o[0], f[0]));
    let backward = Case {
        floats: vec![random(&mut rng, len, 3.0), random(&mut rng, len, 1.0)],
        ints: vec![],
        outputs: vec![vec![0.0; len]],
    };
    compare!("gelu_backward", backward, |be, o, f, _| be.gelu_backward(o[0], f[0], f[1]));
});

both_ways!(softmax_xent_matches_cpu, async {
    let mut rng = Rng::new(7);
    for (rows, vocab) in [(17, 256), (3, 65), (40, 1000)] {
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
        let forward = Case {
            floats: vec![random(&mut rng, rows * vocab, 4.0)],
            ints: vec![targets.clone()],
            outputs: vec![vec![0.0; rows * vocab], vec![0.0; rows]],
        };
        compare!(format!("softmax_xent_forward {rows}x{vocab}"), forward, |be, o, f, i| {
            be.softmax_xent_forward(o[0], o[1], f[0], i[0], rows, vocab)
        });
        let mut probs = random(&mut rng, rows * vocab, 1.0).into_iter().map(f32::abs).collect::<Vec<_>>();
        probs.iter_mut().for_each(|p| *p /= vocab as f32);
        let backward = Case { floats: vec![probs], ints: vec![targets], outputs: vec![vec![0.0; rows * vocab]] };
        compare!(format!("softmax_xent_backward {rows}x{vocab}"), backward, |be, o, f, i| {
            be.softmax_xent_backward(o[0], f[0], i[0], rows, vocab, 3 * rows)
        });
    }
});

both_ways!(mean_matches_cpu, async {
    let mut rng = Rng::new(8);
    for len in [1, 255, 1000] {
        let case = Case { floats: vec![random(&mut rng, len, 1.0)], ints: vec![], outputs: vec![vec![0.0]] };
        compare!(format!("mean {len}"), case, |be, o, f, _| be.mean(o[0], f[0]));
    }
});

both_ways!(adamw_matches_cpu, async {
    let mut rng = Rng::new(9);
    let len = 777;
    // A squared norm of 9 (norm 3) is clipped to 1; then the limit is lifted.
    for max_grad_norm in [1.0, 0.0] {
        let case = Case {
            floats: vec![random(&mut rng, len, 1.0), vec![9.0]],
            ints: vec![],
            outputs: vec![
                random(&mut rng, len, 1.0),
                random(&mut rng, len, 0.1),
                random(&mut rng, len, 0.1).into_iter().map(|x| x * x).collect(),
            ],
        };
        let h = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, step: 3, max_grad_norm };
        compare!(format!("adamw clip={max_grad_norm}"), case, |be, o, f, _| be.adamw(o[0], f[0], o[1], o[2], f[1], h));
    }
});

both_ways!(encoder_matches_cpu, async {
    let mut rng = Rng::new(10);
    let (b, t, c, vocab) = (3, 17, 24, 65);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
    let forward = Case {
        floats: vec![random(&mut rng, vocab * c, 1.0), random(&mut rng, t * c, 1.0)],
        ints: vec![tokens],
        outputs: vec![vec![0.0; b * t * c]],
    };
    compare!("encoder_forward", forward, |be, o, f, i| be.encoder_forward(o[0], i[0], f[0], f[1], t, c, vocab));
    let backward = Case {
        floats: vec![random(&mut rng, b * t * c, 1.0)],
        ints: vec![],
        outputs: vec![random(&mut rng, t * c, 1.0)],
    };
    compare!("position_backward", backward, |be, o, f, _| be.position_backward(o[0], f[0], b, t, c));
});

both_ways!(layernorm_matches_cpu, async {
    let mut rng = Rng::new(11);
    let (rows, c) = (37, 48);
    for with_bias in [false, true] {
        let forward = Case {
            floats: vec![random(&mut rng, rows * c, 2.0), random(&mut rng, c, 1.0), random(&mut rng, c, 1.0)],
            ints: vec![],
            outputs: vec![vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]],
        };
        compare!(format!("layernorm_forward bias={with_bias}"), forward, |be, o, f, _| {
            be.layernorm_forward(o[0], o[1], o[2], f[0], f[1], with_bias.then_some(f[2]), rows, c)
        });
        // Backward inputs: dout, inp, weight, and the forward's mean and rstd (from the CPU).
        let (inp, weight) = (random(&mut rng, rows * c, 2.0), random(&mut rng, c, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        ops::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &weight, None, rows, c);
        let backward = Case {
            floats: vec![random(&mut rng, rows * c, 1.0), inp, weight, mean, rstd],
            ints: vec![],
            outputs: vec![vec![0.0; rows * c], random(&mut rng, c, 1.0), random(&mut rng, c, 1.0)],
        };
        compare!(format!("layernorm_backward bias={with_bias}"), backward, |be, o, f, _| {
            be.layernorm_backward(o[0], o[1], with_bias.then_some(o[2]), f[0], f[1], f[2], f[3], f[4], rows, c)
        });
    }
});

both_ways!(attention_matches_cpu, async {
    let mut rng = Rng::new(12);
    for (b, t, c, heads) in [(2, 13, 24, 3), (1, 64, 128, 4)] {
        let qkv = random(&mut rng, b * t * 3 * c, 1.0);
        let forward = Case {
            floats: vec![qkv.clone()],
            ints: vec![],
            outputs: vec![vec![0.0; b * t * c], vec![0.0; b * heads * t * t]],
        };
        compare!(format!("attention_forward {b}x{t}x{c}/{heads}"), forward, |be, o, f, _| {
            be.attention_forward(o[0], o[1], f[0], b, t, c, heads)
        });
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * heads * t * t]);
        ops::attention_forward(&mut out, &mut att, &qkv, b, t, c, heads);
        // The score-gradient scratch is working memory, not an output: it rides along
        // as an input buffer and is not compared.
        let backward = Case {
            floats: vec![random(&mut rng, b * t * c, 1.0), qkv, att, vec![0.0; b * heads * t * t]],
            ints: vec![],
            outputs: vec![vec![0.0; b * t * 3 * c]],
        };
        compare!(format!("attention_backward {b}x{t}x{c}/{heads}"), backward, |be, o, f, _| {
            be.attention_backward(o[0], f[3], f[0], f[1], f[2], b, t, c, heads)
        });
    }
});

both_ways!(add_scale_dropout_and_sum_squares_match_cpu, async {
    let mut rng = Rng::new(13);
    let len = 1003;
    let case = Case {
        floats: vec![random(&mut rng, len, 1.0), random(&mut rng, len, 1.0)],
        ints: vec![],
        outputs: vec![vec![0.0; len]],
    };
    compare!("add", case.clone(), |be, o, f, _| be.add(o[0], f[0], f[1]));
    compare!("scale", case.clone(), |be, o, f, _| be.scale(o[0], f[1], -0.37));
    compare!("dropout", case, |be, o, f, _| be.dropout(o[0], f[1], DropoutMask::new(0.3, 11)));
    let case = Case { floats: vec![random(&mut rng, 70_000, 1.0)], ints: vec![], outputs: vec![vec![0.0]] };
    compare!("sum_squares", case, |be, o, f, _| be.sum_squares(o[0], f[0]));
});

/// `pick_top_k` on one backend: the table of picked values and the residual after.
async fn pick<B: Backend>(
    be: &mut B,
    residual: &[f32],
    start: &[f32],
    params: &[f32],
    cfg: CodecConfig,
) -> [Vec<f32>; 2] {
    let upload = |be: &mut B, data: &[f32]| {
        let v = be.alloc(data.len(), "test").unwrap();
        be.write(v, data);
        v
    };
    let (r, s, p) = (upload(be, residual), upload(be, start), upload(be, params));
    let table = be.alloc(codec::picked_len(&cfg, residual.len()), "picked").unwrap();
    be.pick_top_k(table, r, s, p, cfg);
    [be.read(table).await.unwrap(), be.read(r).await.unwrap()]
}

both_ways!(top_k_picks_what_the_cpu_codec_picks, async {
    let mut rng = Rng::new(17);
    // (chunk, k, bits, decay, values): a partial last chunk, k = chunk, DeMo's 4096/32, and
    // leftovers kept whole or fading.
    let cases = [(64, 8, 4, 1.0, 1000), (300, 300, 2, 0.5, 700), (4096, 32, 8, 0.95, 10_000), (256, 5, 8, 1.0, 600)];
    for (chunk, k, bits, decay, len) in cases {
        let cfg = CodecConfig { chunk, k, bits, decay };
        let mut residual = random(&mut rng, len, 0.01);
        let start = random(&mut rng, len, 1.0);
        let mut params: Vec<f32> = start.iter().map(|s| s - rng.normal() * 0.01).collect();
        // Ties (a run of equal magnitudes), an all-zero stretch, and values that overflow.
        for i in 0..40 {
            residual[i * 7 % len] = if i % 2 == 0 { 0.02 } else { -0.02 };
            params[i * 7 % len] = start[i * 7 % len];
        }
        for i in 400..480 {
            (residual[i], params[i]) = (0.0, start[i]);
        }
        (params[3], params[5]) = (f32::NAN, f32::INFINITY);
        let [cpu_table, cpu_residual] = pick(&mut CpuBackend::new(), &residual, &start, &params, cfg).await;
        let [gpu_table, gpu_residual] = pick(&mut gpu().await, &residual, &start, &params, cfg).await;
        let name = format!("pick_top_k {cfg:?}");
        let words = codec::picked_words(&cfg);
        let mut level_misses = 0;
        for (c, (cpu, gpu)) in cpu_table.chunks(words).zip(gpu_table.chunks(words)).enumerate() {
            let count = cpu[1].to_bits() as usize;
            assert_eq!(
                (cpu[0].to_bits(), count),
                (gpu[0].to_bits(), gpu[1].to_bits() as usize),
                "{name} chunk {c}: scale, count"
            );
            let (index, level) = (|w: &f32| w.to_bits() & 0xffff, |w: &f32| (w.to_bits() >> 16) as i64);
            let indices = |t: &[f32]| t[2..2 + count].iter().map(index).collect::<Vec<_>>();
            assert_eq!(indices(cpu), indices(gpu), "{name} chunk {c}: indices");
            for (a, b) in cpu[2..2 + count].iter().map(level).zip(gpu[2..2 + count].iter().map(level)) {
                // The GPU's division may be off by an ulp, which moves a value sitting on a
                // rounding boundary to the next level.
                assert!((a - b).abs() <= 1, "{name} chunk {c}: levels {a} and {b}");
                level_misses += usize::from(a != b);
            }
            let scale = cpu[0] / cfg.levels() as f32;
            let span = c * chunk as usize..((c + 1) * chunk as usize).min(len);
            for (x, y) in cpu_residual[span.clone()].iter().zip(&gpu_residual[span]) {
                assert!((x - y).abs() <= 1e-6 + scale * 1.001, "{name} chunk {c}: residual {x} and {y}");
            }
        }
        assert!(level_misses * 1000 <= len, "{name}: {level_misses} levels differ");
        let (cpu_bytes, gpu_bytes) = (codec::pack(&cpu_table, len, &cfg), codec::pack(&gpu_table, len, &cfg));
        let gpu_bytes = gpu_bytes.unwrap_or_else(|e| panic!("{name}: the GPU's table does not pack: {e}"));
        assert_eq!(cpu_bytes.map(|b| b.len()), Ok(gpu_bytes.len()), "{name}: encoded sizes");
        assert!(codec::decode(&gpu_bytes, len).is_ok(), "{name}: the GPU's encoding decodes");
    }
});

/// Loss must fall by at least this many nats per token over a 200-step run of the small
/// default GPT on the built-in corpus: from ≈5.5 at init to ≈1.5 (measured on both
/// backends), so 3 leaves a wide margin.
const REQUIRED_DROP: f32 = 3.0;

async fn train_200_steps<B: Backend>(backend: B) -> (f32, f32) {
    let corpus = Corpus::builtin();
    let cfg = GptConfig { context: 16, ..GptConfig::default() };
    let mut trainer = Trainer::new(backend, cfg, 8, 201).unwrap();
    let optim = InnerOptim { lr: 2e-3, ..InnerOptim::default() };
    let outcome = run_unit(&mut trainer, &cfg.init(7), corpus.train(), 42, 200, &optim).await.unwrap();
    let first = outcome.trained.losses[0];
    let last20 = outcome.trained.losses[180..].iter().sum::<f32>() / 20.0;
    (first, last20)
}

both_ways!(training_200_steps_lowers_loss_on_both_backends, async {
    let (cpu_first, cpu_last) = train_200_steps(CpuBackend::new()).await;
    let (gpu_first, gpu_last) = train_200_steps(gpu().await).await;
    assert!(cpu_first - cpu_last >= REQUIRED_DROP, "CPU loss {cpu_first} → {cpu_last}: fell less than {REQUIRED_DROP}");
    assert!(gpu_first - gpu_last >= REQUIRED_DROP, "GPU loss {gpu_first} → {gpu_last}: fell less than {REQUIRED_DROP}");
    // Same data and init: the two curves agree closely.
    assert!((cpu_last - gpu_last).abs() / cpu_last < 0.02, "CPU {cpu_last} vs GPU {gpu_last} after 200 steps");
});

both_ways!(whole_model_gradient_matches_cpu, async {
    let cfg = GptConfig { context: 16, ..GptConfig::default() };
    let corpus = Corpus::builtin();
    let batch = crowdgrad_runtime::data::sample_batch(corpus.train(), 5, 0, 4, cfg.context);
    let params = cfg.init(11);
    let mut cpu = Trainer::new(CpuBackend::new(), cfg, 4, 1).unwrap();
    cpu.load(&params);
    let expected = cpu.gradients(&batch).await.unwrap();
    let mut gpu = Trainer::new(gpu().await, cfg, 4, 1).unwrap();
    gpu.load(&params);
    let actual = gpu.gradients(&batch).await.unwrap();
    for e in &cfg.layout().entries {
        let (x, y) = (&expected[e.offset..e.offset + e.len], &actual[e.offset..e.offset + e.len]);
        assert_close(&e.name, &[x.to_vec()], &[y.to_vec()]);
    }
});

/// A GPU whose bindings hold 16 KiB (4,096 values): the model below's token embedding
/// (300 × 32 values) is cut into blocks of rows, and its parameters, gradients and
/// moments are each made of several buffers.
async fn small_bindings() -> GpuBackend {
    let options = GpuOptions { max_binding_bytes: Some(16 * 1024), ..GpuOptions::default() };
    GpuBackend::with_options(options).await.unwrap_or_else(|e| panic!("this test needs a WebGPU adapter: {e}"))
}

both_ways!(a_model_larger_than_a_binding_trains_as_on_the_cpu, async {
    let cfg = GptConfig { vocab: 300, context: 8, layers: 2, heads: 2, width: 32, bias: true };
    let corpus = Corpus::builtin();
    let params = cfg.init(3);
    let shape = TrainerShape::train(2, 4).with_micro_rows(1);
    let err = small_bindings().await.alloc(300 * 32, "the token embedding whole").unwrap_err().to_string();
    assert!(err.contains("`maxStorageBufferBindingSize` is 16384"), "the small limit is in force: {err}");
    let mut cpu = Trainer::with_shape(CpuBackend::new(), cfg, shape).unwrap();
    let mut gpu = Trainer::with_shape(small_bindings().await, cfg, shape).unwrap();
    // The whole model's gradient, tensor by tensor.
    let batch = crowdgrad_runtime::data::sample_batch(corpus.train(), 5, 0, 2, cfg.context);
    cpu.load(&params);
    gpu.load(&params);
    let (expected, actual) = (cpu.gradients(&batch).await.unwrap(), gpu.gradients(&batch).await.unwrap());
    for e in &cfg.layout().entries {
        let (x, y) = (&expected[e.offset..e.offset + e.len], &actual[e.offset..e.offset + e.len]);
        assert_close(&e.name, &[x.to_vec()], &[y.to_vec()]);
    }
    // Three AdamW steps: the same losses, and Δs that point the same way (AdamW's first
    // steps are nearly signs, which rounding flips where a gradient is about zero).
    let optim = InnerOptim { lr: 1e-2, ..InnerOptim::default() };
    let on_cpu = run_unit(&mut cpu, &params, corpus.train(), 9, 3, &optim).await.unwrap();
    let on_gpu = run_unit(&mut gpu, &params, corpus.train(), 9, 3, &optim).await.unwrap();
    let losses = |o: &crowdgrad_runtime::train::UnitOutcome| vec![o.trained.losses.clone()];
    assert_close("losses of 3 steps", &losses(&on_cpu), &losses(&on_gpu));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
    let (a, b) = (&on_cpu.delta, &on_gpu.delta);
    let cosine = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
    assert!(cosine > 0.999, "Δ after 3 steps: cosine {cosine}");
    // The update's selection over buffers of several pieces, chunks straddling them.
    let cfg_codec = CodecConfig { chunk: 1000, k: 40, bits: 8, decay: 0.9 };
    let mut rng = Rng::new(23);
    let residual = random(&mut rng, params.len(), 0.01);
    let moved: Vec<f32> = params.iter().map(|p| p - rng.normal() * 0.01).collect();
    let [cpu_table, cpu_residual] = pick(&mut CpuBackend::new(), &residual, &params, &moved, cfg_codec).await;
    let mut be = small_bindings().await;
    let parts = cfg.layout().parts();
    let upload = |be: &mut GpuBackend, data: &[f32]| {
        let v = be.alloc_parts(&parts, "test").unwrap();
        be.write(v, data);
        v
    };
    let (r, s, p) = (upload(&mut be, &residual), upload(&mut be, &params), upload(&mut be, &moved));
    let table = be.alloc(codec::picked_len(&cfg_codec, params.len()), "picked").unwrap();
    be.pick_top_k(table, r, s, p, cfg_codec);
    let (gpu_table, gpu_residual) = (be.read(table).await.unwrap(), be.read(r).await.unwrap());
    let words = codec::picked_words(&cfg_codec);
    for (c, (x, y)) in cpu_table.chunks(words).zip(gpu_table.chunks(words)).enumerate() {
        let count = x[1].to_bits() as usize;
        let indices = |t: &[f32]| t[2..2 + count].iter().map(|w| w.to_bits() & 0xffff).collect::<Vec<_>>();
        assert_eq!((x[0].to_bits(), y[1].to_bits() as usize), (y[0].to_bits(), count), "chunk {c}: scale, count");
        assert_eq!(indices(x), indices(y), "chunk {c}: indices");
    }
    assert_close("residual after the selection", &[cpu_residual], &[gpu_residual]);
});
