//! The feed, a data server's local apply order as its web servers read it, and the key that
//! makes a retried write take effect once.
//!
//! Every data server numbers the changes it applies, its own and its peers', in the order it
//! stores them: positions 1, 2, 3 and so on, kept in its store so they survive a restart. A web
//! server reads the feed live on the `webserver` topic and fetches the positions it missed with
//! [`crate::Request::FeedSince`]. Event streams use `"{server}:{position}"` as the event id, so
//! a browser can resume after a reconnection.
//!
//! A `webserver` message has three frames: the topic, a [`WireFeedHeader`] and the change as a
//! [`crate::WireChange`]. The change frame is the same buffer as the change's `checkpoint`
//! message and its stored encoding, so publishing a change serializes it once. Only a change
//! with a secret (see [`Change::redacted`]) gets its own, redacted, change frame.

use serde::{Deserialize, Serialize};

use crate::ids::{ChangeId, ServerId};
use crate::model::Change;

/// The key that makes a retried write idempotent: the random id of the web server instance that
/// sent it and that instance's request id. The change the write creates carries it, so every
/// replica recognises a retry of the same write, on any data server of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub client: u64,
    pub request: u64,
}

/// The header frame of a change that a data server publishes on the `webserver` topic: the data
/// server's id and the change's position in that server's feed. The change follows in its own
/// frame (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFeedHeader {
    pub v: u16,
    pub server: ServerId,
    pub position: u64,
    /// The data server's note on a message that was stored twice. It is absent for every other change.
    #[serde(default, skip_serializing_if = "FeedNote::is_plain")]
    pub note: FeedNote,
}

/// One change of a data server's feed and its position there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub position: u64,
    pub change: Change,
    #[serde(default, skip_serializing_if = "FeedNote::is_plain")]
    pub note: FeedNote,
}

/// A data server's note on a message of its feed that is one of two copies of the same write
/// (the same idempotency key, sent again after a failover). Every replica keeps the copy with
/// the smallest (lamport, origin, seq) in its histories; the note lets web servers send pages
/// one copy only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedNote {
    /// True when the change lost to the other copy: it is stored but shown on no page.
    #[serde(default)]
    pub hidden: bool,
    /// The change won over this copy, which pages remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<ChangeId>,
}

impl FeedNote {
    /// Returns whether the note is empty, so the change is shown as it is.
    pub fn is_plain(&self) -> bool {
        *self == FeedNote::default()
    }
}

/// The reply to [`crate::Request::FeedSince`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBatch {
    /// The id of the data server whose feed this is.
    pub server: ServerId,
    /// The changes after the requested position, in feed order, redacted.
    pub entries: Vec<FeedEntry>,
    /// The newest position in the feed when the batch was read; 0 for an empty feed.
    pub last: u64,
}
