//! The forum's records and the changes that create them.

use serde::{Deserialize, Serialize};

use crate::feed::IdempotencyKey;
use crate::ids::ChangeId;

/// Maximum length of a user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Maximum length of a subject title, in characters.
pub const MAX_TITLE_CHARS: usize = 120;
/// Maximum size of a message's text (public or private), in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Minimum length of a password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Maximum size of a password, in bytes of UTF-8.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// A registered user, without credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: ChangeId,
    pub name: String,
    /// Registration time, in milliseconds since the Unix epoch.
    pub time: u64,
}

/// A user and whether any web server of the group has an open event stream for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStatus {
    pub name: String,
    pub online: bool,
}

/// A subject (a forum topic) that public messages are posted in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub id: ChangeId,
    pub title: String,
    /// The name of the user who created it.
    pub created_by: String,
    /// Creation time, in milliseconds since the Unix epoch.
    pub time: u64,
}

/// A public message posted in a subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: ChangeId,
    pub subject: ChangeId,
    pub author: String,
    pub text: String,
    /// Posting time at the origin server, in milliseconds since the Unix epoch.
    pub time: u64,
    /// Lamport timestamp of the change that posted it; histories sort by
    /// (lamport, id.origin, id.seq).
    pub lamport: u64,
}

/// A private message between two users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateMessage {
    pub id: ChangeId,
    pub from: String,
    pub to: String,
    pub text: String,
    /// Sending time at the origin server, in milliseconds since the Unix epoch.
    pub time: u64,
    /// Lamport timestamp of the change that sent it; conversations sort by
    /// (lamport, id.origin, id.seq).
    pub lamport: u64,
}

/// One replicated change of the forum state. Data servers apply changes in any order they
/// arrive and publish every change they apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: ChangeId,
    /// Lamport timestamp: greater than that of every change the origin had applied before.
    pub lamport: u64,
    /// Wall-clock time at the origin, in milliseconds since the Unix epoch.
    pub time: u64,
    pub kind: ChangeKind,
    /// The idempotency key of the write that made this change, when it came from a web
    /// server that sends one. Two changes with the same key are the same write retried: every
    /// replica keeps only the one with the smallest (lamport, origin, seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<IdempotencyKey>,
}

/// What a change does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A user registered. `password_hash` is an argon2 PHC string; it is empty in changes
    /// published to web servers (see [`Change::redacted`]).
    UserRegistered { user: User, password_hash: String },
    SubjectCreated { subject: Subject },
    MessagePosted { message: Message },
    PrivateSent { message: PrivateMessage },
    /// A user opened their first, or closed their last, event stream on the web server
    /// named `webserver`.
    PresenceChanged { user: String, webserver: String, online: bool },
    /// A login session started. `token_hash` is the BLAKE2b-256 hash of the session token in
    /// lowercase hex; the token itself is never stored. The session ends at `expires_at`
    /// (milliseconds since the Unix epoch) or when revoked.
    SessionCreated { token_hash: String, user: String, expires_at: u64 },
    /// A session ended by logging out, on every web server.
    SessionRevoked { token_hash: String },
    /// The web server `webserver` (the run identified by `instance`) has an open event stream
    /// for each of `users`, until `expires_at` (milliseconds since the Unix epoch) unless it
    /// renews the lease. It replaces that web server's previous lease.
    PresenceLease { webserver: String, instance: u64, users: Vec<String>, expires_at: u64 },
}

impl Change {
    /// Returns whether [`Change::redacted`] would remove something from this change.
    pub fn has_secret(&self) -> bool {
        matches!(&self.kind, ChangeKind::UserRegistered { password_hash, .. } if !password_hash.is_empty())
    }

    /// Returns this change with every secret removed, as it is published to web servers.
    pub fn redacted(&self) -> Change {
        let mut change = self.clone();
        if let ChangeKind::UserRegistered { password_hash, .. } = &mut change.kind {
            password_hash.clear();
        }
        change
    }
}
