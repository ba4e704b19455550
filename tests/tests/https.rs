//! The relay on a name that is not localhost, as browsers meet it on the internet.
//! A test CA made here signs the relay's certificate for `relay.test`, which Chromium
//! maps to 127.0.0.2 and trusts by its key (`--ignore-certificate-errors-spki-list`):
//! - over HTTPS the page is a secure context, and its tab trains on WebGPU, its
//!   session over `wss://`;
//! - the plain HTTP listener (`--redirect-http`) sends browsers to the HTTPS address;
//! - a relay serving plain HTTP at that name gives the tab no WebGPU: the page says it
//!   needs HTTPS for the GPU, and trains on the CPU.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use crowdgrad_relay::config::{ServeConfig, TlsFiles};
use crowdgrad_tests::browser::{Chromedriver, eval, require_bundle, until};
use crowdgrad_tests::{repo_root, test_job};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PublicKeyData};
use sha2::Digest;

/// The name the relay is reached by.
const HOST: &str = "relay.test";

/// Writes a test CA and, signed by it, a certificate for [`HOST`] with its key into
/// `dir`; the files, and the base64 SHA-256 of the certificate's public key (what
/// Chromium is told to trust).
fn certificate(dir: &Path) -> (TlsFiles, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key")).expect("the test CA");
    let key = KeyPair::generate().expect("a key");
    let cert =
        CertificateParams::new(vec![HOST.to_string()]).expect("parameters").signed_by(&key, &ca).expect("signed");
    let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca.pem())).expect("write the chain");
    std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
    let spki = sha2::Sha256::digest(key.subject_public_key_info());
    (files, base64::engine::general_purpose::STANDARD.encode(spki))
}

async fn start(dir: &Path, tls: Option<TlsFiles>, redirect_http: Option<SocketAddr>) -> crowdgrad_relay::Relay {
    let addr = "127.0.0.2:0".parse().expect("literal");
    let config = ServeConfig {
        addr,
        www: repo_root().join("www"),
        job: test_job(1, dir),
        admin_token: None,
        tls,
        redirect_http,
    };
    crowdgrad_relay::start(config).await.expect("the relay starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_tab_on_a_named_relay_trains_on_webgpu_and_over_http_it_is_told_why_not() {
    require_bundle();
    let dir = tempfile::tempdir().expect("temp dir");
    let (files, spki) = certificate(dir.path());
    let plain = std::net::TcpListener::bind("127.0.0.2:0").and_then(|l| l.local_addr()).expect("a free port");
    let secure = start(&dir.path().join("secure"), Some(files), Some(plain)).await;
    let insecure = start(&dir.path().join("insecure"), None, None).await;

    let driver = Chromedriver::start().expect("chromedriver");
    let trust = format!("--ignore-certificate-errors-spki-list={spki}");
    let map = format!("--host-resolver-rules=MAP {HOST} 127.0.0.2");
    let tab = driver.session(&[&trust, &map]).await.expect("chromium session");

    // Plain HTTP on the redirect listener: sent to HTTPS.
    tab.goto(&format!("http://{HOST}:{}/?device=webgpu", plain.port())).await.expect("open over http");
    let url = tab.current_url().await.expect("the page's URL");
    assert_eq!(url.as_str(), format!("https://{HOST}:{}/?device=webgpu", secure.addr.port()));
    assert_eq!(eval(&tab, "return window.isSecureContext;").await, true, "an HTTPS page is a secure context");
    tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
    let done = "const s = window.crowdgrad && window.crowdgrad.stats(); return s && s.units_done >= 1 ? s : null;";
    let stats = until(&tab, "a unit trained over https", Duration::from_secs(180), done).await;
    assert_eq!(stats["device"]["kind"], "webgpu", "over https the tab trains on WebGPU: {stats}");
    assert!(stats["relay"].as_str().is_some_and(|r| r.starts_with("wss://")), "{stats}");

    // Plain HTTP at the same name: no WebGPU, and the page says why.
    let tab = driver.session(&[&trust, &map]).await.expect("chromium session");
    tab.goto(&format!("http://{HOST}:{}/", insecure.addr.port())).await.expect("open over http");
    assert_eq!(eval(&tab, "return window.isSecureContext;").await, false);
    tab.find(fantoccini::Locator::Id("contribute")).await.expect("button").click().await.expect("consent");
    let stats = until(&tab, "a unit trained over http", Duration::from_secs(180), done).await;
    assert_eq!(stats["device"]["kind"], "cpu", "{stats}");
    assert!(stats["why_cpu"].as_str().is_some_and(|why| why.contains("https")), "{stats}");
    let shown = tab.find(fantoccini::Locator::Id("backend")).await.expect("backend").text().await.expect("text");
    assert!(shown.contains("secure page") && shown.contains("https"), "the page says: {shown}");
    secure.stop().await;
    insecure.stop().await;
}
