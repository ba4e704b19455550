//! Headless Chromium through chromedriver (the system's, never a download), driven
//! with fantoccini.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;

/// Chromium flags: headless, WebGPU on (SwiftShader where there is no GPU), and no
/// background traffic to the outside.
pub const CHROME_ARGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
];

/// Chromium flags for WebRTC between separate browser processes on one machine: loopback
/// candidates allowed, and host addresses not hidden behind mDNS names.
pub const WEBRTC_ARGS: [&str; 2] =
    ["--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"];

/// Fails with what to do when the page's wasm bundles (`www/pkg`, `www/pkg-simd`) have not been
/// built.
pub fn require_bundle() {
    for build in ["pkg", "pkg-simd"] {
        assert!(
            crate::repo_root().join(format!("www/{build}/crowdgrad_web_bg.wasm")).exists(),
            "www/{build} is missing: build the wasm bundles first (`cargo xtask test` does)"
        );
    }
}

/// A chromedriver process on a free loopback port; dropping it kills it and every browser it
/// started.
pub struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    /// Starts `$CHROMEDRIVER` (or `chromedriver` from `PATH`) and waits until it listens.
    pub fn start() -> anyhow::Result<Self> {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Its own process group, so that dropping it also ends the browsers it started,
        // even when a test panics before closing its sessions.
        let child = Command::new(&binary)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot run {binary} (install chromium-driver, or run `cargo xtask test`): {e}")
            })?;
        let driver = Chromedriver { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(driver)
    }

    /// A new headless Chromium session with [`CHROME_ARGS`] plus `extra_args`.
    pub async fn session(&self, extra_args: &[&str]) -> anyhow::Result<Client> {
        self.session_with(CHROME_ARGS.iter().chain(extra_args).copied().collect()).await
    }

    /// A session whose browser has no WebGPU: [`CHROME_ARGS`] without
    /// `--enable-unsafe-webgpu`, and the WebGPU feature switched off.
    pub async fn session_without_webgpu(&self) -> anyhow::Result<Client> {
        let args = CHROME_ARGS.iter().copied().filter(|a| *a != "--enable-unsafe-webgpu");
        self.session_with(args.chain(["--disable-features=WebGPU"]).collect()).await
    }

    async fn session_with(&self, args: Vec<&str>) -> anyhow::Result<Client> {
        // The workspace's rustls has two providers (aws-lc-rs for fantoccini, ring for
        // the relay's NATS client): name the one the WebDriver client uses.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "args": args }));
        Ok(ClientBuilder::rustls()?.capabilities(caps).connect(&format!("http://127.0.0.1:{}", self.port)).await?)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `script` (a function body that returns a value) in the page.
pub async fn eval(tab: &Client, script: &str) -> Value {
    tab.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `script` until it returns something truthy, then returns it; on a timeout the
/// panic shows the page's `window.crowdgrad.stats()` when it has one.
pub async fn until(tab: &Client, what: &str, timeout: Duration, script: &str) -> Value {
    let start = Instant::now();
    loop {
        let value = eval(tab, script).await;
        if !(value.is_null() || value == Value::Bool(false) || value == "") {
            return value;
        }
        let stats = eval(tab, "return window.crowdgrad && window.crowdgrad.stats();").await;
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; stats: {stats}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text of the element with id `id`.
pub async fn text(tab: &Client, id: &str) -> String {
    tab.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}")).text().await.expect("text")
}

/// A script returning the visible text elements whose contrast with their background is
/// under 4.5:1 (WCAG AA), as `tag#id: ratio`.
pub const LOW_CONTRAST: &str = r#"
const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
const luminance = (css) => {
  const [r, g, b] = css.match(/[\d.]+/g).slice(0, 3).map(Number).map(channel);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c !== "transparent" && !c.startsWith("rgba(0, 0, 0, 0)")) return c;
  }
  return "rgb(255, 255, 255)";
};
const low = [];
for (const el of document.querySelectorAll("h1, h2, h3, p, dt, dd, li, label, legend, button, pre, figcaption, output")) {
  if (!el.textContent.trim() || el.offsetParent === null) continue;
  const [a, b] = [luminance(getComputedStyle(el).color), luminance(background(el))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(`${el.tagName.toLowerCase()}#${el.id}: ${ratio.toFixed(2)}`);
}
return low;
"#;

/// A script returning the form controls without a label, the buttons without text and
/// the canvases without an `aria-label`.
pub const UNLABELLED: &str = r#"
const missing = [];
for (const el of document.querySelectorAll("input, select, textarea")) {
  if (el.labels.length === 0 && !el.getAttribute("aria-label")) missing.push(el.id || el.outerHTML);
}
for (const el of document.querySelectorAll("button")) if (!el.textContent.trim()) missing.push(el.outerHTML);
for (const el of document.querySelectorAll("canvas")) if (!el.getAttribute("aria-label")) missing.push(el.id);
return missing;
"#;
