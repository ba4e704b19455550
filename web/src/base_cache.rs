//! A fine-tuning job's frozen base, kept in the browser's Cache Storage (`caches`) under
//! its URL, `/api/base/{blake3}`: a reload, or another tab of the same origin, reads it
//! there instead of downloading it again. Where the global has no Cache Storage (Node.js,
//! a page that is not a secure context), nothing is kept. What is read back is checked
//! against the hash in its URL, and a mismatch is deleted and downloaded again.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::global::{call, global};

/// The cache's name.
const CACHE: &str = "crowdgrad-base";

/// The cache, where the global has Cache Storage.
async fn open() -> Option<JsValue> {
    let caches = global("caches")?;
    let promise: js_sys::Promise = call(&caches, "open", &[&CACHE.into()]).ok()?.dyn_into().ok()?;
    JsFuture::from(promise).await.ok()
}

/// Awaits `object.method(args…)`'s promise.
async fn awaited(object: &JsValue, method: &str, args: &[&JsValue]) -> Option<JsValue> {
    let promise: js_sys::Promise = call(object, method, args).ok()?.dyn_into().ok()?;
    JsFuture::from(promise).await.ok()
}

/// The base kept under `url`, if its bytes hash to `hash` (blake3, hex); a kept file
/// that does not is deleted.
pub async fn read(url: &str, hash: &str) -> Option<Vec<u8>> {
    let cache = open().await?;
    let response = awaited(&cache, "match", &[&url.into()]).await.filter(|r| !r.is_undefined())?;
    let body = awaited(&response, "arrayBuffer", &[]).await?;
    let bytes = js_sys::Uint8Array::new(&body).to_vec();
    if blake3::hash(&bytes).to_hex().as_str() == hash {
        return Some(bytes);
    }
    awaited(&cache, "delete", &[&url.into()]).await;
    None
}

/// Keeps `bytes` under `url`; a failure (quota, no Cache Storage) only means the next
/// load downloads the base again.
pub async fn keep(url: &str, bytes: &[u8]) {
    let Some(cache) = open().await else { return };
    let Some(constructor) = global("Response").and_then(|c| c.dyn_into::<js_sys::Function>().ok()) else { return };
    let body = js_sys::Uint8Array::from(bytes);
    let Ok(response) = js_sys::Reflect::construct(&constructor, &js_sys::Array::of1(&body)) else { return };
    awaited(&cache, "put", &[&url.into(), &response]).await;
}
