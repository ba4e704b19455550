//! The wasm bundle and the browser test suites, as `wasm-pack.toml` describes them.
//! The bundle is built with cargo and wasm-bindgen-cli; wasm-pack runs the browser tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::tools::WASM_TARGET;
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
            return Err("wasm-pack.toml: bundle.wasm_opt = true: wasm-opt is not in the package registries".into());
        }
        Ok(config)
    }
}

/// The bundle crate compiled for wasm32 and made into an ES module by wasm-bindgen, with
/// an npm `package.json`, into its output folder; then again with 128-bit SIMD into the
/// SIMD folder. Only cargo and wasm-bindgen-cli: wasm-pack, which would do the same, is
/// needed by the browser tests alone.
pub fn build_bundle(config: &WasmConfig) -> Result<(), String> {
    let b = &config.bundle;
    let package = Package::of(&b.krate)?;
    let plain = compile(b, &package, &root().join("target"), None)?;
    bindgen(&plain, &b.target, &root().join(&b.out_dir), &package)?;
    let simd = compile(b, &package, &root().join(&b.simd_target_dir), Some("-C target-feature=+simd128"))?;
    bindgen(&simd, &b.target, &root().join(&b.simd_out_dir), &package)
}

/// The bundle crate for Node.js (`--target nodejs`), for the edge contributor
/// (`web/node/contribute.mjs`), from the bundle's compiled wasm.
pub fn build_node_package(config: &WasmConfig) -> Result<(), String> {
    let b = &config.bundle;
    let package = Package::of(&b.krate)?;
    let wasm = compile(b, &package, &root().join("target"), None)?;
    bindgen(&wasm, "nodejs", &root().join(&config.node.out_dir), &package)
}

/// `cargo build` of the bundle crate for wasm32 in `target_dir`, with `rustflags`; the
/// path of the compiled `.wasm`.
fn compile(b: &Bundle, package: &Package, target_dir: &Path, rustflags: Option<&str>) -> Result<PathBuf, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).args(["build", "-p", &package.name, "--lib", "--target", WASM_TARGET]);
    if b.profile == "release" {
        cmd.arg("--release");
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    run(&mut cmd)?;
    let profile_dir = if b.profile == "release" { "release" } else { "debug" };
    Ok(target_dir.join(WASM_TARGET).join(profile_dir).join(format!("{}.wasm", package.name.replace('-', "_"))))
}

/// wasm-bindgen's JavaScript and TypeScript for `wasm` (`--target js_target`) into
/// `out_dir`, with the npm `package.json` and the crate's README.
fn bindgen(wasm: &Path, js_target: &str, out_dir: &Path, package: &Package) -> Result<(), String> {
    run(Command::new("wasm-bindgen").arg("--target").arg(js_target).arg("--out-dir").arg(out_dir).arg(wasm))?;
    let stem = package.name.replace('-', "_");
    let mut manifest = serde_json::json!({
        "name": package.name,
        "description": package.description,
        "version": package.version,
        "license": package.license,
        "repository": { "type": "git", "url": package.repository },
        "files": [format!("{stem}_bg.wasm"), format!("{stem}.js"), format!("{stem}.d.ts")],
        "main": format!("{stem}.js"),
        "types": format!("{stem}.d.ts"),
    });
    if js_target == "web" {
        manifest["type"] = "module".into();
        manifest["sideEffects"] = serde_json::json!(["./snippets/*"]);
    }
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("package.json"), text + "\n").map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let readme = root().join(&package.dir).join("README.md");
    std::fs::copy(&readme, out_dir.join("README.md")).map_err(|e| format!("{}: {e}", readme.display()))?;
    Ok(())
}

/// What the bundle's `package.json` says of its crate, from `cargo metadata`.
struct Package {
    /// The crate's folder, relative to the repository root.
    dir: String,
    name: String,
    version: String,
    description: String,
    license: String,
    repository: String,
}

impl Package {
    /// The crate in folder `dir`.
    fn of(dir: &str) -> Result<Package, String> {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .map_err(|e| format!("cargo metadata: {e}"))?;
        let metadata: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
        let manifest = root().join(dir).join("Cargo.toml");
        let found = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["manifest_path"].as_str().is_some_and(|m| Path::new(m) == manifest))
            .ok_or_else(|| format!("cargo metadata lists no crate in {dir}/"))?;
        let text = |key: &str| found[key].as_str().unwrap_or_default().to_string();
        Ok(Package {
            dir: dir.to_string(),
            name: text("name"),
            version: text("version"),
            description: text("description"),
            license: text("license"),
            repository: text("repository"),
        })
    }
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
