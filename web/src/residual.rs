//! The error-feedback residual in IndexedDB, so that a reloaded tab still sends what its
//! earlier updates left out: database `crowdgrad`, object store `residual`, one record
//! `current` = `{ job, values: Float32Array }` (one value per parameter).

use crowdgrad_runtime::feedback::{ResidualStore, SavedResidual};
use js_sys::{Float32Array, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

const DATABASE: &str = "crowdgrad";
const STORE: &str = "residual";
const KEY: &str = "current";

/// Waits for an IndexedDB request and gives its result.
async fn finished(request: &IdbRequest) -> Result<JsValue, JsValue> {
    let promise = Promise::new(&mut |resolve, reject| {
        let done = request.clone();
        let on_success = Closure::once_into_js(move || {
            let _ = resolve.call1(&JsValue::NULL, &done.result().unwrap_or(JsValue::UNDEFINED));
        });
        let failed = request.clone();
        let on_error = Closure::once_into_js(move || {
            let why = failed.error().ok().flatten().map_or_else(|| "IndexedDB request failed".into(), |e| e.message());
            let _ = reject.call1(&JsValue::NULL, &JsValue::from_str(&why));
        });
        request.set_onsuccess(Some(on_success.unchecked_ref()));
        request.set_onerror(Some(on_error.unchecked_ref()));
    });
    JsFuture::from(promise).await
}

/// Opens (creating on first use) the database.
async fn open() -> Result<IdbDatabase, JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let factory = window.indexed_db()?.ok_or("no IndexedDB")?;
    let request: IdbOpenDbRequest = factory.open_with_u32(DATABASE, 1)?;
    let opening = request.clone();
    let on_upgrade = Closure::once_into_js(move || {
        if let Ok(db) = opening.result() {
            let _ = db.unchecked_into::<IdbDatabase>().create_object_store(STORE);
        }
    });
    request.set_onupgradeneeded(Some(on_upgrade.unchecked_ref()));
    Ok(finished(&request).await?.unchecked_into())
}

/// The residual a previous visit saved; empty when there is none or storage fails.
pub async fn load() -> SavedResidual {
    let read = async {
        let db = open().await?;
        let store = db.transaction_with_str(STORE)?.object_store(STORE)?;
        let record = finished(&store.get(&KEY.into())?).await?;
        db.close();
        if record.is_undefined() {
            return Ok(SavedResidual::default());
        }
        let job = Reflect::get(&record, &"job".into())?.as_string().unwrap_or_default();
        let values = Reflect::get(&record, &"values".into())?.dyn_into::<Float32Array>()?.to_vec();
        Ok::<_, JsValue>(SavedResidual { job, values })
    };
    read.await.unwrap_or_else(|e| {
        web_sys::console::warn_2(&"crowdgrad: could not read the saved residual".into(), &e);
        SavedResidual::default()
    })
}

async fn save(record: Object) -> Result<(), JsValue> {
    let db = open().await?;
    let store = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite)?.object_store(STORE)?;
    finished(&store.put_with_key(&record, &KEY.into())?).await?;
    db.close();
    Ok(())
}

/// Saves each new residual in the background (a later save replaces an earlier one).
pub struct IndexedDbResidual;

impl ResidualStore for IndexedDbResidual {
    fn save(&mut self, job: &str, residual: &[f32]) {
        let record = Object::new();
        let _ = Reflect::set(&record, &"job".into(), &job.into());
        let _ = Reflect::set(&record, &"values".into(), &Float32Array::from(residual));
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = save(record).await {
                web_sys::console::warn_2(&"crowdgrad: could not save the residual".into(), &e);
            }
        });
    }
}
