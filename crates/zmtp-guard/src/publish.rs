//! A PUB port served natively, without a zeromq socket behind it.
//!
//! [`Publisher`] accepts SUB and XSUB clients itself. It checks every byte that
//! a client sends with a [`ZmtpChecker`] against the [`Limits`], as a [`Guard`]
//! does, and it answers the ZMTP handshake, the subscriptions and PING itself.
//! A published message is encoded into ZMTP frames once, and each subscriber
//! whose subscriptions match its first frame gets a shared copy of those bytes.
//!
//! Each subscriber has a writer task with a queue of [`QUEUE_MESSAGES`]
//! messages. As with a zeromq PUB socket, a message for a subscriber whose
//! queue is full is dropped for that subscriber only, and counted. A subscriber
//! that reads none of our bytes for `stalled_read_timeout` while its TCP buffers
//! are full is cut, so it reconnects instead of missing messages for good.
//!
//! Compared with a zeromq PUB socket behind a [`Guard`], a published message
//! crosses no loopback relay and no zeromq queue: one encoding, then one write
//! per subscriber and batch.
//!
//! [`Guard`]: crate::Guard

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, error, info, warn};

use crate::checker::{Phase, Violation, ZmtpChecker};
use crate::guard::{GuardStats, LOG_LINES_PER_WINDOW, LOG_WINDOW, ACCEPT_ERROR_PAUSE};
use crate::limits::Limits;
use crate::log_limit::LogRateLimiter;
use crate::wire::{self, Frame, FrameReader};

/// The messages that may wait for one subscriber; more are dropped for it.
pub const QUEUE_MESSAGES: usize = 10_000;

/// The most queued messages that one write takes.
const MAX_BATCH: usize = 256;

/// The size of each read from a subscriber, which sends little after its subscriptions.
const READ_CHUNK: usize = 1024;

/// A native ZMTP PUB port. Dropping it stops the accept loop and closes the
/// subscribers in the background; [`shutdown`](Self::shutdown) waits for them.
#[derive(Debug)]
pub struct Publisher {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    accept_task: JoinHandle<()>,
}

/// State shared by the accept loop, the subscriber tasks and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    limits: Limits,
    /// One permit per open subscriber connection, `limits.max_connections` in all.
    permits: Arc<Semaphore>,
    rejected: AtomicU64,
    dropped: AtomicU64,
    next_id: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    rejection_log: LogRateLimiter,
    over_capacity_log: LogRateLimiter,
    failure_log: LogRateLimiter,
    drop_log: LogRateLimiter,
}

impl Shared {
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn active(&self) -> usize {
        self.limits.max_connections - self.permits.available_permits()
    }
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

/// Why a subscriber connection ended.
#[derive(Debug)]
enum End {
    Closed(Option<io::Error>),
    Rejected(Rejection),
}

#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("{0}")]
    Violation(#[from] Violation),
    #[error("greeting and READY command not complete within greeting_timeout ({0:?})")]
    HandshakeTimedOut(Duration),
    #[error("no byte for stalled_frame_timeout ({0:?}) inside an unfinished frame or message")]
    FrameStalled(Duration),
    #[error("read nothing of the published bytes for stalled_read_timeout ({0:?}) while its buffer was full")]
    ReadStalled(Duration),
    #[error("socket type {0:?} cannot subscribe to a PUB socket; expected SUB or XSUB")]
    SocketType(String),
}

impl Publisher {
    /// Binds `public` (port 0 allowed) and starts accepting subscribers.
    ///
    /// Returns an `InvalidInput` error if `limits.max_connections` exceeds
    /// [`Semaphore::MAX_PERMITS`], or the error of binding `public`.
    pub async fn start(public: SocketAddr, limits: Limits) -> io::Result<Publisher> {
        if limits.max_connections > Semaphore::MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max_connections {} exceeds the maximum of {}", limits.max_connections, Semaphore::MAX_PERMITS),
            ));
        }
        let listener = TcpListener::bind(public).await?;
        let local_addr = listener.local_addr()?;
        info!(public = %local_addr, ?limits, "ZMTP publisher started");
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            rejection_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            over_capacity_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            failure_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            drop_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
        });
        let (stop, stopped) = oneshot::channel();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(Publisher { local_addr, shared, stop, accept_task })
    }

    /// Returns the address that the publisher listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns a reader of the connection counters, as a [`Guard`](crate::Guard) gives.
    pub fn stats(&self) -> GuardStats {
        GuardStats::of_publisher(self.local_addr, Arc::clone(&self.shared))
    }

    /// Returns the number of messages dropped for subscribers whose queue was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Returns the number of subscribers that finished their handshake and are connected.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.lock().expect("subscriber list lock").len()
    }

    /// Queues a message of `frames` for every subscriber with a subscription that
    /// is a prefix of the first frame, and returns how many got it. It never waits:
    /// a subscriber whose queue is full misses this message.
    pub fn publish(&self, frames: &[Bytes]) -> usize {
        let Some(topic) = frames.first() else { return 0 };
        let mut encoded = None;
        let mut queued = 0;
        let subscribers = self.shared.subscribers.lock().expect("subscriber list lock");
        for subscriber in subscribers.iter() {
            if !subscriber.prefixes.iter().any(|prefix| topic.starts_with(prefix)) {
                continue;
            }
            let message = encoded.get_or_insert_with(|| wire::encode_message(frames)).clone();
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
        // A failed send means the accept loop has already ended.
        let _ = self.stop.send(());
        if let Err(join_error) = self.accept_task.await {
            error!(public = %self.local_addr, %join_error, "ZMTP publisher accept loop failed");
        }
        info!(public = %self.local_addr, "ZMTP publisher stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(join_error) = joined {
                    error!(%join_error, "ZMTP publisher subscriber task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
                        drop(stream);
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = shared.over_capacity_log.admit() {
                            warn!(%peer, max_connections = shared.limits.max_connections, suppressed, "ZMTP publisher closed a connection because max_connections are open");
                        }
                        continue;
                    };
                    connections.spawn(serve(stream, peer, Arc::clone(&shared), permit));
                }
                Err(accept_error) => {
                    if let Some(suppressed) = shared.failure_log.admit() {
                        warn!(%accept_error, suppressed, "ZMTP publisher failed to accept a connection, retrying");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Serves one subscriber until it leaves or breaks a limit. The permit is released when
/// this returns.
async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    // Publications are small and latency-sensitive, as with zeromq sockets.
    if let Err(nodelay_error) = stream.set_nodelay(true) {
        debug!(%peer, %nodelay_error, "ZMTP publisher could not set TCP_NODELAY");
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (read, write) = stream.into_split();
    let (queue, queued) = mpsc::channel(QUEUE_MESSAGES);
    // The greeting and READY go first, before any publication can be queued.
    queue.try_send(wire::handshake(wire::SocketType::Pub)).expect("an empty queue has room");
    let end = tokio::select! {
        end = read_subscriptions(read, peer, id, &shared, queue) => end,
        end = write_queued(write, queued, shared.limits.stalled_read_timeout) => end,
    };
    shared.subscribers.lock().expect("subscriber list lock").retain(|subscriber| subscriber.id != id);
    match end {
        End::Closed(None) => debug!(%peer, "ZMTP subscriber left"),
        End::Closed(Some(io_error)) => debug!(%peer, %io_error, "ZMTP subscriber closed after an I/O error"),
        End::Rejected(reason) => {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = shared.rejection_log.admit() {
                warn!(%peer, %reason, suppressed, "ZMTP publisher cut a connection that broke a limit");
            }
        }
    }
}

/// Reads the subscriber's handshake, subscriptions and commands until it closes or breaks
/// a limit, and keeps its entry in the subscriber list up to date.
async fn read_subscriptions(
    mut read: OwnedReadHalf,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    queue: mpsc::Sender<Bytes>,
) -> End {
    let limits = &shared.limits;
    let mut checker = ZmtpChecker::new(limits);
    let mut frames = FrameReader::new();
    let mut chunk = [0u8; READ_CHUNK];
    let handshake_deadline = Instant::now() + limits.greeting_timeout;
    // Frames of a multipart message from the client; such messages are not subscriptions.
    let mut inside_message = false;
    let mut ready = false;
    loop {
        // The same read deadlines as the guard's relay.
        let limit = match checker.phase() {
            Phase::Handshake => Some((handshake_deadline, Rejection::HandshakeTimedOut(limits.greeting_timeout))),
            Phase::InsideMessage => {
                Some((Instant::now() + limits.stalled_frame_timeout, Rejection::FrameStalled(limits.stalled_frame_timeout)))
            }
            Phase::BetweenMessages => None,
        };
        let read_result = match limit {
            Some((deadline, rejection)) => match timeout_at(deadline, read.read(&mut chunk)).await {
                Ok(result) => result,
                Err(_elapsed) => return End::Rejected(rejection),
            },
            None => read.read(&mut chunk).await,
        };
        let length = match read_result {
            Ok(0) => return End::Closed(None),
            Ok(length) => length,
            Err(error) => return End::Closed(Some(error)),
        };
        if let Err(violation) = checker.feed(&chunk[..length]) {
            return End::Rejected(violation.into());
        }
        frames.extend(&chunk[..length]);
        while let Some(frame) = frames.next_frame() {
            if frame.is_command() {
                match wire::command_name(&frame.body) {
                    Some(b"READY") if !ready => {
                        let socket_type = wire::ready_socket_type(&frame.body).unwrap_or_default();
                        if !matches!(socket_type.to_ascii_uppercase().as_str(), "SUB" | "XSUB") {
                            return End::Rejected(Rejection::SocketType(socket_type));
                        }
                        ready = true;
                        let subscriber = Subscriber { id, peer, prefixes: Vec::new(), queue: queue.clone() };
                        shared.subscribers.lock().expect("subscriber list lock").push(subscriber);
                    }
                    Some(b"SUBSCRIBE") => update(shared, id, command_topic(&frame.body), true),
                    Some(b"CANCEL") => update(shared, id, command_topic(&frame.body), false),
                    Some(b"PING") => {
                        // A full queue means the subscriber does not read; its writer cuts it.
                        let _ = queue.try_send(wire::pong(&frame.body));
                    }
                    _ => {}
                }
                continue;
            }
            let single = !inside_message && !frame.more();
            inside_message = frame.more();
            // ZMTP 3.0 subscriptions: a one-frame message of 1 (subscribe) or 0 (cancel),
            // then the topic prefix.
            if single {
                match frame.body.first() {
                    Some(1) => update(shared, id, frame.body.slice(1..), true),
                    Some(0) => update(shared, id, frame.body.slice(1..), false),
                    _ => {}
                }
            }
        }
    }
}

/// The topic of a SUBSCRIBE or CANCEL command: the body after the name.
fn command_topic(body: &Bytes) -> Bytes {
    body.slice(1 + usize::from(body[0])..)
}

/// Adds or removes one subscription of subscriber `id`.
fn update(shared: &Shared, id: u64, prefix: Bytes, subscribe: bool) {
    let mut subscribers = shared.subscribers.lock().expect("subscriber list lock");
    let Some(subscriber) = subscribers.iter_mut().find(|subscriber| subscriber.id == id) else { return };
    if subscribe {
        subscriber.prefixes.push(prefix);
    } else if let Some(index) = subscriber.prefixes.iter().position(|existing| *existing == prefix) {
        subscriber.prefixes.swap_remove(index);
    }
}

/// Writes queued messages, several per write, until the queue closes or the subscriber
/// stops reading for `stalled_read_timeout`.
async fn write_queued(mut write: OwnedWriteHalf, mut queued: mpsc::Receiver<Bytes>, stalled_read_timeout: Duration) -> End {
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
                Ok(Ok(0)) => return End::Closed(Some(io::ErrorKind::WriteZero.into())),
                Ok(Ok(written)) => unwritten = &unwritten[written..],
                Ok(Err(error)) => return End::Closed(Some(error)),
                Err(_elapsed) => return End::Rejected(Rejection::ReadStalled(stalled_read_timeout)),
            }
        }
    }
    End::Closed(None)
}

impl Frame {
    fn more(&self) -> bool {
        self.flags & wire::FLAG_MORE != 0
    }
}
