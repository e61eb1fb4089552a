//! The task that publishes every applied change on the PUB port.
//!
//! A local change goes out twice: on the checkpoint topic, in full, for the other data
//! servers, and on the webserver topic, redacted and with its feed position, for the web
//! servers. A change received from a peer goes out on the webserver topic only, so changes
//! are never relayed between peers. Between changes, a timer publishes this server's heartbeat
//! for its peers.
//!
//! The change frame of both messages, `[checkpoint, change]` and `[webserver, header,
//! change]`, is the buffer that the committer stored, so publishing serializes no change.
//! Only a change with a secret gets a second encoding, the redacted one for web servers,
//! which the actor makes beside the stored one.

use bytes::Bytes;
use forum_protocol::{
    encode_change, encode_feed_header, seal_frames, Change, ClusterKey, FeedNote, MacContext, ServerId, VersionVector,
    TOPIC_CHECKPOINT, TOPIC_WEBSERVER,
};
use tokio::sync::{mpsc, watch};
use tracing::info;
use zmtp_guard::Publisher;

use crate::heartbeat::{self, HEARTBEAT_INTERVAL};

/// A stored change to publish.
#[derive(Debug)]
pub(crate) struct Publication {
    /// True for a change made by this server, false for one received from a peer.
    pub local: bool,
    /// The change's position in this server's feed.
    pub position: u64,
    /// The change encoded as it is stored, a [`forum_protocol::WireChange`], which is the
    /// change frame of both its checkpoint and its webserver message. The committer sets it
    /// for local and replicated changes alike.
    pub encoded: Bytes,
    /// The encoding of the change without its secret, for web servers, when it has one.
    pub redacted: Option<Bytes>,
    /// The note for web servers when the change is a second copy of a write.
    pub note: FeedNote,
}

impl Publication {
    /// Returns the publication of `change`, whose position and encoding the committer fills
    /// in when it stores the change. It keeps no copy of the change, so the reply to a local
    /// write can take the change's strings.
    pub fn new(change: &Change, local: bool, note: FeedNote) -> Self {
        let redacted = change.has_secret().then(|| Bytes::from(encode_change(&change.redacted())));
        Publication { local, position: 0, encoded: Bytes::new(), redacted, note }
    }
}

/// The heartbeat's content besides the server id.
pub(crate) struct HeartbeatSource {
    /// The request endpoint that peers fetch changes from.
    pub fetch_endpoint: String,
    /// The actor's version vector after its latest commit.
    pub vector: watch::Receiver<VersionVector>,
}

/// Publishes changes and heartbeats until the channel closes, then returns the PUB port for
/// the caller to close.
///
/// Publishing never waits: the port queues each message for every matching subscriber and
/// drops it for one whose queue is full, as a zeromq PUB socket does. A peer repairs what
/// it missed by fetching, and a web server by reading the feed.
pub(crate) async fn run(
    server: ServerId,
    port: Publisher,
    mut publications: mpsc::Receiver<Publication>,
    heartbeat_source: HeartbeatSource,
    cluster_key: Option<ClusterKey>,
) -> Publisher {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let publication = tokio::select! {
            publication = publications.recv() => publication,
            _ = ticks.tick() => {
                let vector = heartbeat_source.vector.borrow().clone();
                let message = heartbeat::message(server, &heartbeat_source.fetch_endpoint, vector);
                port.publish(&sealed(message, cluster_key.as_ref()));
                continue;
            }
        };
        let Some(Publication { local, position, encoded, redacted, note }) = publication else { break };
        debug_assert!(!encoded.is_empty(), "the committer sets the encoding of every publication");
        if local {
            let frames = vec![Bytes::from_static(TOPIC_CHECKPOINT.as_bytes()), encoded.clone()];
            port.publish(&sealed(frames, cluster_key.as_ref()));
        }
        let change_frame = redacted.unwrap_or(encoded);
        let header = Bytes::from(encode_feed_header(server, position, note));
        let frames = vec![Bytes::from_static(TOPIC_WEBSERVER.as_bytes()), header, change_frame];
        port.publish(&sealed(frames, cluster_key.as_ref()));
    }
    info!(server, dropped = port.dropped_messages(), "publisher stopped");
    port
}

/// Encrypts every frame after the topic when a key is set, binding the clear topic to them.
fn sealed(mut frames: Vec<Bytes>, cluster_key: Option<&ClusterKey>) -> Vec<Bytes> {
    let covered = frames.len();
    seal_frames(cluster_key, MacContext::Publication, &mut frames, covered, covered - 1);
    frames
}
