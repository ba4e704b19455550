//! The web crate as built for pages (`www/pkg`) is an npm package: its `package.json`
//! names it, lists its files (each present) and points at TypeScript declarations that
//! type the `Contributor` class's values rather than leaving them `any`.

use crowdgrad_tests::browser::require_bundle;
use crowdgrad_tests::repo_root;
use serde_json::Value;

#[test]
fn the_page_bundle_is_an_npm_package_with_types() {
    require_bundle();
    let pkg = repo_root().join("www/pkg");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(pkg.join("package.json")).expect("package.json")).expect("JSON");
    assert_eq!(manifest["name"], "crowdgrad-web", "{manifest}");
    assert!(manifest["version"].as_str().is_some_and(|v| !v.is_empty()), "{manifest}");
    assert_eq!(manifest["type"], "module", "{manifest}");
    let files: Vec<&str> =
        manifest["files"].as_array().expect("a files list").iter().filter_map(Value::as_str).collect();
    for file in &files {
        assert!(pkg.join(file).exists(), "package.json lists {file}, which is missing");
    }
    for wanted in ["crowdgrad_web_bg.wasm", "crowdgrad_web.js", "crowdgrad_web.d.ts"] {
        assert!(files.contains(&wanted), "{wanted} is not in the package: {files:?}");
    }
    assert!(pkg.join("README.md").exists(), "the package carries the crate's README");
    let types = manifest["types"].as_str().expect("a types entry");
    let declarations = std::fs::read_to_string(pkg.join(types)).expect("declarations");
    for wanted in [
        "export class Contributor",
        "export interface ContributorStats",
        "stats(): ContributorStats",
        "weights(): HeldWeights | undefined",
        "peers_dropped: number[]",
        "export function sample(",
        "export function contribute_headless(",
    ] {
        assert!(declarations.contains(wanted), "{types} does not declare `{wanted}`");
    }
}
