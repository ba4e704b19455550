//! This browser's contributor key: an ed25519 secret kept in `localStorage` (hex), made
//! with the browser's cryptographic randomness on first use, so that a reload or a
//! later visit signs as the same contributor.

use crowdgrad_runtime::identity::{Identity, hex, parse_hex32};

/// The `localStorage` item holding the secret.
const ITEM: &str = "crowdgrad.contributor-key";

/// The stored key pair, or a new one (stored when storage is available).
pub fn load_or_create() -> Result<Identity, String> {
    let window = web_sys::window().ok_or("no window")?;
    let storage = window.local_storage().ok().flatten();
    let stored = storage.as_ref().and_then(|s| s.get_item(ITEM).ok().flatten()).and_then(|text| parse_hex32(&text));
    if let Some(secret) = stored {
        return Ok(Identity::from_secret(secret));
    }
    let secret = crate::global::random_bytes()?;
    if let Some(storage) = storage {
        // Without storage (private mode may refuse) the key lives as long as the page.
        let _ = storage.set_item(ITEM, &hex(&secret));
    }
    Ok(Identity::from_secret(secret))
}
