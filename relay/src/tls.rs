//! HTTPS: the relay's certificate and key (PEM files) as a TLS acceptor, and the plain
//! HTTP listener that sends browsers to the HTTPS address. Browsers give WebGPU (and
//! `crypto.subtle`) only to secure pages, so a relay that tabs reach by a name, not as
//! localhost, must serve HTTPS, itself or behind a proxy (`docs/deploy.md`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor serving the certificate chain in `cert` with the private key in `key`
/// (both PEM), offering HTTP/1.1; the error names the file at fault.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}: cannot read it", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert {}: holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: not a PEM private key", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The answer of the plain HTTP listener to any request: a permanent redirect to the
/// same host and path over HTTPS on `https_port`.
pub fn redirect(request: &Request, https_port: u16) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let host = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(name, _)| name);
    if host.is_empty() {
        return (StatusCode::BAD_REQUEST, "a request without a Host header cannot be sent to HTTPS").into_response();
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let location = format!("https://{host}{port}{path}");
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
}
