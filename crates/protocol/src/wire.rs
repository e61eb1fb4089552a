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
    /// Whether a `PostMessage` or `SendPrivate` that stores a new message gets
    /// [`Reply::Stored`], which leaves out what the request already contains. A client must
    /// accept the whole message too: an older data server ignores this field, and a retried
    /// write gets its original reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub brief: bool,
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
    /// Reads a subject's history. Without `limit`, replies [`Reply::Messages`] with the whole
    /// history in history order. With `limit`, replies [`Reply::MessagePage`] with the newest
    /// `limit` messages (at most [`MAX_PAGE_LIMIT`]) older than the message `before`, or the
    /// newest of all without `before`. Errors: `UnknownSubject`, `UnknownMessage` when
    /// `before` is not a message of this subject, and `InvalidInput` without `limit` when the
    /// whole history could exceed [`MAX_REPLY_BYTES`].
    History {
        subject: ChangeId,
        /// The paging cursor: the id of a message of this subject.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<ChangeId>,
        /// The page size. `None` requests the whole history, as web servers older than paging
        /// do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Replies [`Reply::PrivateMessage`], or `UnknownUser`.
    SendPrivate { from: String, to: String, text: String },
    /// Reads the conversation between `user` and `other`. Pages like [`Request::History`]:
    /// without `limit`, replies [`Reply::PrivateMessages`] with the whole conversation in
    /// history order, and with it, [`Reply::PrivatePage`]. Errors: `UnknownUser`,
    /// `UnknownMessage` when `before` is not a message of this conversation, and
    /// `InvalidInput` without `limit` when the whole conversation could exceed
    /// [`MAX_REPLY_BYTES`].
    PrivateHistory {
        user: String,
        other: String,
        /// The paging cursor: the id of a message of this conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<ChangeId>,
        /// The page size, or `None` for the whole conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
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
    /// One page of a subject's history, the reply to a [`Request::History`] with a `limit`.
    MessagePage(Page<Message>),
    /// One page of a conversation, the reply to a [`Request::PrivateHistory`] with a `limit`.
    PrivatePage(Page<PrivateMessage>),
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
    /// A message stored for a request with [`WireRequest::brief`] set.
    Stored(Stored),
}

/// The fields of a stored message that the data server set. The other fields are those of the
/// `PostMessage` or `SendPrivate` request, and [`Stored::message`] and
/// [`Stored::private_message`] combine the two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub id: ChangeId,
    pub time: u64,
    pub lamport: u64,
    /// The subject that the post went to, when it is not the requested one. A subject that
    /// lost its title to another is merged into that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<ChangeId>,
    /// The author's or sender's name as registered, when the request spelled it otherwise.
    /// `Box<str>` keeps [`Reply`] no larger than its `Message` variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Box<str>>,
    /// The recipient's name as registered, when the request spelled it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Box<str>>,
}

impl Stored {
    /// Returns the public message that a `PostMessage { subject, author, text }` stored.
    pub fn message(self, subject: ChangeId, author: String, text: String) -> Message {
        Message {
            id: self.id,
            subject: self.subject.unwrap_or(subject),
            author: self.author.map_or(author, String::from),
            text,
            time: self.time,
            lamport: self.lamport,
        }
    }

    /// Returns the private message that a `SendPrivate { from, to, text }` stored.
    pub fn private_message(self, from: String, to: String, text: String) -> PrivateMessage {
        PrivateMessage {
            id: self.id,
            from: self.author.map_or(from, String::from),
            to: self.to.map_or(to, String::from),
            text,
            time: self.time,
            lamport: self.lamport,
        }
    }
}

/// The maximum number of messages in one page of a history. A data server lowers a larger
/// `limit` to it. At the 4096-byte maximum text size, a page stays near 4 MiB, far below the
/// 64 MiB reply size that web servers accept.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The maximum size of one reply that web servers accept, in bytes. A data server rejects a
/// request for a whole history (without `limit`) whose reply could be larger.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// One page of a history: consecutive messages in history order (oldest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub messages: Vec<T>,
    /// Whether older messages remain. The next page is asked for with `before` set to the id
    /// of the first message of this one.
    pub more: bool,
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
    /// The paging cursor of a history request is not a message of that subject or
    /// conversation.
    UnknownMessage,
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

#[cfg(test)]
mod mixed_version_tests {
    use super::*;
    use crate::{decode, encode, PROTOCOL_VERSION};

    /// The history requests as web servers encoded them before paging.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum RequestBeforePaging {
        History { subject: ChangeId },
        PrivateHistory { user: String, other: String },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct EnvelopeBeforePaging {
        v: u16,
        id: u64,
        request: RequestBeforePaging,
    }

    #[test]
    fn request_without_paging_decodes() {
        let subject = ChangeId::new(1, 2);
        let old = EnvelopeBeforePaging { v: PROTOCOL_VERSION, id: 7, request: RequestBeforePaging::History { subject } };
        let request: WireRequest = decode(&encode(&old)).unwrap();
        assert_eq!(request.request, Request::History { subject, before: None, limit: None });

        let old = RequestBeforePaging::PrivateHistory { user: "ana".into(), other: "bob".into() };
        let old = EnvelopeBeforePaging { v: PROTOCOL_VERSION, id: 8, request: old };
        let request: WireRequest = decode(&encode(&old)).unwrap();
        let expected = Request::PrivateHistory { user: "ana".into(), other: "bob".into(), before: None, limit: None };
        assert_eq!(request.request, expected);
    }

    #[test]
    fn paged_request_decodes_in_old_shape() {
        let subject = ChangeId::new(1, 2);
        let paged = Request::History { subject, before: Some(ChangeId::new(3, 4)), limit: Some(200) };
        let envelope = WireRequest { v: PROTOCOL_VERSION, id: 9, request: paged, client: None, brief: false };
        let old: EnvelopeBeforePaging = decode(&encode(&envelope)).unwrap();
        assert_eq!(old.request, RequestBeforePaging::History { subject }, "the paging fields are ignored");
    }

    #[test]
    fn whole_history_request_encodes_as_before() {
        let subject = ChangeId::new(1, 2);
        let old = EnvelopeBeforePaging { v: PROTOCOL_VERSION, id: 7, request: RequestBeforePaging::History { subject } };
        let new = WireRequest { v: PROTOCOL_VERSION, id: 7, request: Request::History { subject, before: None, limit: None }, client: None, brief: false };
        assert_eq!(encode(&new), encode(&old));
    }

    /// The envelope as web servers encoded it before brief replies.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct EnvelopeBeforeBrief {
        v: u16,
        id: u64,
        request: Request,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
    }

    #[test]
    fn brief_flag_is_optional_both_ways() {
        let request = Request::PostMessage { subject: ChangeId::new(1, 2), author: "ana".into(), text: "hola".into() };
        let old = EnvelopeBeforeBrief { v: PROTOCOL_VERSION, id: 7, request: request.clone(), client: Some(3) };
        let new: WireRequest = decode(&encode(&old)).unwrap();
        assert!(!new.brief, "an old web server's request asks for the whole message");

        let brief = WireRequest { v: PROTOCOL_VERSION, id: 7, request, client: Some(3), brief: true };
        let seen_by_old: EnvelopeBeforeBrief = decode(&encode(&brief)).unwrap();
        assert_eq!(seen_by_old, old, "an old data server ignores the flag");
        assert_eq!(encode(&WireRequest { brief: false, ..brief }), encode(&old), "without the flag, the bytes are as before");
    }

    #[test]
    fn stored_leaves_out_what_did_not_change() {
        let stored = Stored { id: ChangeId::new(1, 9), time: 5, lamport: 6, subject: None, author: None, to: None };
        let bytes = encode(&WireReply { v: PROTOCOL_VERSION, id: 4, reply: Reply::Stored(stored.clone()) });
        assert!(!bytes.windows(7).any(|window| window == b"subject"), "absent fields are not encoded");
        let decoded: WireReply = decode(&bytes).unwrap();
        assert_eq!(decoded.reply, Reply::Stored(stored.clone()));

        let message = stored.message(ChangeId::new(2, 3), "ana".into(), "hola".into());
        let expected = Message { id: ChangeId::new(1, 9), subject: ChangeId::new(2, 3), author: "ana".into(), text: "hola".into(), time: 5, lamport: 6 };
        assert_eq!(message, expected);
    }
}
