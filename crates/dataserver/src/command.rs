//! The commands that the request handlers and the peer subscribers send to the actor.

use forum_protocol::{Change, ChangeId, IdempotencyKey, Reply, User};
use tokio::sync::oneshot;

/// A local write, already validated by the request handler. The actor checks it against the
/// state, turns it into a [`Change`] and stores that change before it replies.
#[derive(Debug)]
pub(crate) enum Write {
    /// Registers a user whose password the handler has already hashed.
    Register { name: String, password_hash: String },
    CreateSubject { title: String, created_by: String },
    PostMessage { subject: ChangeId, author: String, text: String },
    SendPrivate { from: String, to: String, text: String },
    SetPresence { user: String, webserver: String, online: bool },
    CreateSession { token_hash: String, user: String, expires_at: u64 },
    RevokeSession { token_hash: String },
    RenewPresence { webserver: String, instance: u64, users: Vec<String>, expires_at: u64 },
}

impl Write {
    /// Returns the subject and names that a write storing a message asked for, or `None` for
    /// other writes.
    pub fn requested(&self) -> Option<Requested> {
        match self {
            Write::PostMessage { subject, author, .. } => Some(Requested { subject: Some(*subject), author: author.clone(), to: None }),
            Write::SendPrivate { from, to, .. } => Some(Requested { subject: None, author: from.clone(), to: Some(to.clone()) }),
            _ => None,
        }
    }
}

/// The subject and names of a `PostMessage` or `SendPrivate` request. The stored message can
/// differ from them (a merged subject, a name in other capitals), and a brief reply
/// ([`forum_protocol::Stored`]) contains only the fields that differ.
#[derive(Debug)]
pub(crate) struct Requested {
    pub subject: Option<ChangeId>,
    /// The author of a post or the sender of a private message.
    pub author: String,
    /// The recipient of a private message.
    pub to: Option<String>,
}

/// A query of the state. It changes nothing.
#[derive(Debug)]
pub(crate) enum Read {
    ListSubjects,
    /// A subject's history: the whole of it without `page`.
    History { subject: ChangeId, page: Option<PageRequest> },
    /// A conversation: the whole of it without `page`.
    PrivateHistory { user: String, other: String, page: Option<PageRequest> },
    ListUsers,
    Session { token_hash: String },
}

/// The page of a history that a read returns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageRequest {
    /// The id of the message that the page ends before, or `None` for the newest page.
    pub before: Option<ChangeId>,
    /// The number of messages, from 1 to [`forum_protocol::MAX_PAGE_LIMIT`].
    pub limit: usize,
}

/// A user and the argon2 PHC hash of their password, for a login check outside the actor.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// The password hashes of accounts that registered the same name at the same moment on
    /// other servers and lost it. A login that matches one of them gets `NameConflict`.
    pub lost_name_hashes: Vec<String>,
}

/// For each idempotency key asked about, the id of the change it kept and of the message
/// that change replaced, or `None` for a key not seen.
pub(crate) type KeptIds = Vec<Option<(ChangeId, Option<ChangeId>)>>;

/// A message to the actor task.
#[derive(Debug)]
pub(crate) enum Command {
    /// `key` is the write's idempotency key, when its web server sent one.
    /// With `brief`, a write that stores a new message gets [`Reply::Stored`].
    Write { write: Write, key: Option<IdempotencyKey>, brief: bool, reply: oneshot::Sender<Reply> },
    Read { read: Read, reply: oneshot::Sender<Reply> },
    /// Looks up a user by name, ignoring case; `None` when no such user exists.
    Credentials { name: String, reply: oneshot::Sender<Option<Credentials>> },
    /// Returns the id of the change each idempotency key kept and of the message that one
    /// replaced, `None` for a key not seen.
    KeptIds { keys: Vec<IdempotencyKey>, reply: oneshot::Sender<KeptIds> },
    /// A change received from a peer on the checkpoint topic.
    Replicated { change: Change },
    /// A batch of changes fetched from a peer to fill a gap. `stored` is told once the batch
    /// is committed, so the fetcher can bound how many batches wait.
    Fetched { changes: Vec<Change>, stored: oneshot::Sender<()> },
}
