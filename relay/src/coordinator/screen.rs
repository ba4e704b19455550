//! The screen: the cheap checks every result passes before it is replayed or
//! loss-checked, and the history they judge by.
//!
//! - **Norm bound**: ‖Δ‖ per step share must be within `max_norm_ratio`× of the median of
//!   recently accepted results of the same kind (dense and compressed Δs have different
//!   norms), either way.
//! - **Duplicates**: a Δ whose blake3 was seen before is a replay or a copy; one whose
//!   [`Sketch`] is within a cosine of [`NEAR_COPY_COSINE`] of a recent one is a near-copy.
//!
//! It also keeps the projections of recently accepted compressed replays, which bound a
//! replayed compressed Δ from above ([`Screen::projection_median`]): an honest one's
//! projection grows with what its residual has saved up, about alike for every
//! contributor at a time, while a Δ scaled up by a liar multiplies it.
//!
//! The history lives in the ledger too ([`Ledger::add_screen_value`],
//! [`Ledger::add_screen_delta`]), so a restarted relay judges its first results by the
//! same scale as its last ones. Until it has [`MIN_NORMS`] norms of a kind, the screen
//! has no scale for that kind, and [`Screen::has_scale`] says so: the coordinator then
//! replays every such result.

use std::collections::{HashSet, VecDeque};

use super::sketch::Sketch;
use crate::ledger::Ledger;

/// Accepted results whose norms (and projections) the screen remembers, per series.
const RECENT_VALUES: usize = 64;
/// Norms of a kind needed before the norm bound applies.
pub(super) const MIN_NORMS: usize = 4;
/// Accepted Δs whose hashes the screen remembers.
const RECENT_HASHES: usize = 4096;
/// Accepted Δs whose sketches the screen compares new ones with.
const RECENT_SKETCHES: usize = 256;
/// A Δ whose sketch is this close to a recent one's is a near-copy.
pub(super) const NEAR_COPY_COSINE: f32 = 0.995;

/// Whether a Δ came dense or compressed: their norms are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A full f32 Δ.
    Dense,
    /// A top-k Δ with its contributor's residual folded in.
    Compressed,
}

/// The series of figures the screen keeps, by their index in the ledger.
const DENSE_NORMS: usize = 0;
const COMPRESSED_NORMS: usize = 1;
const PROJECTIONS: usize = 2;

impl Kind {
    /// The series of this kind's norms.
    fn norms(self) -> usize {
        match self {
            Kind::Dense => DENSE_NORMS,
            Kind::Compressed => COMPRESSED_NORMS,
        }
    }
}

/// The screen's history: recent norms per kind and projections, hashes and sketches.
pub(super) struct Screen {
    /// Oldest first: ‖Δ‖ / step share of recently accepted dense and compressed results,
    /// and the projections of recently accepted compressed replays.
    series: [VecDeque<f32>; 3],
    hashes: HashSet<[u8; 32]>,
    hash_order: VecDeque<[u8; 32]>,
    /// Sketches of recently screened Δs, with their units.
    sketches: VecDeque<(u64, Sketch)>,
}

impl Screen {
    /// The history the ledger kept, newest last.
    pub fn load(ledger: &Ledger) -> anyhow::Result<Screen> {
        let mut screen = Screen {
            series: Default::default(),
            hashes: HashSet::new(),
            hash_order: VecDeque::new(),
            sketches: VecDeque::new(),
        };
        for (index, series) in screen.series.iter_mut().enumerate() {
            *series = ledger.screen_values(index as u8, RECENT_VALUES)?.into();
        }
        let deltas = ledger.screen_deltas(RECENT_HASHES)?;
        let sketches_from = deltas.len().saturating_sub(RECENT_SKETCHES);
        for (i, delta) in deltas.into_iter().enumerate() {
            screen.insert_hash(delta.hash);
            if i >= sketches_from
                && let Some(sketch) = Sketch::from_values(&delta.sketch)
            {
                screen.sketches.push_back((delta.unit, sketch));
            }
        }
        Ok(screen)
    }

    /// Whether the norm bound has a scale for `kind` yet.
    pub fn has_scale(&self, kind: Kind) -> bool {
        self.series[kind.norms()].len() >= MIN_NORMS
    }

    /// The median ‖Δ‖ of recent results of `kind`, scaled to a step share of `share`,
    /// once [`MIN_NORMS`] have been seen.
    pub fn norm_median(&self, kind: Kind, share: f32) -> Option<f32> {
        self.median(kind.norms()).map(|m| m * share)
    }

    /// The median projection of recently accepted compressed replays, once
    /// [`MIN_NORMS`] have been seen.
    pub fn projection_median(&self) -> Option<f32> {
        self.median(PROJECTIONS)
    }

    fn median(&self, series: usize) -> Option<f32> {
        let values = &self.series[series];
        if values.len() < MIN_NORMS {
            return None;
        }
        let mut sorted: Vec<f32> = values.iter().copied().collect();
        sorted.sort_unstable_by(f32::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    /// Counts an accepted result's ‖Δ‖ per step share, here and in the ledger.
    pub fn record_norm(&mut self, ledger: &Ledger, kind: Kind, norm_per_share: f32) -> anyhow::Result<()> {
        self.record(ledger, kind.norms(), norm_per_share)
    }

    /// Counts an accepted compressed replay's projection, here and in the ledger.
    pub fn record_projection(&mut self, ledger: &Ledger, projection: f32) -> anyhow::Result<()> {
        self.record(ledger, PROJECTIONS, projection)
    }

    fn record(&mut self, ledger: &Ledger, series: usize, value: f32) -> anyhow::Result<()> {
        let values = &mut self.series[series];
        values.push_back(value);
        if values.len() > RECENT_VALUES {
            values.pop_front();
        }
        ledger.add_screen_value(series as u8, value)
    }

    /// Whether a Δ of this hash was screened before.
    pub fn seen(&self, hash: &[u8; 32]) -> bool {
        self.hashes.contains(hash)
    }

    /// Whether `sketch` is a near-copy of a recent Δ other than `twin`'s.
    pub fn near_copy(&self, sketch: &Sketch, twin: Option<u64>) -> bool {
        self.sketches.iter().any(|(u, s)| Some(*u) != twin && s.cosine(sketch) > NEAR_COPY_COSINE)
    }

    /// Remembers a screened Δ's hash and sketch, here and in the ledger, so that replays
    /// and copies of it are refused.
    pub fn remember(&mut self, ledger: &Ledger, unit: u64, hash: [u8; 32], sketch: &Sketch) -> anyhow::Result<()> {
        self.sketches.push_back((unit, sketch.clone()));
        if self.sketches.len() > RECENT_SKETCHES {
            self.sketches.pop_front();
        }
        self.insert_hash(hash);
        ledger.add_screen_delta(unit, &hash, sketch.values())
    }

    /// Drops from the ledger what the screen no longer looks at.
    pub fn prune(ledger: &Ledger) -> anyhow::Result<()> {
        ledger.prune_screen(RECENT_VALUES, RECENT_HASHES)
    }

    fn insert_hash(&mut self, hash: [u8; 32]) {
        if self.hashes.insert(hash) {
            self.hash_order.push_back(hash);
        }
        if self.hash_order.len() > RECENT_HASHES
            && let Some(old) = self.hash_order.pop_front()
        {
            self.hashes.remove(&old);
        }
    }
}
