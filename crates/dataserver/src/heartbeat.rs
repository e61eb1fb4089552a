//! Heartbeats: what a data server announces to its peers every [`HEARTBEAT_INTERVAL`], and
//! how long a silent peer stays trusted.
//!
//! A heartbeat carries the sender's id, its version vector and the endpoint that serves
//! `FetchChanges`. It goes out on the topic `checkpoint.heartbeat` as a [`WireHeartbeat`],
//! next to the changes on `checkpoint`, so one SUB socket per peer receives both.

use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{encode, now_millis, Heartbeat, ServerId, VersionVector, WireHeartbeat, PROTOCOL_VERSION, TOPIC_HEARTBEAT};

/// How often a data server publishes a heartbeat.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// A peer without a heartbeat for this long is suspected: three intervals missed.
pub(crate) const SUSPECT_AFTER: Duration = Duration::from_millis(1500);

/// A peer without a heartbeat for this long is down: catch-up stops using it, and its peer
/// subscriber rebuilds its SUB socket.
pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(3);

/// Builds the two frames of a heartbeat message.
pub(crate) fn message(server: ServerId, fetch_endpoint: &str, vector: VersionVector) -> Vec<Bytes> {
    let heartbeat = Heartbeat { server, fetch_endpoint: fetch_endpoint.to_owned(), vector, time: now_millis() };
    let payload = encode(&WireHeartbeat { v: PROTOCOL_VERSION, heartbeat });
    vec![Bytes::from_static(TOPIC_HEARTBEAT.as_bytes()), Bytes::from(payload)]
}
