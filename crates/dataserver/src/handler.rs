//! Turns one request payload into one reply. It decodes and validates the request, hashes or
//! verifies passwords outside the actor, and sends the rest to the actor as commands.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use forum_protocol::{
    decode, now_millis, peek_request_id, validate_name, validate_password, validate_text, validate_title, CodecError, ErrorCode,
    Change, ChangeId, ChangeKind, FeedBatch, FeedEntry, IdempotencyKey, Invalid, Reply, Request, ServerId, WireReply, WireRequest, MAX_PAGE_LIMIT,
    PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::catch_up::{FETCH_BATCH, FETCH_MAX_BYTES};
use crate::command::{Command, PageRequest, Read, Write};
use crate::feed::MAX_FEED_BATCH;
use crate::metrics::add;
use crate::password::Passwords;
use crate::rate_limit::LogRateLimit;
use crate::status::StatusSource;
use crate::store::Store;

/// The largest request payload accepted, in bytes. Larger ones are rejected unread.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The longest presence lease a web server may ask for, in milliseconds.
pub const MAX_LEASE_MS: u64 = 60_000;

/// The request handling state that every request in flight shares.
#[derive(Clone)]
pub(crate) struct Handler {
    server: ServerId,
    /// Limits the warnings about requests that cannot be decoded.
    decode_failures: Arc<Mutex<LogRateLimit>>,
    /// Commands to the actor. A full channel makes the request wait: the number of requests
    /// in flight is already bounded by the request socket's semaphore.
    actor: mpsc::Sender<Command>,
    passwords: Passwords,
    /// Read directly for `FetchChanges`: redb serves reads of committed data beside the
    /// actor's writes, so catch-up does not wait in the actor's queue.
    store: Arc<Store>,
    status: StatusSource,
}

/// A request that [`Handler::decode`] accepted.
pub(crate) struct Decoded {
    /// The client's request id, which the reply carries back.
    pub id: u64,
    /// The idempotency key of a write, when its web server sent a client id.
    key: Option<IdempotencyKey>,
    /// Whether the client requested a brief reply to a stored message.
    brief: bool,
    request: Request,
}

impl Decoded {
    /// Returns whether the reply can be large: a history, a list of every user or subject,
    /// or a batch of changes. Encoding such a reply takes long enough that the request socket
    /// hands it to a task of its own rather than hold up its receive loop.
    pub fn has_large_reply(&self) -> bool {
        match self.request {
            Request::ListSubjects
            | Request::History { .. }
            | Request::PrivateHistory { .. }
            | Request::ListUsers
            | Request::FetchChanges { .. }
            | Request::FeedSince { .. } => true,
            Request::Register { .. }
            | Request::Login { .. }
            | Request::CreateSubject { .. }
            | Request::PostMessage { .. }
            | Request::SendPrivate { .. }
            | Request::SetPresence { .. }
            | Request::Ping
            | Request::Status
            | Request::CreateSession { .. }
            | Request::CheckSession { .. }
            | Request::RevokeSession { .. }
            | Request::RenewPresence { .. } => false,
        }
    }
}

/// The source of the reply to a request that [`Handler::start`] started.
pub(crate) enum Started {
    /// The reply, known at once.
    Ready(Reply),
    /// The actor took the request and will send the reply.
    Actor(oneshot::Receiver<Reply>),
    /// A future that produces the reply.
    Later(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

impl Started {
    /// Waits for the reply.
    pub async fn reply(self) -> Reply {
        match self {
            Started::Ready(reply) => reply,
            Started::Actor(receiver) => receiver.await.unwrap_or_else(|_| internal()),
            Started::Later(future) => future.await,
        }
    }
}

/// A request as [`Handler::immediate`] sorted it.
enum Immediate {
    Reply(Reply),
    Command(Command, oneshot::Receiver<Reply>),
    Other(Request),
}

fn invalid(reason: Invalid) -> Reply {
    Reply::error(ErrorCode::InvalidInput, reason.to_string())
}

/// Builds the page of a history request: none without a limit, else the limit lowered to
/// [`MAX_PAGE_LIMIT`]. A limit of 0 is invalid, because an empty page has no first message
/// for the next page to end before.
fn page_request(before: Option<ChangeId>, limit: Option<u32>) -> Result<Option<PageRequest>, Reply> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    if limit == 0 {
        return Err(Reply::error(ErrorCode::InvalidInput, "the page limit is 0; ask for at least 1 message"));
    }
    let limit = limit.min(MAX_PAGE_LIMIT) as usize;
    Ok(Some(PageRequest { before, limit }))
}

fn internal() -> Reply {
    Reply::error(ErrorCode::Internal, "the data server failed to handle the request; retry later")
}

impl Handler {
    pub fn new(server: ServerId, actor: mpsc::Sender<Command>, passwords: Passwords, store: Arc<Store>, status: StatusSource) -> Self {
        Handler { server, decode_failures: Arc::new(Mutex::new(LogRateLimit::new())), actor, passwords, store, status }
    }

    /// Decodes one request payload, or returns the error reply when it is too large or
    /// cannot be decoded.
    pub fn decode(&self, payload: &[u8]) -> Result<Decoded, Box<WireReply>> {
        let error_reply = |reply| Box::new(WireReply { v: PROTOCOL_VERSION, id: peek_request_id(payload).unwrap_or(0), reply });
        add(&self.status.metrics.requests, 1);
        if payload.len() > MAX_REQUEST_BYTES {
            let message = format!("the request is {} bytes, more than the limit of {MAX_REQUEST_BYTES}", payload.len());
            return Err(error_reply(Reply::error(ErrorCode::InvalidInput, message)));
        }
        let request: WireRequest = match decode(payload) {
            Ok(request) => request,
            Err(error) => {
                let code = match error {
                    CodecError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                    CodecError::Malformed(_) => ErrorCode::Malformed,
                };
                let suppressed = self.decode_failures.lock().expect("the rate limit lock is never poisoned").check();
                if let Some(suppressed) = suppressed {
                    warn!(server = self.server, %error, suppressed, "rejected a request that cannot be decoded");
                }
                return Err(error_reply(Reply::error(code, error.to_string())));
            }
        };
        let key = request.client.map(|client| IdempotencyKey { client, request: request.id });
        Ok(Decoded { id: request.id, key, brief: request.brief, request: request.request })
    }

    /// Carries out a decoded request and returns its reply.
    pub async fn handle(&self, decoded: Decoded) -> WireReply {
        let reply = self.reply(decoded.id, decoded.key, decoded.brief, decoded.request).await;
        WireReply { v: PROTOCOL_VERSION, id: decoded.id, reply }
    }

    /// Starts a request whose reply is small, without awaiting anything. A write or read goes
    /// to the actor here when its queue has room. The request socket then keeps only the
    /// receiver of the reply, a future small enough for the allocator's per-thread cache.
    pub fn start(&self, decoded: Decoded) -> Started {
        let Decoded { id, key, brief, request } = decoded;
        match self.immediate(key, brief, request) {
            Immediate::Reply(reply) => Started::Ready(reply),
            Immediate::Command(command, receiver) => match self.actor.try_reserve() {
                Ok(permit) => {
                    permit.send(command);
                    Started::Actor(receiver)
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    let handler = self.clone();
                    Started::Later(Box::pin(async move { handler.ask(command, receiver).await }))
                }
                Err(mpsc::error::TrySendError::Closed(())) => Started::Ready(internal()),
            },
            Immediate::Other(request) => {
                let handler = self.clone();
                Started::Later(Box::pin(async move { handler.other(id, key, request).await }))
            }
        }
    }

    async fn reply(&self, request_id: u64, key: Option<IdempotencyKey>, brief: bool, request: Request) -> Reply {
        match self.immediate(key, brief, request) {
            Immediate::Reply(reply) => reply,
            Immediate::Command(command, receiver) => self.ask(command, receiver).await,
            Immediate::Other(request) => self.other(request_id, key, request).await,
        }
    }

    /// Turns a request that needs nothing but the actor into its command, or builds its reply
    /// at once when it is invalid or needs neither. Returns the other requests unchanged.
    fn immediate(&self, key: Option<IdempotencyKey>, brief: bool, request: Request) -> Immediate {
        let write = |write| {
            let (reply, receiver) = oneshot::channel();
            Immediate::Command(Command::Write { write, key, brief, reply }, receiver)
        };
        let read = |read| {
            let (reply, receiver) = oneshot::channel();
            Immediate::Command(Command::Read { read, reply }, receiver)
        };
        let invalid = |reason| Immediate::Reply(invalid(reason));
        match request {
            Request::Ping => Immediate::Reply(Reply::Pong { server: self.server }),
            Request::Status => Immediate::Reply(Reply::Status(Box::new(self.status.snapshot()))),
            Request::ListSubjects => read(Read::ListSubjects),
            Request::CreateSubject { title, created_by } => match validate_title(&title) {
                Ok(()) => write(Write::CreateSubject { title, created_by }),
                Err(reason) => invalid(reason),
            },
            Request::PostMessage { subject, author, text } => match validate_text(&text) {
                Ok(()) => write(Write::PostMessage { subject, author, text }),
                Err(reason) => invalid(reason),
            },
            Request::History { subject, before, limit } => match page_request(before, limit) {
                Ok(page) => read(Read::History { subject, page }),
                Err(reply) => Immediate::Reply(reply),
            },
            Request::SendPrivate { from, to, text } => match validate_text(&text) {
                Ok(()) => write(Write::SendPrivate { from, to, text }),
                Err(reason) => invalid(reason),
            },
            Request::PrivateHistory { user, other, before, limit } => match page_request(before, limit) {
                Ok(page) => read(Read::PrivateHistory { user, other, page }),
                Err(reply) => Immediate::Reply(reply),
            },
            Request::ListUsers => read(Read::ListUsers),
            Request::SetPresence { user, webserver, online } => {
                if webserver.trim().is_empty() {
                    return Immediate::Reply(Reply::error(ErrorCode::InvalidInput, "the web server name is empty"));
                }
                write(Write::SetPresence { user, webserver, online })
            }
            Request::CreateSession { token_hash, user, expires_at } => write(Write::CreateSession { token_hash, user, expires_at }),
            Request::CheckSession { token_hash } => read(Read::Session { token_hash }),
            Request::RevokeSession { token_hash } => write(Write::RevokeSession { token_hash }),
            Request::RenewPresence { webserver, instance, users, lease_ms } => {
                if webserver.trim().is_empty() {
                    return Immediate::Reply(Reply::error(ErrorCode::InvalidInput, "the web server name is empty"));
                }
                if lease_ms > MAX_LEASE_MS {
                    let message = format!("the lease of {lease_ms} ms is longer than the maximum of {MAX_LEASE_MS} ms");
                    return Immediate::Reply(Reply::error(ErrorCode::InvalidInput, message));
                }
                let expires_at = now_millis() + lease_ms;
                write(Write::RenewPresence { webserver, instance, users, expires_at })
            }
            request @ (Request::FetchChanges { .. } | Request::Register { .. } | Request::Login { .. } | Request::FeedSince { .. }) => {
                Immediate::Other(request)
            }
        }
    }

    /// Handles the requests that hash or verify a password or read the store. They hold much
    /// state while they wait, so each runs boxed.
    async fn other(&self, request_id: u64, key: Option<IdempotencyKey>, request: Request) -> Reply {
        match request {
            Request::FetchChanges { origin, after_seq, limit } => Box::pin(self.fetch_changes(request_id, origin, after_seq, limit)).await,
            Request::Register { name, password } => Box::pin(self.register(request_id, key, name, password)).await,
            Request::Login { name, password } => Box::pin(self.login(request_id, name, password)).await,
            Request::FeedSince { after, limit } => Box::pin(self.feed_since(request_id, after, limit)).await,
            _ => unreachable!("Handler::immediate handles every other request"),
        }
    }

    /// Notes the messages of a replayed feed that are one of two copies of a write, as the live
    /// feed does: the losing copy is hidden, and the kept one names the copy it replaced.
    /// Returns `None` when the actor is gone.
    async fn note_copies(&self, entries: &mut [FeedEntry]) -> Option<()> {
        let is_message = |change: &Change| matches!(change.kind, ChangeKind::MessagePosted { .. } | ChangeKind::PrivateSent { .. });
        let keyed: Vec<(usize, IdempotencyKey)> = entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| is_message(&entry.change))
            .filter_map(|(index, entry)| entry.change.key.map(|key| (index, key)))
            .collect();
        if keyed.is_empty() {
            return Some(());
        }
        let (reply, kept) = oneshot::channel();
        let keys = keyed.iter().map(|(_, key)| *key).collect();
        self.actor.send(Command::KeptIds { keys, reply }).await.ok()?;
        for ((index, _), kept) in keyed.into_iter().zip(kept.await.ok()?) {
            let entry = &mut entries[index];
            match kept {
                Some((kept, replaced)) if kept == entry.change.id => entry.note.replaces = replaced,
                Some(_) => entry.note.hidden = true,
                None => {}
            }
        }
        Some(())
    }

    async fn feed_since(&self, request_id: u64, after: u64, limit: u32) -> Reply {
        let limit = (limit as usize).min(MAX_FEED_BATCH);
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || store.feed_after(after, limit)).await;
        match read {
            Ok(Ok((mut entries, last))) => match self.note_copies(&mut entries).await {
                Some(()) => Reply::Feed(FeedBatch { server: self.server, entries, last }),
                None => {
                    error!(server = self.server, request = request_id, "the actor stopped while the feed's copies were being noted");
                    internal()
                }
            },
            Ok(Err(error)) => {
                error!(server = self.server, request = request_id, error = format!("{error:#}"), "failed to read the feed");
                internal()
            }
            Err(error) => {
                error!(server = self.server, request = request_id, %error, "the task reading the feed failed");
                internal()
            }
        }
    }

    async fn register(&self, request_id: u64, key: Option<IdempotencyKey>, name: String, password: String) -> Reply {
        if let Err(reason) = validate_name(&name).and_then(|()| validate_password(&password)) {
            return invalid(reason);
        }
        match self.passwords.hash(password).await {
            Ok(password_hash) => self.write(Write::Register { name, password_hash }, key).await,
            Err(error) => {
                error!(server = self.server, request = request_id, error = format!("{error:#}"), "failed to hash a password");
                internal()
            }
        }
    }

    async fn login(&self, request_id: u64, name: String, password: String) -> Reply {
        let bad_credentials = || Reply::error(ErrorCode::BadCredentials, "the user name or the password is wrong");
        // A password that registration would reject cannot match, so skip hashing it.
        if validate_password(&password).is_err() {
            return bad_credentials();
        }
        let (sender, receiver) = oneshot::channel();
        if self.actor.send(Command::Credentials { name, reply: sender }).await.is_err() {
            return internal();
        }
        let Ok(credentials) = receiver.await else {
            return internal();
        };
        let (user, hash, lost_name_hashes) = match credentials {
            Some(credentials) => (Some(credentials.user), Some(credentials.password_hash), credentials.lost_name_hashes),
            None => (None, None, Vec::new()),
        };
        let verify_failed = |error: anyhow::Error| {
            warn!(server = self.server, request = request_id, error = format!("{error:#}"), "failed to verify a password");
            internal()
        };
        match self.passwords.verify(password.clone(), hash).await {
            Ok(true) => return Reply::User(user.expect("a matching password implies a stored user")),
            Ok(false) => {}
            Err(error) => return verify_failed(error),
        }
        // NOTE: when the losing account chose the winner's password too, the check above
        // already logged it in as the winner; the two cannot be told apart by name and password.
        for lost_hash in lost_name_hashes {
            match self.passwords.verify(password.clone(), Some(lost_hash)).await {
                Ok(true) => {
                    let name = user.as_ref().map_or("", |user| user.name.as_str());
                    let message = format!(
                        "the user name {name:?} was registered at the same moment on another server, and the other \
                         registration won; register again with another name"
                    );
                    return Reply::error(ErrorCode::NameConflict, message);
                }
                Ok(false) => {}
                Err(error) => return verify_failed(error),
            }
        }
        bad_credentials()
    }

    async fn fetch_changes(&self, request_id: u64, origin: ServerId, after_seq: u64, limit: u32) -> Reply {
        let limit = limit.clamp(1, FETCH_BATCH) as usize;
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || store.changes_after(origin, after_seq, limit, FETCH_MAX_BYTES)).await;
        match read {
            Ok(Ok(changes)) => {
                add(&self.status.metrics.fetches_served, 1);
                Reply::Changes(changes)
            }
            Ok(Err(error)) => {
                error!(server = self.server, request = request_id, origin, after_seq, error = format!("{error:#}"), "failed to read changes for a peer");
                internal()
            }
            Err(error) => {
                error!(server = self.server, request = request_id, %error, "the task reading changes for a peer failed");
                internal()
            }
        }
    }

    async fn write(&self, write: Write, key: Option<IdempotencyKey>) -> Reply {
        let (sender, receiver) = oneshot::channel();
        self.ask(Command::Write { write, key, brief: false, reply: sender }, receiver).await
    }

    async fn ask(&self, command: Command, receiver: oneshot::Receiver<Reply>) -> Reply {
        // Reserving first keeps a single copy of the command in this future while it waits.
        let Ok(permit) = self.actor.reserve().await else {
            return internal();
        };
        permit.send(command);
        receiver.await.unwrap_or_else(|_| internal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Read;
    use crate::metrics::Metrics;
    use forum_protocol::VersionVector;
    use tokio::sync::watch;

    fn handler(capacity: usize) -> (Handler, mpsc::Receiver<Command>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 1).unwrap());
        let (actor, queue) = mpsc::channel(capacity);
        let (_v, vector) = watch::channel(VersionVector::new());
        let (_p, peers) = watch::channel(Vec::new());
        let (publisher, _) = mpsc::channel(1);
        let status = StatusSource {
            server: 1,
            fetch_endpoint: "tcp://127.0.0.1:1".into(),
            vector,
            peers,
            metrics: Arc::new(Metrics::default()),
            actor: actor.downgrade(),
            publisher: publisher.downgrade(),
            guards: Vec::new(),
        };
        (Handler::new(1, actor, Passwords::new(), store, status), queue, dir)
    }

    fn decoded(key: Option<IdempotencyKey>, request: Request) -> Decoded {
        Decoded { id: 5, key, brief: false, request }
    }

    #[test]
    fn page_limit_is_capped() {
        let cases = [(Some(1), Some(1)), (Some(200), Some(200)), (Some(MAX_PAGE_LIMIT), Some(1000)), (Some(u32::MAX), Some(1000))];
        for (limit, expected) in cases {
            let page = page_request(None, limit).unwrap_or_else(|reply| panic!("limit {limit:?}: {reply:?}"));
            assert_eq!(page.map(|page| page.limit), expected, "limit {limit:?}");
        }
        assert!(page_request(None, None).unwrap().is_none(), "no limit asks for the whole history");
        let Err(Reply::Error(error)) = page_request(None, Some(0)) else { panic!("a limit of 0 is accepted") };
        assert_eq!(error.code, ErrorCode::InvalidInput);
    }

    #[tokio::test]
    async fn start_full_queue_waits_then_sends_with_key() {
        let (handler, mut queue, _dir) = handler(1);
        let (filler, _r) = oneshot::channel();
        handler.actor.try_send(Command::Read { read: Read::ListUsers, reply: filler }).unwrap();
        let key = Some(IdempotencyKey { client: 9, request: 5 });
        let started = handler.start(decoded(key, Request::CreateSubject { title: " T ".into(), created_by: "ana".into() }));
        assert!(matches!(started, Started::Later(_)));
        let waiter = tokio::spawn(started.reply());
        let _ = queue.recv().await.unwrap();
        match queue.recv().await.unwrap() {
            Command::Write { write: Write::CreateSubject { title, created_by }, key: got, reply, .. } => {
                assert_eq!(title, " T ");
                assert_eq!(created_by, "ana");
                assert_eq!(got, key);
                reply.send(Reply::Pong { server: 3 }).unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(waiter.await.unwrap(), Reply::Pong { server: 3 });
    }

    #[tokio::test]
    async fn start_closed_queue_internal() {
        let (handler, queue, _dir) = handler(1);
        drop(queue);
        let reply = handler.start(decoded(None, Request::CheckSession { token_hash: "h".into() })).reply().await;
        assert!(matches!(reply, Reply::Error(ref e) if e.code == ErrorCode::Internal), "{reply:?}");
        let old = handler.handle(decoded(None, Request::CheckSession { token_hash: "h".into() })).await.reply;
        assert_eq!(reply, old);
    }

    #[tokio::test]
    async fn start_dropped_reply_internal() {
        let (handler, mut queue, _dir) = handler(4);
        let started = handler.start(decoded(None, Request::RevokeSession { token_hash: "h".into() }));
        assert!(matches!(started, Started::Actor(_)));
        drop(queue.recv().await.unwrap());
        let reply = started.reply().await;
        assert!(matches!(reply, Reply::Error(ref e) if e.code == ErrorCode::Internal), "{reply:?}");
    }

    #[tokio::test]
    async fn start_validation_same_as_handle() {
        let (handler, _queue, _dir) = handler(64);
        let long = "x".repeat(100_000);
        let cases = vec![
            Request::CreateSubject { title: "".into(), created_by: "a".into() },
            Request::CreateSubject { title: "   ".into(), created_by: "a".into() },
            Request::PostMessage { subject: forum_protocol::ChangeId::new(1, 1), author: "a".into(), text: "".into() },
            Request::PostMessage { subject: forum_protocol::ChangeId::new(1, 1), author: "a".into(), text: long.clone() },
            Request::SendPrivate { from: "a".into(), to: "b".into(), text: "".into() },
            Request::SetPresence { user: "a".into(), webserver: " ".into(), online: true },
            Request::RenewPresence { webserver: "".into(), instance: 1, users: vec![], lease_ms: 1 },
            Request::RenewPresence { webserver: "w".into(), instance: 1, users: vec![], lease_ms: MAX_LEASE_MS + 1 },
            Request::Ping,
        ];
        for request in cases {
            let a = handler.start(decoded(None, request.clone())).reply().await;
            let b = handler.handle(decoded(None, request.clone())).await.reply;
            assert_eq!(a, b, "{request:?}");
            assert!(!matches!(a, Reply::Error(ref e) if e.code == ErrorCode::Internal), "{request:?} {a:?}");
        }
    }
}
