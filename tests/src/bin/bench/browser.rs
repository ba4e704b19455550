//! Calls into `www/bench.html` in headless Chromium.

use std::time::Duration;

use crowdgrad_relay::Relay;
use crowdgrad_tests::browser::Chromedriver;
use crowdgrad_tests::{start_relay, test_job};
use fantoccini::wd::TimeoutConfiguration;

/// How long one measurement in the browser may take (SwiftShader is slow).
const LIMIT: Duration = Duration::from_secs(1800);

/// A relay serving the bench page, and chromedriver.
pub struct BenchPage {
    relay: Relay,
    driver: Chromedriver,
    /// The relay's storage, deleted with the page.
    _storage: tempfile::TempDir,
}

impl BenchPage {
    /// Starts both.
    pub async fn start() -> Self {
        let storage = tempfile::tempdir().expect("temp dir");
        let relay = start_relay(test_job(1, storage.path())).await;
        BenchPage { relay, driver: Chromedriver::start().expect("chromedriver"), _storage: storage }
    }

    /// Opens the page in a fresh tab and resolves `call` (a JS expression using the
    /// page's `crowdgrad*` functions and `args`); panics with the page's error.
    pub async fn call(&self, call: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.call_at("bench.html", call, args).await
    }

    /// [`BenchPage::call`] on `page` (e.g. `bench.html?plain`, the build without SIMD).
    pub async fn call_at(&self, page: &str, call: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.try_call_at(page, call, args).await.unwrap_or_else(|e| panic!("browser bench `{call}` failed: {e}"))
    }

    /// [`BenchPage::call_at`], with the page's error (a device that cannot hold the
    /// model, say) returned rather than panicking.
    pub async fn try_call_at(
        &self,
        page: &str,
        call: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let tab = self.driver.session(&[]).await.expect("chromium session");
        let timeouts = TimeoutConfiguration::new(Some(LIMIT), Some(Duration::from_secs(60)), Some(Duration::ZERO));
        tab.update_timeouts(timeouts).await.expect("script timeout");
        tab.goto(&format!("http://{}/{page}", self.relay.addr)).await.expect("open the bench page");
        let script = format!(
            "const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);
             window.crowdgradReady.then(() => {call}).then(done, (e) => done({{ error: String(e) }}));"
        );
        let result = tokio::time::timeout(LIMIT + Duration::from_secs(10), tab.execute_async(&script, args))
            .await
            .map_err(|_| format!("not done within {LIMIT:?}"))?
            .map_err(|e| format!("the tab failed: {e}"))?;
        let _ = tab.close().await;
        match result["error"].as_str() {
            Some(error) => Err(error.to_string()),
            None => Ok(result),
        }
    }

    /// Stops the relay.
    pub async fn stop(self) {
        self.relay.stop().await;
    }
}

/// `adapter [kind]` of a measurement's `device`.
pub fn device_name(result: &serde_json::Value) -> String {
    format!(
        "{} [{}]",
        result["device"]["adapter"].as_str().unwrap_or("?"),
        result["device"]["kind"].as_str().unwrap_or("?")
    )
}

/// Tokens/s of a `crowdgradBench` measurement.
pub fn tokens_per_second(result: &serde_json::Value) -> f64 {
    let steps = result["steps"].as_f64().unwrap_or(0.0);
    let tokens = result["tokens_per_step"].as_f64().unwrap_or(0.0);
    steps * tokens / result["seconds"].as_f64().unwrap_or(f64::INFINITY)
}
