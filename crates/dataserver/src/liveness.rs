//! The failure detector: a peer's liveness from the age of its latest heartbeat.

use std::time::Duration;

use forum_protocol::Liveness;

use crate::heartbeat::{DOWN_AFTER, SUSPECT_AFTER};

/// Returns a peer's liveness given how long ago its latest heartbeat arrived, or `None`
/// when none has arrived since this server started.
pub(crate) fn liveness(heartbeat_age: Option<Duration>) -> Liveness {
    match heartbeat_age {
        None => Liveness::Unknown,
        Some(age) if age >= DOWN_AFTER => Liveness::Down,
        Some(age) if age >= SUSPECT_AFTER => Liveness::Suspected,
        Some(_) => Liveness::Up,
    }
}

/// Describes a change of liveness for the operator's log, or returns `None` when the change
/// is not worth a line (there is none, or a peer never heard from stays unknown).
pub(crate) fn transition_message(from: Liveness, to: Liveness) -> Option<&'static str> {
    if from == to {
        return None;
    }
    match (from, to) {
        (Liveness::Unknown, Liveness::Up) => Some("peer is up"),
        (_, Liveness::Up) => Some("peer is back"),
        (_, Liveness::Suspected) => Some("peer is suspected: no heartbeat for 1.5 s"),
        (_, Liveness::Down) => Some("peer is down: no heartbeat for 3 s; catch-up no longer uses it"),
        (_, Liveness::Unknown) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_heartbeat_age() {
        assert_eq!(liveness(None), Liveness::Unknown);
        assert_eq!(liveness(Some(Duration::from_millis(400))), Liveness::Up);
        assert_eq!(liveness(Some(SUSPECT_AFTER)), Liveness::Suspected);
        assert_eq!(liveness(Some(DOWN_AFTER + Duration::from_secs(60))), Liveness::Down);
    }

    #[test]
    fn transitions_are_logged_once() {
        assert_eq!(transition_message(Liveness::Up, Liveness::Up), None);
        assert_eq!(transition_message(Liveness::Unknown, Liveness::Up), Some("peer is up"));
        assert_eq!(transition_message(Liveness::Down, Liveness::Up), Some("peer is back"));
        assert!(transition_message(Liveness::Up, Liveness::Suspected).is_some());
        assert!(transition_message(Liveness::Suspected, Liveness::Down).is_some());
    }
}
