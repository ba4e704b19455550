//! Turning a round's results into one update, robustly, and the outer Nesterov step.
//!
//! Rules (`[aggregation] rule`): `mean` (weighted by each result's share of H, late
//! results discounted), `trimmed_mean` (per coordinate, the largest and smallest
//! `trim` fraction dropped), and `centered_clip` (Karimireddy et al. 2021: from the
//! coordinate-wise median, three steps of averaging the differences clipped to `clip` ×
//! their median length), which leaves honest results nearly untouched and bounds what
//! any one result can move.

use rayon::prelude::*;

use crate::config::Rule;

/// Coordinates per parallel chunk.
const CHUNK: usize = 64 * 1024;
/// Centered-clipping iterations.
const CLIP_ITERATIONS: usize = 3;

/// One accepted result: its Δ, its share of H, and that share discounted for staleness.
#[derive(Clone, Copy)]
pub struct Weighted<'a> {
    /// The decoded Δ, the model's length.
    pub delta: &'a [f32],
    /// Steps run / H.
    pub share: f32,
    /// `share` × the staleness discount.
    pub weight: f32,
}

impl Weighted<'_> {
    /// The factor the robust rules scale Δ by: its staleness discount.
    fn discount(&self) -> f32 {
        if self.share > 0.0 { self.weight / self.share } else { 0.0 }
    }
}

/// The round's update under `rule`; `trim` is the trimmed mean's fraction per end and
/// `clip` centered clipping's radius in median distances.
pub fn aggregate(rule: Rule, results: &[Weighted], trim: f32, clip: f32) -> Vec<f32> {
    let n = results.first().map_or(0, |r| r.delta.len());
    match rule {
        Rule::Mean => mean(results, n),
        Rule::TrimmedMean => trimmed_mean(results, n, trim),
        Rule::CenteredClip => centered_clip(results, n, clip),
    }
}

fn mean(results: &[Weighted], n: usize) -> Vec<f32> {
    let shares: f32 = results.iter().map(|r| r.share).sum();
    let mut g = vec![0f32; n];
    g.par_chunks_mut(CHUNK).enumerate().for_each(|(c, g)| {
        for r in results {
            let scale = r.weight / shares;
            g.iter_mut().zip(&r.delta[c * CHUNK..]).for_each(|(g, d)| *g += scale * d);
        }
    });
    g
}

/// Per coordinate: `reduce` of the results' discounted values (in any order).
fn per_coordinate(results: &[Weighted], n: usize, reduce: impl Fn(&mut [f32]) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut column = vec![0f32; results.len()];
        for (j, o) in out.iter_mut().enumerate() {
            let i = c * CHUNK + j;
            column.iter_mut().zip(results).for_each(|(v, r)| *v = r.delta[i] * r.discount());
            *o = reduce(&mut column);
        }
    });
    out
}

fn trimmed_mean(results: &[Weighted], n: usize, trim: f32) -> Vec<f32> {
    let k = results.len();
    let cut = ((k as f32 * trim).floor() as usize).min(k.saturating_sub(1) / 2);
    per_coordinate(results, n, |column| {
        column.sort_unstable_by(f32::total_cmp);
        let kept = &column[cut..column.len() - cut];
        kept.iter().sum::<f32>() / kept.len().max(1) as f32
    })
}

/// The median of `values` (reordered), in linear time.
fn median(values: &mut [f32]) -> f32 {
    let k = values.len();
    if k == 0 {
        return 0.0;
    }
    let (below, &mut upper, _) = values.select_nth_unstable_by(k / 2, f32::total_cmp);
    if k % 2 == 1 { upper } else { 0.5 * (below.iter().copied().fold(f32::NEG_INFINITY, f32::max) + upper) }
}

fn centered_clip(results: &[Weighted], n: usize, clip: f32) -> Vec<f32> {
    let mut center = per_coordinate(results, n, median);
    for _ in 0..CLIP_ITERATIONS {
        let distances: Vec<f32> = results
            .iter()
            .map(|r| {
                let d = r.discount();
                r.delta.iter().zip(&center).map(|(x, c)| (x * d - c) * (x * d - c)).sum::<f32>().sqrt()
            })
            .collect();
        let radius = clip * median(&mut distances.clone());
        if radius <= 0.0 {
            break;
        }
        let scales: Vec<f32> = distances.iter().map(|&d| if d > radius { radius / d } else { 1.0 }).collect();
        let k = results.len() as f32;
        center.par_chunks_mut(CHUNK).enumerate().for_each(|(c, center)| {
            let mut step = vec![0f32; center.len()];
            for (r, &s) in results.iter().zip(&scales) {
                let d = r.discount();
                step.iter_mut()
                    .zip(&r.delta[c * CHUNK..])
                    .zip(center.iter())
                    .for_each(|((st, x), ce)| *st += s * (x * d - ce) / k);
            }
            center.iter_mut().zip(&step).for_each(|(ce, st)| *ce += st);
        });
    }
    center
}

/// Nesterov momentum on the round's update `g`: `m = μ·m + g`, `params -= lr·(g + μ·m)`.
pub fn outer_step(params: &mut [f32], momentum: &mut [f32], g: &[f32], lr: f32, mu: f32) {
    params.par_chunks_mut(CHUNK).zip(momentum.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(
        |((p, m), g)| {
            for ((p, m), g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
                *m = mu * *m + g;
                *p -= lr * (g + mu * *m);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five honest results near 1.0 and one ×100 attacker.
    fn round() -> Vec<Vec<f32>> {
        let mut deltas: Vec<Vec<f32>> = (0..5).map(|i| vec![1.0 + 0.01 * i as f32; 10]).collect();
        deltas.push(vec![100.0; 10]);
        deltas
    }

    fn weighted(deltas: &[Vec<f32>]) -> Vec<Weighted<'_>> {
        deltas.iter().map(|d| Weighted { delta: d, share: 1.0, weight: 1.0 }).collect()
    }

    #[test]
    fn the_mean_is_dragged_and_the_robust_rules_are_not() {
        let deltas = round();
        let results = weighted(&deltas);
        let mean = aggregate(Rule::Mean, &results, 0.2, 2.0);
        assert!(mean[0] > 10.0, "one attacker moves the mean: {}", mean[0]);
        for rule in [Rule::TrimmedMean, Rule::CenteredClip] {
            let g = aggregate(rule, &results, 0.2, 2.0);
            assert!(g.iter().all(|&v| (0.99..1.2).contains(&v)), "{rule:?}: {g:?}");
        }
    }

    #[test]
    fn honest_rounds_come_out_near_their_mean() {
        let deltas: Vec<Vec<f32>> = (0..6).map(|i| vec![0.5 + 0.02 * i as f32; 7]).collect();
        let results = weighted(&deltas);
        let mean = aggregate(Rule::Mean, &results, 0.2, 2.0);
        for rule in [Rule::TrimmedMean, Rule::CenteredClip] {
            let g = aggregate(rule, &results, 0.2, 2.0);
            assert!(g.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 0.02), "{rule:?}: {g:?} vs {mean:?}");
        }
    }

    #[test]
    fn late_results_count_less_in_the_mean() {
        let deltas = [vec![1.0f32; 3], vec![1.0f32; 3]];
        let results = [
            Weighted { delta: &deltas[0], share: 1.0, weight: 1.0 },
            Weighted { delta: &deltas[1], share: 1.0, weight: 0.5 },
        ];
        assert_eq!(aggregate(Rule::Mean, &results, 0.0, 2.0), vec![0.75; 3]);
    }

    #[test]
    fn the_outer_step_is_nesterov() {
        let (mut p, mut m) = (vec![1.0f32], vec![0.5f32]);
        outer_step(&mut p, &mut m, &[0.2], 0.7, 0.9);
        assert!((m[0] - 0.65).abs() < 1e-6);
        assert!((p[0] - (1.0 - 0.7 * (0.2 + 0.9 * 0.65))).abs() < 1e-6);
    }
}
