//! Cross-origin reads within a federated job: a tab served by one relay of the job may
//! open its session on another (when its own dies), and then downloads weights, steps
//! and shards from that one. Each relay lets exactly the job's relays' origins (live or
//! not: the page's own relay may be the one that died), and
//! the page origins of `[limits] origins`, read its routes; a relay running its job
//! alone lets no other origin read.

use axum::http::{HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;

/// The CORS layer for the relay's routes.
pub fn layer(state: AppState) -> CorsLayer {
    CorsLayer::new().allow_methods([Method::GET]).allow_origin(AllowOrigin::predicate(
        move |origin: &HeaderValue, _| origin.to_str().is_ok_and(|origin| job_origin(&state, origin)),
    ))
}

/// Whether `origin` is one of the federated job's relays or allowed pages.
pub fn job_origin(state: &AppState, origin: &str) -> bool {
    let coordinator = state.coordinator.lock().expect("coordinator lock");
    let Some(federation) = coordinator.federation_status() else { return false };
    federation.known_relays.iter().any(|relay| origin_of(relay) == origin)
        || coordinator.job().limits.origins.iter().any(|o| o == origin)
}

/// The origin (`scheme://host[:port]`) of `url`.
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_s_origin_drops_its_path() {
        assert_eq!(super::origin_of("https://relay.example.org/jobs/a"), "https://relay.example.org");
        assert_eq!(super::origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
