//! The receipts mirror: copies the job's receipts stream, every relay's signed
//! receipts, into this relay's ledger, so that every relay's `crowdgrad ledger export`
//! and `/api/contributors/{key}` say the same. It also shares again this relay's own
//! receipts that the stream never showed it (a relay killed between recording a receipt
//! and sharing it, or an engine away for longer than the publisher tries).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crowdgrad_runtime::identity::{KEY_BYTES, Receipt};

use super::engine::Engine;
use crate::ledger::Ledger;

/// How often the mirror asks the stream for receipts once it has them all.
const MIRROR_POLL: Duration = Duration::from_millis(250);

/// How long the mirror waits after the engine or the ledger failed it.
const RETRY: Duration = Duration::from_secs(1);

/// How often this relay's unshared receipts are shared again (once the mirror has
/// caught up, so that what it has not seen is really missing from the stream), and at
/// once when it catches up after the engine failed it.
pub const RESHARE_EVERY: Duration = Duration::from_secs(30);

/// The mirror, on a thread of its own (its ledger connection blocks), calling the
/// engine on the relay's runtime.
pub struct Mirror {
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    /// Its own connection to this relay's ledger.
    ledger: Ledger,
    /// This relay's key, whose receipts it shares again.
    relay_key: [u8; KEY_BYTES],
}

impl Mirror {
    /// Starts mirroring the receipts stream of `engine` (whose calls run on `runtime`)
    /// into `ledger`, for as long as the relay runs.
    pub fn spawn(
        engine: Arc<Engine>,
        runtime: tokio::runtime::Handle,
        ledger: Ledger,
        relay_key: [u8; KEY_BYTES],
    ) -> std::io::Result<()> {
        let mirror = Mirror { engine, runtime, ledger, relay_key };
        std::thread::Builder::new().name("receipts mirror".into()).spawn(move || mirror.run())?;
        Ok(())
    }

    /// The mirror's loop (module docs).
    fn run(mut self) {
        let mut reshared: Option<Instant> = None;
        loop {
            let pause = match self.pass(&mut reshared) {
                Ok(true) => continue,
                Ok(false) => MIRROR_POLL,
                Err(e) => {
                    tracing::warn!("the receipts mirror: {e:#}");
                    // The publisher may have given receipts up meanwhile: share them again
                    // once the mirror has caught up.
                    reshared = None;
                    RETRY
                }
            };
            std::thread::sleep(pause);
        }
    }

    /// Copies the next receipts of the stream into the ledger: whether there were any.
    /// Once it has them all, shares again every [`RESHARE_EVERY`] this relay's receipts
    /// that the stream never showed it.
    fn pass(&mut self, reshared: &mut Option<Instant>) -> anyhow::Result<bool> {
        let through = self.ledger.receipts_mirrored_through()?;
        let read = self.runtime.block_on(self.engine.next_receipts(through + 1))?;
        let Some(&(last, _)) = read.last() else {
            if reshared.is_none_or(|at| at.elapsed() >= RESHARE_EVERY) {
                *reshared = Some(Instant::now());
                self.reshare()?;
            }
            return Ok(false);
        };
        let receipts: Vec<Receipt> = read
            .into_iter()
            .filter_map(|(seq, receipt)| match receipt {
                Ok(receipt) if receipt.verify() => Some(receipt),
                Ok(_) => {
                    tracing::warn!(seq, "the receipts stream holds a receipt whose signature fails; left out");
                    None
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    None
                }
            })
            .collect();
        self.ledger.mirror_receipts(&receipts, last)?;
        Ok(true)
    }

    /// Shares again this relay's receipts that the stream has not shown the mirror.
    fn reshare(&self) -> anyhow::Result<()> {
        let unshared = self.ledger.unshared_receipts(&self.relay_key)?;
        if !unshared.is_empty() {
            tracing::info!(receipts = unshared.len(), "sharing again receipts the engine never showed");
        }
        for receipt in &unshared {
            self.runtime.block_on(self.engine.publish_receipt(receipt))?;
        }
        Ok(())
    }
}
