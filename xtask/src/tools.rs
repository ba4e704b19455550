//! Installs what the build and tests need, or says exactly what to install.
//!
//! - the `wasm32-unknown-unknown` target of the pinned toolchain (rustup), where rustup
//!   does not add it by itself;
//! - wasm-bindgen-cli at the exact version of the `wasm-bindgen` crate in Cargo.lock,
//!   and for the tests wasm-pack (cargo install, from crates.io);
//! - on Debian as root: chromium, chromium-driver, mesa-vulkan-drivers (lavapipe), nodejs,
//!   nats-server (the federation tests' engine) and coturn (the TURN test's server);
//! - for `cargo xtask fuzz` only: a nightly toolchain (rustup) and cargo-fuzz.
//!
//! Nothing else is downloaded: wasm-pack finds these instead of fetching its own.

use std::path::Path;
use std::process::Command;

use crate::{run, wasm::root};

/// The target the browser build compiles for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

const DEBIAN_PACKAGES: [&str; 6] =
    ["chromium", "chromium-driver", "mesa-vulkan-drivers", "nodejs", "nats-server", "coturn"];

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn on_path(program: &str) -> bool {
    output("sh", &["-c", &format!("command -v {program}")]).is_some()
}

/// The `wasm-bindgen` version pinned in Cargo.lock.
fn locked_wasm_bindgen() -> Result<String, String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).map_err(|e| format!("Cargo.lock: {e}"))?;
    let lock: toml::Table = toml::from_str(&lock).map_err(|e| format!("Cargo.lock: {e}"))?;
    lock["package"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some("wasm-bindgen"))
        .and_then(|p| p["version"].as_str().map(String::from))
        .ok_or_else(|| "Cargo.lock has no wasm-bindgen package".into())
}

/// What building the bundle needs: the wasm target of the toolchain
/// `rust-toolchain.toml` pins, and wasm-bindgen-cli matching the crate exactly.
pub fn ensure_wasm_tools() -> Result<(), String> {
    // Run in the repository so that rustup reads rust-toolchain.toml's channel.
    let installed = Command::new("rustup").current_dir(root()).args(["target", "list", "--installed"]).output();
    let has_wasm = installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_TARGET));
    if !has_wasm {
        run(Command::new("rustup").current_dir(root()).args(["target", "add", WASM_TARGET]))?;
    }
    let wanted = locked_wasm_bindgen()?;
    let installed = output("wasm-bindgen", &["--version"]).unwrap_or_default();
    if installed.split_whitespace().nth(1) != Some(wanted.as_str()) {
        // No --locked: the registry can lag the CLI's own lockfile.
        run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--force", "--version", &wanted]))?;
    }
    Ok(())
}

/// wasm-pack, which runs the crates' test suites in headless Chromium (`cargo xtask
/// test` only).
pub fn ensure_wasm_pack() -> Result<(), String> {
    if !on_path("wasm-pack") {
        run(Command::new("cargo").args(["install", "wasm-pack"]))?;
    }
    Ok(())
}

/// A nightly toolchain and cargo-fuzz, for `cargo xtask fuzz` only.
pub fn ensure_fuzz_tools() -> Result<(), String> {
    if output("rustup", &["run", "nightly", "rustc", "--version"]).is_none() {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if output("cargo", &["fuzz", "--version"]).is_none() {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn lavapipe_present() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"].iter().any(|dir| {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd")))
            .unwrap_or(false)
    })
}

/// Chromium, chromedriver and a Vulkan driver (lavapipe) for the GPU tests, Node.js for
/// the edge contributor's, and nats-server for the federation's.
pub fn ensure_system_packages() -> Result<(), String> {
    let missing: Vec<&str> = [
        (!on_path("chromium") && !on_path("chromium-browser") && !on_path("google-chrome")).then_some("chromium"),
        (!on_path("chromedriver") && std::env::var_os("CHROMEDRIVER").is_none()).then_some("chromium-driver"),
        (!lavapipe_present()).then_some("mesa-vulkan-drivers"),
        (!on_path("node")).then_some("nodejs"),
        (!on_path("nats-server") && !Path::new("/usr/sbin/nats-server").exists()).then_some("nats-server"),
        (!on_path("turnserver") && std::env::var_os("TURNSERVER").is_none()).then_some("coturn"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists();
    let root_user = output("id", &["-u"]).as_deref() == Some("0");
    if !(debian && root_user) {
        return Err(format!(
            "missing: {}. Install Chromium, its chromedriver, a Vulkan driver, Node.js, nats-server and coturn (Debian/Ubuntu: \
             `apt-get install {}`), or set CHROMEDRIVER to a chromedriver matching your Chrome",
            missing.join(", "),
            DEBIAN_PACKAGES.join(" ")
        ));
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(DEBIAN_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Environment for tests: the system chromedriver, and a runtime dir so Mesa's
/// Vulkan loader does not complain on headless machines.
pub fn test_env(cmd: &mut Command) {
    if std::env::var_os("CHROMEDRIVER").is_none()
        && let Some(path) = output("sh", &["-c", "command -v chromedriver"])
    {
        cmd.env("CHROMEDRIVER", path);
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}
