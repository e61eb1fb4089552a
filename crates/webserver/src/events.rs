//! The server-sent event stream at `GET /api/events`.
//!
//! Each open stream has a forwarder task that reads the feed broadcast, turns the changes
//! this viewer may see into events and hands them to the HTTP body through a small queue.
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use forum_protocol::{now_millis, Change, ChangeKind, Reply, Request};
use futures::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use warp::reply::{Reply as _, Response};
use warp::sse::Event;

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

/// Opens an event stream for a browser, logged in or not, and returns its response.
/// `last_event_id` is the browser's `Last-Event-ID` header.
pub fn open(state: &Arc<AppState>, session: Option<Session>, last_event_id: Option<String>) -> Response {
    let (sender, receiver) = mpsc::channel(STREAM_QUEUE_CAPACITY);
    let items = state.feed.items.subscribe();
    let presence = session.as_ref().map(|session| state.presence.open(&session.user));
    let forwarder = Forwarder { state: Arc::clone(state), session, sender, cursor: None };
    state.streams.spawn(forwarder.run(items, last_event_id, presence));
    let body = warp::sse::keep_alive().interval(KEEP_ALIVE_INTERVAL).stream(EventReceiver(receiver));
    warp::sse::reply(body).into_response()
}

/// Returns the event that a viewer gets for a change, or `None` when the viewer may not see
/// it or it is not shown to browsers. `viewer` is the session user's name; private messages go
/// only to their two users.
pub fn event_for(at: FeedPosition, change: &Change, viewer: Option<&str>) -> Option<Event> {
    let (name, data) = match &change.kind {
        ChangeKind::MessagePosted { message } => ("post", json!(message)),
        ChangeKind::SubjectCreated { subject } => ("subject", json!(subject)),
        ChangeKind::UserRegistered { user, .. } => ("user", json!({ "name": user.name })),
        ChangeKind::PresenceChanged { user, webserver, online } => {
            ("presence", json!({ "name": user, "online": online, "webserver": webserver }))
        }
        ChangeKind::PrivateSent { message } => {
            let viewer = viewer?;
            if !same_user(viewer, &message.from) && !same_user(viewer, &message.to) {
                return None;
            }
            ("private", json!(message))
        }
        ChangeKind::SessionCreated { .. } | ChangeKind::SessionRevoked { .. } | ChangeKind::PresenceLease { .. } => {
            return None
        }
    };
    Some(Event::default().event(name).id(at.event_id()).retry(RETRY_HINT).data(data.to_string()))
}

/// Returns the event by which a stream learns that it may have missed changes and must
/// refetch. `at` is the feed position that the stream continues after.
pub fn resync_event(at: FeedPosition) -> Event {
    Event::default().event("resync").id(at.event_id()).retry(RETRY_HINT).data("{}")
}

/// User names are unique ignoring case.
fn same_user(left: &str, right: &str) -> bool {
    left.to_lowercase() == right.to_lowercase()
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
    sender: mpsc::Sender<Event>,
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
            self.send(Event::default().comment("connected").retry(RETRY_HINT)).await?;
            if let Some(last_event_id) = last_event_id {
                self.resume(&last_event_id).await?;
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
                self.send_change(at, &entry.change).await?;
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
                FeedItem::Change { at, change } => {
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
                    self.send_change(*at, change).await?;
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

    async fn send_change(&mut self, at: FeedPosition, change: &Change) -> Result<(), End> {
        self.cursor = Some(at);
        let viewer = self.session.as_ref().map(|session| session.user.as_str());
        match event_for(at, change, viewer) {
            Some(event) => self.send(event).await,
            None => Ok(()),
        }
    }

    async fn resync(&mut self, at: FeedPosition) -> Result<(), End> {
        self.cursor = Some(at);
        self.send(resync_event(at)).await
    }

    async fn send(&self, event: Event) -> Result<(), End> {
        match tokio::time::timeout(STUCK_TIMEOUT, self.sender.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(End::Closed),
            Err(_elapsed) => Err(End::TooSlow),
        }
    }
}

/// The body side of a stream's queue, as the `Stream` that warp's SSE reply reads.
struct EventReceiver(mpsc::Receiver<Event>);

impl Stream for EventReceiver {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context).map(|event| event.map(Ok))
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
        let event = event_for(AT, &change(ChangeKind::MessagePosted { message }), None).unwrap();
        assert_eq!(
            event.to_string(),
            "event:post\ndata:{\"author\":\"ana\",\"id\":\"2-17\",\"lamport\":40,\"subject\":\"1-3\",\"text\":\"hola\",\"time\":5}\nid:3:7\nretry:3000\n\n"
        );
    }

    #[test]
    fn user_subject_presence_events() {
        let user = User { id: ChangeId::new(1, 1), name: "ana".into(), time: 5 };
        let event = event_for(AT, &change(ChangeKind::UserRegistered { user, password_hash: String::new() }), None).unwrap();
        assert!(event.to_string().starts_with("event:user\ndata:{\"name\":\"ana\"}\nid:3:7\n"), "{event}");

        let subject = Subject { id: ChangeId::new(1, 2), title: "Exams".into(), created_by: "ana".into(), time: 5 };
        let event = event_for(AT, &change(ChangeKind::SubjectCreated { subject }), None).unwrap();
        assert!(event.to_string().contains("event:subject\n"), "{event}");
        assert!(event.to_string().contains("\"title\":\"Exams\""), "{event}");

        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "web1".into(), online: true };
        let event = event_for(AT, &change(kind), None).unwrap();
        assert!(
            event.to_string().starts_with("event:presence\ndata:{\"name\":\"ana\",\"online\":true,\"webserver\":\"web1\"}\nid:3:7\n"),
            "{event}"
        );
    }

    #[test]
    fn private_event_only_for_its_users() {
        let change = private("ana", "Luis");
        assert!(event_for(AT, &change, Some("ana")).unwrap().to_string().starts_with("event:private\n"));
        assert!(event_for(AT, &change, Some("luis")).is_some());
        assert!(event_for(AT, &change, Some("eva")).is_none());
        assert!(event_for(AT, &change, None).is_none());
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
        assert_eq!(resync_event(AT).to_string(), "event:resync\ndata:{}\nid:3:7\nretry:3000\n\n");
    }
}
