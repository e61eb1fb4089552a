//! The server-sent event stream at `GET /api/events`.
//!
//! Each open stream has a forwarder task that reads the change broadcast, turns the changes
//! this viewer may see into events and hands them to the HTTP body through a small queue.
//! The task ends when the browser disconnects, the session is revoked or the server shuts
//! down. Its presence guard then drops, which may report the user offline.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use forum_protocol::ChangeKind;
use futures::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use warp::reply::{Reply as _, Response};
use warp::sse::Event;

use crate::changes::NumberedChange;
use crate::presence::PresenceGuard;
use crate::sessions::Session;
use crate::state::AppState;

/// The reconnection delay each event suggests to the browser.
pub const RETRY_HINT: Duration = Duration::from_secs(3);
/// A comment line is sent after this long without an event, so proxies keep the connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Events waiting to be written to one browser. When it is full the forwarder waits, so
/// that stream falls behind in the change broadcast and eventually gets a `resync` event.
const STREAM_QUEUE_CAPACITY: usize = 64;

/// Opens an event stream for a browser, logged in or not, and returns its response.
pub fn open(state: &Arc<AppState>, session: Option<Session>) -> Response {
    let (sender, receiver) = mpsc::channel(STREAM_QUEUE_CAPACITY);
    let changes = state.changes.subscribe();
    let presence = session.as_ref().map(|session| state.presence.open(&session.user));
    state.streams.spawn(forward(changes, session, presence, sender, state.shutdown.clone()));
    let body = warp::sse::keep_alive().interval(KEEP_ALIVE_INTERVAL).stream(EventReceiver(receiver));
    warp::sse::reply(body).into_response()
}

/// Returns the event that a viewer gets for a change, or `None` when the viewer may not see
/// it. `viewer` is the session user's name; private messages go only to their two users.
pub fn event_for(change: &NumberedChange, viewer: Option<&str>) -> Option<Event> {
    let (name, data) = match &change.change.kind {
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
    };
    Some(Event::default().event(name).id(change.number.to_string()).retry(RETRY_HINT).data(data.to_string()))
}

/// Returns the event by which a stream learns that it missed changes and must refetch. `number` is the
/// number of the newest change it missed.
pub fn resync_event(number: u64) -> Event {
    Event::default().event("resync").id(number.to_string()).retry(RETRY_HINT).data("{}")
}

/// User names are unique ignoring case.
fn same_user(left: &str, right: &str) -> bool {
    left.to_lowercase() == right.to_lowercase()
}

async fn forward(
    mut changes: broadcast::Receiver<Arc<NumberedChange>>,
    session: Option<Session>,
    _presence: Option<PresenceGuard>,
    sender: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let viewer = session.as_ref().map(|session| session.user.clone());
    let revoked = session.map_or_else(CancellationToken::new, |session| session.revoked);
    // The first bytes: a comment that browsers ignore, so the response starts at once.
    let greeting = Event::default().comment("connected").retry(RETRY_HINT);
    if sender.send(greeting).await.is_err() {
        return;
    }
    let mut last_number = 0;
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = revoked.cancelled() => return,
            _ = sender.closed() => return,
            received = changes.recv() => received,
        };
        let event = match received {
            Ok(change) => {
                last_number = change.number;
                match event_for(&change, viewer.as_deref()) {
                    Some(event) => event,
                    None => continue,
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, user = viewer.as_deref(), "event stream fell behind; sending resync");
                last_number += skipped;
                resync_event(last_number)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = revoked.cancelled() => return,
            sent = sender.send(event) => if sent.is_err() { return },
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
    use forum_protocol::{Change, ChangeId, Message, PrivateMessage, Subject, User};

    use super::*;

    fn numbered(number: u64, kind: ChangeKind) -> NumberedChange {
        NumberedChange { number, change: Change { id: ChangeId::new(1, number), lamport: number, time: 5, kind } }
    }

    fn private(from: &str, to: &str) -> NumberedChange {
        numbered(
            9,
            ChangeKind::PrivateSent {
                message: PrivateMessage {
                    id: ChangeId::new(1, 9),
                    from: from.into(),
                    to: to.into(),
                    text: "psst".into(),
                    time: 5,
                    lamport: 9,
                },
            },
        )
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
        let event = event_for(&numbered(7, ChangeKind::MessagePosted { message }), None).unwrap();
        assert_eq!(
            event.to_string(),
            "event:post\ndata:{\"author\":\"ana\",\"id\":\"2-17\",\"lamport\":40,\"subject\":\"1-3\",\"text\":\"hola\",\"time\":5}\nid:7\nretry:3000\n\n"
        );
    }

    #[test]
    fn user_subject_presence_events() {
        let user = User { id: ChangeId::new(1, 1), name: "ana".into(), time: 5 };
        let event = event_for(&numbered(1, ChangeKind::UserRegistered { user, password_hash: String::new() }), None).unwrap();
        assert!(event.to_string().starts_with("event:user\ndata:{\"name\":\"ana\"}\nid:1\n"), "{event}");

        let subject = Subject { id: ChangeId::new(1, 2), title: "Exams".into(), created_by: "ana".into(), time: 5 };
        let event = event_for(&numbered(2, ChangeKind::SubjectCreated { subject }), None).unwrap();
        assert!(event.to_string().contains("event:subject\n"), "{event}");
        assert!(event.to_string().contains("\"title\":\"Exams\""), "{event}");

        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "web1".into(), online: true };
        let event = event_for(&numbered(3, kind), None).unwrap();
        assert!(
            event.to_string().starts_with("event:presence\ndata:{\"name\":\"ana\",\"online\":true,\"webserver\":\"web1\"}\nid:3\n"),
            "{event}"
        );
    }

    #[test]
    fn private_event_only_for_its_users() {
        let change = private("ana", "Luis");
        assert!(event_for(&change, Some("ana")).unwrap().to_string().starts_with("event:private\n"));
        assert!(event_for(&change, Some("luis")).is_some());
        assert!(event_for(&change, Some("eva")).is_none());
        assert!(event_for(&change, None).is_none());
    }

    #[tokio::test]
    async fn lagging_stream_gets_resync() {
        let (changes, receiver) = broadcast::channel(4);
        for number in 1..=10 {
            let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "web1".into(), online: true };
            changes.send(Arc::new(numbered(number, kind))).unwrap();
        }
        let (sender, mut events) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(forward(receiver, None, None, sender, shutdown.clone()));

        let greeting = events.recv().await.unwrap().to_string();
        assert!(greeting.starts_with(":connected\n"), "{greeting}");
        let resync = events.recv().await.unwrap().to_string();
        assert!(resync.starts_with("event:resync\n"), "{resync}");
        assert!(resync.contains("id:6\n"), "the newest missed change is 6: {resync}");
        for number in 7..=10 {
            let event = events.recv().await.unwrap().to_string();
            assert!(event.contains(&format!("id:{number}\n")), "{event}");
        }

        shutdown.cancel();
        task.await.unwrap();
        assert!(events.recv().await.is_none(), "the stream ends at shutdown");
    }

    #[test]
    fn resync_event_format() {
        assert_eq!(resync_event(12).to_string(), "event:resync\ndata:{}\nid:12\nretry:3000\n\n");
    }
}
