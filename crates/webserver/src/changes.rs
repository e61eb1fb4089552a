//! The change feed: the data server's changes, in its feed order, fanned out to event streams.
//!
//! Every data server numbers the changes it stores (its feed positions, see
//! `forum_protocol::WireFeedHeader`). The feed task follows the data server that the data
//! client uses. A SUB socket on its `webserver` topic brings each change live, and a
//! `FeedSince` request fetches the positions that the SUB socket lost: the data server's PUB
//! port drops messages for a subscriber whose queue is full, as zeromq's PUB does, and a
//! reconnect loses what was published meanwhile. The task notices a loss when a change arrives
//! with a position beyond the next one, and once per [`POLL_INTERVAL`] it requests anything
//! newer, which catches a loss at the end. So the broadcast carries every position of the
//! feed, in order.
//!
//! When the data client moves to another data server, positions start over in that server's
//! feed, so the task broadcasts [`FeedItem::Resync`] and every stream tells its page to refetch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{
    decode, unseal_frames, Change, ClusterKey, FeedBatch, FeedNote, MacContext, MacError, Reply, Request, ServerId, WireChange,
    WireFeedHeader, TOPIC_WEBSERVER, WEBSERVER_ENCRYPTED_FRAMES, WEBSERVER_FRAMES,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use zmtp_guard::{Limits, Subscriber, SubscriberKey};

use crate::data_client::{ActiveServer, DataClient};
use crate::duplicates::Verdict;
use crate::events::{render_change, EventText};

/// Items the broadcast channel keeps for streams that have not read them yet.
///
/// Policy: the channel never blocks the feed task. A stream that falls more than this many
/// items behind is closed (see `events.rs`), and its browser resumes from its last event id.
/// At 7,000 changes per second, 4096 items are about half a second, so a stream that waits
/// for a busy CPU for a moment is not cut. The slots are shared by every stream and hold
/// the events' shared text, about 2 MiB at 500 bytes per event.
pub const CHANGE_CHANNEL_CAPACITY: usize = 4096;

/// How often the feed requests the changes that the SUB socket may have lost.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The maximum number of changes one `FeedSince` request fetches.
pub const FETCH_LIMIT: u32 = 500;

/// How long the TCP connection of the SUB socket may take, and then its ZMTP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A position in a data server's feed: the server's id and the position there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedPosition {
    pub server: ServerId,
    pub position: u64,
}

impl FeedPosition {
    /// Returns the event id for this position: `"{server}:{position}"`.
    pub fn event_id(self) -> String {
        format!("{}:{}", self.server, self.position)
    }

    /// Parses an event id written by [`FeedPosition::event_id`].
    pub fn parse(text: &str) -> Option<FeedPosition> {
        let (server, position) = text.trim().split_once(':')?;
        Some(FeedPosition { server: server.parse().ok()?, position: position.parse().ok()? })
    }
}

/// An item of the feed broadcast to event streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// The change at `at` in the data server's feed, with its event as browsers get it, or
    /// `None` when browsers are not shown this kind of change.
    Change { at: FeedPosition, change: Change, event: Option<EventText> },
    /// The feed continues from `at` in another data server's feed; what came before may be
    /// missing, so pages must refetch.
    Resync { at: FeedPosition },
}

impl FeedItem {
    /// Returns the item for the change at `at`, with its event rendered once for every stream
    /// as `verdict` decides: a message stored twice gets no event, or a `withdraw` event for the
    /// copy it replaces before its own.
    fn judged(at: FeedPosition, change: Change, verdict: Verdict) -> FeedItem {
        let event = match verdict {
            Verdict::Show => render_change(at, &change),
            Verdict::Hide => None,
            Verdict::Replace(replaced) => render_change(at, &change).map(|event| event.after_withdrawal(at, replaced)),
        };
        FeedItem::Change { at, change, event }
    }
}

/// The broadcast of feed items and the position of the newest one.
pub struct Feed {
    pub items: broadcast::Sender<Arc<FeedItem>>,
    /// The newest position broadcast, or `None` before the first data server replied.
    pub head: watch::Sender<Option<FeedPosition>>,
}

impl Feed {
    pub fn new() -> Feed {
        Feed { items: broadcast::channel(CHANGE_CHANNEL_CAPACITY).0, head: watch::Sender::new(None) }
    }

    /// Sets the head first, so a stream that reads the head after subscribing never misses
    /// an item beyond it.
    fn broadcast(&self, item: FeedItem) {
        let at = match &item {
            FeedItem::Change { at, .. } | FeedItem::Resync { at } => *at,
        };
        self.head.send_replace(Some(at));
        // An error only means that no event stream is open right now.
        let _ = self.items.send(Arc::new(item));
    }
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

/// Follows the data server in use and broadcasts its feed, until `shutdown`. `pub_endpoints`
/// are the data servers' PUB endpoints, in the same order as their request endpoints.
pub async fn run(feed: Arc<Feed>, data: DataClient, pub_endpoints: Vec<String>, shutdown: CancellationToken) {
    let mut active_servers = data.active();
    loop {
        let active = tokio::select! {
            _ = shutdown.cancelled() => return,
            active = active_servers.wait_for(Option::is_some) => match active {
                Ok(active) => active.expect("waited for Some"),
                Err(_) => return,
            },
        };
        active_servers.mark_unchanged();
        let mut follower = Follower { feed: &feed, data: &data, active };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = active_servers.changed() => {}
            () = follower.follow(&pub_endpoints[active.index]) => {}
        }
    }
}

/// Follows one connection to one data server.
struct Follower<'a> {
    feed: &'a Feed,
    data: &'a DataClient,
    active: ActiveServer,
}

impl Follower<'_> {
    /// Returns when the data client replies from another data server than `active`.
    async fn follow(&mut self, pub_endpoint: &str) {
        if !self.start().await {
            return;
        }
        let subscriber_key = self.data.cluster_key().map(|key| SubscriberKey::new(key.subscriber_key()));
        let mut socket = subscribe(pub_endpoint, subscriber_key.as_ref()).await;
        let mut unauthenticated: u64 = 0;
        let mut malformed: u64 = 0;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = async {
                match socket.as_mut() {
                    Some(socket) => Some(socket.recv().await),
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                _ = poll.tick() => None,
                received = received => received,
            };
            let keep_following = match received {
                None => {
                    if socket.is_none() {
                        socket = subscribe(pub_endpoint, subscriber_key.as_ref()).await;
                    }
                    self.catch_up().await
                }
                Some(Ok(frames)) => match open_live_change(self.data.cluster_key(), frames) {
                    Ok(live) => self.receive(live).await,
                    Err(Rejected::Unauthenticated(error)) => {
                        unauthenticated += 1;
                        if unauthenticated.is_power_of_two() {
                            tracing::warn!(%error, pub_endpoint, count = unauthenticated, "dropped changes from the data server that failed authentication; check that both use the same cluster key");
                        }
                        true
                    }
                    Err(Rejected::Malformed(reason)) => {
                        malformed += 1;
                        if malformed.is_power_of_two() {
                            tracing::warn!(%reason, pub_endpoint, count = malformed, "ignored undecodable changes from the data server; the feed request fetches them");
                        }
                        true
                    }
                },
                Some(Err(error)) => {
                    // The next poll tick, at most POLL_INTERVAL later, connects a new socket,
                    // and the poll fills the gap meanwhile. A cut is already logged by the
                    // socket, rate-limited.
                    if !error.is_cut() {
                        tracing::warn!(%error, pub_endpoint, "failed to receive from the change feed; reconnecting");
                    }
                    socket = None;
                    true
                }
            };
            if !keep_following {
                return;
            }
        }
    }

    /// Sets the starting position on this data server. Returns false when the data client
    /// already uses another one.
    async fn start(&mut self) -> bool {
        let head = *self.feed.head.borrow();
        match head {
            Some(head) if head.server == self.active.server => self.catch_up().await,
            previous => {
                // Only the newest position is needed: the feed of another server, or of the
                // first one, starts now.
                let Some(batch) = self.fetch(u64::MAX, 0).await else { return false };
                let at = FeedPosition { server: batch.server, position: batch.last };
                if previous.is_some() {
                    tracing::warn!(server = at.server, position = at.position, "the change feed moved to another data server; pages resync");
                }
                self.feed.broadcast(FeedItem::Resync { at });
                true
            }
        }
    }

    /// Handles one live change. Returns false when the data client moved to another server.
    async fn receive(&mut self, live: LiveChange) -> bool {
        if live.server != self.active.server {
            return true;
        }
        let head = self.head();
        if live.position <= head {
            return true;
        }
        if live.position == head + 1 {
            let at = FeedPosition { server: live.server, position: live.position };
            let verdict = Verdict::of(live.note);
            self.feed.broadcast(FeedItem::judged(at, live.change, verdict));
            return true;
        }
        tracing::debug!(expected = head + 1, received = live.position, "the change feed lost changes; fetching them");
        self.catch_up().await
    }

    /// Fetches and broadcasts every change after the head. Returns false when the data client
    /// moved to another server; a failed request leaves the rest to the next poll.
    async fn catch_up(&mut self) -> bool {
        loop {
            let head = self.head();
            let Some(batch) = self.fetch(head, FETCH_LIMIT).await else { return true };
            if batch.server != self.active.server {
                return false;
            }
            if batch.last < head {
                // The data server's feed is shorter than what was seen: its store was replaced.
                let at = FeedPosition { server: batch.server, position: batch.last };
                tracing::warn!(server = at.server, position = at.position, seen = head, "the data server's feed went back; pages resync");
                self.feed.broadcast(FeedItem::Resync { at });
                return true;
            }
            let complete = batch.entries.len() < FETCH_LIMIT as usize;
            for entry in batch.entries {
                let at = FeedPosition { server: batch.server, position: entry.position };
                let verdict = Verdict::of(entry.note);
                self.feed.broadcast(FeedItem::judged(at, entry.change, verdict));
            }
            if complete {
                return true;
            }
        }
    }

    fn head(&self) -> u64 {
        self.feed.head.borrow().map_or(0, |head| head.position)
    }

    async fn fetch(&self, after: u64, limit: u32) -> Option<FeedBatch> {
        match self.data.request(Request::FeedSince { after, limit }).await {
            Ok(Reply::Feed(batch)) => Some(batch),
            Ok(other) => {
                tracing::warn!(reply = ?other, "the data server replied to a feed request with an unexpected reply");
                None
            }
            Err(error) => {
                tracing::debug!(%error, "failed to fetch the change feed; retrying at the next poll");
                None
            }
        }
    }
}

/// A change received live on the `webserver` topic.
#[derive(Debug, PartialEq, Eq)]
struct LiveChange {
    server: ServerId,
    position: u64,
    note: FeedNote,
    change: Change,
}

/// The reason a live message was dropped.
#[derive(Debug)]
enum Rejected {
    Unauthenticated(MacError),
    Malformed(String),
}

/// Checks, unseals and decodes a `webserver` message: `[topic, WireFeedHeader, WireChange]`.
fn open_live_change(cluster_key: Option<&ClusterKey>, mut frames: Vec<Bytes>) -> Result<LiveChange, Rejected> {
    // The frame count is checked first, so a message of another layout is reported as such
    // and not as one that failed authentication.
    if frames.len() != WEBSERVER_FRAMES {
        return Err(Rejected::Malformed(format!(
            "expected {WEBSERVER_FRAMES} frames (topic, header and change), got {}",
            frames.len()
        )));
    }
    unseal_frames(cluster_key, MacContext::Publication, &mut frames, WEBSERVER_FRAMES, WEBSERVER_ENCRYPTED_FRAMES)
        .map_err(Rejected::Unauthenticated)?;
    let header: WireFeedHeader =
        decode(&frames[1]).map_err(|error| Rejected::Malformed(format!("invalid header frame: {error}")))?;
    let wire: WireChange = decode(&frames[2]).map_err(|error| Rejected::Malformed(format!("invalid change frame: {error}")))?;
    Ok(LiveChange { server: header.server, position: header.position, note: header.note, change: wire.change })
}

/// Connects a SUB socket to the `webserver` topic of `endpoint`, or returns `None` when that
/// fails; the caller tries again at the next poll tick. With a key, the socket first sends a
/// subscriber token, which the data server's pub port demands.
async fn subscribe(endpoint: &str, key: Option<&SubscriberKey>) -> Option<Subscriber> {
    let limits = Limits { greeting_timeout: CONNECT_TIMEOUT, ..Limits::default() };
    match Subscriber::connect_with_key(endpoint, key, &[TOPIC_WEBSERVER.as_bytes()], &limits, CONNECT_TIMEOUT).await {
        Ok(socket) => {
            tracing::info!(%endpoint, "subscribed to the data server's change feed");
            Some(socket)
        }
        // The socket has already logged a cut, rate-limited.
        Err(error) if error.is_cut() => None,
        Err(error) => {
            tracing::warn!(%endpoint, %error, "failed to connect to the change feed; polling until it is up");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forum_protocol::{encode, encode_change, encode_feed_header, seal_frames, ChangeId, ChangeKind};

    fn post(seq: u64) -> Change {
        let message = forum_protocol::Message {
            id: ChangeId::new(1, seq),
            subject: ChangeId::new(1, 1),
            author: "ana".into(),
            text: "hola".into(),
            time: 0,
            lamport: seq,
        };
        Change { id: message.id, lamport: seq, time: 0, kind: ChangeKind::MessagePosted { message }, key: None }
    }

    /// Builds a `webserver` message as a data server publishes it, before sealing.
    fn live_message(position: u64, change: &Change) -> Vec<Bytes> {
        vec![
            Bytes::from_static(TOPIC_WEBSERVER.as_bytes()),
            Bytes::from(encode_feed_header(1, position, FeedNote::default())),
            Bytes::from(encode_change(change)),
        ]
    }

    fn key(byte: u8) -> ClusterKey {
        ClusterKey::new(&[byte; 32], "test").unwrap()
    }

    #[test]
    fn live_change_opens() {
        let change = post(5);
        let expected = LiveChange { server: 1, position: 9, note: FeedNote::default(), change: change.clone() };
        assert_eq!(open_live_change(None, live_message(9, &change)).unwrap(), expected);

        let mut sealed = live_message(9, &change);
        seal_frames(Some(&key(7)), MacContext::Publication, &mut sealed, WEBSERVER_FRAMES, WEBSERVER_ENCRYPTED_FRAMES);
        assert_eq!(open_live_change(Some(&key(7)), sealed).unwrap(), expected);
    }

    #[test]
    fn malformed_live_messages_rejected() {
        let change = post(5);
        let valid = live_message(9, &change);
        let topic = valid[0].clone();
        let header = valid[1].clone();
        let change_frame = valid[2].clone();
        let nested = Bytes::from(vec![0x91u8; 100_000]);
        let other_version = Bytes::from(encode(&WireFeedHeaderV { v: 99, server: 1, position: 9 }));
        let cases: Vec<(&str, Vec<Bytes>)> = vec![
            ("no frames", vec![]),
            ("the two-frame layout", vec![topic.clone(), change_frame.clone()]),
            ("four frames", vec![topic.clone(), header.clone(), change_frame.clone(), change_frame.clone()]),
            ("an empty header", vec![topic.clone(), Bytes::new(), change_frame.clone()]),
            ("a change as the header", vec![topic.clone(), change_frame.clone(), change_frame.clone()]),
            ("a header of another version", vec![topic.clone(), other_version, change_frame.clone()]),
            ("a header as the change", vec![topic.clone(), header.clone(), header.clone()]),
            ("a garbage change", vec![topic.clone(), header.clone(), Bytes::from_static(b"\xc1\xff garbage")]),
            ("a deeply nested change", vec![topic.clone(), header.clone(), nested]),
        ];
        for (case, frames) in cases {
            match open_live_change(None, frames) {
                Err(Rejected::Malformed(reason)) => assert!(!reason.is_empty(), "{case}"),
                other => panic!("{case}: expected a malformed message, got {other:?}"),
            }
        }
    }

    #[test]
    fn unauthenticated_live_messages_rejected() {
        let change = post(5);
        let clear = live_message(9, &change);
        assert!(matches!(open_live_change(Some(&key(7)), clear), Err(Rejected::Unauthenticated(MacError::Missing))));

        let mut other_key = live_message(9, &change);
        seal_frames(Some(&key(8)), MacContext::Publication, &mut other_key, WEBSERVER_FRAMES, WEBSERVER_ENCRYPTED_FRAMES);
        assert!(matches!(open_live_change(Some(&key(7)), other_key), Err(Rejected::Unauthenticated(MacError::Invalid))));

        // A header and a change frame from two sealed messages do not open together.
        let mut first = live_message(9, &change);
        let mut second = live_message(10, &post(6));
        seal_frames(Some(&key(7)), MacContext::Publication, &mut first, WEBSERVER_FRAMES, WEBSERVER_ENCRYPTED_FRAMES);
        seal_frames(Some(&key(7)), MacContext::Publication, &mut second, WEBSERVER_FRAMES, WEBSERVER_ENCRYPTED_FRAMES);
        let spliced = vec![first[0].clone(), first[1].clone(), second[2].clone()];
        assert!(matches!(open_live_change(Some(&key(7)), spliced), Err(Rejected::Unauthenticated(MacError::Invalid))));
    }

    /// A header of a future protocol version, with the fields of today's.
    #[derive(serde::Serialize)]
    struct WireFeedHeaderV {
        v: u16,
        server: ServerId,
        position: u64,
    }

    #[test]
    fn event_id_round_trips() {
        let at = FeedPosition { server: 7, position: 42 };
        assert_eq!(at.event_id(), "7:42");
        assert_eq!(FeedPosition::parse("7:42"), Some(at));
        for text in ["", "7", "7:", ":42", "a:1", "1:b", "12"] {
            assert_eq!(FeedPosition::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn replacing_copy_withdraws_first() {
        let message = forum_protocol::Message {
            id: ChangeId::new(1, 64),
            subject: ChangeId::new(1, 1),
            author: "ana".into(),
            text: "hola".into(),
            time: 0,
            lamport: 11,
        };
        let change = Change { id: message.id, lamport: 11, time: 0, kind: ChangeKind::MessagePosted { message }, key: None };
        let at = FeedPosition { server: 2, position: 9 };

        let FeedItem::Change { event: Some(event), .. } = FeedItem::judged(at, change.clone(), Verdict::Replace(ChangeId::new(3, 7)))
        else {
            panic!("a replacing copy has an event")
        };
        let text = String::from_utf8(event.text().to_vec()).unwrap();
        let withdraw = text.find("event:withdraw\ndata:{\"id\":\"3-7\"}\nid:2:9\n").expect(&text);
        let post = text.find("event:post\n").expect(&text);
        assert!(withdraw < post, "{text}");

        let FeedItem::Change { event, .. } = FeedItem::judged(at, change, Verdict::Hide) else { panic!("a change item") };
        assert_eq!(event, None, "a losing copy has no event");
    }
}
