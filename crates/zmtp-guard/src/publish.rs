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
//! A subscriber gets no message until the publisher admits it, and the [`SubscriberPolicy`]
//! sets when. With a [`SubscriberKey`], the subscriber must first send a valid token (see
//! [`crate::TOKEN_PREFIX`]) as a subscription within `token_timeout` of its handshake.
//! Without a key, it must send any subscription within `subscribe_timeout`. Otherwise it is
//! cut. Connections not yet admitted, those still in their handshake included, count
//! against `max_pending` and not against `max_connections`. When `max_pending` are open, a
//! new connection evicts the oldest of them, so idle connections cannot lock out a
//! subscriber that proves itself.
//!
//! Compared with a zeromq PUB socket behind a [`Guard`](crate::Guard), a published message
//! crosses no loopback relay and no zeromq queue: one encoding, then one write per
//! subscriber and batch.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::admission::{Admission, AdmitError};
use crate::checker::Phase;
use crate::codec::{self, Event, FrameReader};
use crate::limits::Limits;
use crate::log_limit::LogRateLimiter;
use crate::relay::Rejection;
use crate::server::{wait_until_stopping, Connection, ConnectionEnd, SocketSpec, ZmtpListener};
use crate::stats::GuardStats;
use crate::token::{SeenNonces, SubscriberKey, TOKEN_PREFIX};

/// The messages that may wait for one subscriber; more are dropped for it.
pub const QUEUE_MESSAGES: usize = 10_000;

/// The most queued messages that one write takes.
const MAX_BATCH: usize = 256;

/// Our socket type and the socket types that may subscribe.
const PUB_SPEC: SocketSpec = SocketSpec { socket_type: "PUB", peer_types: &["SUB", "XSUB"] };

/// When a [`Publisher`] admits a subscriber, and how many may wait for admission.
#[derive(Debug, Clone)]
pub struct SubscriberPolicy {
    /// The key that subscriber tokens must be made with. With a key, only a valid token
    /// admits a subscriber. Without one, any subscription does. Default: none.
    pub key: Option<SubscriberKey>,
    /// The time from the end of the handshake until a valid token must arrive, with a key.
    /// Default: 2 s.
    pub token_timeout: Duration,
    /// The time from the end of the handshake until a subscription must arrive, without a
    /// key. Default: 5 s.
    pub subscribe_timeout: Duration,
    /// The maximum number of connections that are not admitted, counted apart from the
    /// `max_connections` of the [`Limits`]. Default: 16.
    pub max_pending: usize,
}

impl Default for SubscriberPolicy {
    fn default() -> Self {
        Self { key: None, token_timeout: Duration::from_secs(2), subscribe_timeout: Duration::from_secs(5), max_pending: 16 }
    }
}

impl SubscriberPolicy {
    /// Returns the deadline for admission and the reason to cut a subscriber that misses it.
    fn admission_deadline(&self) -> (Duration, Rejection) {
        match self.key {
            Some(_) => (self.token_timeout, Rejection::NoToken(self.token_timeout)),
            None => (self.subscribe_timeout, Rejection::NoSubscription(self.subscribe_timeout)),
        }
    }
}

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
    policy: SubscriberPolicy,
    /// The nonces of accepted tokens, so that each token admits one connection.
    seen_nonces: Mutex<SeenNonces>,
}

/// A subscriber that has finished its handshake.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    peer: SocketAddr,
    /// Topic prefixes, one entry per subscription, so that a cancel removes one. Tokens are
    /// not kept.
    prefixes: Vec<Bytes>,
    /// False until the policy admits the subscriber, which gets no message until then.
    admitted: bool,
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

    /// Lets subscriber `id` receive messages.
    fn mark_admitted(&self, id: u64) {
        if let Some(subscriber) = self.subscribers().iter_mut().find(|subscriber| subscriber.id == id) {
            subscriber.admitted = true;
        }
    }
}

impl Publisher {
    /// Binds `public` (port 0 allowed) and starts accepting subscribers under the default
    /// [`SubscriberPolicy`], which has no key.
    ///
    /// Returns an `InvalidInput` error if `limits.max_connections` is too large for a
    /// semaphore, or the error of binding `public`.
    pub async fn start(public: SocketAddr, limits: Limits) -> io::Result<Publisher> {
        Publisher::start_with_policy(public, limits, SubscriberPolicy::default()).await
    }

    /// Binds `public` (port 0 allowed) and starts accepting subscribers under `policy`.
    ///
    /// Returns an `InvalidInput` error if `policy.max_pending` is 0 or the caps are too
    /// large for a semaphore, or the error of binding `public`.
    pub async fn start_with_policy(public: SocketAddr, limits: Limits, policy: SubscriberPolicy) -> io::Result<Publisher> {
        let listener = ZmtpListener::bind(public, limits).await?.with_pending_limit(policy.max_pending)?;
        let local_addr = listener.local_addr();
        let stats = listener.stats();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            drop_log: LogRateLimiter::new(10, Duration::from_secs(10)),
            policy,
            seen_nonces: Mutex::new(SeenNonces::default()),
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

    /// Returns the number of admitted subscribers.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers().iter().filter(|subscriber| subscriber.admitted).count()
    }

    /// Queues a message of `frames` for every subscriber with a subscription that is a
    /// prefix of the first frame, and returns how many got it. It never waits, because it
    /// only tries to queue: a subscriber whose queue is full misses this message.
    pub fn publish(&self, frames: &[Bytes]) -> usize {
        let Some(topic) = frames.first() else { return 0 };
        let mut encoded = None;
        let mut queued = 0;
        for subscriber in self.shared.subscribers().iter() {
            if !subscriber.admitted || !subscriber.prefixes.iter().any(|prefix| topic.starts_with(prefix)) {
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
    let Connection { stream, peer, reader, limits, admission, mut stopping, .. } = connection;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (queue, queued) = mpsc::channel(QUEUE_MESSAGES);
    shared.subscribers().push(Subscriber { id, peer, prefixes: Vec::new(), admitted: false, queue: queue.clone() });
    let (read, write) = stream.into_split();
    let reading = Reading { read, reader, id, shared: &shared, queue, admission, stalled_frame_timeout: limits.stalled_frame_timeout };
    let end = tokio::select! {
        () = wait_until_stopping(&mut stopping) => ConnectionEnd::Closed(None),
        end = reading.read_subscriptions() => end,
        end = write_queued(write, queued, limits.stalled_read_timeout) => end,
    };
    shared.subscribers().retain(|subscriber| subscriber.id != id);
    end
}

/// The read side of one subscriber.
struct Reading<'a> {
    read: OwnedReadHalf,
    reader: FrameReader,
    id: u64,
    shared: &'a Shared,
    queue: mpsc::Sender<Bytes>,
    /// Dropped when the connection ends, which frees its place in the caps.
    admission: Admission,
    stalled_frame_timeout: Duration,
}

impl Reading<'_> {
    /// Reads the subscriber's subscriptions and commands until it closes, breaks a limit,
    /// misses its admission deadline or is evicted.
    async fn read_subscriptions(mut self) -> ConnectionEnd {
        let (admission_timeout, missed_deadline) = self.shared.policy.admission_deadline();
        let admission_deadline = Instant::now() + admission_timeout;
        let max_pending = self.shared.policy.max_pending;
        let stalled_frame_timeout = self.stalled_frame_timeout;
        loop {
            if let Err(rejection) = self.take_events() {
                return ConnectionEnd::Cut(rejection);
            }
            let stall_deadline = (self.reader.phase() == Phase::InsideMessage).then(|| Instant::now() + stalled_frame_timeout);
            let pending = !self.admission.is_admitted();
            let read_once = self.reader.read_from(&mut self.read);
            let result = tokio::select! {
                result = read_once => result,
                () = sleep_until_some(stall_deadline) => return ConnectionEnd::Cut(Rejection::FrameStalled(stalled_frame_timeout)),
                () = tokio::time::sleep_until(admission_deadline), if pending => return ConnectionEnd::Cut(missed_deadline),
                () = self.admission.evicted(), if pending => return ConnectionEnd::Cut(Rejection::Evicted(max_pending)),
            };
            match result {
                Ok(0) => return ConnectionEnd::Closed(None),
                Ok(_) => {}
                Err(error) => return error.into(),
            }
        }
    }

    /// Handles the subscriptions and commands that the reader holds.
    fn take_events(&mut self) -> Result<(), Rejection> {
        while let Some(event) = self.reader.next_event()? {
            match event {
                Event::Command(command) => match &command.name[..] {
                    b"SUBSCRIBE" => self.subscribe(command.data)?,
                    b"CANCEL" => self.cancel(command.data),
                    b"PING" => {
                        let mut pong = BytesMut::new();
                        codec::write_pong(&mut pong, &command.data);
                        // A full queue means the subscriber does not read; the writer cuts it.
                        let _ = self.queue.try_send(pong.freeze());
                    }
                    _ => {}
                },
                // ZMTP 3.0 subscriptions: a one-frame message of 1 (subscribe) or 0
                // (cancel), then the topic prefix. Other messages mean nothing to a PUB.
                Event::Message(frames) => {
                    if let [frame] = &frames[..] {
                        match frame.first() {
                            Some(1) => self.subscribe(frame.slice(1..))?,
                            Some(0) => self.cancel(frame.slice(1..)),
                            _ => {}
                        }
                    }
                }
                Event::Greeting { .. } => {}
            }
        }
        Ok(())
    }

    /// Handles one subscription: a token is checked and never kept, and a topic prefix is
    /// kept. Either may admit the subscriber, as the policy sets.
    fn subscribe(&mut self, prefix: Bytes) -> Result<(), Rejection> {
        let is_token = prefix.starts_with(TOKEN_PREFIX);
        if !is_token {
            self.shared.update(self.id, prefix.clone(), true);
        }
        if self.admission.is_admitted() {
            return Ok(());
        }
        match &self.shared.policy.key {
            Some(key) if is_token => {
                let nonce = key.verify(&prefix, SystemTime::now())?;
                let mut seen = self.shared.seen_nonces.lock().expect("the nonce lock is never poisoned");
                seen.insert(nonce, Instant::now())?;
            }
            // A topic prefix before the token waits for it.
            Some(_) => return Ok(()),
            None => {}
        }
        self.admission.admit().map_err(|error| match error {
            AdmitError::Full { max_connections } => Rejection::SubscribersFull(max_connections),
            AdmitError::Evicted => Rejection::Evicted(self.shared.policy.max_pending),
        })?;
        self.shared.mark_admitted(self.id);
        Ok(())
    }

    fn cancel(&mut self, prefix: Bytes) {
        if !prefix.starts_with(TOKEN_PREFIX) {
            self.shared.update(self.id, prefix, false);
        }
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
