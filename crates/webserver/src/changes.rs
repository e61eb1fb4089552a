//! The change feed: the data server's changes, in its feed order, fanned out to event streams.
//!
//! Every data server numbers the changes it stores (its feed positions, see
//! `forum_protocol::WireFeedChange`). The feed task follows the data server that the data
//! client uses. A SUB socket on its `webserver` topic brings each change live, and a
//! `FeedSince` request fetches the positions that the SUB socket lost, because zeromq's PUB
//! drops messages for a slow subscriber without telling anyone. The task notices a loss when a change arrives with a position beyond the
//! next one, and once per [`POLL_INTERVAL`] it asks for anything newer, which catches a loss at
//! the end. So the broadcast carries every position of the feed, in order.
//!
//! When the data client moves to another data server, positions start over in that server's
//! feed, so the task broadcasts [`FeedItem::Resync`] and every stream tells its page to refetch.

use std::sync::Arc;
use std::time::Duration;

use forum_protocol::{decode, unseal, MacContext, Change, FeedBatch, Reply, Request, ServerId, WireFeedChange, TOPIC_WEBSERVER};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use zmtp_guard::{Limits, Subscriber};

use crate::data_client::{ActiveServer, DataClient};
use crate::duplicates::Verdict;
use crate::events::{render_change, EventText};

/// Items the broadcast channel keeps for streams that have not read them yet.
///
/// Policy: the channel never blocks the feed task. A stream that falls more than this many
/// items behind is closed (see `events.rs`), and its browser resumes from its last event id.
pub const CHANGE_CHANNEL_CAPACITY: usize = 1024;

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
        let mut socket = subscribe(pub_endpoint).await;
        let mut unauthenticated: u64 = 0;
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
                        socket = subscribe(pub_endpoint).await;
                    }
                    self.catch_up().await
                }
                Some(Ok(mut frames)) => {
                    match unseal(self.data.cluster_key(), MacContext::Publication, &mut frames, 2) {
                        Ok(()) => self.receive(frames.get(1).map(|frame| frame.as_ref())).await,
                        Err(error) => {
                            unauthenticated += 1;
                            if unauthenticated.is_power_of_two() {
                                tracing::warn!(%error, pub_endpoint, count = unauthenticated, "dropped changes from the data server that failed authentication; check that both use the same cluster key");
                            }
                            true
                        }
                    }
                }
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

    /// Handles one live message. Returns false when the data client moved to another server.
    async fn receive(&mut self, payload: Option<&[u8]>) -> bool {
        let wire = match payload.map(decode::<WireFeedChange>) {
            Some(Ok(wire)) => wire,
            Some(Err(error)) => {
                tracing::warn!(%error, "ignored an undecodable change from the data server");
                return true;
            }
            None => return true,
        };
        if wire.server != self.active.server {
            return true;
        }
        let head = self.head();
        if wire.position <= head {
            return true;
        }
        if wire.position == head + 1 {
            let at = FeedPosition { server: wire.server, position: wire.position };
            let verdict = Verdict::of(wire.note);
            self.feed.broadcast(FeedItem::judged(at, wire.change, verdict));
            return true;
        }
        tracing::debug!(expected = head + 1, received = wire.position, "the change feed lost changes; fetching them");
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

/// Connects a SUB socket to the `webserver` topic of `endpoint`, or returns `None` when that
/// fails; the caller tries again at the next poll tick.
async fn subscribe(endpoint: &str) -> Option<Subscriber> {
    let limits = Limits { greeting_timeout: CONNECT_TIMEOUT, ..Limits::default() };
    match Subscriber::connect(endpoint, &[TOPIC_WEBSERVER.as_bytes()], &limits, CONNECT_TIMEOUT).await {
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
    use forum_protocol::{ChangeId, ChangeKind};

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
