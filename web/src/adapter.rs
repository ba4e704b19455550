//! The WebGPU adapter's description as the browser reports it. wgpu only passes on
//! `GPUAdapterInfo.description`, which Chromium leaves empty; vendor and architecture
//! (e.g. `google` / `swiftshader`) are what identifies the adapter.

use js_sys::{Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

fn field(object: &JsValue, name: &str) -> Option<JsValue> {
    Reflect::get(object, &JsValue::from_str(name)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `"vendor architecture description"` of the adapter `navigator.gpu` offers, or
/// `None` when there is none.
pub async fn describe() -> Option<String> {
    let navigator = field(&js_sys::global(), "navigator")?;
    let gpu = field(&navigator, "gpu")?;
    let request = Reflect::get(&gpu, &"requestAdapter".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
    let promise: Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok().filter(|a| !a.is_null())?;
    let info = field(&adapter, "info")?;
    let parts: Vec<String> = ["vendor", "architecture", "description"]
        .iter()
        .filter_map(|k| field(&info, k)?.as_string())
        .filter(|s| !s.is_empty())
        .collect();
    let fallback = field(&info, "isFallbackAdapter").and_then(|v| v.as_bool()).unwrap_or(false);
    let name = if parts.is_empty() { "WebGPU adapter".to_string() } else { parts.join(" ") };
    Some(if fallback { format!("{name} (fallback adapter)") } else { name })
}
