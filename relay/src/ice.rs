//! The STUN and TURN servers a relay hands its tabs in each welcome, so that tabs
//! behind NATs reach each other: the servers `[mesh] ice_servers` names as they are,
//! and the TURN servers of `[mesh] turn_urls`, with a user name and password minted for
//! each session from `turn_secret` by the shared-secret scheme of coturn's REST API
//! (`use-auth-secret`): the user name is `EXPIRY:SESSION` (EXPIRY in seconds since the
//! Unix epoch) and the password is base64(HMAC-SHA1(secret, user name)). coturn checks
//! the HMAC and the expiry; the relay and coturn share nothing else.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use crowdgrad_runtime::protocol::{IceServer, MAX_ICE_SERVERS, MAX_STRING};
use hmac::{Hmac, Mac};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha1::Sha1;

use crate::config::{ConfigError, MeshConfig};

/// URL schemes of STUN and TURN servers.
const SCHEMES: [&str; 4] = ["stun:", "stuns:", "turn:", "turns:"];

/// One entry of `[mesh] ice_servers`: a URL (`"stun:stun.example.org:3478"`), or a table
/// `{ urls = ["turn:…"], username = "…", credential = "…" }` for a TURN server with
/// fixed credentials.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IceServerEntry {
    /// A server without credentials.
    Url(String),
    /// A server with its URLs and credentials.
    Server(FixedServer),
}

/// A STUN/TURN server with fixed credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedServer {
    /// Its URLs (`turn:host:3478?transport=udp`, `turns:host:5349`, …).
    pub urls: Vec<String>,
    /// The TURN user name.
    #[serde(default)]
    pub username: String,
    /// The TURN password.
    #[serde(default)]
    pub credential: String,
}

impl<'de> Deserialize<'de> for IceServerEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = IceServerEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a stun:/turn: URL, or a table with urls, username and credential")
            }
            fn visit_str<E: de::Error>(self, url: &str) -> Result<IceServerEntry, E> {
                Ok(IceServerEntry::Url(url.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IceServerEntry, A::Error> {
                FixedServer::deserialize(de::value::MapAccessDeserializer::new(map)).map(IceServerEntry::Server)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

impl IceServerEntry {
    /// Its URLs.
    fn urls(&self) -> &[String] {
        match self {
            IceServerEntry::Url(url) => std::slice::from_ref(url),
            IceServerEntry::Server(server) => &server.urls,
        }
    }

    /// As a welcome carries it.
    fn to_ice_server(&self) -> IceServer {
        match self {
            IceServerEntry::Url(url) => {
                IceServer { urls: vec![url.clone()], username: String::new(), credential: String::new() }
            }
            IceServerEntry::Server(s) => {
                IceServer { urls: s.urls.clone(), username: s.username.clone(), credential: s.credential.clone() }
            }
        }
    }
}

/// The servers that the welcome of session `session` names at `now`: the fixed ones, then
/// the TURN servers of `turn_urls` with credentials minted for it, valid for
/// `turn_ttl_secs`.
pub fn servers_for_session(mesh: &MeshConfig, session: u64, now: SystemTime) -> Vec<IceServer> {
    let mut servers: Vec<IceServer> = mesh.ice_servers.iter().map(IceServerEntry::to_ice_server).collect();
    if !mesh.turn_urls.is_empty() {
        let expiry = now + Duration::from_secs(mesh.turn_ttl_secs);
        let (username, credential) = mint(&mesh.turn_secret, expiry, session);
        servers.push(IceServer { urls: mesh.turn_urls.clone(), username, credential });
    }
    servers
}

/// coturn's REST API credentials for `session` until `expiry`: (user name, password).
pub fn mint(secret: &str, expiry: SystemTime, session: u64) -> (String, String) {
    let expiry = expiry.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let username = format!("{expiry}:{session}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Checks the `[mesh]` keys that name servers: URLs with a STUN/TURN scheme, at most
/// [`MAX_ICE_SERVERS`] of them in all, a secret wherever `turn_urls` needs one, and a TURN
/// server wherever `relay_only` needs one.
pub fn check(mesh: &MeshConfig) -> Result<(), ConfigError> {
    let bad = |key: &str, reason: String| ConfigError { key: key.into(), reason };
    let fixed = mesh.ice_servers.iter().flat_map(IceServerEntry::urls);
    let count = fixed.clone().count() + mesh.turn_urls.len();
    if count > MAX_ICE_SERVERS {
        return Err(bad("mesh.ice_servers", format!("{count} URLs with turn_urls, the limit is {MAX_ICE_SERVERS}")));
    }
    for (key, url) in fixed.map(|u| ("mesh.ice_servers", u)).chain(mesh.turn_urls.iter().map(|u| ("mesh.turn_urls", u)))
    {
        if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) || url.len() > MAX_STRING {
            return Err(bad(key, format!("{url:?} is not a stun:/turn: URL")));
        }
    }
    if let Some(url) = mesh.turn_urls.iter().find(|u| !u.starts_with("turn")) {
        return Err(bad("mesh.turn_urls", format!("{url:?} is not a turn: URL")));
    }
    for entry in &mesh.ice_servers {
        if let IceServerEntry::Server(s) = entry {
            if s.urls.is_empty() {
                return Err(bad("mesh.ice_servers", "a server table needs urls".into()));
            }
            if s.username.len() > MAX_STRING || s.credential.len() > MAX_STRING {
                return Err(bad("mesh.ice_servers", format!("a user name or credential exceeds {MAX_STRING} bytes")));
            }
        }
    }
    if !mesh.turn_urls.is_empty() && mesh.turn_secret.is_empty() {
        return Err(bad(
            "mesh.turn_secret",
            "turn_urls needs the TURN server's shared secret (coturn's static-auth-secret)".into(),
        ));
    }
    if !(60..=7 * 86_400).contains(&mesh.turn_ttl_secs) {
        return Err(bad("mesh.turn_ttl_secs", format!("{} is outside 60..=604800", mesh.turn_ttl_secs)));
    }
    let turn =
        mesh.ice_servers.iter().flat_map(IceServerEntry::urls).chain(&mesh.turn_urls).any(|u| u.starts_with("turn"));
    if mesh.relay_only && !turn {
        return Err(bad("mesh.relay_only", "needs a TURN server: turn_urls, or a turn: entry of ice_servers".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturns_rest_api() {
        // base64(HMAC-SHA1("north", "1700000000:42")), as Python's hmac module computes it.
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, password) = mint("north", expiry, 42);
        assert_eq!(username, "1700000000:42");
        assert_eq!(password, "DWX3FI7DiPIpadEYQAZsnZBAagI=");
    }
}
