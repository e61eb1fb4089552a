//! What the forum's data servers and web servers share: the requests a web server sends, the
//! replies it gets, the changes that data servers publish, the topic names, endpoint-list parsing
//! and the wire codec.
//!
//! Every message on the wire is MessagePack in its named (map) form, produced by rmp-serde, and
//! every envelope carries [`PROTOCOL_VERSION`] in its `v` field. A decoder rejects any other
//! version with [`CodecError::UnsupportedVersion`] instead of guessing. The golden-bytes tests in
//! `codec.rs` pin the encoding so it cannot change by accident.

mod codec;
mod endpoint;
mod feed;
mod ids;
mod mac;
mod model;
mod nesting;
mod replication;
mod validate;
mod wire;

pub use codec::{decode, encode, encode_change, encode_feed_header, encode_into, peek_request_id, CodecError};
pub use endpoint::{parse_endpoint, parse_peer_list, EndpointError};
pub use feed::{FeedBatch, FeedEntry, FeedNote, IdempotencyKey, WireFeedHeader};
pub use ids::{ChangeId, ServerId};
pub use mac::{seal, seal_frames, unseal, unseal_frames, ClusterKey, KeyError, MacContext, MacError, MIN_KEY_LEN, NONCE_LEN, SEAL_OVERHEAD, TAG_LEN};
pub use model::{
    Change, ChangeKind, Message, PrivateMessage, Subject, User, UserStatus, MAX_NAME_CHARS,
    MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MAX_TITLE_CHARS, MIN_PASSWORD_CHARS,
};
pub use replication::{
    lag, Counters, GuardStatus, Heartbeat, Liveness, PeerStatus, QueueDepths, Rates, ServerStatus, VersionVector,
    WireHeartbeat,
};
pub use validate::{fold, folded, validate_name, validate_password, validate_text, validate_title, Invalid};
pub use wire::{ErrorCode, ErrorReply, Page, Reply, Request, Stored, WireChange, WireReply, WireRequest, MAX_PAGE_LIMIT, MAX_REPLY_BYTES};

/// The version every envelope carries in its `v` field. Bump it on any incompatible change
/// to an envelope. A data server's store keeps changes as encoded [`WireChange`]s, which carry
/// it too, so a bump also needs a conversion of existing stores.
pub const PROTOCOL_VERSION: u16 = 1;

/// Topic of the changes a data server publishes for the other data servers of its group.
pub const TOPIC_CHECKPOINT: &str = "checkpoint";

/// Topic of the heartbeats a data server publishes for the other data servers of its group.
/// It starts with [`TOPIC_CHECKPOINT`], so a SUB socket subscribed to `checkpoint` receives
/// both changes and heartbeats.
pub const TOPIC_HEARTBEAT: &str = "checkpoint.heartbeat";

/// Topic of the changes a data server publishes for its own web servers.
pub const TOPIC_WEBSERVER: &str = "webserver";

/// The number of frames of a message on [`TOPIC_WEBSERVER`]: the topic, a [`WireFeedHeader`]
/// and a [`WireChange`].
pub const WEBSERVER_FRAMES: usize = 3;

/// The number of frames at the end of a [`TOPIC_WEBSERVER`] message that a cluster key
/// encrypts, with [`seal_frames`]: the header and the change. The topic stays in clear.
pub const WEBSERVER_ENCRYPTED_FRAMES: usize = 2;

/// Returns the current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
