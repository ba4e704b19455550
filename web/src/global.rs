//! What the module needs from its JavaScript host, taken from the global object so that
//! it works the same in a window, a worker and Node.js: `fetch`, `performance.now()`,
//! `crypto.getRandomValues` and `setTimeout`.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    /// The global `fetch`.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str) -> js_sys::Promise;

    /// The global `setTimeout`.
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &js_sys::Function, milliseconds: i32) -> JsValue;
}

/// A property of the global object.
pub fn global(name: &str) -> Option<JsValue> {
    js_sys::Reflect::get(&js_sys::global(), &name.into()).ok().filter(|v| !v.is_undefined())
}

/// Calls `object.method(args…)`.
pub fn call(object: &JsValue, method: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
    let function: js_sys::Function = js_sys::Reflect::get(object, &method.into())?.dyn_into()?;
    function.apply(object, &args.iter().copied().collect::<js_sys::Array>())
}

/// Seconds from an arbitrary start (`performance.now()`), 0 without a clock.
pub fn now_seconds() -> f64 {
    global("performance").and_then(|p| call(&p, "now", &[]).ok()).and_then(|t| t.as_f64()).unwrap_or(0.0) / 1000.0
}

/// 32 bytes from `crypto.getRandomValues`.
pub fn random_bytes() -> Result<[u8; 32], String> {
    let crypto = global("crypto").ok_or("no crypto.getRandomValues here")?;
    let buffer = js_sys::Uint8Array::new_with_length(32);
    call(&crypto, "getRandomValues", &[&buffer]).map_err(|e| format!("crypto.getRandomValues failed: {e:?}"))?;
    let mut bytes = [0u8; 32];
    buffer.copy_to(&mut bytes);
    Ok(bytes)
}

/// Resolves after `seconds`.
pub async fn sleep(seconds: f64) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, (seconds * 1000.0) as i32);
    });
    let _ = JsFuture::from(promise).await;
}

/// HTTP GET of `url`: the body, or why not (network error, HTTP status, over `limit` bytes:
/// refused by its `Content-Length` before the body is read, where the response has one).
pub async fn get(url: &str, limit: u64) -> Result<Vec<u8>, String> {
    let response = JsFuture::from(global_fetch(url)).await.map_err(|e| format!("GET {url}: {e:?}"))?;
    let status = js_sys::Reflect::get(&response, &"status".into()).ok().and_then(|s| s.as_f64()).unwrap_or(0.0);
    if !(200.0..300.0).contains(&status) {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let over = |len: u64| format!("GET {url}: {len} bytes is over the {limit} announced");
    let headers = js_sys::Reflect::get(&response, &"headers".into()).map_err(|e| format!("GET {url}: {e:?}"))?;
    let length = call(&headers, "get", &[&"content-length".into()]).ok().and_then(|l| l.as_string());
    if let Some(length) = length.and_then(|l| l.parse::<u64>().ok())
        && length > limit
    {
        return Err(over(length));
    }
    let body = call(&response, "arrayBuffer", &[]).map_err(|e| format!("GET {url}: {e:?}"))?;
    let body = JsFuture::from(js_sys::Promise::from(body)).await.map_err(|e| format!("GET {url}: {e:?}"))?;
    let bytes = js_sys::Uint8Array::new(&body);
    if bytes.length() as u64 > limit {
        return Err(over(bytes.length() as u64));
    }
    Ok(bytes.to_vec())
}
