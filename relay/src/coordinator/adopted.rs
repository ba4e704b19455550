//! A version another relay of a federated job committed, adopted on the committer
//! thread as one of this relay's own commits would be written: its files fetched from
//! the engine into the store (each checked against its blake3), then its ledger row.

use std::sync::Arc;

use crowdgrad_runtime::identity::parse_hex32;

use super::new_version::{NewVersion, Published, Tools};
use crate::federation::VersionEntry;
use crate::ledger::VersionRow;

/// Fetches `entry`'s files into the store and records it in the ledger.
pub(super) fn fetch_and_record(tools: &mut Tools, entry: &VersionEntry) -> anyhow::Result<NewVersion> {
    let Tools { ledger, store, job, engine, .. } = tools;
    let engine = engine.as_ref().ok_or_else(|| anyhow::anyhow!("only a federated job adopts versions"))?;
    engine.fetch_version(entry, store)?;
    let (file, params) = store.read(&job.trained(), entry.version, &entry.weights, &entry.momentum)?;
    let published = Published::of(entry.version, &params, store)?;
    let row = VersionRow {
        version: entry.version,
        weights_hash: entry.weights.clone(),
        momentum_hash: entry.momentum.clone(),
        val_loss: entry.val_loss,
        train_loss: entry.train_loss,
        results: entry.results,
        committed_ms: entry.committed_ms,
        receipts_root: entry.receipts_root.clone(),
        committed_by: entry.committed_by.clone(),
    };
    let receipts: Vec<[u8; 32]> = entry.receipts.iter().filter_map(|r| parse_hex32(r)).collect();
    ledger.commit_version(&row, None, &receipts)?;
    tracing::info!(version = entry.version, by = %entry.committed_by, "adopted a version another relay committed");
    Ok(NewVersion { params: Arc::new(params), val_loss: entry.val_loss, file, published })
}
