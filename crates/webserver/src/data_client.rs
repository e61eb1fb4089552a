//! The client side of the data servers' request sockets, with failover.
//!
//! One DEALER socket at a time carries every request of this web server, and many HTTP
//! requests can be in flight at once. Each [`WireRequest`] gets a fresh id and carries this
//! web server run's random client id, so the pair is the idempotency key of a write. A pending
//! entry maps the id to a oneshot sender and keeps the encoded request. A writer task sends
//! the frames, and a reader task completes the entries as replies arrive. Frames are
//! `[empty delimiter, WireRequest]` each way, so the data server's ROUTER sees the same shape
//! as from a REQ socket.
//!
//! The DEALER socket is `zmtp_guard`'s, which checks every reply against [`reply_limits`]
//! and never reconnects by itself, so a supervisor task pings the data server every
//! [`HEARTBEAT_INTERVAL`]. It drops the socket after [`MAX_MISSED_HEARTBEATS`] consecutive
//! failed pings, or when the socket fails or cuts a data server that broke a limit. Then it
//! connects to the next data server of the list (or the same one when there is only one).
//! Once every data server of the list has failed in a row, it waits [`RECONNECT_DELAY`] before
//! each attempt, doubling with each round up to [`MAX_RECONNECT_DELAY`]. A connection that
//! drops within [`STABLE_AFTER`] of its first ping counts as a failure too. The requests still pending are sent again, with the same id, on the new
//! socket: a data server that already stored a write with that key replies with the original
//! result instead of storing it twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{decode, seal, unseal, ClusterKey, MacContext, encode, Reply, Request, ServerId, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zmtp_guard::{Dealer, DealerReceiver, DealerSender, Limits};

/// How often the supervisor pings the data server.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a ping may take before it counts as missed.
pub const PING_TIMEOUT: Duration = Duration::from_millis(750);
/// Consecutive missed pings after which the client moves to the next data server. With the
/// interval and the ping timeout above, the client leaves a silent data server at most
/// about 2 s after its last reply.
pub const MAX_MISSED_HEARTBEATS: u32 = 2;
/// How long the TCP connection may take, and then the ZMTP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest reply accepted from a data server, in bytes.
///
/// The history routes ask for pages of at most [`forum_protocol::MAX_PAGE_LIMIT`] messages,
/// about 4 MiB at the maximum text size, so their replies stay far below it. A larger reply
/// gets the connection cut, and the request is sent again on each new connection until its
/// timeout expires.
///
/// NOTE: a data server older than paging replies to a history request with the whole history,
/// which exceeds this size for a subject of about 200,000 posts of 140 bytes (an encoded
/// message takes about 300 bytes).
pub const MAX_REPLY_BYTES: u64 = forum_protocol::MAX_REPLY_BYTES as u64;
/// Requests waiting for the writer task. When it is full, new requests fail at once with
/// [`DataError::QueueFull`] (HTTP 503) instead of waiting.
const OUTGOING_QUEUE_CAPACITY: usize = 1024;
/// Pause before each connection attempt once every data server of the list failed in a row.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// The maximum pause between rounds of failed connections: [`RECONNECT_DELAY`] doubles with
/// each round up to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// How long a connection must stay up after its first ping before it counts as a success
/// and clears the count of failures in a row. A data server that replies to the first ping
/// and then drops each connection still makes the supervisor pause.
const STABLE_AFTER: Duration = Duration::from_secs(2);

/// The failure of a request that got no reply from the data server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("the data server did not reply within the request timeout")]
    Timeout,
    #[error("the connection to the data server is down or was rebuilt")]
    Unavailable,
    #[error("too many requests are waiting to be sent to the data server")]
    QueueFull,
}

/// The data server that the client is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveServer {
    /// Its place in the configured list of data servers.
    pub index: usize,
    /// Its id, from its reply to the first ping.
    pub server: ServerId,
    /// The number of connections made so far, this one included.
    pub connection: u64,
}

/// A cheap-to-clone handle for sending requests to the data server.
#[derive(Clone)]
pub struct DataClient {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// This run's random id, sent with every request.
    client: u64,
    outgoing: mpsc::Sender<u64>,
    request_timeout: Duration,
    link: AtomicU8,
    /// The data server in use, or `None` while connecting.
    active: watch::Sender<Option<ActiveServer>>,
    /// The key that signs requests and checks replies and publications, if any.
    cluster_key: Option<ClusterKey>,
}

/// A request waiting for its reply.
struct Pending {
    reply: oneshot::Sender<Reply>,
    /// The encoded [`WireRequest`], kept to send it again on a new connection.
    payload: Bytes,
    /// The connection it was last sent on, or `None` while it waits in the queue.
    sent_on: Option<u64>,
}

/// The state of the link, stored in [`Shared::link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Link {
    /// Connecting, at start or after a lost connection: requests queue and wait up to their
    /// timeout.
    Connecting = 0,
    Connected = 1,
    /// Every data server of the list failed in a row: requests fail at once until one
    /// connects.
    Lost = 2,
}

impl DataClient {
    /// Starts the supervisor task, which connects to the first of `endpoints` (request, ROUTER,
    /// endpoints) in the background. Requests made before the first connection wait for it, up
    /// to `request_timeout`.
    pub fn start(
        endpoints: Vec<String>,
        request_timeout: Duration,
        cluster_key: Option<ClusterKey>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> DataClient {
        assert!(!endpoints.is_empty(), "the data client needs at least one data server endpoint");
        let (outgoing, outgoing_receiver) = mpsc::channel(OUTGOING_QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            client: rand::random(),
            outgoing,
            request_timeout,
            link: AtomicU8::new(Link::Connecting as u8),
            active: watch::Sender::new(None),
            cluster_key,
        });
        let client = DataClient { shared };
        tracker.spawn(supervise(client.clone(), endpoints, outgoing_receiver, shutdown, tracker.clone()));
        client
    }

    /// Returns the cluster key that authenticates messages from the data servers, if any.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.shared.cluster_key.as_ref()
    }

    /// Sends a request and waits for its reply, up to the configured request timeout, across
    /// a move to another data server. An error reply from the data server is an
    /// `Ok(Reply::Error(..))`.
    pub async fn request(&self, request: Request) -> Result<Reply, DataError> {
        if self.link() == Link::Lost {
            return Err(DataError::Unavailable);
        }
        self.request_within(request, self.shared.request_timeout).await
    }

    async fn request_within(&self, request: Request, timeout: Duration) -> Result<Reply, DataError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Posts and private messages request brief replies, because their handler keeps the
        // rest of the message.
        let brief = matches!(request, Request::PostMessage { .. } | Request::SendPrivate { .. });
        let wire = WireRequest { v: PROTOCOL_VERSION, id, request, client: Some(self.shared.client), brief };
        let payload = Bytes::from(encode(&wire));
        let (sender, receiver) = oneshot::channel();
        let pending = Pending { reply: sender, payload, sent_on: None };
        self.shared.pending.lock().expect("pending map lock").insert(id, pending);
        // Removes the entry however this function ends, including when the HTTP request that
        // awaits it is dropped.
        let _entry = PendingEntry { shared: &self.shared, id };

        match self.shared.outgoing.try_send(id) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(DataError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(DataError::Unavailable),
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_dropped)) => Err(DataError::Unavailable),
            Err(_elapsed) => Err(DataError::Timeout),
        }
    }

    /// Returns a receiver of the data server in use, which changes on each new connection
    /// and is `None` while connecting.
    pub fn active(&self) -> watch::Receiver<Option<ActiveServer>> {
        self.shared.active.subscribe()
    }

    fn link(&self) -> Link {
        match self.shared.link.load(Ordering::Acquire) {
            0 => Link::Connecting,
            1 => Link::Connected,
            _ => Link::Lost,
        }
    }

    fn set_link(&self, link: Link) {
        self.shared.link.store(link as u8, Ordering::Release);
    }

    /// Returns the payload of a pending request to send on `connection` and marks it sent
    /// there, or `None` when it is no longer pending or was already sent on that connection.
    fn take_for_sending(&self, id: u64, connection: u64) -> Option<Bytes> {
        let mut pending = self.shared.pending.lock().expect("pending map lock");
        let entry = pending.get_mut(&id)?;
        if entry.sent_on == Some(connection) {
            return None;
        }
        entry.sent_on = Some(connection);
        Some(entry.payload.clone())
    }

    /// Returns the ids of the requests sent on an earlier connection and still without a reply,
/// oldest first.
    fn unanswered_before(&self, connection: u64) -> Vec<u64> {
        let pending = self.shared.pending.lock().expect("pending map lock");
        let mut ids: Vec<u64> =
            pending.iter().filter(|(_, entry)| entry.sent_on.is_some_and(|sent| sent < connection)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    fn complete(&self, reply: WireReply) {
        let entry = self.shared.pending.lock().expect("pending map lock").remove(&reply.id);
        match entry {
            Some(entry) => {
                // The receiver is gone only if the caller stopped waiting just now.
                let _ = entry.reply.send(reply.reply);
            }
            None if reply.id == 0 => {
                tracing::warn!(reply = ?reply.reply, "data server could not decode one of our requests");
            }
            None => tracing::debug!(id = reply.id, "ignored a reply to a request that timed out or already got a reply"),
        }
    }
}

struct PendingEntry<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("pending map lock").remove(&self.id);
    }
}

/// Returns the limits on what a data server sends to the data client: replies of up to
/// [`MAX_REPLY_BYTES`], and a handshake within [`CONNECT_TIMEOUT`].
pub fn reply_limits() -> Limits {
    Limits { max_frame_bytes: MAX_REPLY_BYTES, max_message_bytes: MAX_REPLY_BYTES, greeting_timeout: CONNECT_TIMEOUT, ..Limits::default() }
}

/// Opens a DEALER socket to `endpoint` and runs the handshake, each within [`CONNECT_TIMEOUT`].
async fn connect(endpoint: &str) -> Result<Dealer, String> {
    Dealer::connect(endpoint, &reply_limits(), CONNECT_TIMEOUT).await.map_err(|error| error.to_string())
}

/// Connects, watches the connection with heartbeats and moves to the next data server when the
/// current one stops replying, until `shutdown`.
async fn supervise(
    client: DataClient,
    endpoints: Vec<String>,
    mut outgoing: mpsc::Receiver<u64>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut index = 0;
    let mut failures_in_a_row = 0;
    let mut connections: u64 = 0;
    let mut logged_unreachable = vec![false; endpoints.len()];
    loop {
        let endpoint = &endpoints[index];
        tracing::info!(%endpoint, "connecting to the data server");
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = connect(endpoint) => result,
        };
        let socket = match connected {
            Ok(socket) => socket,
            Err(error) => {
                if !logged_unreachable[index] {
                    tracing::warn!(%endpoint, %error, "failed to connect to the data server; retrying until it is up");
                    logged_unreachable[index] = true;
                }
                failures_in_a_row += 1;
                if failures_in_a_row >= endpoints.len() {
                    client.set_link(Link::Lost);
                }
                index = (index + 1) % endpoints.len();
                if !pause_after_failures(failures_in_a_row, endpoints.len(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        connections += 1;
        let connection = connections;

        let (send_half, receive_half) = socket.split();
        let stop = shutdown.child_token();
        let reader = tracker.spawn(read_replies(client.clone(), receive_half, stop.clone()));
        let writer = tracker.spawn(write_requests(client.clone(), send_half, outgoing, connection, stop.clone()));

        // The reply to the first ping carries the data server's id. The connection counts only
        // once that reply arrived.
        let first_pong = tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = stop.cancelled() => None,
            pong = client.request_within(Request::Ping, PING_TIMEOUT) => match pong {
                Ok(Reply::Pong { server }) => Some(server),
                _ => None,
            },
        };
        if let Some(server) = first_pong {
            logged_unreachable[index] = false;
            client.set_link(Link::Connected);
            client.shared.active.send_replace(Some(ActiveServer { index, server, connection }));
            tracing::info!(%endpoint, server, "connected to the data server");
            let connected_at = tokio::time::Instant::now();
            watch_heartbeats(&client, &shutdown, &stop).await;
            if connected_at.elapsed() >= STABLE_AFTER {
                failures_in_a_row = 0;
            }
        }

        stop.cancel();
        outgoing = writer.await.expect("the writer task does not panic");
        let _ = reader.await;
        client.shared.active.send_replace(None);
        if shutdown.is_cancelled() {
            return;
        }
        failures_in_a_row += 1;
        client.set_link(if failures_in_a_row >= endpoints.len() { Link::Lost } else { Link::Connecting });
        let pending = client.shared.pending.lock().expect("pending map lock").len();
        let next = (index + 1) % endpoints.len();
        if first_pong.is_some() {
            tracing::warn!(
                left = %endpoint,
                next = %endpoints[next],
                pending_requests = pending,
                "data server stopped replying; moving to the next data server and sending the pending requests again"
            );
        } else if !logged_unreachable[index] {
            // Logged once until the data server replies, so a server that fails every
            // connection does not fill the log.
            tracing::warn!(%endpoint, next = %endpoints[next], "the data server did not reply to the first ping; retrying until it does");
            logged_unreachable[index] = true;
        }
        index = next;
        if !pause_after_failures(failures_in_a_row, endpoints.len(), &shutdown).await {
            return;
        }
    }
}

/// Waits once every data server of the list has failed in a row, so a data server that fails
/// every connection at once cannot make the supervisor spin. The pause is
/// [`RECONNECT_DELAY`] after the first round of failures and doubles with each further
/// round, up to [`MAX_RECONNECT_DELAY`]. Returns false on `shutdown`.
async fn pause_after_failures(failures_in_a_row: usize, endpoints: usize, shutdown: &CancellationToken) -> bool {
    if failures_in_a_row < endpoints {
        return true;
    }
    let rounds = (failures_in_a_row / endpoints - 1).min(8) as u32;
    let pause = (RECONNECT_DELAY * 2u32.pow(rounds)).min(MAX_RECONNECT_DELAY);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

/// Pings until [`MAX_MISSED_HEARTBEATS`] pings in a row fail, the reader stops or `shutdown`.
async fn watch_heartbeats(client: &DataClient, shutdown: &CancellationToken, connection: &CancellationToken) {
    let mut missed = 0;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while missed < MAX_MISSED_HEARTBEATS {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = connection.cancelled() => return,
            _ = heartbeat.tick() => {}
        }
        let pong = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = connection.cancelled() => return,
            pong = client.request_within(Request::Ping, PING_TIMEOUT) => pong,
        };
        match pong {
            Ok(Reply::Pong { .. }) => missed = 0,
            Ok(other) => {
                tracing::warn!(reply = ?other, "data server replied to a ping with an unexpected reply");
                missed = 0;
            }
            Err(error) => {
                missed += 1;
                tracing::debug!(%error, missed, "heartbeat failed");
            }
        }
    }
}

/// Sends the requests left unanswered by earlier connections, then the queued ones, until
/// `stop`; then hands the queue back for the next socket.
async fn write_requests(
    client: DataClient,
    mut socket: DealerSender,
    mut outgoing: mpsc::Receiver<u64>,
    connection: u64,
    stop: CancellationToken,
) -> mpsc::Receiver<u64> {
    let retries = client.unanswered_before(connection);
    if !retries.is_empty() {
        tracing::info!(requests = retries.len(), connection, "sending unanswered requests again on the new connection");
    }
    let mut retries = retries.into_iter();
    loop {
        let id = match retries.next() {
            Some(id) => id,
            None => {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = outgoing.recv() => next,
                };
                let Some(id) = next else { break };
                id
            }
        };
        // A request whose caller already stopped waiting must not be executed later.
        let Some(payload) = client.take_for_sending(id, connection) else { continue };
        let mut frames = vec![Bytes::new(), payload];
        seal(client.shared.cluster_key.as_ref(), MacContext::Request, &mut frames, 1);
        let sent = tokio::select! {
            _ = stop.cancelled() => break,
            sent = socket.send(&frames) => sent,
        };
        if let Err(error) = sent {
            // The request stays pending and is sent again on the next connection. A failed
            // send may leave part of a message on the socket, so the connection ends.
            tracing::warn!(id, %error, "failed to send a request to the data server; moving on");
            stop.cancel();
            break;
        }
    }
    outgoing
}

/// Completes pending requests with the replies that arrive, until `stop` or a socket error,
/// which also ends the connection.
async fn read_replies(client: DataClient, mut socket: DealerReceiver, stop: CancellationToken) {
    let mut undecodable: u64 = 0;
    let mut unauthenticated: u64 = 0;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv() => received,
        };
        let mut frames = match received {
            Ok(frames) => frames,
            Err(error) => {
                // The socket has already logged a cut, rate-limited.
                if !error.is_cut() {
                    tracing::warn!(%error, "failed to receive from the data server; moving on");
                }
                stop.cancel();
                return;
            }
        };
        if let Err(error) = unseal(client.shared.cluster_key.as_ref(), MacContext::Reply, &mut frames, 1) {
            unauthenticated += 1;
            if unauthenticated.is_power_of_two() {
                tracing::warn!(%error, count = unauthenticated, "dropped replies from the data server that failed authentication; check that both use the same cluster key");
            }
            continue;
        }
        let Some(payload) = frames.iter().rev().find(|frame| !frame.is_empty()) else {
            continue;
        };
        match decode::<WireReply>(payload) {
            Ok(reply) => client.complete(reply),
            Err(error) => {
                undecodable += 1;
                if undecodable.is_power_of_two() {
                    tracing::warn!(%error, count = undecodable, "ignored undecodable replies from the data server");
                }
            }
        }
    }
}
