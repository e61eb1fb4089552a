//! The PUB socket that publishes every applied change.
//!
//! A local change goes out twice: on the checkpoint topic, in full, for the other data
//! servers, and on the webserver topic, redacted and with its feed position, for the web
//! servers. A change received from a peer goes out on the webserver topic only, so changes
//! are never relayed between peers. Between changes, a timer publishes this server's heartbeat
//! for its peers.

use bytes::Bytes;
use forum_protocol::{
    encode_feed_change, seal, Change, ClusterKey, FeedNote, MacContext, ServerId, VersionVector, TOPIC_CHECKPOINT, TOPIC_WEBSERVER,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use crate::heartbeat::{self, HEARTBEAT_INTERVAL};
use crate::rate_limit::LogRateLimit;

/// A stored change to publish.
#[derive(Debug)]
pub(crate) struct Publication {
    pub change: Change,
    /// True for a change made by this server, false for one received from a peer.
    pub local: bool,
    /// The change's position in this server's feed.
    pub position: u64,
    /// The change encoded as it is stored, which is also its checkpoint message.
    pub encoded: Bytes,
    /// The note for web servers when the change is a second copy of a write.
    pub note: FeedNote,
}

impl Publication {
    /// A change to store and then publish; the actor fills in its position and encoding
    /// when it stores it.
    pub fn new(change: Change, local: bool) -> Self {
        Publication { change, local, position: 0, encoded: Bytes::new(), note: FeedNote::default() }
    }
}

/// Binds a PUB socket and returns it with the endpoint as bound (with the real port).
pub(crate) async fn bind(endpoint: &str) -> anyhow::Result<(PubSocket, String)> {
    let mut socket = PubSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|error| anyhow::anyhow!("failed to bind the pub endpoint {endpoint}: {error}"))?;
    Ok((socket, bound.to_string()))
}

/// The heartbeat's content besides the server id.
pub(crate) struct HeartbeatSource {
    /// The request endpoint that peers fetch changes from.
    pub fetch_endpoint: String,
    /// The actor's version vector after its latest commit.
    pub vector: watch::Receiver<VersionVector>,
}

/// Publishes changes and heartbeats until the channel closes, then closes the socket.
pub(crate) async fn run(
    server: ServerId,
    mut socket: PubSocket,
    mut publications: mpsc::Receiver<Publication>,
    heartbeat_source: HeartbeatSource,
    cluster_key: Option<ClusterKey>,
) {
    let mut send_failures = LogRateLimit::new();
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let publication = tokio::select! {
            publication = publications.recv() => publication,
            _ = ticks.tick() => {
                let vector = heartbeat_source.vector.borrow().clone();
                let message = heartbeat::message(server, &heartbeat_source.fetch_endpoint, vector);
                if let Err(error) = socket.send(sealed(message, cluster_key.as_ref())).await {
                    if let Some(suppressed) = send_failures.check() {
                        warn!(server, suppressed, %error, "failed to publish a heartbeat");
                    }
                }
                continue;
            }
        };
        let Some(Publication { change, local, position, encoded, note }) = publication else { break };
        let mut messages = Vec::with_capacity(2);
        if local {
            messages.push(two_frames(TOPIC_CHECKPOINT, encoded));
        }
        messages.push(two_frames(TOPIC_WEBSERVER, Bytes::from(encode_feed_change(server, position, &change, note))));
        for message in messages {
            // zeromq 0.7's PUB send only queues the message and drops it for a subscriber
            // whose queue is full, so this await does not wait on the network.
            if let Err(error) = socket.send(sealed(message, cluster_key.as_ref())).await {
                if let Some(suppressed) = send_failures.check() {
                    warn!(server, change = %change.id, suppressed, %error, "failed to publish a change");
                }
            }
        }
    }
    for error in socket.close().await {
        warn!(server, %error, "failed to close the pub socket cleanly");
    }
    info!(server, "publisher stopped");
}

/// Encrypts the payload when a key is set, binding the clear topic to it.
fn sealed(message: ZmqMessage, cluster_key: Option<&ClusterKey>) -> ZmqMessage {
    let mut frames = message.into_vec();
    seal(cluster_key, MacContext::Publication, &mut frames, 2);
    ZmqMessage::try_from(frames).expect("a publication has its topic and payload frames")
}

fn two_frames(topic: &'static str, payload: Bytes) -> ZmqMessage {
    let frames = vec![Bytes::from_static(topic.as_bytes()), payload];
    ZmqMessage::try_from(frames).expect("a message with two frames is not empty")
}
