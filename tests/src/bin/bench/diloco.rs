//! `bench diloco`: DiLoCo with K simulated contributors (native, CPU) on tinyshakespeare
//! against a single trainer at equal tokens, with and without compression.
//!
//! Each run is the relay's loop in miniature: every round, each of the K contributors
//! runs H inner steps of the job's AdamW from the current weights on its own shard
//! (`train_unit`, as real contributors do: AdamW's moments carry over from one
//! compressed unit to the next and start from zero for a dense one), compresses Δ with
//! its error-feedback residual when compression is on, and the mean of the decoded Δs
//! takes the relay's outer Nesterov step (`aggregate`, `outer_step`). A third run of
//! each K and H publishes each version as the relay does by default (`[deltas]`): the
//! weights before minus a top-k step of the outer step plus the relay's residual, which
//! is what contributors then train from. Two baselines at equal tokens: one trainer
//! on the same batch (K× the sequential steps) and one on K× the batch (the same steps,
//! data-parallel training). Flags: `--steps N` (the budget per run in
//! single-trainer steps of 12 × 64, default 1,000), `--k 4,8`, `--h 10,50,100`, `--plot PATH`,
//! `--codec CHUNK,K,BITS,DECAY` (default the job's, 4096,120,2,0.95), `--outer LR,MOMENTUM`
//! (default the relay's, 1.0,0.5).

use std::path::PathBuf;
use std::time::Instant;

use crowdgrad_relay::config::{DeltaConfig, OuterConfig};
use crowdgrad_relay::coordinator::{Rule, Weighted, aggregate, outer_step};
use crowdgrad_relay::delta::Delta;
use crowdgrad_runtime::codec::{self, CodecConfig};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Batch, Corpus, sample_batch};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Moments, Schedule, Trainer, train_unit};
use crowdgrad_tests::repo_root;

/// Windows per batch (nanoGPT's shakespeare_char batch size).
const ROWS: usize = 12;
/// Validation batches per evaluation.
const EVAL_BATCHES: usize = 20;
/// Evaluations per run.
const EVALS: usize = 10;

struct Flags {
    steps: u32,
    ks: Vec<usize>,
    hs: Vec<u32>,
    plot: PathBuf,
    dataset: PathBuf,
    codec: CodecConfig,
    /// How the relay publishes versions as steps.
    publish: CodecConfig,
    /// Outer Nesterov learning rate and momentum (default: the relay's).
    outer: (f32, f32),
}

fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Vec<T> {
    value.split(',').map(|v| v.parse().unwrap_or_else(|_| panic!("{flag} takes numbers, not {value:?}"))).collect()
}

fn flags(args: &[String]) -> Flags {
    let mut f = Flags {
        steps: 1000,
        ks: vec![4, 8],
        hs: vec![10, 50, 100],
        plot: repo_root().join("target/diloco.png"),
        dataset: repo_root().join("../shared/datasets/tinyshakespeare.txt"),
        codec: CodecConfig::default(),
        publish: DeltaConfig::default().codec().expect("published as steps by default"),
        outer: (OuterConfig::default().lr, OuterConfig::default().momentum),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => f.steps = list::<u32>(flag, value)[0],
            "--k" => f.ks = list(flag, value),
            "--h" => f.hs = list(flag, value),
            "--plot" => f.plot = PathBuf::from(value),
            "--dataset" => f.dataset = PathBuf::from(value),
            "--outer" => {
                let [lr, momentum] = list::<f32>(flag, value)[..] else { panic!("--outer takes LR,MOMENTUM") };
                f.outer = (lr, momentum);
            }
            "--codec" => {
                let [chunk, k, bits, decay] = list::<f32>(flag, value)[..] else {
                    panic!("--codec takes CHUNK,K,BITS,DECAY")
                };
                f.codec = CodecConfig { chunk: chunk as u32, k: k as u32, bits: bits as u8, decay };
                f.codec.validate().unwrap_or_else(|e| panic!("--codec: {e}"));
            }
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// A run's validation curve: `(tokens trained, val loss)`, and its upload bytes per
/// contributor per round (dense and as sent).
struct Curve {
    label: String,
    /// Inner steps per round (1 for the single trainer).
    h: u32,
    points: Vec<(f64, f32)>,
    bytes_sent: f64,
    bytes_dense: f64,
    /// For a run published as steps: the relay's residual's norm at the end, as a share
    /// of the weights' (how far the published weights are from the exact outer steps').
    lag: Option<f64>,
}

struct Setup {
    cfg: GptConfig,
    corpus: Corpus,
    val: Vec<Batch>,
    evaluator: Trainer<CpuBackend>,
    start: Vec<f32>,
}

impl Setup {
    fn val_loss(&mut self, params: &[f32]) -> f32 {
        self.evaluator.load(params);
        for (slot, batch) in self.val.iter().enumerate() {
            self.evaluator.forward(batch, slot);
        }
        let losses = pollster::block_on(self.evaluator.losses(0..EVAL_BATCHES)).expect("CPU readback");
        losses.iter().sum::<f32>() / EVAL_BATCHES as f32
    }
}

/// The job's inner learning rate over `steps` sequential inner steps: warmup 100, cosine
/// to a tenth.
fn schedule(steps: u32) -> Schedule {
    Schedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 100.min(steps / 10), decay_steps: steps }
}

/// One trainer, `steps` AdamW steps on batches of `rows` windows.
fn single(setup: &mut Setup, steps: u32, rows: usize) -> Curve {
    let mut trainer = Trainer::new(CpuBackend::new(), setup.cfg, rows, steps as usize).expect("trainer");
    trainer.load(&setup.start);
    let (optim, lr) = (InnerOptim::default(), schedule(steps));
    let start = setup.start.clone();
    let mut points = vec![(0.0, setup.val_loss(&start))];
    let every = (steps as usize / EVALS).max(1);
    for step in 0..steps {
        let batch = sample_batch(setup.corpus.train(), 1337, step, rows, setup.cfg.context);
        trainer.step(&batch, &optim, lr.lr(step), step as usize);
        if (step as usize + 1).is_multiple_of(every) {
            let params = pollster::block_on(trainer.params()).expect("CPU readback");
            points.push((((step + 1) as usize * rows * setup.cfg.context) as f64, setup.val_loss(&params)));
        }
    }
    let label = if rows == ROWS { "single trainer".into() } else { format!("single trainer, batch {rows}") };
    Curve { label, h: 1, points, bytes_sent: 0.0, bytes_dense: 0.0, lag: None }
}

/// K contributors, H inner steps a round, as many rounds as the token budget of `steps`
/// single-trainer steps allows; each version published as a step of `publish` when given.
fn diloco(
    setup: &mut Setup,
    flags: &Flags,
    (k, h): (usize, u32),
    codec: Option<CodecConfig>,
    publish: Option<CodecConfig>,
) -> Curve {
    let steps = flags.steps;
    let rounds = (steps as usize / (k * h as usize)).max(1);
    let n = setup.start.len();
    let mut trainers: Vec<_> =
        (0..k).map(|_| Trainer::new(CpuBackend::new(), setup.cfg, ROWS, h as usize + 1).expect("trainer")).collect();
    let mut residuals = vec![vec![0.0f32; n]; k];
    let (mut params, mut momentum) = (setup.start.clone(), vec![0.0f32; n]);
    let mut relay_residual = vec![0.0f32; n];
    let lr = schedule(rounds as u32 * h);
    let mut points = vec![(0.0, setup.val_loss(&params))];
    let (mut sent, every) = (0usize, (rounds / EVALS).max(1));
    for round in 0..rounds {
        let optim = InnerOptim { lr: lr.lr(round as u32 * h), ..InnerOptim::default() };
        let mut deltas = Vec::with_capacity(k);
        for (worker, trainer) in trainers.iter_mut().enumerate() {
            let shard = setup.corpus.shard(worker as u32, k as u32, setup.cfg.context + 1);
            let seed = (round * k + worker) as u64;
            // As the contributor loop does: a compressed unit carries AdamW's moments on
            // from the contributor's last unit, a dense one starts them from zero.
            let moments = if codec.is_some() { Moments::Carried } else { Moments::Fresh };
            pollster::block_on(train_unit(trainer, &params, shard, seed, h, &optim, moments)).expect("unit");
            let end = pollster::block_on(trainer.params()).expect("CPU readback");
            let delta: Vec<f32> = params.iter().zip(&end).map(|(s, e)| s - e).collect();
            deltas.push(match codec {
                Some(cfg) => {
                    let bytes = codec::encode(&delta, &mut residuals[worker], &cfg);
                    sent += bytes.len();
                    Delta::Dense(codec::decode(&bytes, n).expect("own encoding decodes"))
                }
                None => {
                    sent += 4 * n;
                    Delta::Dense(delta)
                }
            });
        }
        let results: Vec<Weighted> = deltas.iter().map(|d| Weighted { delta: d, share: 1.0, weight: 1.0 }).collect();
        let mut g = vec![0f32; n];
        aggregate(Rule::Mean, &results, 0.0, 0.0, &mut g);
        let before = params.clone();
        outer_step(&mut params, &mut momentum, &g, flags.outer.0, flags.outer.1);
        if let Some(cfg) = publish {
            let step: Vec<f32> = before.iter().zip(&params).map(|(b, p)| b - p).collect();
            let sent =
                codec::decode(&codec::encode(&step, &mut relay_residual, &cfg), n).expect("own encoding decodes");
            params.iter_mut().zip(before.iter().zip(&sent)).for_each(|(p, (b, s))| *p = b - s);
        }
        if (round + 1).is_multiple_of(every) || round + 1 == rounds {
            let tokens = (round + 1) * k * h as usize * ROWS * setup.cfg.context;
            points.push((tokens as f64, setup.val_loss(&params)));
        }
    }
    let kind = match (codec, publish) {
        (None, _) => "dense",
        (Some(_), None) => "compressed",
        (Some(_), Some(_)) => "compressed, steps",
    };
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    Curve {
        label: format!("K={k} H={h} {kind}"),
        h,
        points,
        bytes_sent: sent as f64 / (rounds * k) as f64,
        bytes_dense: 4.0 * n as f64,
        lag: publish.map(|_| norm(&relay_residual) / norm(&params)),
    }
}

/// The single trainer's loss at `tokens`, interpolated.
fn loss_at(curve: &Curve, tokens: f64) -> f32 {
    let p = &curve.points;
    let i = p.iter().position(|&(t, _)| t >= tokens).unwrap_or(p.len() - 1).max(1);
    let ((t0, l0), (t1, l1)) = (p[i - 1], p[i]);
    let w = ((tokens - t0) / (t1 - t0).max(1.0)).clamp(0.0, 1.0) as f32;
    l0 + w * (l1 - l0)
}

/// `diloco [--steps N] [--k LIST] [--h LIST] [--plot PATH] [--dataset PATH] [--codec C,K,B,D] [--outer LR,M]`.
pub fn run(args: &[String]) {
    let flags = flags(args);
    let cfg = GptConfig::shakespeare_char();
    let corpus = Corpus::from_file(&flags.dataset).unwrap_or_else(|e| panic!("{e} (pass --dataset PATH)"));
    let val = (0..EVAL_BATCHES).map(|i| sample_batch(corpus.val(), 7, i as u32, ROWS, cfg.context)).collect();
    let evaluator = Trainer::new(CpuBackend::new(), cfg, ROWS, EVAL_BATCHES).expect("evaluator");
    let mut setup = Setup { cfg, corpus, val, evaluator, start: cfg.init(1337) };
    let budget = flags.steps as usize * ROWS * cfg.context;
    println!(
        "DiLoCo on tinyshakespeare: {} parameters, batch {ROWS}×{}, budget {budget} tokens per run \
         ({} single-trainer steps); outer Nesterov lr {}, momentum {}; codec {:?}",
        setup.start.len(),
        cfg.context,
        flags.steps,
        flags.outer.0,
        flags.outer.1,
        flags.codec
    );
    let t0 = Instant::now();
    let baseline = single(&mut setup, flags.steps, ROWS);
    eprintln!("  single trainer: {:.0} s", t0.elapsed().as_secs_f64());
    // The data-parallel reading of "equal tokens": one trainer taking the K contributors'
    // batches together, so as many sequential steps as each contributor takes.
    let mut wide = Vec::new();
    for &k in &flags.ks {
        let t0 = Instant::now();
        wide.push((k, single(&mut setup, flags.steps / k as u32, k * ROWS)));
        eprintln!("  single trainer, batch {}: {:.0} s", k * ROWS, t0.elapsed().as_secs_f64());
    }
    let mut curves = Vec::new();
    for &k in &flags.ks {
        for &h in &flags.hs {
            let runs = [(None, None), (Some(flags.codec), None), (Some(flags.codec), Some(flags.publish))];
            for (codec, publish) in runs {
                let t0 = Instant::now();
                let curve = diloco(&mut setup, &flags, (k, h), codec, publish);
                eprintln!("  {}: {:.0} s", curve.label, t0.elapsed().as_secs_f64());
                curves.push((k, curve));
            }
        }
    }
    println!(
        "\n{:<28} {:>10} {:>9} {:>9} {:>8} {:>9} {:>8} {:>12} {:>10} {:>12} {:>8}",
        "run", "tokens", "val loss", "single", "gap", "K×batch", "gap", "bytes/round", "vs dense", "vs dense×H", "lag"
    );
    for (k, curve) in &curves {
        let &(tokens, loss) = curve.points.last().expect("evaluated");
        let reference = loss_at(&baseline, tokens);
        let wide_curve = &wide.iter().find(|(w, _)| w == k).expect("a wide baseline per K").1;
        let wide_reference = loss_at(wide_curve, tokens);
        let ratio = curve.bytes_dense / curve.bytes_sent;
        println!(
            "{:<28} {:>10.0} {:>9.4} {:>9.4} {:>7.2}% {:>9.4} {:>7.2}% {:>12.0} {:>9.0}× {:>11.0}× {:>8}",
            curve.label,
            tokens,
            loss,
            reference,
            100.0 * (loss - reference) / reference,
            wide_reference,
            100.0 * (loss - wide_reference) / wide_reference,
            curve.bytes_sent,
            ratio,
            ratio * curve.h as f64,
            curve.lag.map_or("-".into(), |lag| format!("{:.2}%", 100.0 * lag))
        );
    }
    println!(
        "\ngoal: compressed ≥ 100× fewer bytes than dense Δ (≥ 1000× counting H), val loss within 3% of the single \
         trainer (\"single\": batch {ROWS}, K× the steps; \"K×batch\": batch K×{ROWS}, the same steps); \
         \"steps\": versions published as top-k steps ({:?}), \"lag\": the relay's residual's norm over the weights'",
        flags.publish
    );
    let mut curves: Vec<Curve> = curves.into_iter().map(|(_, c)| c).collect();
    curves.splice(0..0, std::iter::once(baseline).chain(wide.into_iter().map(|(_, c)| c)));
    let series: Vec<_> = curves.iter().map(|c| (c.label.as_str(), c.points.as_slice())).collect();
    crate::plot::curves(&flags.plot, "held-out loss against tokens trained", &series);
    println!("plot: {}", flags.plot.display());
}
