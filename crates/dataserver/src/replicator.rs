//! The replicator: the one task that owns this server's view of its peers. It tracks
//! each peer's liveness and version vector from its heartbeats, logs every change of
//! liveness once, and starts a catch-up from a live peer that holds changes this server lacks.
//!
//! At most one catch-up runs at a time, from the peer with the largest lag, so the same
//! changes are not fetched twice from two peers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forum_protocol::{ClusterKey, lag, Liveness, PeerStatus, ServerId, VersionVector};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::catch_up::{self, Fetcher, Range};
use crate::command::Command;
use crate::liveness::{liveness, transition_message};
use crate::metrics::{add, Metrics};
use crate::peers::ReceivedHeartbeat;
use crate::rate_limit::LogRateLimit;

/// How often liveness is re-evaluated and a catch-up considered.
const TICK: Duration = Duration::from_millis(250);

/// This server's view of one peer, built from its heartbeats.
struct Peer {
    id: Option<ServerId>,
    fetch_endpoint: Option<String>,
    vector: VersionVector,
    last_heartbeat: Option<Instant>,
    liveness: Liveness,
    /// A connected fetcher kept between catch-ups; `None` until needed or after a failure.
    fetcher: Option<Fetcher>,
}

/// The result of a finished catch-up: the peer's PUB endpoint, the fetcher when still usable,
/// and the number of changes fetched or the error.
type CatchUpOutcome = (String, Option<Fetcher>, anyhow::Result<u64>);

/// The inputs and outputs of the replicator task.
pub(crate) struct Replicator {
    pub server: ServerId,
    /// The configured peers' PUB endpoints; [`crate::DataServer::add_peer`] adds to it.
    pub configured: watch::Receiver<Vec<String>>,
    /// This server's version vector after the actor's latest commit.
    pub vector: watch::Receiver<VersionVector>,
    pub actor: mpsc::Sender<Command>,
    /// The peers as the status report shows them, refreshed every tick.
    pub status: watch::Sender<Vec<PeerStatus>>,
    pub metrics: Arc<Metrics>,
    /// The cluster key that signs fetch requests and checks their replies, if any.
    pub cluster_key: Option<ClusterKey>,
}

impl Replicator {
    /// Handles heartbeats and ticks until `shutdown` turns true.
    pub async fn run(self, mut heartbeats: mpsc::Receiver<ReceivedHeartbeat>, mut shutdown: watch::Receiver<bool>) {
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        let mut catch_up: Option<JoinHandle<CatchUpOutcome>> = None;
        let mut failures = LogRateLimit::new();
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => break,
                received = heartbeats.recv() => {
                    let Some(received) = received else { break };
                    add(&self.metrics.heartbeats_received, 1);
                    let peer = peers.entry(received.peer.clone()).or_insert_with(Peer::new);
                    if received.heartbeat.server == self.server {
                        warn!(server = self.server, peer = received.peer, "a peer sends heartbeats with this server's id; give each server a unique --id");
                    }
                    if let Some(previous) = peer.id.filter(|previous| *previous != received.heartbeat.server) {
                        info!(
                            server = self.server,
                            peer = received.peer,
                            previous_id = previous,
                            peer_id = received.heartbeat.server,
                            "another data server now runs at this peer endpoint"
                        );
                    }
                    peer.id = Some(received.heartbeat.server);
                    if peer.fetch_endpoint.as_deref() != Some(received.heartbeat.fetch_endpoint.as_str()) {
                        peer.fetch_endpoint = Some(received.heartbeat.fetch_endpoint);
                        peer.fetcher = None;
                    }
                    peer.vector = received.heartbeat.vector;
                    peer.last_heartbeat = Some(Instant::now());
                    self.update_liveness(&received.peer, peer);
                }
                outcome = async { catch_up.as_mut().expect("guarded by is_some").await }, if catch_up.is_some() => {
                    catch_up = None;
                    match outcome {
                        Ok((endpoint, fetcher, result)) => {
                            if let Some(peer) = peers.get_mut(&endpoint) {
                                peer.fetcher = fetcher;
                            }
                            if let Err(error) = result {
                                if let Some(suppressed) = failures.check() {
                                    warn!(server = self.server, peer = endpoint, error = format!("{error:#}"), suppressed, "catch-up failed; retrying");
                                }
                            }
                        }
                        Err(error) => warn!(server = self.server, %error, "the catch-up task failed"),
                    }
                }
                _ = ticks.tick() => {
                    self.metrics.sample(std::time::Instant::now());
                    for endpoint in self.configured.borrow().iter() {
                        peers.entry(endpoint.clone()).or_insert_with(Peer::new);
                    }
                    for (endpoint, peer) in peers.iter_mut() {
                        self.update_liveness(endpoint, peer);
                    }
                    let ours = self.vector.borrow().clone();
                    self.publish_status(&peers, &ours);
                    if catch_up.is_none() {
                        catch_up = self.start_catch_up(&mut peers, &ours);
                    }
                }
            }
        }
        if let Some(task) = catch_up {
            task.abort();
            let _ = task.await;
        }
        info!(server = self.server, "replicator stopped");
    }

    fn update_liveness(&self, endpoint: &str, peer: &mut Peer) {
        let now = liveness(peer.last_heartbeat.map(|at| at.elapsed()));
        if let Some(message) = transition_message(peer.liveness, now) {
            match now {
                Liveness::Up => info!(server = self.server, peer = endpoint, peer_id = ?peer.id, "{message}"),
                _ => warn!(server = self.server, peer = endpoint, peer_id = ?peer.id, "{message}"),
            }
        }
        peer.liveness = now;
    }

    fn publish_status(&self, peers: &BTreeMap<String, Peer>, ours: &VersionVector) {
        let status = peers
            .iter()
            .map(|(endpoint, peer)| PeerStatus {
                pub_endpoint: endpoint.clone(),
                server: peer.id,
                liveness: peer.liveness,
                vector: peer.vector.clone(),
                lag: lag(ours, &peer.vector),
                heartbeat_age_ms: peer.last_heartbeat.map(|at| at.elapsed().as_millis() as u64),
            })
            .collect();
        self.status.send_replace(status);
    }

    /// Starts fetching from the live peer that is furthest ahead, if any is ahead.
    fn start_catch_up(&self, peers: &mut BTreeMap<String, Peer>, ours: &VersionVector) -> Option<JoinHandle<CatchUpOutcome>> {
        let (endpoint, peer) = peers
            .iter_mut()
            .filter(|(_, peer)| peer.liveness == Liveness::Up && peer.fetch_endpoint.is_some())
            .map(|(endpoint, peer)| (lag(ours, &peer.vector), endpoint, peer))
            .filter(|(lag, _, _)| *lag > 0)
            .max_by_key(|(lag, _, _)| *lag)
            .map(|(_, endpoint, peer)| (endpoint.clone(), peer))?;
        let fetch_endpoint = peer.fetch_endpoint.clone().expect("filtered on a known endpoint");
        let fetcher = peer.fetcher.take();
        let ranges: Vec<Range> = peer
            .vector
            .iter()
            .map(|(origin, until_seq)| Range { origin: *origin, after_seq: ours.get(origin).copied().unwrap_or(0), until_seq: *until_seq })
            .filter(|range| range.until_seq > range.after_seq)
            .collect();
        let peer_id = peer.id.unwrap_or_default();
        info!(server = self.server, peer = endpoint, peer_id, lag = lag(ours, &peer.vector), "catching up from peer");
        let (server, actor, metrics) = (self.server, self.actor.clone(), Arc::clone(&self.metrics));
        let cluster_key = self.cluster_key.clone();
        Some(tokio::spawn(async move {
            let fetcher = match fetcher {
                Some(fetcher) => fetcher,
                None => match Fetcher::connect(&fetch_endpoint, cluster_key).await {
                    Ok(fetcher) => fetcher,
                    Err(error) => {
                        add(&metrics.fetch_failures, 1);
                        return (endpoint, None, Err(error));
                    }
                },
            };
            let (fetcher, result) = catch_up::catch_up(server, peer_id, fetcher, ranges, actor, metrics).await;
            (endpoint, fetcher, result)
        }))
    }
}

impl Peer {
    fn new() -> Peer {
        Peer { id: None, fetch_endpoint: None, vector: VersionVector::new(), last_heartbeat: None, liveness: Liveness::Unknown, fetcher: None }
    }
}
