//! Every CPU backward against central finite differences, and the whole model's
#![cfg(not(target_arch = "wasm32"))]
//! gradient against finite differences of its loss.

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Corpus, sample_batch};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::ops;
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::Trainer;

const EPS: f64 = 1e-3;

fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() * scale).collect()
}

/// Checks `analytic` against the central difference of `loss` at each of `x`'s
/// coordinates; `loss` is a scalar function evaluated in f64 over an f32 input.
fn check(name: &str, x: &[f32], analytic: &[f32], loss: impl Fn(&[f32]) -> f64, tol: f64) {
    let mut x = x.to_vec();
    let mut worst = 0f64;
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + EPS as f32;
        let up = loss(&x);
        x[i] = orig - EPS as f32;
        let down = loss(&x);
        x[i] = orig;
        let numeric = (up - down) / (2.0 * EPS);
        let err = (numeric - analytic[i] as f64).abs() / (numeric.abs() + analytic[i].abs() as f64).max(1e-2);
        worst = worst.max(err);
    }
    assert!(worst < tol, "{name}: worst relative error {worst:e} ≥ {tol:e}");
}

/// A random projection turns each op's output into a scalar loss `Σ out · w`.
fn project(out: &[f32], w: &[f32]) -> f64 {
    out.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    let (r, k, n) = (3, 5, 4);
    let (inp, weight, bias, proj) = (
        random(&mut rng, r * k, 1.0),
        random(&mut rng, n * k, 1.0),
        random(&mut rng, n, 1.0),
        random(&mut rng, r * n, 1.0),
    );
    let forward = |inp: &[f32], weight: &[f32], bias: &[f32]| {
        let mut out = vec![0.0; r * n];
        ops::matmul_forward(&mut out, inp, weight, Some(bias), r, k, n);
        project(&out, &proj)
    };
    let mut dinp = vec![0.0; r * k];
    ops::matmul_backward_input(&mut dinp, &proj, &weight, r, k, n);
    check("matmul dinp", &inp, &dinp, |x| forward(x, &weight, &bias), 1e-2);
    let mut dweight = vec![0.0; n * k];
    ops::matmul_backward_weight(&mut dweight, &proj, &inp, r, k, n);
    check("matmul dweight", &weight, &dweight, |x| forward(&inp, x, &bias), 1e-2);
    let mut dbias = vec![0.0; n];
    ops::bias_backward(&mut dbias, &proj, r, n);
    check("matmul dbias", &bias, &dbias, |x| forward(&inp, &weight, x), 1e-2);
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let (inp, proj) = (random(&mut rng, 50, 2.0), random(&mut rng, 50, 1.0));
    let mut dinp = vec![0.0; 50];
    ops::gelu_backward(&mut dinp, &inp, &proj);
    check(
        "gelu",
        &inp,
        &dinp,
        |x| {
            let mut out = vec![0.0; 50];
            ops::gelu_forward(&mut out, x);
            project(&out, &proj)
        },
        1e-2,
    );
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let (vocab, dim, tokens) = (6, 4, vec![0u32, 3, 3, 5, 1]);
    let (table, proj) = (random(&mut rng, vocab * dim, 1.0), random(&mut rng, tokens.len() * dim, 1.0));
    let mut dtable = vec![0.0; vocab * dim];
    ops::embedding_backward(&mut dtable, &tokens, &proj, vocab, dim);
    check(
        "embedding",
        &table,
        &dtable,
        |x| {
            let mut out = vec![0.0; tokens.len() * dim];
            ops::embedding_forward(&mut out, &tokens, x, vocab, dim);
            project(&out, &proj)
        },
        1e-2,
    );
}

#[test]
fn softmax_xent_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    let (rows, vocab, targets) = (3, 7, vec![2u32, 6, 0]);
    let logits = random(&mut rng, rows * vocab, 2.0);
    let mean_loss = |z: &[f32]| {
        let (mut probs, mut losses) = (vec![0.0; rows * vocab], vec![0.0; rows]);
        ops::softmax_xent_forward(&mut probs, &mut losses, z, &targets, rows, vocab);
        losses.iter().map(|&l| l as f64).sum::<f64>() / rows as f64
    };
    let (mut probs, mut losses) = (vec![0.0; rows * vocab], vec![0.0; rows]);
    ops::softmax_xent_forward(&mut probs, &mut losses, &logits, &targets, rows, vocab);
    let mut dlogits = vec![0.0; rows * vocab];
    ops::softmax_xent_backward(&mut dlogits, &probs, &targets, rows, vocab, rows);
    check("softmax_xent", &logits, &dlogits, mean_loss, 1e-2);
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let mut rng = Rng::new(5);
    let (b, t, c, vocab) = (2, 3, 4, 5);
    let tokens = vec![0u32, 4, 4, 1, 2, 0];
    let (wte, wpe, proj) =
        (random(&mut rng, vocab * c, 1.0), random(&mut rng, t * c, 1.0), random(&mut rng, b * t * c, 1.0));
    let forward = |wte: &[f32], wpe: &[f32]| {
        let mut out = vec![0.0; b * t * c];
        ops::encoder_forward(&mut out, &tokens, wte, wpe, t, c, vocab);
        project(&out, &proj)
    };
    let mut dwte = vec![0.0; vocab * c];
    ops::embedding_backward(&mut dwte, &tokens, &proj, vocab, c);
    check("encoder dwte", &wte, &dwte, |x| forward(x, &wpe), 1e-2);
    let mut dwpe = vec![0.0; t * c];
    ops::position_backward(&mut dwpe, &proj, b, t, c);
    check("encoder dwpe", &wpe, &dwpe, |x| forward(&wte, x), 1e-2);
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(6);
    let (rows, c) = (3, 8);
    let (inp, weight, bias, proj) = (
        random(&mut rng, rows * c, 2.0),
        random(&mut rng, c, 1.0),
        random(&mut rng, c, 1.0),
        random(&mut rng, rows * c, 1.0),
    );
    let forward = |inp: &[f32], weight: &[f32], bias: &[f32]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        ops::layernorm_forward(&mut out, &mut mean, &mut rstd, inp, weight, Some(bias), rows, c);
        project(&out, &proj)
    };
    let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    ops::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &weight, Some(&bias), rows, c);
    let (mut dinp, mut dweight, mut dbias) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    ops::layernorm_backward(&mut dinp, &mut dweight, Some(&mut dbias), &proj, &inp, &weight, &mean, &rstd, rows, c);
    check("layernorm dinp", &inp, &dinp, |x| forward(x, &weight, &bias), 1e-2);
    check("layernorm dweight", &weight, &dweight, |x| forward(&inp, x, &bias), 1e-2);
    check("layernorm dbias", &bias, &dbias, |x| forward(&inp, &weight, x), 1e-2);
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(7);
    let (b, t, c, heads) = (2, 4, 6, 2);
    let (qkv, proj) = (random(&mut rng, b * t * 3 * c, 1.0), random(&mut rng, b * t * c, 1.0));
    let forward = |qkv: &[f32]| {
        let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * heads * t * t]);
        ops::attention_forward(&mut out, &mut att, qkv, b, t, c, heads);
        project(&out, &proj)
    };
    let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * heads * t * t]);
    ops::attention_forward(&mut out, &mut att, &qkv, b, t, c, heads);
    let mut dqkv = vec![0.0; b * t * 3 * c];
    ops::attention_backward(&mut dqkv, &proj, &qkv, &att, b, t, c, heads);
    check("attention dqkv", &qkv, &dqkv, forward, 1e-2);
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    // The loss is an f32 mean near 5.5 (≈5e-7 resolution): a wider step keeps the
    // difference quotient's rounding noise well below the tolerance.
    const MODEL_EPS: f64 = 1e-2;
    let cfg = GptConfig { vocab: 256, context: 4, layers: 2, heads: 2, width: 8, bias: true };
    let corpus = Corpus::builtin();
    let batch = sample_batch(corpus.train(), 1, 0, 2, cfg.context);
    // Larger weights than the 0.02 init, so every path carries a measurable gradient.
    let mut rng = Rng::new(3);
    let params: Vec<f32> = cfg.init(3).iter().map(|p| p + rng.normal() * 0.3).collect();
    let mut trainer = Trainer::new(CpuBackend::new(), cfg, 2, 1).unwrap();
    trainer.load(&params);
    let grads = pollster::block_on(trainer.gradients(&batch)).unwrap();
    let mut loss_at = |p: &[f32]| {
        trainer.load(p);
        trainer.forward(&batch, 0);
        pollster::block_on(trainer.losses(0..1)).unwrap()[0] as f64
    };
    // A spread of coordinates in every tensor (for the token table, rows of the batch's
    // tokens: the others have zero gradient).
    let layout = cfg.layout();
    let mut p = params.clone();
    let mut worst = (0f64, String::new());
    for e in &layout.entries {
        let picks: Vec<usize> = if e.name == "transformer.wte.weight" {
            batch.tokens.iter().map(|&t| e.offset + t as usize * cfg.width + (t as usize % cfg.width)).collect()
        } else {
            (0..6).map(|i| e.offset + i * e.len / 6).collect()
        };
        for i in picks {
            let orig = p[i];
            p[i] = orig + MODEL_EPS as f32;
            let up = loss_at(&p);
            p[i] = orig - MODEL_EPS as f32;
            let down = loss_at(&p);
            p[i] = orig;
            let numeric = (up - down) / (2.0 * MODEL_EPS);
            let err = (numeric - grads[i] as f64).abs() / (numeric.abs() + grads[i].abs() as f64).max(1e-2);
            if err > worst.0 {
                worst = (err, format!("{} [{}]: numeric {numeric:e}, analytic {:e}", e.name, i - e.offset, grads[i]));
            }
        }
    }
    assert!(worst.0 < 2e-2, "model gradient: worst relative error {:e} at {}", worst.0, worst.1);
}
