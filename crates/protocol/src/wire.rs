//! Envelopes and message bodies exchanged between web servers and data servers.
//!
//! A web server sends a [`WireRequest`] on the data server's request socket (a ROUTER) and gets
//! exactly one [`WireReply`] with the same `id`. The data server publishes each change as a
//! two-frame message: the topic, then a [`WireChange`].

use serde::{Deserialize, Serialize};

use crate::feed::FeedBatch;
use crate::ids::{ChangeId, ServerId};
use crate::model::{Change, Message, PrivateMessage, Subject, User, UserStatus};
use crate::replication::ServerStatus;

/// A request from a web server to a data server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRequest {
    /// Always [`crate::PROTOCOL_VERSION`] when sent.
    pub v: u16,
    /// Chosen by the client; the reply carries it back so a pipelined client can match them.
    pub id: u64,
    pub request: Request,
    /// The random id of the web server run that sent the request. With `id` it forms the
    /// idempotency key of a write, so a write retried on another data server is stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<u64>,
}

/// A data server's reply to one [`WireRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReply {
    pub v: u16,
    /// The `id` of the request this replies to, or 0 when the request could not be decoded.
    pub id: u64,
    pub reply: Reply,
}

/// A published change, the second frame after the topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    pub v: u16,
    pub change: Change,
}

/// What a web server asks of its data server. Names are user names; the web server fills in
/// the acting user from its session, never from a browser's request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Registers a user. Replies [`Reply::User`], or `NameTaken`.
    Register { name: String, password: String },
    /// Checks a user's password. Replies [`Reply::User`], or `BadCredentials`, or `NameConflict`
    /// when the password belongs to an account that lost its name to a concurrent registration.
    Login { name: String, password: String },
    /// Replies [`Reply::Subjects`], oldest first.
    ListSubjects,
    /// Replies [`Reply::Subject`], or `TitleTaken` when a subject has the same title ignoring case.
    CreateSubject { title: String, created_by: String },
    /// Replies [`Reply::Message`], or `UnknownSubject` / `UnknownUser`.
    PostMessage { subject: ChangeId, author: String, text: String },
    /// Replies [`Reply::Messages`] in history order, or `UnknownSubject`.
    History { subject: ChangeId },
    /// Replies [`Reply::PrivateMessage`], or `UnknownUser`.
    SendPrivate { from: String, to: String, text: String },
    /// The conversation between `user` and `other`, in history order. Replies
    /// [`Reply::PrivateMessages`], or `UnknownUser`.
    PrivateHistory { user: String, other: String },
    /// Replies [`Reply::Users`], sorted by name.
    ListUsers,
    /// Records that `user` has (or no longer has) an open event stream on `webserver`.
    /// Replies [`Reply::Done`], or `UnknownUser`.
    SetPresence { user: String, webserver: String, online: bool },
    /// Replies [`Reply::Pong`]; used as a heartbeat.
    Ping,
    /// Asks for the stored changes of one origin with a sequence number above `after_seq`, in
    /// sequence order. Data servers send it to each other to catch up. Replies
    /// [`Reply::Changes`] with at most `limit` changes (and at most the server's own cap).
    /// The changes are complete, password hashes included, so only data servers of the
    /// group may reach the request endpoint.
    FetchChanges { origin: ServerId, after_seq: u64, limit: u32 },
    /// Replies [`Reply::Status`]: the server's replication state, for operators.
    Status,
    /// Replies [`Reply::Feed`] with at most `limit` changes (and at most the server's own cap)
    /// that come after `after` in the data server's feed. `after: 0` reads from the start.
    FeedSince { after: u64, limit: u32 },
    /// Stores a session for `user` until `expires_at`. Replies [`Reply::Done`], also when the
    /// session already exists, or `UnknownUser`.
    CreateSession { token_hash: String, user: String, expires_at: u64 },
    /// Replies [`Reply::Session`] for a session that exists, is not revoked and has not
    /// expired, or `UnknownSession`.
    CheckSession { token_hash: String },
    /// Revokes a session. Replies [`Reply::Done`], also when there is no such session.
    RevokeSession { token_hash: String },
    /// Renews the presence lease of a web server: `users` have an open event stream there
    /// for the next `lease_ms` milliseconds. Replies [`Reply::Done`].
    RenewPresence { webserver: String, instance: u64, users: Vec<String>, lease_ms: u64 },
}

/// A data server's reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    User(User),
    Subjects(Vec<Subject>),
    Subject(Subject),
    Message(Message),
    Messages(Vec<Message>),
    PrivateMessage(PrivateMessage),
    PrivateMessages(Vec<PrivateMessage>),
    Users(Vec<UserStatus>),
    Done,
    /// The id of the data server that answered.
    Pong { server: crate::ServerId },
    /// A batch of changes of one origin in sequence order. It is empty when the server has none
    /// above the requested sequence number.
    Changes(Vec<Change>),
    /// Boxed, because it is far larger than the other replies, and every reply in flight
    /// would otherwise take its size.
    Status(Box<ServerStatus>),
    Error(ErrorReply),
    Feed(FeedBatch),
    /// A valid session: its user's name and when it expires, in milliseconds since the Unix epoch.
    Session { user: String, expires_at: u64 },
}

/// The reason a request failed, with a message for the operator or the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// The kinds of failure a data server reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded.
    Malformed,
    /// The request carries a protocol version this server does not speak.
    UnsupportedVersion,
    /// A field is empty, too long or has forbidden characters.
    InvalidInput,
    NameTaken,
    /// The account lost its name to a registration of the same name made at the same moment
    /// on another data server, so its owner has to register again.
    NameConflict,
    TitleTaken,
    BadCredentials,
    UnknownSubject,
    UnknownUser,
    /// The server is too busy to take the request now; retry later.
    Overloaded,
    /// The server failed to carry out a valid request (a storage error, for example).
    Internal,
    /// The session does not exist, was revoked or has expired.
    UnknownSession,
}

impl Reply {
    /// Builds an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error(ErrorReply { code, message: message.into() })
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every request in flight in a data server contains a reply, so a large variant added
    /// unboxed would make each of them larger. `Message`, the reply to a post, sets the size.
    #[test]
    fn replies_stay_small() {
        let size = std::mem::size_of::<Reply>();
        assert!(size <= std::mem::size_of::<Message>() + 8, "Reply is {size} bytes; box the large variant");
    }
}
