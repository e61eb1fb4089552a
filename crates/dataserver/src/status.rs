//! The status report: a data server's state and its peers' for operators, as a
//! [`ServerStatus`] reply and in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use forum_protocol::{GuardStatus, Liveness, PeerStatus, QueueDepths, ServerId, ServerStatus, VersionVector};
use tokio::sync::{mpsc, watch};
use zmtp_guard::GuardStats;

use crate::command::Command;
use crate::metrics::Metrics;
use crate::publisher::Publication;

/// Everything the status report reads. Cloning it is cheap.
#[derive(Clone)]
pub(crate) struct StatusSource {
    pub server: ServerId,
    pub fetch_endpoint: String,
    pub vector: watch::Receiver<VersionVector>,
    pub peers: watch::Receiver<Vec<PeerStatus>>,
    pub metrics: Arc<Metrics>,
    /// Weak, so that holding a status source never keeps the actor or the publisher running.
    pub actor: mpsc::WeakSender<Command>,
    pub publisher: mpsc::WeakSender<Publication>,
    /// The counters of the request port and of the guard in front of the PUB socket, by
    /// socket name.
    pub guards: Vec<(&'static str, GuardStats)>,
}

/// Returns how many items wait in a channel, or 0 when it is closed.
fn depth<T>(sender: &mpsc::WeakSender<T>) -> u64 {
    sender.upgrade().map_or(0, |sender| (sender.max_capacity() - sender.capacity()) as u64)
}

impl StatusSource {
    pub fn snapshot(&self) -> ServerStatus {
        ServerStatus {
            server: self.server,
            fetch_endpoint: self.fetch_endpoint.clone(),
            vector: self.vector.borrow().clone(),
            peers: self.peers.borrow().clone(),
            queues: QueueDepths { actor: depth(&self.actor), publisher: depth(&self.publisher) },
            counters: self.metrics.snapshot(),
            rates: self.metrics.rates(std::time::Instant::now()),
            guards: self
                .guards
                .iter()
                .map(|(socket, stats)| GuardStatus {
                    socket: (*socket).to_owned(),
                    address: stats.local_addr().to_string(),
                    rejected_connections: stats.rejected_connections(),
                    active_connections: stats.active_connections() as u64,
                })
                .collect(),
        }
    }
}

/// Renders a status in the Prometheus text exposition format (version 0.0.4).
pub(crate) fn prometheus_text(status: &ServerStatus) -> String {
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let server = status.server;
    let counters = &status.counters;
    let counter_samples = |value: u64| vec![(format!("{{server=\"{server}\"}}"), value)];
    let rates = &status.rates;
    let rate_samples = [
        ("requests", rates.requests),
        ("local_changes", rates.local_changes),
        ("replicated_changes", rates.replicated_changes),
        ("fetched_changes", rates.fetched_changes),
        ("commits", rates.commits),
    ]
    .into_iter()
    .map(|(kind, value)| (format!("{{server=\"{server}\",kind=\"{kind}\"}}"), value))
    .collect();
    metric("forum_rate_per_second", "gauge", "Per-second rates over the last 10 seconds.", rate_samples);
    metric("forum_requests_total", "counter", "Requests received on the request socket.", counter_samples(counters.requests));
    metric("forum_local_changes_total", "counter", "Changes made by this server.", counter_samples(counters.local_changes));
    metric("forum_replicated_changes_total", "counter", "New changes received live from peers.", counter_samples(counters.replicated_changes));
    metric("forum_fetched_changes_total", "counter", "New changes received by catch-up fetches.", counter_samples(counters.fetched_changes));
    metric("forum_commits_total", "counter", "Write transactions committed to the store.", counter_samples(counters.commits));
    metric("forum_duplicate_changes_total", "counter", "Received changes that were already stored.", counter_samples(counters.duplicate_changes));
    metric("forum_heartbeats_received_total", "counter", "Heartbeats received from peers.", counter_samples(counters.heartbeats_received));
    metric("forum_fetches_served_total", "counter", "FetchChanges requests answered for peers.", counter_samples(counters.fetches_served));
    metric("forum_fetch_failures_total", "counter", "Catch-up fetches that failed or timed out.", counter_samples(counters.fetch_failures));

    let queue_samples = vec![
        (format!("{{server=\"{server}\",queue=\"actor\"}}"), status.queues.actor),
        (format!("{{server=\"{server}\",queue=\"publisher\"}}"), status.queues.publisher),
    ];
    metric("forum_queue_depth", "gauge", "Items waiting in an internal queue.", queue_samples);

    let guard_label = |guard: &GuardStatus| format!("{{server=\"{server}\",socket=\"{}\"}}", guard.socket);
    let rejected_samples = status.guards.iter().map(|guard| (guard_label(guard), guard.rejected_connections)).collect();
    metric(
        "forum_zmtp_guard_rejected_connections_total",
        "counter",
        "Connections a ZMTP guard cut for breaking a limit or for exceeding its connection cap.",
        rejected_samples,
    );
    let active_samples = status.guards.iter().map(|guard| (guard_label(guard), guard.active_connections)).collect();
    metric("forum_zmtp_guard_active_connections", "gauge", "Connections a ZMTP guard relays now.", active_samples);

    let vector_samples =
        status.vector.iter().map(|(origin, seq)| (format!("{{server=\"{server}\",origin=\"{origin}\"}}"), *seq)).collect();
    metric("forum_version_vector", "gauge", "Highest contiguous sequence number held per origin.", vector_samples);

    let peer_labels = |peer: &PeerStatus| {
        let id = peer.server.map_or_else(String::new, |id| id.to_string());
        format!("server=\"{server}\",peer=\"{}\",peer_id=\"{id}\"", peer.pub_endpoint)
    };
    let mut liveness_samples = Vec::new();
    for peer in &status.peers {
        for state in [Liveness::Unknown, Liveness::Up, Liveness::Suspected, Liveness::Down] {
            let labels = format!("{{{},state=\"{}\"}}", peer_labels(peer), state.name());
            liveness_samples.push((labels, u64::from(peer.liveness == state)));
        }
    }
    metric("forum_peer_liveness", "gauge", "1 for the peer's current liveness state, 0 for the others.", liveness_samples);
    let lag_samples = status.peers.iter().map(|peer| (format!("{{{}}}", peer_labels(peer)), peer.lag)).collect();
    metric("forum_peer_lag_changes", "gauge", "Changes the peer holds that this server lacks.", lag_samples);
    let peer_vector_samples = status
        .peers
        .iter()
        .flat_map(|peer| peer.vector.iter().map(move |(origin, seq)| (format!("{{{},origin=\"{origin}\"}}", peer_labels(peer)), *seq)))
        .collect();
    metric("forum_peer_version_vector", "gauge", "A peer's version vector from its latest heartbeat.", peer_vector_samples);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use forum_protocol::{Counters, Rates};

    #[test]
    fn prometheus_text_has_peers_and_vector() {
        let status = ServerStatus {
            server: 1,
            fetch_endpoint: "tcp://127.0.0.1:1".into(),
            vector: VersionVector::from([(1, 10), (2, 4)]),
            peers: vec![PeerStatus {
                pub_endpoint: "tcp://127.0.0.1:2".into(),
                server: Some(2),
                liveness: Liveness::Suspected,
                vector: VersionVector::from([(2, 6)]),
                lag: 2,
                heartbeat_age_ms: Some(1600),
            }],
            queues: QueueDepths { actor: 3, publisher: 0 },
            counters: Counters { requests: 7, ..Counters::default() },
            rates: Rates { local_changes: 12, ..Rates::default() },
            guards: vec![GuardStatus {
                socket: "request".into(),
                address: "127.0.0.1:3".into(),
                rejected_connections: 5,
                active_connections: 2,
            }],
        };
        let text = prometheus_text(&status);
        assert!(text.contains("forum_requests_total{server=\"1\"} 7\n"), "{text}");
        assert!(text.contains("forum_rate_per_second{server=\"1\",kind=\"local_changes\"} 12\n"), "{text}");
        assert!(text.contains("forum_version_vector{server=\"1\",origin=\"2\"} 4\n"), "{text}");
        let peer = "server=\"1\",peer=\"tcp://127.0.0.1:2\",peer_id=\"2\"";
        assert!(text.contains(&format!("forum_peer_liveness{{{peer},state=\"suspected\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("forum_peer_lag_changes{{{peer}}} 2\n")), "{text}");
        assert!(text.contains("forum_queue_depth{server=\"1\",queue=\"actor\"} 3\n"), "{text}");
        assert!(text.contains("forum_zmtp_guard_rejected_connections_total{server=\"1\",socket=\"request\"} 5\n"), "{text}");
        assert!(text.contains("forum_zmtp_guard_active_connections{server=\"1\",socket=\"request\"} 2\n"), "{text}");
    }
}
