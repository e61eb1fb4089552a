//! The client side of the data server's request socket.
//!
//! One DEALER socket carries every request of this web server, and many HTTP requests can be
//! in flight at once. Each [`WireRequest`] gets a fresh id, and a pending entry maps that id
//! to a oneshot sender. A writer task sends the frames, and a reader task completes the
//! entries as replies arrive. Frames are `[empty delimiter, WireRequest]` each way, so the data server's
//! ROUTER sees the same shape as from a REQ socket.
//!
//! zeromq 0.7's DEALER never reconnects by itself, so a supervisor task sends a `Ping` every
//! second and, after [`MAX_MISSED_HEARTBEATS`] consecutive failures, drops the socket, fails the
//! pending requests and connects a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{decode, encode, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeromq::{DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// How often the supervisor pings the data server.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failed pings after which the DEALER is rebuilt.
pub const MAX_MISSED_HEARTBEATS: u32 = 3;
/// Requests waiting for the writer task. When it is full, new requests fail at once with
/// [`DataError::QueueFull`] (HTTP 503) instead of waiting.
const OUTGOING_QUEUE_CAPACITY: usize = 1024;
/// Pause between failed connection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

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

/// A cheap-to-clone handle for sending requests to the data server.
#[derive(Clone)]
pub struct DataClient {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    outgoing: mpsc::Sender<Outgoing>,
    request_timeout: Duration,
    link: AtomicU8,
    /// The number of connections made so far; it grows by one with each new socket.
    connections: watch::Sender<u64>,
}

struct Outgoing {
    id: u64,
    payload: Bytes,
}

/// The state of the link, stored in [`Shared::link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Link {
    /// No connection yet since start: requests queue and wait up to their timeout.
    Connecting = 0,
    Connected = 1,
    /// The connection was lost and is being rebuilt: requests fail at once.
    Lost = 2,
}

impl DataClient {
    /// Starts the supervisor task, which connects to `endpoint` in the background. Requests
    /// made before the first connection wait for it, up to `request_timeout`.
    pub fn start(
        endpoint: String,
        request_timeout: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> DataClient {
        let (outgoing, outgoing_receiver) = mpsc::channel(OUTGOING_QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            outgoing,
            request_timeout,
            link: AtomicU8::new(Link::Connecting as u8),
            connections: watch::Sender::new(0),
        });
        let client = DataClient { shared };
        tracker.spawn(supervise(client.clone(), endpoint, outgoing_receiver, shutdown, tracker.clone()));
        client
    }

    /// Sends a request and waits for its reply, up to the configured request timeout.
    /// An error reply from the data server is an `Ok(Reply::Error(..))`.
    pub async fn request(&self, request: Request) -> Result<Reply, DataError> {
        self.request_within(request, self.shared.request_timeout).await
    }

    async fn request_within(&self, request: Request, timeout: Duration) -> Result<Reply, DataError> {
        if self.link() == Link::Lost {
            return Err(DataError::Unavailable);
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let payload = Bytes::from(encode(&WireRequest { v: PROTOCOL_VERSION, id, request }));
        let (sender, receiver) = oneshot::channel();
        self.shared.pending.lock().expect("pending map lock").insert(id, sender);
        // Removes the entry however this function ends, including when the HTTP request that
        // awaits it is dropped.
        let _entry = PendingEntry { shared: &self.shared, id };

        match self.shared.outgoing.try_send(Outgoing { id, payload }) {
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

    /// Returns a receiver of the number of connections made so far, which changes each time
    /// a new socket connects, for state that must be sent again to a restarted data server.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.shared.connections.subscribe()
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

    /// Fails every pending request with [`DataError::Unavailable`] by dropping its sender.
    fn fail_pending(&self) -> usize {
        let drained: Vec<_> = self.shared.pending.lock().expect("pending map lock").drain().collect();
        drained.len()
    }

    fn is_pending(&self, id: u64) -> bool {
        self.shared.pending.lock().expect("pending map lock").contains_key(&id)
    }

    fn complete(&self, reply: WireReply) {
        let sender = self.shared.pending.lock().expect("pending map lock").remove(&reply.id);
        match sender {
            Some(sender) => {
                // The receiver is gone only if the caller stopped waiting just now.
                let _ = sender.send(reply.reply);
            }
            None if reply.id == 0 => {
                tracing::warn!(reply = ?reply.reply, "data server could not decode one of our requests");
            }
            None => tracing::debug!(id = reply.id, "reply arrived after its request timed out"),
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

/// Connects, watches the connection with heartbeats and rebuilds it, until `shutdown`.
async fn supervise(
    client: DataClient,
    endpoint: String,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let ping_timeout = client.shared.request_timeout.min(HEARTBEAT_INTERVAL);
    let mut logged_unreachable = false;
    loop {
        tracing::info!(%endpoint, "connecting to the data server");
        let mut socket = DealerSocket::new();
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = socket.connect(&endpoint) => result,
        };
        if let Err(error) = connected {
            if !logged_unreachable {
                tracing::warn!(%endpoint, %error, "failed to connect to the data server; retrying until it is up");
                logged_unreachable = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
            }
        }
        logged_unreachable = false;
        client.set_link(Link::Connected);
        client.shared.connections.send_modify(|count| *count += 1);
        tracing::info!(%endpoint, "connected to the data server");

        let (send_half, receive_half) = socket.split();
        let connection = shutdown.child_token();
        let reader = tracker.spawn(read_replies(client.clone(), receive_half, connection.clone()));
        let writer = tracker.spawn(write_requests(client.clone(), send_half, outgoing, connection.clone()));

        let mut missed = 0;
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while missed < MAX_MISSED_HEARTBEATS {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {}
            }
            let pong = tokio::select! {
                _ = shutdown.cancelled() => break,
                pong = client.request_within(Request::Ping, ping_timeout) => pong,
            };
            match pong {
                Ok(Reply::Pong { .. }) => missed = 0,
                Ok(other) => {
                    tracing::warn!(reply = ?other, "data server answered a ping with something else");
                    missed = 0;
                }
                Err(error) => {
                    missed += 1;
                    tracing::debug!(%error, missed, "heartbeat failed");
                }
            }
        }

        connection.cancel();
        outgoing = writer.await.expect("the writer task does not panic");
        let _ = reader.await;
        let failed = client.fail_pending();
        if shutdown.is_cancelled() {
            return;
        }
        client.set_link(Link::Lost);
        tracing::warn!(
            %endpoint,
            failed_requests = failed,
            "data server missed {MAX_MISSED_HEARTBEATS} heartbeats; reconnecting with a new socket"
        );
    }
}

/// Sends queued requests until `stop`, then hands the queue back for the next socket.
async fn write_requests(
    client: DataClient,
    mut socket: DealerSendHalf,
    mut outgoing: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) -> mpsc::Receiver<Outgoing> {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = outgoing.recv() => next,
        };
        let Some(Outgoing { id, payload }) = next else { break };
        // A request whose caller already timed out must not be executed later.
        if !client.is_pending(id) {
            continue;
        }
        let mut message = ZmqMessage::from(payload);
        message.push_front(Bytes::new());
        let sent = tokio::select! {
            _ = stop.cancelled() => break,
            sent = socket.send(message) => sent,
        };
        if let Err(error) = sent {
            tracing::warn!(id, %error, "failed to send a request to the data server");
            client.shared.pending.lock().expect("pending map lock").remove(&id);
        }
    }
    outgoing
}

/// Completes pending requests with the replies that arrive, until `stop` or a socket error.
async fn read_replies(client: DataClient, mut socket: DealerRecvHalf, stop: CancellationToken) {
    let mut undecodable: u64 = 0;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                // The heartbeat notices the lost peer and rebuilds the socket.
                tracing::warn!(%error, "failed to receive from the data server");
                return;
            }
        };
        let frames = message.into_vec();
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
