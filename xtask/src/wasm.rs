//! The wasm bundle and the browser test suites, as `wasm-pack.toml` describes them.

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use crate::{run, tools};

/// `wasm-pack.toml`.
#[derive(Deserialize)]
pub struct WasmConfig {
    bundle: Bundle,
    node: NodePackage,
    browser_tests: BrowserTests,
}

#[derive(Deserialize)]
struct NodePackage {
    out_dir: String,
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "crate")]
    krate: String,
    out_dir: String,
    simd_out_dir: String,
    simd_target_dir: String,
    target: String,
    profile: String,
    wasm_opt: bool,
}

#[derive(Deserialize)]
struct BrowserTests {
    crates: Vec<String>,
    timeout_secs: u64,
}

/// The repository root (xtask lives in `xtask/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

impl WasmConfig {
    /// Reads and checks `wasm-pack.toml` at the repository root.
    pub fn load() -> Result<Self, String> {
        let path = root().join("wasm-pack.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: WasmConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if !matches!(config.bundle.profile.as_str(), "release" | "dev") {
            return Err(format!(
                "wasm-pack.toml: bundle.profile = {:?} must be \"release\" or \"dev\"",
                config.bundle.profile
            ));
        }
        if config.bundle.wasm_opt {
            return Err("wasm-pack.toml: bundle.wasm_opt = true would make wasm-pack download wasm-opt".into());
        }
        Ok(config)
    }
}

/// `wasm-pack build` of the bundle crate into its output folder, then again with 128-bit SIMD
/// into the SIMD folder.
pub fn build_bundle(config: &WasmConfig) -> Result<(), String> {
    let b = &config.bundle;
    let build = || {
        let mut cmd = Command::new("wasm-pack");
        cmd.current_dir(root()).args([
            "build",
            &b.krate,
            "--target",
            &b.target,
            &format!("--{}", b.profile),
            "--no-opt",
        ]);
        cmd
    };
    run(build().arg("--out-dir").arg(root().join(&b.out_dir)))?;
    let mut simd = build();
    simd.arg("--out-dir").arg(root().join(&b.simd_out_dir));
    simd.env("CARGO_TARGET_DIR", root().join(&b.simd_target_dir));
    simd.env("RUSTFLAGS", "-C target-feature=+simd128");
    run(&mut simd)
}

/// The bundle crate built for Node.js (`--target nodejs`, the bundle's profile), for the
/// edge contributor (`web/node/contribute.mjs`). It reuses the bundle's compiled wasm.
pub fn build_node_package(config: &WasmConfig) -> Result<(), String> {
    let b = &config.bundle;
    let mut cmd = Command::new("wasm-pack");
    cmd.current_dir(root()).args(["build", &b.krate, "--target", "nodejs", &format!("--{}", b.profile), "--no-opt"]);
    cmd.arg("--out-dir").arg(root().join(&config.node.out_dir));
    run(&mut cmd)
}

/// `wasm-pack test --headless --chrome` for each configured crate, with the system's
/// chromedriver.
pub fn browser_tests(config: &WasmConfig) -> Result<(), String> {
    for krate in &config.browser_tests.crates {
        let mut cmd = Command::new("wasm-pack");
        cmd.current_dir(root()).args(["test", "--headless", "--chrome", krate]);
        cmd.env("WASM_BINDGEN_TEST_TIMEOUT", config.browser_tests.timeout_secs.to_string());
        tools::test_env(&mut cmd);
        run(&mut cmd)?;
    }
    Ok(())
}
