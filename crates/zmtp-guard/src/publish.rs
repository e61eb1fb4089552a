//! A PUB port served natively, without a zeromq socket behind it.
//!
//! [`Publisher`] serves SUB and XSUB clients on a [`ZmtpListener`], which checks every byte
//! they send against the [`Limits`] and runs the handshake. The publisher then reads their
//! subscriptions (ZMTP 3.0 messages and 3.1 SUBSCRIBE and CANCEL commands) and replies
//! to PING with PONG. A published message is encoded into ZMTP frames once, and each subscriber whose
//! subscriptions match its first frame gets a shared copy of those bytes.
//!
//! Each subscriber has a writer with a queue of [`QUEUE_MESSAGES`] messages, and it writes
//! everything that queued in one write. As with a zeromq PUB socket, a message for a
//! subscriber whose queue is full is dropped for that subscriber only, and counted. A
//! subscriber that reads none of our bytes for `stalled_read_timeout` while its TCP buffers
//! are full is cut, so it reconnects instead of missing messages for good.
//!
//! Compared with a zeromq PUB socket behind a [`Guard`](crate::Guard), a published message
//! crosses no loopback relay and no zeromq queue: one encoding, then one write per
//! subscriber and batch.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::checker::Phase;
use crate::codec::{self, Event, FrameReader};
use crate::limits::Limits;
use crate::log_limit::LogRateLimiter;
use crate::relay::Rejection;
use crate::server::{wait_until_stopping, Connection, ConnectionEnd, SocketSpec, ZmtpListener};
use crate::stats::GuardStats;

/// The messages that may wait for one subscriber; more are dropped for it.
pub const QUEUE_MESSAGES: usize = 10_000;

/// The most queued messages that one write takes.
const MAX_BATCH: usize = 256;

/// Our socket type and the socket types that may subscribe.
const PUB_SPEC: SocketSpec = SocketSpec { socket_type: "PUB", peer_types: &["SUB", "XSUB"] };

/// A native ZMTP PUB port. [`shutdown`](Self::shutdown) closes the subscribers and waits
/// for their tasks.
#[derive(Debug)]
pub struct Publisher {
    local_addr: SocketAddr,
    stats: GuardStats,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The subscribers, shared by the publisher and the connection tasks.
#[derive(Debug)]
struct Shared {
    next_id: AtomicU64,
    dropped: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    drop_log: LogRateLimiter,
}

/// A subscriber that has finished its handshake.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    peer: SocketAddr,
    /// Topic prefixes, one entry per subscription, so that a cancel removes one.
    prefixes: Vec<Bytes>,
    queue: mpsc::Sender<Bytes>,
}

impl Shared {
    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().expect("the subscriber list lock is never poisoned")
    }

    /// Adds or removes one subscription of subscriber `id`.
    fn update(&self, id: u64, prefix: Bytes, subscribe: bool) {
        let mut subscribers = self.subscribers();
        let Some(subscriber) = subscribers.iter_mut().find(|subscriber| subscriber.id == id) else { return };
        if subscribe {
            // `prefix` is a slice of the connection's read buffer and would keep all of
            // that buffer (16 KiB or more) alive, so the list keeps a copy of the prefix.
            subscriber.prefixes.push(Bytes::copy_from_slice(&prefix));
        } else if let Some(index) = subscriber.prefixes.iter().position(|existing| *existing == prefix) {
            subscriber.prefixes.swap_remove(index);
        }
    }
}

impl Publisher {
    /// Binds `public` (port 0 allowed) and starts accepting subscribers.
    ///
    /// Returns an `InvalidInput` error if `limits.max_connections` is too large for a
    /// semaphore, or the error of binding `public`.
    pub async fn start(public: SocketAddr, limits: Limits) -> io::Result<Publisher> {
        let listener = ZmtpListener::bind(public, limits).await?;
        let local_addr = listener.local_addr();
        let stats = listener.stats();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            drop_log: LogRateLimiter::new(10, Duration::from_secs(10)),
        });
        let (stop, stopping) = watch::channel(false);
        let served = Arc::clone(&shared);
        let task = listener.serve(PUB_SPEC, stopping, move |connection| serve(connection, Arc::clone(&served)));
        Ok(Publisher { local_addr, stats, shared, stop, task })
    }

    /// Returns the address that the publisher listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns a reader of the connection counters.
    pub fn stats(&self) -> GuardStats {
        self.stats.clone()
    }

    /// Returns the number of messages dropped for subscribers whose queue was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Returns the number of subscribers that finished their handshake and are connected.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers().len()
    }

    /// Queues a message of `frames` for every subscriber with a subscription that is a
    /// prefix of the first frame, and returns how many got it. It never waits, because it
    /// only tries to queue: a subscriber whose queue is full misses this message.
    pub fn publish(&self, frames: &[Bytes]) -> usize {
        let Some(topic) = frames.first() else { return 0 };
        let mut encoded = None;
        let mut queued = 0;
        for subscriber in self.shared.subscribers().iter() {
            if !subscriber.prefixes.iter().any(|prefix| topic.starts_with(prefix)) {
                continue;
            }
            let message = encoded.get_or_insert_with(|| encode(frames)).clone();
            match subscriber.queue.try_send(message) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.shared.drop_log.admit() {
                        warn!(peer = %subscriber.peer, queue = QUEUE_MESSAGES, suppressed, "dropped a message for a subscriber whose queue is full");
                    }
                }
                // The subscriber is leaving; its task removes it from the list.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Stops accepting, closes every subscriber and waits for their tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let dropped = self.dropped_messages();
        if let Err(join_error) = self.task.await {
            error!(public = %self.local_addr, %join_error, "ZMTP publisher failed");
        }
        info!(public = %self.local_addr, dropped, "ZMTP publisher stopped");
    }
}

/// Encodes the frames of one message.
fn encode(frames: &[Bytes]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(frames.iter().map(|frame| frame.len() + 9).sum());
    for (index, frame) in frames.iter().enumerate() {
        codec::write_frame(&mut bytes, frame, index + 1 < frames.len());
    }
    bytes.freeze()
}

/// Serves one subscriber after its handshake: registers it, then reads its subscriptions
/// and writes its queue until it leaves, breaks a limit or the port stops.
async fn serve(connection: Connection, shared: Arc<Shared>) -> ConnectionEnd {
    let Connection { stream, peer, reader, limits, mut stopping, .. } = connection;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (queue, queued) = mpsc::channel(QUEUE_MESSAGES);
    shared.subscribers().push(Subscriber { id, peer, prefixes: Vec::new(), queue: queue.clone() });
    let (read, write) = stream.into_split();
    let end = tokio::select! {
        () = wait_until_stopping(&mut stopping) => ConnectionEnd::Closed(None),
        end = read_subscriptions(read, reader, id, &shared, queue, limits.stalled_frame_timeout) => end,
        end = write_queued(write, queued, limits.stalled_read_timeout) => end,
    };
    shared.subscribers().retain(|subscriber| subscriber.id != id);
    end
}

/// Reads the subscriber's subscriptions and commands until it closes or breaks a limit.
async fn read_subscriptions(
    mut read: OwnedReadHalf,
    mut reader: FrameReader,
    id: u64,
    shared: &Shared,
    queue: mpsc::Sender<Bytes>,
    stalled_frame_timeout: Duration,
) -> ConnectionEnd {
    loop {
        loop {
            let event = match reader.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(error) => return ConnectionEnd::Cut(error.into()),
            };
            match event {
                Event::Command(command) => match &command.name[..] {
                    b"SUBSCRIBE" => shared.update(id, command.data, true),
                    b"CANCEL" => shared.update(id, command.data, false),
                    b"PING" => {
                        let mut pong = BytesMut::new();
                        codec::write_pong(&mut pong, &command.data);
                        // A full queue means the subscriber does not read; the writer cuts it.
                        let _ = queue.try_send(pong.freeze());
                    }
                    _ => {}
                },
                // ZMTP 3.0 subscriptions: a one-frame message of 1 (subscribe) or 0
                // (cancel), then the topic prefix. Other messages mean nothing to a PUB.
                Event::Message(frames) => {
                    if let [frame] = &frames[..] {
                        match frame.first() {
                            Some(1) => shared.update(id, frame.slice(1..), true),
                            Some(0) => shared.update(id, frame.slice(1..), false),
                            _ => {}
                        }
                    }
                }
                Event::Greeting { .. } => {}
            }
        }
        let inside_message = reader.phase() == Phase::InsideMessage;
        let read_once = reader.read_from(&mut read);
        let result = if inside_message {
            match tokio::time::timeout_at(Instant::now() + stalled_frame_timeout, read_once).await {
                Ok(result) => result,
                Err(_elapsed) => return ConnectionEnd::Cut(Rejection::FrameStalled(stalled_frame_timeout)),
            }
        } else {
            read_once.await
        };
        match result {
            Ok(0) => return ConnectionEnd::Closed(None),
            Ok(_) => {}
            Err(error) => return error.into(),
        }
    }
}

/// Writes queued messages, several per write, until the queue closes or the subscriber
/// stops reading for `stalled_read_timeout`.
async fn write_queued(mut write: OwnedWriteHalf, mut queued: mpsc::Receiver<Bytes>, stalled_read_timeout: Duration) -> ConnectionEnd {
    let mut batch = BytesMut::new();
    while let Some(first) = queued.recv().await {
        let mut pending = first;
        let mut count = 1;
        while count < MAX_BATCH {
            let Ok(next) = queued.try_recv() else { break };
            if batch.is_empty() {
                batch.extend_from_slice(&pending);
            }
            batch.extend_from_slice(&next);
            count += 1;
        }
        if !batch.is_empty() {
            pending = batch.split().freeze();
        }
        let mut unwritten = &pending[..];
        while !unwritten.is_empty() {
            // The deadline restarts whenever the subscriber takes some bytes.
            match tokio::time::timeout(stalled_read_timeout, write.write(unwritten)).await {
                Ok(Ok(0)) => return ConnectionEnd::Closed(Some(io::ErrorKind::WriteZero.into())),
                Ok(Ok(written)) => unwritten = &unwritten[written..],
                Ok(Err(error)) => return ConnectionEnd::Closed(Some(error)),
                Err(_elapsed) => return ConnectionEnd::Cut(Rejection::ReadStalled(stalled_read_timeout)),
            }
        }
    }
    ConnectionEnd::Closed(None)
}
