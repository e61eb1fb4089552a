//! One subscriber task per peer: it receives the peer's own changes on the checkpoint topic,
//! which it hands to the actor, and the peer's heartbeats, which it hands to the replicator.
//!
//! Each peer has its own SUB socket so that a peer's liveness can be tracked on its own. The
//! socket is `zmtp_guard`'s, which checks every message against the default [`Limits`] and
//! cuts a peer that breaks them. It never reconnects by itself. So when connecting fails, the
//! connection breaks or the peer is cut, the task connects a new socket after a backoff. The
//! backoff doubles from [`FIRST_RETRY_DELAY`] up to [`MAX_RETRY_DELAY`], and starts over once
//! a message from the peer is accepted. When nothing at all arrives for [`DOWN_AFTER`], the
//! task also rebuilds the socket, so a connection that failed unnoticed cannot stop
//! replication for good.

use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{unseal, ClusterKey, MacContext, decode, Change, Heartbeat, ServerId, WireChange, WireHeartbeat, TOPIC_CHECKPOINT, TOPIC_HEARTBEAT};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zmtp_guard::{Limits, Subscriber, SubscriberKey};

use crate::command::Command;
use crate::heartbeat::DOWN_AFTER;
use crate::rate_limit::LogRateLimit;

/// How long the TCP connection may take, and then the ZMTP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first and the longest wait between failed connection attempts.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A heartbeat received from a peer.
#[derive(Debug)]
pub(crate) struct ReceivedHeartbeat {
    /// The peer's PUB endpoint, as configured.
    pub peer: String,
    pub heartbeat: Heartbeat,
}

/// The channels that a peer subscriber sends its messages to.
pub(crate) struct PeerOutputs {
    /// Changes to the actor. A full channel makes the subscriber wait.
    pub actor: mpsc::Sender<Command>,
    /// Heartbeats to the replicator. When the channel is full the heartbeat is dropped,
    /// because the next one follows within half a second and carries newer information.
    pub heartbeats: mpsc::Sender<ReceivedHeartbeat>,
}

/// Subscribes to one peer until `shutdown` turns true.
pub(crate) async fn run(
    server: ServerId,
    peer: String,
    outputs: PeerOutputs,
    cluster_key: Option<ClusterKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    tokio::select! {
        () = stopping => {}
        () = subscribe(server, &peer, outputs, cluster_key) => {}
    }
    info!(server, peer, "peer subscriber stopped");
}

/// The content of one message on the checkpoint topics.
enum Received {
    Change(Change),
    Heartbeat(Heartbeat),
}

async fn subscribe(server: ServerId, peer: &str, outputs: PeerOutputs, cluster_key: Option<ClusterKey>) {
    let mut receive_failures = LogRateLimit::new();
    // A peer with another key fails every message, so one line per peer is enough.
    let mut mac_failure_logged = false;
    let mut decode_failures = LogRateLimit::new();
    let mut dropped_heartbeats = LogRateLimit::new();
    let mut retry_delay = FIRST_RETRY_DELAY;
    let subscriber_key = cluster_key.as_ref().map(|key| SubscriberKey::new(key.subscriber_key()));
    'connection: loop {
        let mut socket = connect(server, peer, subscriber_key.as_ref(), &mut retry_delay).await;
        debug!(server, peer, "subscribed to peer");
        loop {
            let mut frames = match tokio::time::timeout(DOWN_AFTER, socket.recv()).await {
                Ok(Ok(frames)) => frames,
                Ok(Err(error)) => {
                    // The socket has already logged a cut, rate-limited.
                    if !error.is_cut() {
                        if let Some(suppressed) = receive_failures.check() {
                            warn!(server, peer, %error, suppressed, retry_in = ?retry_delay, "failed to receive from peer; rebuilding the socket");
                        }
                    }
                    back_off(&mut retry_delay).await;
                    continue 'connection;
                }
                Err(_) => {
                    debug!(server, peer, silence = ?DOWN_AFTER, "nothing received from peer; rebuilding the socket");
                    continue 'connection;
                }
            };
            if let Err(error) = unseal(cluster_key.as_ref(), MacContext::Publication, &mut frames, 2) {
                if !mac_failure_logged {
                    warn!(server, peer, %error, "dropped a message from peer that failed authentication; check that it uses this group's cluster key");
                    mac_failure_logged = true;
                }
                continue;
            }
            match parse(&frames) {
                Ok(Received::Change(change)) => {
                    retry_delay = FIRST_RETRY_DELAY;
                    // Waiting on a full actor channel leaves messages queued in the SUB socket.
                    // Beyond its queue the peer's PUB socket drops them, and catch-up fetches
                    // them later.
                    if outputs.actor.send(Command::Replicated { change }).await.is_err() {
                        return;
                    }
                }
                Ok(Received::Heartbeat(heartbeat)) => {
                    retry_delay = FIRST_RETRY_DELAY;
                    let received = ReceivedHeartbeat { peer: peer.to_owned(), heartbeat };
                    match outputs.heartbeats.try_send(received) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if let Some(suppressed) = dropped_heartbeats.check() {
                                warn!(server, peer, suppressed, "dropped a heartbeat because the replicator is busy");
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Err(reason) => {
                    if let Some(suppressed) = decode_failures.check() {
                        warn!(server, peer, reason, suppressed, "dropped an undecodable message from peer");
                    }
                }
            }
        }
    }
}

/// Connects and subscribes, retrying with the backoff in `delay` until it succeeds. With a
/// key, the socket first sends a subscriber token, which the peer's pub port demands.
async fn connect(server: ServerId, peer: &str, key: Option<&SubscriberKey>, delay: &mut Duration) -> Subscriber {
    let limits = Limits { greeting_timeout: CONNECT_TIMEOUT, ..Limits::default() };
    let mut failures = LogRateLimit::new();
    loop {
        // The prefix `checkpoint` also matches `checkpoint.heartbeat`.
        match Subscriber::connect_with_key(peer, key, &[TOPIC_CHECKPOINT.as_bytes()], &limits, CONNECT_TIMEOUT).await {
            Ok(socket) => return socket,
            // The socket has already logged a cut, rate-limited.
            Err(error) if error.is_cut() => {}
            Err(error) => {
                if let Some(suppressed) = failures.check() {
                    warn!(server, peer, %error, suppressed, retry_in = ?*delay, "failed to connect to peer; retrying");
                }
            }
        }
        back_off(delay).await;
    }
}

/// Waits `delay`, then doubles it up to [`MAX_RETRY_DELAY`].
async fn back_off(delay: &mut Duration) {
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(MAX_RETRY_DELAY);
}

/// Reads a `[topic, WireChange]` or a `[topic, WireHeartbeat]` message.
fn parse(frames: &[Bytes]) -> Result<Received, String> {
    let [topic, payload] = frames else {
        return Err(format!("expected 2 frames, got {}", frames.len()));
    };
    if topic.as_ref() == TOPIC_CHECKPOINT.as_bytes() {
        let wire: WireChange = decode(payload).map_err(|error| error.to_string())?;
        Ok(Received::Change(wire.change))
    } else if topic.as_ref() == TOPIC_HEARTBEAT.as_bytes() {
        let wire: WireHeartbeat = decode(payload).map_err(|error| error.to_string())?;
        Ok(Received::Heartbeat(wire.heartbeat))
    } else {
        Err(format!("unexpected topic {:?}", String::from_utf8_lossy(topic)))
    }
}
