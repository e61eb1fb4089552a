//! The server-sent event stream at `GET /api/events`.
//!
//! Each open stream has a forwarder task that reads the feed broadcast, picks the events this
//! viewer may see and hands them to the HTTP body through a small queue. The feed task renders
//! each change's event text once (see [`EventText`]), and every stream queues the same shared
//! bytes, so a post to many streams costs one JSON serialization, not one per stream.
//! Every event's id is its position in the data server's feed, `"{server}:{position}"`. A
//! browser that reconnects sends the last id it saw in `Last-Event-ID`, and the forwarder first
//! replays what came after it, fetched from the data server, then continues live. When that is
//! impossible (another data server, or more than [`MAX_REPLAY`] changes missed), it sends a
//! `resync` event instead, and the page refetches.
//!
//! The task ends when the browser disconnects, the session is revoked or expires, the server
//! shuts down, or the browser reads too slowly: a stream that falls [`CHANGE_CHANNEL_CAPACITY`]
//! items behind in the broadcast, or whose queue stays full for [`STUCK_TIMEOUT`], is closed,
//! so a stuck browser holds at most its queue. Its presence guard then drops, which may report
//! the user offline.
//!
//! [`CHANGE_CHANNEL_CAPACITY`]: crate::changes::CHANGE_CHANNEL_CAPACITY

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{now_millis, Change, ChangeId, ChangeKind, Reply, Request};
use futures::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, Sleep};
use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::{Reply as _, Response};

use crate::changes::{FeedItem, FeedPosition};
use crate::presence::PresenceGuard;
use crate::sessions::Session;
use crate::state::AppState;

/// The reconnection delay each event suggests to the browser.
pub const RETRY_HINT: Duration = Duration::from_secs(3);
/// A comment line is sent after this long without an event, so proxies keep the connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Events waiting to be written to one browser.
pub const STREAM_QUEUE_CAPACITY: usize = 64;
/// How long a stream's queue may stay full before the stream is closed.
pub const STUCK_TIMEOUT: Duration = Duration::from_secs(5);
/// The maximum gap replayed to a reconnecting browser, in feed positions. A larger gap gets
/// `resync`.
pub const MAX_REPLAY: usize = 1000;
/// Changes fetched from the data server per replay request.
const REPLAY_PAGE: u32 = 100;

/// The keep-alive comment: an empty comment line, which browsers ignore.
const KEEP_ALIVE_COMMENT: &[u8] = b":\n\n";

/// Opens an event stream for a browser, logged in or not, and returns its response.
/// `last_event_id` is the browser's `Last-Event-ID` header.
pub fn open(state: &Arc<AppState>, session: Option<Session>, last_event_id: Option<String>) -> Response {
    let (sender, receiver) = mpsc::channel(STREAM_QUEUE_CAPACITY);
    let items = state.feed.items.subscribe();
    let presence = session.as_ref().map(|session| state.presence.open(&session.user));
    let viewer = session.as_ref().map(|session| session.user.to_lowercase());
    let forwarder = Forwarder { state: Arc::clone(state), session, viewer, sender, cursor: None };
    state.streams.spawn(forwarder.run(items, last_event_id, presence));
    let body = EventBody::new(receiver, KEEP_ALIVE_INTERVAL);
    let mut response = warp::reply::stream(body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An event rendered in the `text/event-stream` format, with the viewers who may see it.
/// Cloning it shares the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventText {
    text: Bytes,
    audience: Audience,
}

/// The viewers who may see an event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Audience {
    /// Every stream, logged in or not.
    Everyone,
    /// A private message: only its two users, logged in. The names are lowercase, because
    /// user names are unique ignoring case.
    Pair { from: String, to: String },
}

impl EventText {
    /// Returns whether `viewer`, the session user's name in lowercase (`None` when not logged
    /// in), may see this event.
    pub fn visible_to(&self, viewer: Option<&str>) -> bool {
        match &self.audience {
            Audience::Everyone => true,
            Audience::Pair { from, to } => viewer.is_some_and(|viewer| viewer == from || viewer == to),
        }
    }

    /// Returns the event's bytes as they are written to the stream.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// Returns this event preceded by a `withdraw` event for the message `replaced`, which this
    /// one replaces, for the same audience and with the same id.
    pub fn after_withdrawal(self, at: FeedPosition, replaced: ChangeId) -> EventText {
        let withdraw = format_event("withdraw", &at.event_id(), &json!({ "id": replaced }).to_string());
        let mut text = Vec::with_capacity(withdraw.len() + self.text.len());
        text.extend_from_slice(&withdraw);
        text.extend_from_slice(&self.text);
        EventText { text: Bytes::from(text), audience: self.audience }
    }
}

/// Renders the event for a change, or returns `None` for changes that are not shown to
/// browsers. Private messages are rendered too, and [`EventText::visible_to`] limits them to
/// their two users.
pub fn render_change(at: FeedPosition, change: &Change) -> Option<EventText> {
    let mut audience = Audience::Everyone;
    let (name, data) = match &change.kind {
        ChangeKind::MessagePosted { message } => ("post", json!(message)),
        ChangeKind::SubjectCreated { subject } => ("subject", json!(subject)),
        ChangeKind::UserRegistered { user, .. } => ("user", json!({ "name": user.name })),
        ChangeKind::PresenceChanged { user, webserver, online } => {
            ("presence", json!({ "name": user, "online": online, "webserver": webserver }))
        }
        ChangeKind::PrivateSent { message } => {
            audience = Audience::Pair { from: message.from.to_lowercase(), to: message.to.to_lowercase() };
            ("private", json!(message))
        }
        ChangeKind::SessionCreated { .. } | ChangeKind::SessionRevoked { .. } | ChangeKind::PresenceLease { .. } => {
            return None
        }
    };
    let text = format_event(name, &at.event_id(), &data.to_string());
    Some(EventText { text, audience })
}

/// Returns the event text that a viewer gets for a change, or `None` when the viewer may not
/// see it or it is not shown to browsers. `viewer` is the session user's name in lowercase,
/// because private messages go only to their two users and names are unique ignoring case.
#[cfg(test)]
pub fn event_for(at: FeedPosition, change: &Change, viewer: Option<&str>) -> Option<Bytes> {
    render_change(at, change).filter(|event| event.visible_to(viewer)).map(|event| event.text)
}

/// Returns the event by which a stream learns that it may have missed changes and must
/// refetch. `at` is the feed position that the stream continues after.
pub fn resync_event(at: FeedPosition) -> Bytes {
    format_event("resync", &at.event_id(), "{}")
}

/// Returns the first bytes of every stream: a comment that browsers ignore, so the response
/// starts at once, and the retry hint.
fn connected_comment() -> Bytes {
    Bytes::from(format!(":connected\nretry:{}\n\n", RETRY_HINT.as_millis()))
}

/// Formats one event with its name, id, data and the retry hint. Each line of `data` becomes
/// its own `data:` field, as the event-stream format requires.
fn format_event(name: &str, id: &str, data: &str) -> Bytes {
    let mut text = String::with_capacity(name.len() + id.len() + data.len() + 40);
    let _ = write!(text, "event:{name}\n");
    for line in data.split('\n') {
        let _ = write!(text, "data:{line}\n");
    }
    let _ = write!(text, "id:{id}\nretry:{}\n\n", RETRY_HINT.as_millis());
    Bytes::from(text)
}

/// The reason a stream ends.
enum End {
    /// The browser went away, the server is stopping or the session ended.
    Closed,
    /// The browser reads too slowly.
    TooSlow,
}

/// The task that feeds one event stream.
struct Forwarder {
    state: Arc<AppState>,
    session: Option<Session>,
    /// The session user's name in lowercase, or `None` when not logged in.
    viewer: Option<String>,
    sender: mpsc::Sender<Bytes>,
    /// The newest feed position sent (or skipped as invisible) to this stream; older items of
    /// the same data server's feed are not sent again.
    cursor: Option<FeedPosition>,
}

impl Forwarder {
    async fn run(
        mut self,
        items: broadcast::Receiver<Arc<FeedItem>>,
        last_event_id: Option<String>,
        _presence: Option<PresenceGuard>,
    ) {
        let shutdown = self.state.shutdown.clone();
        let expiry = self.session.as_ref().map(|session| session.expires_at);
        let user = self.session.as_ref().map(|session| session.user.clone());
        let browser = self.sender.clone();
        let ended = async {
            // The first bytes: a comment that browsers ignore, so the response starts at once.
            self.send(connected_comment()).await?;
            if let Some(last_event_id) = last_event_id {
                // Boxed, so the task does not keep room for the replay's requests while live.
                Box::pin(self.resume(&last_event_id)).await?;
            }
            self.forward(items).await
        };
        let expired = async move {
            match expiry {
                Some(expires_at) => tokio::time::sleep(Duration::from_millis(expires_at.saturating_sub(now_millis()))).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            _ = shutdown.cancelled() => End::Closed,
            _ = browser.closed() => End::Closed,
            () = expired => End::Closed,
            result = ended => match result { Err(end) => end, Ok(()) => End::Closed },
        };
        if let End::TooSlow = end {
            tracing::info!(user, "closed an event stream that read too slowly; the browser resumes when it reconnects");
        }
    }

    /// Replays the changes after `last_event_id`, or sends `resync` when that is impossible.
    async fn resume(&mut self, last_event_id: &str) -> Result<(), End> {
        let head = self.current_head().await;
        let Some(head) = head else {
            // No data server has replied yet, so there is no feed to resume from.
            return Ok(());
        };
        let resumable = FeedPosition::parse(last_event_id).filter(|seen| seen.server == head.server);
        let Some(seen) = resumable else {
            return self.resync(head).await;
        };
        self.cursor = Some(seen);
        loop {
            let after = self.cursor.map_or(seen.position, |cursor| cursor.position);
            let reply = self.state.data.request(Request::FeedSince { after, limit: REPLAY_PAGE }).await;
            let batch = match reply {
                Ok(Reply::Feed(batch)) if batch.server == seen.server && batch.last >= seen.position => batch,
                _ => {
                    let newest = *self.state.feed.head.borrow();
                    return self.resync(newest.unwrap_or(head)).await;
                }
            };
            // The gap counts every change of the feed, also those this viewer does not see.
            if batch.last - seen.position > MAX_REPLAY as u64 {
                let at = FeedPosition { server: batch.server, position: batch.last };
                return self.resync(at).await;
            }
            let complete = batch.entries.len() < REPLAY_PAGE as usize;
            for entry in batch.entries {
                let at = FeedPosition { server: batch.server, position: entry.position };
                if entry.note.hidden {
                    // The other copy of this write is the one shown.
                    self.cursor = Some(at);
                    continue;
                }
                self.send_change(at, &entry.change, entry.note.replaces).await?;
            }
            if complete {
                return Ok(());
            }
        }
    }

    /// Returns the feed head, waiting up to the request timeout for the first data server.
    async fn current_head(&self) -> Option<FeedPosition> {
        let mut head = self.state.feed.head.subscribe();
        let wait = async move { head.wait_for(Option::is_some).await.ok().and_then(|head| *head) };
        tokio::time::timeout(self.state.request_timeout, wait).await.ok().flatten()
    }

    /// Forwards the broadcast until the stream ends.
    async fn forward(&mut self, mut items: broadcast::Receiver<Arc<FeedItem>>) -> Result<(), End> {
        loop {
            let item = match items.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(End::TooSlow),
                Err(broadcast::error::RecvError::Closed) => return Err(End::Closed),
            };
            match &*item {
                FeedItem::Change { at, change, event } => {
                    let already_sent = self.cursor.is_some_and(|cursor| cursor.server == at.server && at.position <= cursor.position);
                    if already_sent {
                        continue;
                    }
                    if let ChangeKind::SessionRevoked { token_hash } = &change.kind {
                        self.state.sessions.forget(token_hash);
                        if self.session.as_ref().is_some_and(|session| session.token_hash == *token_hash) {
                            return Err(End::Closed);
                        }
                    }
                    self.cursor = Some(*at);
                    if let Some(event) = event.as_ref().filter(|event| event.visible_to(self.viewer.as_deref())) {
                        self.send(event.text().clone()).await?;
                    }
                }
                FeedItem::Resync { at } => {
                    // A revocation may be among the lost changes, so requests check their
                    // session with the data server again.
                    // NOTE: this stream keeps its session until it ends. A data server that
                    // has not received the session yet cannot tell a revoked session from an
                    // unknown one, and closing on either would log users out at a failover.
                    self.state.sessions.forget_all();
                    self.resync(*at).await?;
                }
            }
        }
    }

    /// Sends a replayed change's event, after a `withdraw` event for the copy it `replaces`.
    async fn send_change(&mut self, at: FeedPosition, change: &Change, replaces: Option<ChangeId>) -> Result<(), End> {
        self.cursor = Some(at);
        let event = render_change(at, change).map(|event| match replaces {
            Some(replaced) => event.after_withdrawal(at, replaced),
            None => event,
        });
        match event.filter(|event| event.visible_to(self.viewer.as_deref())) {
            Some(event) => self.send(event.text().clone()).await,
            None => Ok(()),
        }
    }

    async fn resync(&mut self, at: FeedPosition) -> Result<(), End> {
        self.cursor = Some(at);
        self.send(resync_event(at)).await
    }

    async fn send(&self, event: Bytes) -> Result<(), End> {
        // Most events find room at once, and then no timer is set up for them.
        let event = match self.sender.try_send(event) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::Closed),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        match tokio::time::timeout(STUCK_TIMEOUT, self.sender.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(End::Closed),
            Err(_elapsed) => Err(End::TooSlow),
        }
    }
}

/// The response body of a stream: the events from its queue, and a keep-alive comment after
/// [`KEEP_ALIVE_INTERVAL`] without one.
///
/// The keep-alive timer is not reset at each event, which would touch the runtime's timer
/// wheel once per event and stream. Instead the body notes when it last sent something, and
/// when the timer fires before a comment is due it moves the timer to the due time.
struct EventBody {
    queue: mpsc::Receiver<Bytes>,
    keep_alive_interval: Duration,
    keep_alive: Pin<Box<Sleep>>,
    last_sent: Instant,
}

impl EventBody {
    fn new(queue: mpsc::Receiver<Bytes>, keep_alive_interval: Duration) -> EventBody {
        let now = Instant::now();
        let keep_alive = Box::pin(tokio::time::sleep_until(now + keep_alive_interval));
        EventBody { queue, keep_alive_interval, keep_alive, last_sent: now }
    }
}

impl Stream for EventBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.queue.poll_recv(context) {
            Poll::Ready(Some(event)) => {
                self.last_sent = Instant::now();
                return Poll::Ready(Some(Ok(event)));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        loop {
            ready!(self.keep_alive.as_mut().poll(context));
            let due = self.last_sent + self.keep_alive_interval;
            let now = Instant::now();
            if due > now {
                // Events went out since the timer was set; polling again registers the new time.
                self.keep_alive.as_mut().reset(due);
                continue;
            }
            self.last_sent = now;
            let next = now + self.keep_alive_interval;
            self.keep_alive.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT))));
        }
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::{ChangeId, Message, PrivateMessage, Subject, User};

    use super::*;

    const AT: FeedPosition = FeedPosition { server: 3, position: 7 };

    fn change(kind: ChangeKind) -> Change {
        Change { id: ChangeId::new(1, 9), lamport: 9, time: 5, kind, key: None }
    }

    /// Returns the event text that `viewer` gets for `change`, as a string.
    fn event_text(change: &Change, viewer: Option<&str>) -> Option<String> {
        event_for(AT, change, viewer).map(|text| String::from_utf8(text.to_vec()).expect("events are UTF-8"))
    }

    fn private(from: &str, to: &str) -> Change {
        change(ChangeKind::PrivateSent {
            message: PrivateMessage {
                id: ChangeId::new(1, 9),
                from: from.into(),
                to: to.into(),
                text: "psst".into(),
                time: 5,
                lamport: 9,
            },
        })
    }

    #[test]
    fn post_event_format() {
        let message = Message {
            id: ChangeId::new(2, 17),
            subject: ChangeId::new(1, 3),
            author: "ana".into(),
            text: "hola".into(),
            time: 5,
            lamport: 40,
        };
        let event = event_text(&change(ChangeKind::MessagePosted { message }), None).unwrap();
        assert_eq!(
            event,
            "event:post\ndata:{\"author\":\"ana\",\"id\":\"2-17\",\"lamport\":40,\"subject\":\"1-3\",\"text\":\"hola\",\"time\":5}\nid:3:7\nretry:3000\n\n"
        );
    }

    #[test]
    fn user_subject_presence_events() {
        let user = User { id: ChangeId::new(1, 1), name: "ana".into(), time: 5 };
        let event = event_text(&change(ChangeKind::UserRegistered { user, password_hash: String::new() }), None).unwrap();
        assert!(event.starts_with("event:user\ndata:{\"name\":\"ana\"}\nid:3:7\n"), "{event}");

        let subject = Subject { id: ChangeId::new(1, 2), title: "Exams".into(), created_by: "ana".into(), time: 5 };
        let event = event_text(&change(ChangeKind::SubjectCreated { subject }), None).unwrap();
        assert!(event.contains("event:subject\n"), "{event}");
        assert!(event.contains("\"title\":\"Exams\""), "{event}");

        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "web1".into(), online: true };
        let event = event_text(&change(kind), None).unwrap();
        assert!(
            event.starts_with("event:presence\ndata:{\"name\":\"ana\",\"online\":true,\"webserver\":\"web1\"}\nid:3:7\n"),
            "{event}"
        );
    }

    #[test]
    fn private_event_only_for_its_users() {
        let change = private("ana", "Luis");
        assert!(event_text(&change, Some("ana")).unwrap().starts_with("event:private\n"));
        assert!(event_text(&change, Some("luis")).is_some());
        assert!(event_text(&change, Some("eva")).is_none());
        assert!(event_text(&change, None).is_none());
    }

    #[test]
    fn sessions_and_leases_are_not_events() {
        let kinds = [
            ChangeKind::SessionCreated { token_hash: "h".into(), user: "ana".into(), expires_at: 1 },
            ChangeKind::SessionRevoked { token_hash: "h".into() },
            ChangeKind::PresenceLease { webserver: "web1".into(), instance: 1, users: vec!["ana".into()], expires_at: 1 },
        ];
        for kind in kinds {
            assert!(event_for(AT, &change(kind), Some("ana")).is_none());
        }
    }

    #[test]
    fn resync_event_format() {
        assert_eq!(resync_event(AT), "event:resync\ndata:{}\nid:3:7\nretry:3000\n\n");
    }

    #[test]
    fn connected_comment_format() {
        assert_eq!(connected_comment(), ":connected\nretry:3000\n\n");
    }

    #[test]
    fn multiline_data_gets_one_field_per_line() {
        assert_eq!(format_event("x", "1:2", "a\nb"), "event:x\ndata:a\ndata:b\nid:1:2\nretry:3000\n\n");
    }

    #[test]
    fn private_event_shared_text() {
        let event = render_change(AT, &private("Ana", "luis")).unwrap();
        assert!(event.visible_to(Some("ana")));
        assert!(event.visible_to(Some("luis")));
        assert!(!event.visible_to(Some("eva")));
        assert!(!event.visible_to(None));
        assert!(event.text().starts_with(b"event:private\n"));
    }

    #[tokio::test]
    async fn keep_alive_after_silence() {
        let interval = Duration::from_millis(200);
        let (sender, receiver) = mpsc::channel(4);
        let mut body = EventBody::new(receiver, interval);
        let started = Instant::now();

        // Events sent meanwhile push the comment back to one interval after the last event.
        for _ in 0..3 {
            tokio::time::sleep(interval / 2).await;
            sender.send(Bytes::from_static(b"event:x\n\n")).await.unwrap();
            let event = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
            assert_eq!(event, "event:x\n\n");
        }
        let last_event = Instant::now();
        let comment = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
        assert_eq!(comment, ":\n\n");
        assert!(last_event.elapsed() >= interval, "comment {:?} after the last event", last_event.elapsed());
        assert!(started.elapsed() >= interval * 5 / 2, "comment {:?} after the start", started.elapsed());

        // Silence gives one comment per interval, and a closed queue ends the body.
        let comment_at = Instant::now();
        let comment = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
        assert_eq!(comment, ":\n\n");
        assert!(comment_at.elapsed() >= interval * 9 / 10, "second comment after {:?}", comment_at.elapsed());
        drop(sender);
        assert!(futures::StreamExt::next(&mut body).await.is_none());
    }
}
