//! `/api/events`: the relay's status as server-sent events for the dashboard, one
//! `status` event (the `/api/status` JSON) at once and then every second.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};

use crate::state::AppState;

/// Time between two events.
const EVERY: Duration = Duration::from_secs(1);

/// The event stream; it ends when the client goes away.
pub async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(EVERY).await;
        }
        let status = state.coordinator.lock().expect("coordinator lock").status();
        let event = Event::default()
            .event("status")
            .json_data(&status)
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
        Some((Ok(event), (state, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
