//! A new version computed and written off the coordinator's lock, on the committer
//! thread ([`CommitJob::run`]): the round's update ([`super::aggregate`]), the outer
//! Nesterov step, the published step (`[deltas]`), the held-out loss, the files and the
//! ledger row.
//!
//! The outer step runs tensor by tensor while the momentum file is written: each of the
//! current version's momentum tensors is read from its file, updated with the round's
//! update, and written, and the new weights of that tensor computed in place of its
//! update. So a commit holds the current weights, one buffer of the model's size (the
//! update, which becomes the new weights) and one tensor of momentum at a time; the
//! momentum is never in memory whole. A commit that cannot be written is computed again
//! when it is retried (the same inputs give the same version).
//!
//! With `[deltas]` on, the version published is not the outer step's exact result but
//! the current weights minus a compressed step: the top values of each chunk of (the
//! outer step + what earlier versions did not send), read and written chunk by chunk
//! (`v{N}.residual`). Contributors that hold the current version download that step
//! (`v{N}.delta`, about a tenth of the weights file) and get the new weights bit for bit;
//! what was not sent waits for the next version, as a contributor's own error feedback
//! does.

use std::sync::Arc;

use crowdgrad_runtime::checkpoint::hash_hex;
use crowdgrad_runtime::codec::{ChunkWriter, CodecConfig};
use crowdgrad_runtime::protocol::DeltaRef;

use super::Contribution;
use super::aggregate::{Weighted, aggregate, nesterov};
use crate::config::JobConfig;
use crate::eval::Evaluator;
use crate::federation::{EngineLink, Superseded, VersionEntry};
use crate::ledger::{Ledger, VersionRow, now_ms};
use crate::store::{Meta, Part, Store, WeightsFile};
use crowdgrad_runtime::identity::{hex, merkle_root};

/// What a commit needs besides the round: it travels with the [`CommitJob`] and comes
/// back with it, so that a commit in flight is one whose tools are away.
pub(super) struct Tools {
    /// Evaluates the held-out loss of the new weights.
    pub evaluator: Evaluator,
    /// The commit's own connection to the job's ledger.
    pub ledger: Ledger,
    /// The checkpoint folder, which holds the outer momentum of the current version.
    pub store: Store,
    /// The job (its name and model go into the files).
    pub job: JobConfig,
    /// A federated job's engine: each version is published there before the ledger
    /// records it, and other relays' versions are fetched from it.
    pub engine: Option<Arc<EngineLink>>,
}

/// A round taken for committing: the results it averages and where it starts from; kept
/// whole when its write fails, to be computed and written again.
pub(super) struct Draft {
    /// The new version.
    pub version: u64,
    /// The round it closes.
    pub round: u64,
    /// Every unit id issued before the next version is below this.
    pub units_below: u64,
    /// The results averaged into it.
    pub results: Vec<Contribution>,
    /// Mean last-step training loss of those results, nats.
    pub train_loss: Option<f32>,
    /// blake3 of those results' receipts.
    pub receipts: Vec<[u8; 32]>,
    /// The current version's weights, `[parameters]`.
    pub start: Arc<Vec<f32>>,
    /// A federated job's results stream sequence number of the last result it takes.
    pub results_through: u64,
}

/// What a commit makes: a version from a round, or (in a federated job) the version
/// another relay committed, adopted from the engine.
pub(super) enum Work {
    Round(Draft),
    Adopt(VersionEntry),
}

impl Work {
    /// The version it makes.
    pub fn version(&self) -> u64 {
        match self {
            Work::Round(draft) => draft.version,
            Work::Adopt(entry) => entry.version,
        }
    }

    /// Results averaged into it.
    pub fn results(&self) -> usize {
        match self {
            Work::Round(draft) => draft.results.len(),
            Work::Adopt(entry) => entry.results as usize,
        }
    }

    /// Mean last-step training loss of its results, nats.
    pub fn train_loss(&self) -> Option<f32> {
        match self {
            Work::Round(draft) => draft.train_loss,
            Work::Adopt(entry) => entry.train_loss,
        }
    }

    /// The results stream's sequence number of the last result in it (0 standalone).
    pub fn results_through(&self) -> u64 {
        match self {
            Work::Round(draft) => draft.results_through,
            Work::Adopt(entry) => entry.results_through,
        }
    }
}

/// One commit, to run off the coordinator's lock ([`CommitJob::run`]).
pub struct CommitJob {
    /// The coordinator it belongs to.
    pub(super) owner: u64,
    pub(super) tools: Tools,
    pub(super) work: Work,
}

/// A version as written: its weights, held-out loss, weights file, and how contributors
/// get and check it.
pub(super) struct NewVersion {
    pub params: Arc<Vec<f32>>,
    /// Held-out loss, nats.
    pub val_loss: f32,
    pub file: WeightsFile,
    pub published: Published,
}

/// What contributors check a version's weights by, and how they may get them from the
/// version before.
#[derive(Clone, Debug)]
pub struct Published {
    /// blake3 of the weights' values (`WorkUnit::params_hash`).
    pub params_hash: String,
    /// The step from the version before, when the version was published as one.
    pub delta: Option<DeltaRef>,
}

impl Published {
    /// What `version`'s weights `params` give, with its step as the store keeps it.
    pub fn of(version: u64, params: &[f32], store: &Store) -> std::io::Result<Published> {
        Ok(Published { params_hash: hash_hex(bytemuck::cast_slice(params)), delta: step_of(version, store)? })
    }
}

/// The steps to the last `count` versions up to `version` that the store keeps, oldest
/// first: what a restarted relay serves.
pub fn kept_steps(version: u64, count: usize, store: &Store) -> std::io::Result<Vec<(u64, DeltaRef)>> {
    let first = version.saturating_sub(count as u64 - 1);
    let mut steps = Vec::new();
    for v in first..=version {
        if let Some(step) = step_of(v, store)? {
            steps.push((v, step));
        }
    }
    Ok(steps)
}

/// `version`'s published step, where the store keeps one.
fn step_of(version: u64, store: &Store) -> std::io::Result<Option<DeltaRef>> {
    Ok(match version {
        0 => None,
        _ => store.delta_file(version)?.map(|(hash, bytes)| DeltaRef { from: version - 1, bytes, hash }),
    })
}

/// Why a commit wrote no version.
pub(super) struct Failure {
    /// What went wrong.
    pub message: String,
    /// Whether another relay of a federated job committed that version first: the
    /// round is given up, and that relay's version adopted.
    pub superseded: bool,
}

/// A commit that ran: its job back, and the version it wrote or why it could not.
pub struct Committed {
    pub(super) job: CommitJob,
    pub(super) written: Result<NewVersion, Failure>,
}

impl CommitJob {
    /// Averages the results (each Δ counts by its share of H, discounted when late,
    /// under the job's rule), takes the outer Nesterov step as the momentum file is
    /// written, evaluates the new weights, and writes them and the version's row; or
    /// fetches and records a version another relay committed.
    pub fn run(mut self) -> Committed {
        let written = match &self.work {
            Work::Round(draft) => compute_and_write(&mut self.tools, draft),
            Work::Adopt(entry) => super::adopted::fetch_and_record(&mut self.tools, entry),
        };
        let written = written
            .map_err(|e| Failure { superseded: e.downcast_ref::<Superseded>().is_some(), message: format!("{e:#}") });
        Committed { job: self, written }
    }
}

/// [`CommitJob::run`] of a round's `draft`.
fn compute_and_write(tools: &mut Tools, draft: &Draft) -> anyhow::Result<NewVersion> {
    let Tools { evaluator, ledger, store, job, engine } = tools;
    let a = &job.aggregation;
    let results: Vec<Weighted> =
        draft.results.iter().map(|c| Weighted { delta: &c.delta, share: c.share, weight: c.weight }).collect();
    // The round's update, which the outer step turns into the new weights in place.
    let mut next = vec![0f32; draft.start.len()];
    aggregate(a.rule, &results, a.trim, a.clip, &mut next);
    let (lr, mu, current) = (job.outer.lr, job.outer.momentum, draft.version - 1);
    let mut lost = false;
    let momentum_hash = store.write_momentum(&job.trained(), draft.version, &job.name, |entry| {
        let mut momentum = match store.momentum_tensor(current, entry) {
            // A momentum file deleted by hand: the outer momentum starts again from
            // zero, as a new job's does.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lost = true;
                vec![0u8; 4 * entry.len]
            }
            read => read?,
        };
        let range = entry.offset..entry.offset + entry.len;
        let (update, start) = (&mut next[range.clone()], &draft.start[range]);
        for ((m_bytes, g), p) in momentum.chunks_exact_mut(4).zip(update).zip(start) {
            let mut m = f32::from_le_bytes([m_bytes[0], m_bytes[1], m_bytes[2], m_bytes[3]]);
            *g = nesterov(*p, &mut m, *g, lr, mu);
            m_bytes.copy_from_slice(&m.to_le_bytes());
        }
        Ok(momentum)
    })?;
    if lost {
        tracing::error!(version = current, "its momentum file is gone; the outer momentum starts again from zero");
    }
    let delta = match job.deltas.codec() {
        Some(cfg) => {
            let (delta, lag) = publish(store, draft, &mut next, cfg)?;
            let norm = next.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>().sqrt();
            tracing::info!(
                version = draft.version,
                step_bytes = delta.bytes,
                "published as a step; the weights lag the exact outer steps by a residual of norm {lag:.4e} \
                     ({:.3} % of theirs)",
                100.0 * lag / norm.max(f64::MIN_POSITIVE)
            );
            Some(delta)
        }
        None => None,
    };
    let published = Published { params_hash: hash_hex(bytemuck::cast_slice(&next)), delta };
    let params = Arc::new(next);
    let val_loss = evaluator.loss(&params);
    let version = Written {
        version: draft.version,
        val_loss,
        train_loss: draft.train_loss,
        results: draft.results.len() as u32,
        round: draft.round,
        units_below: draft.units_below,
        committed_by: engine.as_ref().map(|e| e.me().to_string()).unwrap_or_default(),
    };
    let (round, receipts) = (Some(draft.round), &draft.receipts[..]);
    let file = persist(store, ledger, job, version, &params, &momentum_hash, round, receipts, |file, root| {
        // A federated job's version counts once the engine has it, before the ledger.
        let Some(engine) = engine else { return Ok(()) };
        let entry = VersionEntry {
            version: draft.version,
            weights: file.hash.clone(),
            momentum: momentum_hash.clone(),
            step: published.delta.as_ref().map(|d| d.hash.clone()),
            residual: store.part_hash(draft.version, Part::Residual)?.map(|(hash, _)| hash),
            committed_by: engine.me().to_string(),
            val_loss,
            train_loss: draft.train_loss,
            results: draft.results.len() as u32,
            results_through: draft.results_through,
            committed_ms: now_ms(),
            receipts_root: root.to_string(),
            receipts: sorted_hex(receipts),
        };
        engine.publish_version(&entry, store)
    })?;
    Ok(NewVersion { params, val_loss, file, published })
}

/// `receipts` as hex, ascending.
fn sorted_hex(receipts: &[[u8; 32]]) -> Vec<String> {
    let mut receipts = receipts.to_vec();
    receipts.sort_unstable();
    receipts.iter().map(|r| hex(r)).collect()
}

/// Turns `next`, the outer step's new weights, into the published ones: the current
/// weights minus a step of `cfg` of (the outer step + the carried residual), chunk by
/// chunk, writing the new residual and the step; returns the step's reference and the
/// new residual's L2 norm (how far the published weights are from where the exact
/// outer steps would have taken them).
fn publish(store: &Store, draft: &Draft, next: &mut [f32], cfg: CodecConfig) -> std::io::Result<(DeltaRef, f64)> {
    let (len, chunk, from) = (next.len(), cfg.chunk as usize, draft.version - 1);
    let mut carried = store.residual_reader(from, len)?;
    let mut residual = store.residual_writer(draft.version)?;
    let mut writer = ChunkWriter::new(len, cfg);
    let (mut step, mut sent) = (vec![0f32; chunk], vec![0f32; chunk]);
    let mut lag = 0f64;
    for (next, start) in next.chunks_mut(chunk).zip(draft.start.chunks(chunk)) {
        let (step, sent) = (&mut step[..next.len()], &mut sent[..next.len()]);
        match carried.as_mut() {
            Some(reader) => reader.read(step)?,
            None => step.fill(0.0),
        }
        step.iter_mut().zip(start.iter().zip(next.iter())).for_each(|(r, (s, n))| *r += s - n);
        writer.push(step);
        writer.sent(sent);
        // What contributors compute from the step: each value minus what it sends.
        next.iter_mut().zip(start.iter().zip(sent.iter())).for_each(|(n, (s, d))| *n = s - d);
        residual.write(step)?;
        lag += step.iter().map(|&r| f64::from(r) * f64::from(r)).sum::<f64>();
    }
    residual.finish()?;
    let (hash, bytes) = store.write_delta(draft.version, &writer.finish())?;
    Ok((DeltaRef { from, bytes, hash }, lag.sqrt()))
}

/// What a commit records about a version besides its tensors.
pub(super) struct Written {
    /// The version.
    pub version: u64,
    /// Its held-out loss, nats.
    pub val_loss: f32,
    /// Mean last-step training loss of its results, nats.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: u32,
    /// The round it closes (0 for version 0).
    pub round: u64,
    /// Every unit id issued so far, or issued before the next version, is below this.
    pub units_below: u64,
    /// In a federated job, this relay's public URL; empty for a relay alone.
    pub committed_by: String,
}

/// Writes a version's weights file durably (the Merkle root of `receipts`, their
/// blake3 hashes in ascending order, and the momentum file's blake3 in its metadata),
/// once its momentum file is written, then calls `before_row` with the file and that
/// root (hex), then writes its ledger row, closing `round`'s row when given. An error
/// from `before_row` leaves the row unwritten.
#[allow(clippy::too_many_arguments)]
pub(super) fn persist(
    store: &Store,
    ledger: &mut Ledger,
    job: &JobConfig,
    version: Written,
    params: &[f32],
    momentum_hash: &str,
    round: Option<u64>,
    receipts: &[[u8; 32]],
    before_row: impl FnOnce(&WeightsFile, &str) -> anyhow::Result<()>,
) -> anyhow::Result<WeightsFile> {
    let mut receipts = receipts.to_vec();
    receipts.sort_unstable();
    let receipts_root = hex(&merkle_root(&receipts));
    let meta = Meta {
        version: version.version,
        job: &job.name,
        receipts_root: &receipts_root,
        round: version.round,
        units_below: version.units_below,
        val_loss: version.val_loss,
        tokenizer: job.data.tokenizer.name(),
    };
    let file = store.write_weights(&job.trained(), params, &meta, momentum_hash)?;
    before_row(&file, &receipts_root)?;
    let row = VersionRow {
        version: version.version,
        weights_hash: file.hash.clone(),
        momentum_hash: momentum_hash.to_string(),
        val_loss: version.val_loss,
        train_loss: version.train_loss,
        results: version.results,
        committed_ms: now_ms(),
        receipts_root,
        committed_by: version.committed_by,
    };
    ledger.commit_version(&row, round, &receipts)?;
    Ok(file)
}
