//! Turning a round's results into one update, robustly, and the outer Nesterov step.
//!
//! Rules (`[aggregation] rule`): `mean` (weighted by each result's share of H, late
//! results discounted), `trimmed_mean` (per coordinate, the largest and smallest
//! `trim` fraction dropped), and `centered_clip` (Karimireddy et al. 2021: from the
//! coordinate-wise median, three steps of averaging the differences clipped to `clip` ×
//! their median length), which leaves honest results nearly untouched and bounds what
//! any one result can move.
//!
//! Results are read range by range ([`Delta::cursor`]): an encoded one is decoded a
//! chunk at a time, so the commit holds the round's updates as they came plus one
//! range of `K × RANGE` values, never K dense Δs. Each range's results are decoded in
//! parallel, and its coordinates reduced in parallel.

use rayon::prelude::*;

use crate::config::Rule;
use crate::delta::{Cursor, Delta};

/// Coordinates read from every result at a time.
const RANGE: usize = 256 * 1024;
/// Coordinates per parallel task within a range.
const CHUNK: usize = 16 * 1024;
/// Centered-clipping iterations.
const CLIP_ITERATIONS: usize = 3;

/// One accepted result: its Δ, its share of H, and that share discounted for staleness.
#[derive(Clone, Copy)]
pub struct Weighted<'a> {
    /// The Δ, the model's length.
    pub delta: &'a Delta,
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

/// The round's update under `rule` into `out` (`[parameters]`, overwritten); `trim` is
/// the trimmed mean's fraction per end and `clip` centered clipping's radius in median
/// distances.
pub fn aggregate(rule: Rule, results: &[Weighted], trim: f32, clip: f32, out: &mut [f32]) {
    match rule {
        Rule::Mean => mean(results, out),
        Rule::TrimmedMean => trimmed_mean(results, trim, out),
        Rule::CenteredClip => centered_clip(results, clip, out),
    }
}

/// One pass over every result, range by range: `visit(columns, out_range)`, where
/// `columns[r]` holds result `r`'s values at the coordinates of `out_range`.
fn each_range(results: &[Weighted], out: &mut [f32], mut visit: impl FnMut(&[Vec<f32>], &mut [f32])) {
    let mut cursors: Vec<Cursor> = results.iter().map(|r| r.delta.cursor()).collect();
    let mut columns: Vec<Vec<f32>> = results.iter().map(|_| Vec::new()).collect();
    for (index, out) in out.chunks_mut(RANGE).enumerate() {
        let range = index * RANGE..index * RANGE + out.len();
        columns.par_iter_mut().zip(cursors.par_iter_mut()).for_each(|(column, cursor)| {
            column.resize(range.len(), 0.0);
            cursor.fill(range.clone(), column);
        });
        visit(&columns, out);
    }
}

fn mean(results: &[Weighted], out: &mut [f32]) {
    let shares: f32 = results.iter().map(|r| r.share).sum();
    each_range(results, out, |columns, out| {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            out.fill(0.0);
            for (r, column) in results.iter().zip(columns) {
                let scale = r.weight / shares;
                out.iter_mut().zip(&column[c * CHUNK..]).for_each(|(g, d)| *g += scale * d);
            }
        });
    });
}

/// Per coordinate: `reduce` of the results' discounted values (in any order), into `out`.
fn per_coordinate(results: &[Weighted], out: &mut [f32], reduce: impl Fn(&mut [f32]) -> f32 + Sync) {
    let discounts: Vec<f32> = results.iter().map(Weighted::discount).collect();
    each_range(results, out, |columns, out| {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            let mut column = vec![0f32; results.len()];
            for (j, o) in out.iter_mut().enumerate() {
                let i = c * CHUNK + j;
                column.iter_mut().zip(columns).zip(&discounts).for_each(|((v, x), d)| *v = x[i] * d);
                *o = reduce(&mut column);
            }
        });
    });
}

fn trimmed_mean(results: &[Weighted], trim: f32, out: &mut [f32]) {
    let k = results.len();
    let cut = ((k as f32 * trim).floor() as usize).min(k.saturating_sub(1) / 2);
    per_coordinate(results, out, |column| {
        column.sort_unstable_by(f32::total_cmp);
        let kept = &column[cut..column.len() - cut];
        kept.iter().sum::<f32>() / kept.len().max(1) as f32
    });
}

/// The median of `values` (reordered), in linear time; 0 at once when fewer than half
/// are nonzero (the middle of the sorted values is then zeros), as most coordinates of
/// a round of top-k updates are.
fn median(values: &mut [f32]) -> f32 {
    let k = values.len();
    if k == 0 || 2 * values.iter().filter(|v| **v != 0.0).count() < k {
        return 0.0;
    }
    let (below, &mut upper, _) = values.select_nth_unstable_by(k / 2, f32::total_cmp);
    if k % 2 == 1 { upper } else { 0.5 * (below.iter().copied().fold(f32::NEG_INFINITY, f32::max) + upper) }
}

fn centered_clip(results: &[Weighted], clip: f32, center: &mut [f32]) {
    per_coordinate(results, center, median);
    let discounts: Vec<f32> = results.iter().map(Weighted::discount).collect();
    let k = results.len() as f32;
    for _ in 0..CLIP_ITERATIONS {
        // ‖discount·x − center‖ of each result, over every range.
        let mut squares = vec![0f64; results.len()];
        each_range(results, center, |columns, center| {
            let sums: Vec<f64> = columns
                .par_iter()
                .zip(&discounts)
                .map(|(x, d)| x.iter().zip(center.iter()).map(|(x, c)| ((x * d - c) * (x * d - c)) as f64).sum())
                .collect();
            squares.iter_mut().zip(sums).for_each(|(s, x)| *s += x);
        });
        let distances: Vec<f32> = squares.iter().map(|s| s.sqrt() as f32).collect();
        let radius = clip * median(&mut distances.clone());
        if radius <= 0.0 {
            break;
        }
        let scales: Vec<f32> = distances.iter().map(|&d| if d > radius { radius / d } else { 1.0 }).collect();
        each_range(results, center, |columns, center| {
            center.par_chunks_mut(CHUNK).enumerate().for_each(|(c, center)| {
                let mut step = vec![0f32; center.len()];
                for ((x, &s), d) in columns.iter().zip(&scales).zip(&discounts) {
                    step.iter_mut()
                        .zip(&x[c * CHUNK..])
                        .zip(center.iter())
                        .for_each(|((st, x), ce)| *st += s * (x * d - ce) / k);
                }
                center.iter_mut().zip(&step).for_each(|(ce, st)| *ce += st);
            });
        });
    }
}

/// Nesterov momentum on the round's update `g`: `m = μ·m + g`, `params -= lr·(g + μ·m)`
/// (all `[parameters]`), with [`nesterov`] on each coordinate.
pub fn outer_step(params: &mut [f32], momentum: &mut [f32], g: &[f32], lr: f32, mu: f32) {
    params.par_chunks_mut(CHUNK).zip(momentum.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(
        |((p, m), g)| {
            for ((p, m), g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
                *p = nesterov(*p, m, *g, lr, mu);
            }
        },
    );
}

/// The outer step on one coordinate: parameter `p`, its momentum `m` and the round's
/// update `g` there. Sets `m = μ·m + g` and returns the new parameter `p − lr·(g + μ·m)`.
#[inline]
pub fn nesterov(p: f32, m: &mut f32, g: f32, lr: f32, mu: f32) -> f32 {
    *m = mu * *m + g;
    p - lr * (g + mu * *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five honest results near 1.0 and one ×100 attacker.
    fn round() -> Vec<Delta> {
        let mut deltas: Vec<Delta> = (0..5).map(|i| Delta::Dense(vec![1.0 + 0.01 * i as f32; 10])).collect();
        deltas.push(Delta::Dense(vec![100.0; 10]));
        deltas
    }

    fn weighted(deltas: &[Delta]) -> Vec<Weighted<'_>> {
        deltas.iter().map(|delta| Weighted { delta, share: 1.0, weight: 1.0 }).collect()
    }

    fn run(rule: Rule, results: &[Weighted]) -> Vec<f32> {
        let mut out = vec![f32::NAN; results[0].delta.len()];
        aggregate(rule, results, 0.2, 2.0, &mut out);
        out
    }

    #[test]
    fn the_mean_is_dragged_and_the_robust_rules_are_not() {
        let deltas = round();
        let results = weighted(&deltas);
        let mean = run(Rule::Mean, &results);
        assert!(mean[0] > 10.0, "one attacker moves the mean: {}", mean[0]);
        for rule in [Rule::TrimmedMean, Rule::CenteredClip] {
            let g = run(rule, &results);
            assert!(g.iter().all(|&v| (0.99..1.2).contains(&v)), "{rule:?}: {g:?}");
        }
    }

    #[test]
    fn honest_rounds_come_out_near_their_mean() {
        let deltas: Vec<Delta> = (0..6).map(|i| Delta::Dense(vec![0.5 + 0.02 * i as f32; 7])).collect();
        let results = weighted(&deltas);
        let mean = run(Rule::Mean, &results);
        for rule in [Rule::TrimmedMean, Rule::CenteredClip] {
            let g = run(rule, &results);
            assert!(g.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 0.02), "{rule:?}: {g:?} vs {mean:?}");
        }
    }

    #[test]
    fn late_results_count_less_in_the_mean() {
        let deltas = [Delta::Dense(vec![1.0f32; 3]), Delta::Dense(vec![1.0f32; 3])];
        let results = [
            Weighted { delta: &deltas[0], share: 1.0, weight: 1.0 },
            Weighted { delta: &deltas[1], share: 1.0, weight: 0.5 },
        ];
        assert_eq!(run(Rule::Mean, &results), vec![0.75; 3]);
    }

    #[test]
    fn encoded_results_aggregate_as_their_dense_forms_over_many_ranges() {
        use crowdgrad_runtime::codec::{self, CodecConfig};
        let n = 2 * RANGE + 12_345;
        let cfg = CodecConfig { chunk: 4096, k: 1024, bits: 8, decay: 1.0 };
        let (mut encoded, mut dense) = (Vec::new(), Vec::new());
        for r in 0..5u32 {
            let values: Vec<f32> =
                (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ r) % 1000) as f32 - 500.0).collect();
            let bytes = axum::body::Bytes::from(codec::encode(&values, &mut vec![0.0; n], &cfg));
            let delta = Delta::encoded(bytes, n).expect("decodes");
            dense.push(Delta::Dense(delta.to_dense()));
            encoded.push(delta);
        }
        for rule in [Rule::Mean, Rule::TrimmedMean, Rule::CenteredClip] {
            let (a, b) = (run(rule, &weighted(&encoded)), run(rule, &weighted(&dense)));
            assert_eq!(a, b, "{rule:?}");
        }
    }

    #[test]
    fn a_median_of_mostly_zeros_is_zero() {
        assert_eq!(median(&mut [0.0, 3.0, 0.0, -2.0, 0.0]), 0.0);
        assert_eq!(median(&mut [0.0, 3.0, 1.0, 2.0]), 1.5);
        assert_eq!(median(&mut [5.0, 3.0, 0.0]), 3.0);
    }

    #[test]
    fn the_outer_step_is_nesterov() {
        let (mut p, mut m) = (vec![1.0f32], vec![0.5f32]);
        outer_step(&mut p, &mut m, &[0.2], 0.7, 0.9);
        assert!((m[0] - 0.65).abs() < 1e-6);
        assert!((p[0] - (1.0 - 0.7 * (0.2 + 0.9 * 0.65))).abs() < 1e-6);
    }
}
