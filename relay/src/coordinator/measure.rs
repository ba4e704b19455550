//! The costly part of judging a result, which needs no coordinator state: checking its
//! signature, decoding its Δ, measuring it (finite, ‖Δ‖, blake3, sketch), and signing
//! the receipt it gets if it is accepted (used only then, and only if its fields still
//! match). A session reads its [`Expectation`] under the coordinator's lock, measures off
//! it ([`Expectation::measure`], on a blocking thread unless [`Expectation::is_quick`]),
//! and hands the [`Measurement`] to [`Coordinator::submit_measured`]; for a large model
//! this is most of a submission's cost, and results of different sessions are then
//! measured in parallel.

use std::sync::Arc;

use axum::body::Bytes;
use crowdgrad_runtime::codec::{self, CodecConfig};
use crowdgrad_runtime::identity::{Identity, KEY_BYTES, Receipt, ReceiptFields, SubmitterKey};
use crowdgrad_runtime::protocol::{Submission, Update};

use super::sketch::Sketch;
use super::{Coordinator, Rejection};
use crate::delta::Delta;

/// What a submission to one session's unit must be, read under the lock.
pub struct Expectation {
    /// The coordinator it was read from (the operator may replace the job meanwhile).
    owner: u64,
    /// The session's ed25519 key.
    key: SubmitterKey,
    /// The codec its unit asked for; `None` for a dense update.
    codec: Option<CodecConfig>,
    /// Values in a Δ of the model.
    params: usize,
    /// What its receipt would attest, signed by `identity` off the lock.
    receipt: ReceiptFields,
    /// The relay's key.
    identity: Arc<Identity>,
}

/// A submission measured against its [`Expectation`].
pub struct Measurement {
    owner: u64,
    /// Whether its signature checks out with the session's key.
    signed: bool,
    /// Its Δ and measures, or why it cannot be decoded.
    judged: Result<Judged, Rejection>,
}

/// A submission that passed [`Coordinator::judge`]: its Δ (`[parameters]`, as it came
/// when compressed), ‖Δ‖, [`Delta::hash`], sketch, and the receipt signed for it off
/// the lock (`None` when it was measured under it).
pub(super) struct Judged {
    pub delta: Delta,
    pub norm: f32,
    pub hash: [u8; 32],
    pub sketch: Sketch,
    pub receipt: Option<Receipt>,
}

/// Values in a Δ that [`Expectation::measure`] takes in place on an async worker: about
/// 0.1 ms of signature checks and Δ measures, less than a blocking thread's hand-off.
const QUICK_PARAMS: usize = 16 * 1024;

impl Expectation {
    /// Whether measuring against this is quick enough to do on an async worker.
    pub fn is_quick(&self) -> bool {
        self.params <= QUICK_PARAMS
    }

    /// Checks the signature, decodes and measures the Δ, and, for a signed result that
    /// decodes, signs its receipt.
    pub fn measure(&self, sub: &Submission) -> Measurement {
        let signed = self.key.verifies(sub);
        let mut judged = decode_and_measure(sub, self.codec, self.params);
        if let (true, Ok(judged)) = (signed, &mut judged) {
            judged.receipt = Some(self.identity.sign_receipt(self.receipt.clone()));
        }
        Measurement { owner: self.owner, signed, judged }
    }
}

/// The Δ of `sub` (as `codec` asks, `params` values), checked finite, with its norm,
/// hash and sketch: for a compressed Δ, all read from the values it sent.
pub(super) fn decode_and_measure(
    sub: &Submission,
    codec: Option<CodecConfig>,
    params: usize,
) -> Result<Judged, Rejection> {
    let delta = match (&sub.update, codec) {
        (Update::Dense(delta), None) if delta.len() != params => return Err(Rejection::WrongSize),
        (Update::Dense(delta), None) => Delta::Dense(delta.clone()),
        (Update::Compressed(bytes), Some(asked)) => {
            let (sent, _) = codec::header(bytes).map_err(|_| Rejection::Malformed)?;
            if (sent.chunk, sent.k, sent.bits) != (asked.chunk, asked.k, asked.bits) {
                return Err(Rejection::WrongCodec);
            }
            Delta::encoded(Bytes::copy_from_slice(bytes), params).map_err(|_| Rejection::Malformed)?
        }
        _ => return Err(Rejection::WrongCodec),
    };
    let (norm, finite) = delta.measures();
    if !(sub.loss_before.is_finite() && sub.loss_after.is_finite() && finite) {
        return Err(Rejection::NonFinite);
    }
    let (hash, sketch) = (delta.hash(), Sketch::of(&delta));
    Ok(Judged { delta, norm, hash, sketch, receipt: None })
}

impl Coordinator {
    /// What `sub` from `session` must be, if both its session and its unit are known
    /// (otherwise [`Coordinator::submit_measured`] refuses it without a measurement).
    pub fn expectation(&self, session: u64, sub: &Submission) -> Option<Expectation> {
        let key = self.sessions.get(&session)?.key;
        let unit = self.units.get(sub.unit_id)?;
        Some(Expectation {
            owner: self.owner,
            key,
            codec: self.unit_codec(unit),
            params: self.params.len(),
            receipt: self.receipt_fields(key.bytes(), sub.unit_id, unit.version, unit.steps),
            identity: self.identity.clone(),
        })
    }

    /// What the receipt of `contributor`'s result to unit `unit_id` attests: `steps` from
    /// `version`, in tokens and training FLOPs.
    pub(super) fn receipt_fields(
        &self,
        contributor: [u8; KEY_BYTES],
        unit_id: u64,
        version: u64,
        steps: u32,
    ) -> ReceiptFields {
        let tokens = steps as u64 * self.job.inner.batch as u64 * self.job.model.context as u64;
        ReceiptFields { contributor, unit_id, version, tokens, flops: self.job.flops_per_token() * tokens }
    }

    /// `measurement` if it was made against this coordinator.
    pub(super) fn own(&self, measurement: Option<Measurement>) -> Option<Measurement> {
        measurement.filter(|m| m.owner == self.owner)
    }
}

impl Measurement {
    /// Whether the signature checked out.
    pub(super) fn signed(&self) -> bool {
        self.signed
    }

    /// The decoded Δ and its measures, or why there are none.
    pub(super) fn into_judged(self) -> Result<Judged, Rejection> {
        self.judged
    }
}
