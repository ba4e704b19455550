//! Startup: the checkpoint folder reconciled with the ledger, losing nothing the disk
//! kept.
//!
//! - Half-written temporary files are deleted.
//! - A version the ledger forgot (`kept = 0`) was being pruned: its files are deleted.
//! - A version the ledger does not know at all (its row was lost with the WAL, or the
//!   whole ledger was) is **adopted** when its two files check out
//!   ([`Store::read_unrecorded`]): its row is written again, with the held-out loss its
//!   metadata records (measured anew only for files written before it was recorded).
//!   Otherwise (and always in a federated job, whose versions are the engine's) its
//!   files are moved aside into `versions/unadopted/`.
//!
//! A kept version is never deleted here, and neither is anything the relay cannot
//! account for.

use crate::config::JobConfig;
use crate::eval::Evaluator;
use crate::ledger::{Ledger, VersionRow, now_ms};
use crate::store::Store;

/// What [`reconcile`] found and did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Versions whose rows were written again from their files.
    pub adopted: Vec<u64>,
    /// Versions whose files could not be adopted and were moved aside, with why.
    pub set_aside: Vec<(u64, String)>,
    /// Files deleted: temporary ones, and those of versions the ledger forgot.
    pub removed: usize,
    /// The highest round an adopted version closed (0: none).
    pub round: u64,
    /// The highest `units_below` of an adopted version: unit ids below it may have been
    /// issued already (0: none).
    pub units_below: u64,
}

/// Brings the ledger and the checkpoint folder into agreement, as the module says.
pub fn reconcile(
    store: &Store,
    ledger: &mut Ledger,
    job: &JobConfig,
    evaluator: &mut Evaluator,
) -> anyhow::Result<Recovered> {
    let listing = store.list()?;
    let mut recovered = Recovered::default();
    for path in &listing.temporary {
        store.remove_temporary(path)?;
        recovered.removed += 1;
    }
    let known = ledger.version_states()?;
    for &version in &listing.versions {
        match known.get(&version) {
            Some(true) => {}
            Some(false) => {
                store.remove(version)?;
                store.remove_step(version)?;
                recovered.removed += 2;
            }
            None => match store.read_unrecorded(&job.trained(), version) {
                // A federated relay's versions are the engine's: files it wrote for a
                // version the engine may not have (it died before publishing them)
                // are never adopted; the engine's version is fetched instead.
                Ok(_) if job.federation.is_some() => {
                    let aside = store.move_aside(version)?;
                    tracing::warn!(version, "moved an unpublished checkpoint into {}", aside.display());
                    let reason = "a federated relay takes its versions from the engine".to_string();
                    recovered.set_aside.push((version, reason));
                }
                Ok(found) => {
                    let row = VersionRow {
                        version,
                        weights_hash: found.weights_hash,
                        momentum_hash: found.momentum_hash,
                        val_loss: found.val_loss.unwrap_or_else(|| evaluator.loss(&std::sync::Arc::new(found.params))),
                        train_loss: None,
                        results: 0,
                        committed_ms: now_ms(),
                        receipts_root: found.receipts_root,
                        committed_by: String::new(),
                    };
                    ledger.commit_version(&row, None, &[])?;
                    tracing::warn!(version, "adopted a checkpoint the ledger had no row for");
                    recovered.adopted.push(version);
                    recovered.round = recovered.round.max(found.round);
                    recovered.units_below = recovered.units_below.max(found.units_below);
                }
                Err(e) => {
                    let aside = store.move_aside(version)?;
                    tracing::warn!(
                        version,
                        "moved a checkpoint the ledger does not know into {}: {e:#}",
                        aside.display()
                    );
                    recovered.set_aside.push((version, format!("{e:#}")));
                }
            },
        }
    }
    for path in &listing.unknown {
        tracing::warn!("left alone an unknown file in the checkpoint folder: {}", path.display());
    }
    Ok(recovered)
}
