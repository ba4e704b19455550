//! The files the mesh trades, named by one number so that everything keyed by a version
//! (the store, what peers hold, what was sent them, the wire) keys files as well:
//! `2·version` is a version's weights file (`/api/weights/{version}`), `2·version + 1` its
//! published step from the version before (`/api/deltas/{version}`). Ids order as their
//! versions do, each version's step just after its weights file.

/// The id of `version`'s weights file.
pub fn weights(version: u64) -> u64 {
    2 * version
}

/// The id of `version`'s published step.
pub fn step(version: u64) -> u64 {
    2 * version + 1
}

/// The version a file belongs to.
pub fn version(id: u64) -> u64 {
    id / 2
}

/// Whether the file is a weights file.
pub fn is_weights(id: u64) -> bool {
    id.is_multiple_of(2)
}

/// The relay's path of the file (`/chunks`, `/chunks/{i}` below it).
pub fn path(id: u64) -> String {
    let kind = if is_weights(id) { "weights" } else { "deltas" };
    format!("/api/{kind}/{}", version(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_weights_and_steps_in_version_order() {
        assert_eq!((path(weights(7)), path(step(7))), ("/api/weights/7".to_string(), "/api/deltas/7".to_string()));
        assert!(weights(7) < step(7) && step(7) < weights(8));
        assert_eq!((version(step(7)), is_weights(step(7)), is_weights(weights(7))), (7, false, true));
    }
}
