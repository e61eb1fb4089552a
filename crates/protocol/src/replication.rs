//! Replication messages: the heartbeats with version vectors that data servers exchange, and
//! the status report for operators.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::ServerId;

/// For each origin server, the highest sequence number up to which a data server has every
/// change of that origin without a gap. A missing origin means 0.
pub type VersionVector = BTreeMap<ServerId, u64>;

/// A data server's periodic announcement on [`crate::TOPIC_HEARTBEAT`]: it is alive, what it
/// holds, and where to fetch from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub server: ServerId,
    /// The request endpoint that peers send `FetchChanges` to, as the server advertises it.
    pub fetch_endpoint: String,
    pub vector: VersionVector,
    /// Wall-clock time at the sender, in milliseconds since the Unix epoch. Informative only:
    /// receivers measure liveness with their own clock.
    pub time: u64,
}

/// A published heartbeat, the second frame after the topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHeartbeat {
    pub v: u16,
    pub heartbeat: Heartbeat,
}

/// A peer's state as a data server infers it from the heartbeats it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Liveness {
    /// No heartbeat has arrived yet since this server started.
    Unknown,
    /// Heartbeats arrive on time.
    Up,
    /// No heartbeat for a while; the peer may be dead or cut off.
    Suspected,
    /// No heartbeat for long enough to treat the peer as gone. Catch-up does not use it.
    Down,
}

impl Liveness {
    /// Returns a stable lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Up => "up",
            Liveness::Suspected => "suspected",
            Liveness::Down => "down",
        }
    }
}

/// One peer as a data server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's PUB endpoint, as configured.
    pub pub_endpoint: String,
    /// The peer's id, known once a heartbeat has arrived.
    pub server: Option<ServerId>,
    pub liveness: Liveness,
    /// The peer's version vector from its latest heartbeat.
    pub vector: VersionVector,
    /// The number of changes that the peer has and this server lacks: the sum over origins of
    /// the peer's sequence number minus this server's, where positive.
    pub lag: u64,
    /// Milliseconds since the latest heartbeat, or `None` when none has arrived.
    pub heartbeat_age_ms: Option<u64>,
}

/// How many items wait in a data server's internal queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepths {
    /// Commands waiting for the actor (requests and replicated changes).
    pub actor: u64,
    /// Changes and heartbeats waiting for the PUB socket.
    pub publisher: u64,
}

/// Counters since the server started; rates are their differences over time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests received on the request socket, of any kind.
    pub requests: u64,
    /// Changes made by this server.
    pub local_changes: u64,
    /// New changes received live from peers on the checkpoint topic.
    pub replicated_changes: u64,
    /// New changes received through catch-up fetches.
    pub fetched_changes: u64,
    /// Write transactions committed to the store; with group commit, fewer than the changes.
    pub commits: u64,
    /// Changes received that were already stored, and so ignored.
    pub duplicate_changes: u64,
    pub heartbeats_received: u64,
    /// `FetchChanges` requests this server answered for its peers.
    pub fetches_served: u64,
    /// Catch-up fetches from peers that timed out or failed.
    pub fetch_failures: u64,
}

/// Per-second rates of a data server's counters, averaged over the last 10 seconds (less just
/// after the start), rounded down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    pub requests: u64,
    pub local_changes: u64,
    pub replicated_changes: u64,
    pub fetched_changes: u64,
    pub commits: u64,
}

/// A data server's answer to a status request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub server: ServerId,
    /// The request endpoint advertised to peers for catch-up.
    pub fetch_endpoint: String,
    pub vector: VersionVector,
    pub peers: Vec<PeerStatus>,
    pub queues: QueueDepths,
    pub counters: Counters,
    /// Zero from a server that does not report rates, which is how older servers decode.
    #[serde(default)]
    pub rates: Rates,
    /// The ZMTP guards in front of the server's ZeroMQ ports. Empty from a server that has
    /// none, which is how older servers decode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardStatus>,
}

/// The counters of the ZMTP guard in front of one ZeroMQ port of a data server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStatus {
    /// The socket behind the guard: `request` or `pub`.
    pub socket: String,
    /// The public address the guard listens on, such as `127.0.0.1:21000`.
    pub address: String,
    /// Connections closed for breaking a limit or for exceeding the connection cap, since start.
    pub rejected_connections: u64,
    /// Connections being relayed now.
    pub active_connections: u64,
}

/// Returns the number of changes that `ahead` has beyond `behind`: the sum over origins of the
/// positive differences of their sequence numbers.
pub fn lag(behind: &VersionVector, ahead: &VersionVector) -> u64 {
    ahead
        .iter()
        .map(|(origin, seq)| seq.saturating_sub(behind.get(origin).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_only_missing_changes() {
        let ours = VersionVector::from([(1, 10), (2, 5)]);
        let theirs = VersionVector::from([(1, 7), (2, 9), (3, 2)]);
        assert_eq!(lag(&ours, &theirs), 4 + 2);
        assert_eq!(lag(&theirs, &ours), 3);
        assert_eq!(lag(&ours, &ours), 0);
    }
}
