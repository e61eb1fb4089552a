//! Pipelined DEALER clients: one request at a time for set-up, and many in flight for load.
//!
//! A DEALER sends `[payload]` with no empty delimiter, so a ROUTER peer receives `[identity,
//! payload]` and its reply arrives as `[payload]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use forum_protocol::{decode, encode, seal, unseal, ClusterKey, MacContext, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::sync::Semaphore;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// How long a load run waits for the replies still in flight after it stops sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a single set-up request may take. Reading a history of a million posts takes
/// seconds on a busy machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The client id of the benchmark's posts. Request ids are unique within a benchmark's
/// process, and every benchmark starts its own data servers.
const BENCH_CLIENT: u64 = 0xbe7c;

/// Returns the cluster key of the benchmarked servers: the `FORUM_CLUSTER_KEY` text when it
/// is set and not empty, else none. The server processes inherit the variable and read it too.
pub fn cluster_key() -> Option<&'static ClusterKey> {
    static KEY: std::sync::OnceLock<Option<ClusterKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let text = std::env::var("FORUM_CLUSTER_KEY").ok();
        ClusterKey::from_file_or_text(None, text.as_deref()).unwrap_or_else(|error| panic!("invalid FORUM_CLUSTER_KEY: {error}"))
    })
    .as_ref()
}

/// Builds a request message from its payload, sealed under the cluster key when one is set.
fn request_message(payload: Bytes) -> ZmqMessage {
    let mut frames = vec![payload];
    seal(cluster_key(), MacContext::Request, &mut frames, 1);
    ZmqMessage::try_from(frames).expect("a request has its payload frame")
}

/// Returns the payload of a reply, opened under the cluster key when one is set, or an
/// empty payload when the reply fails that check.
fn reply_payload(message: ZmqMessage) -> Bytes {
    let mut frames = message.into_vec();
    if unseal(cluster_key(), MacContext::Reply, &mut frames, 1).is_err() {
        return Bytes::new();
    }
    frames.pop().unwrap_or_default()
}

/// Sends one request on a fresh DEALER and returns the reply.
pub async fn request(endpoint: &str, request: Request) -> anyhow::Result<Reply> {
    let mut socket = DealerSocket::new();
    socket.connect(endpoint).await.with_context(|| format!("failed to connect to {endpoint}"))?;
    let payload = encode(&WireRequest { v: PROTOCOL_VERSION, id: 1, request, client: None, brief: false });
    socket.send(request_message(Bytes::from(payload))).await?;
    let message = tokio::time::timeout(REQUEST_TIMEOUT, socket.recv())
        .await
        .with_context(|| format!("{endpoint} did not reply within {REQUEST_TIMEOUT:?}"))??;
    let frame = reply_payload(message);
    let reply: WireReply = decode(&frame).with_context(|| format!("an invalid or unauthenticated reply from {endpoint}"))?;
    Ok(reply.reply)
}

/// When a load run stops sending.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    /// Sends for this long; only replies received within it count.
    Time(Duration),
    /// Sends exactly this many requests in all, and waits for every reply, for at most
    /// the given time.
    Count(u64, Duration),
}

/// The outcome of a load run.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Replies that passed the check, within the time bound for [`Bound::Time`].
    pub accepted: u64,
    /// Replies that failed the check.
    pub rejected: u64,
    /// The payload of the first reply that failed the check.
    pub first_rejection: Option<Bytes>,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }
}

/// The index of the next request sent by any load run of this process.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Counters that every connection of one load run shares.
struct Shared {
    started: Instant,
    bound: Bound,
    /// Requests claimed in this run, for [`Bound::Count`].
    next_index: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    first_rejection: std::sync::Mutex<Option<Bytes>>,
}

impl Shared {
    /// Claims the index of the next request to send, or `None` once the run stops sending.
    ///
    /// Indexes are unique in the whole process, not only in this run: an index is also the
    /// request id of an idempotency key, and a data server replies to a repeated key with the
    /// reply it already gave instead of storing the write again.
    fn claim(&self) -> Option<u64> {
        let claimed = match self.bound {
            Bound::Time(length) => self.started.elapsed() < length,
            Bound::Count(total, limit) => {
                self.started.elapsed() < limit && self.next_index.fetch_add(1, Ordering::Relaxed) < total
            }
        };
        claimed.then(|| NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
    }

    fn counts(&self, now: Instant) -> bool {
        match self.bound {
            Bound::Time(length) => now.duration_since(self.started) < length,
            Bound::Count(..) => true,
        }
    }
}

/// Runs `connections` DEALER connections, spread round-robin over `endpoints`, each with up
/// to `window` requests in flight. `payload` builds the request of a given index, and
/// `accept` checks a reply payload.
pub async fn load<P, A>(
    endpoints: &[String],
    connections: usize,
    window: usize,
    bound: Bound,
    payload: P,
    accept: A,
) -> anyhow::Result<LoadResult>
where
    P: Fn(u64) -> Bytes + Send + Sync + 'static,
    A: Fn(&[u8]) -> bool + Send + Sync + 'static,
{
    let payload = Arc::new(payload);
    let accept = Arc::new(accept);
    let mut sockets = Vec::with_capacity(connections);
    for index in 0..connections {
        let endpoint = &endpoints[index % endpoints.len()];
        let mut socket = DealerSocket::new();
        socket.connect(endpoint).await.with_context(|| format!("failed to connect to {endpoint}"))?;
        sockets.push(socket);
    }

    let shared = Arc::new(Shared {
        started: Instant::now(),
        bound,
        next_index: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        first_rejection: std::sync::Mutex::new(None),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        tasks.spawn(drive(socket, window, Arc::clone(&shared), Arc::clone(&payload), Arc::clone(&accept)));
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a load connection panicked")??;
    }
    let elapsed = match bound {
        Bound::Time(length) => length,
        Bound::Count(..) => shared.started.elapsed(),
    };
    let first_rejection = shared.first_rejection.lock().expect("the lock is never poisoned").take();
    Ok(LoadResult {
        accepted: shared.accepted.load(Ordering::Relaxed),
        rejected: shared.rejected.load(Ordering::Relaxed),
        first_rejection,
        elapsed,
    })
}

/// Sends on one connection while the run lasts, keeping up to `window` requests in flight,
/// then waits for the outstanding replies.
async fn drive<P, A>(socket: DealerSocket, window: usize, shared: Arc<Shared>, payload: Arc<P>, accept: Arc<A>) -> anyhow::Result<()>
where
    P: Fn(u64) -> Bytes + Send + Sync + 'static,
    A: Fn(&[u8]) -> bool + Send + Sync + 'static,
{
    let (mut sender, mut receiver) = socket.split();
    let permits = Arc::new(Semaphore::new(window));
    let sent = Arc::new(AtomicU64::new(0));
    let sending = {
        let permits = Arc::clone(&permits);
        let sent = Arc::clone(&sent);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                let permit = permits.acquire().await.expect("the semaphore is never closed");
                let Some(index) = shared.claim() else { break };
                permit.forget();
                sender.send(request_message(payload(index))).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(sender)
        })
    };

    let mut received = 0u64;
    let mut sending = Some(sending);
    let mut drain_deadline = None;
    let mut _sender_half = None;
    loop {
        if let Some(task) = sending.as_mut().filter(|task| task.is_finished()) {
            _sender_half = Some(task.await.context("the sending task panicked")??);
            sending = None;
            drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if sending.is_none() && received >= sent.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = match drain_deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(20),
        };
        let message = match tokio::time::timeout(wait, receiver.recv()).await {
            Ok(message) => message?,
            Err(_) if drain_deadline.is_some() => {
                bail!("{} replies did not arrive within {DRAIN_TIMEOUT:?}", sent.load(Ordering::Relaxed) - received)
            }
            Err(_) => continue,
        };
        let now = Instant::now();
        received += 1;
        permits.add_permits(1);
        let frame = reply_payload(message);
        if accept(&frame) {
            if shared.counts(now) {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            shared.first_rejection.lock().expect("the lock is never poisoned").get_or_insert(frame);
        }
    }
}

/// Returns true when `frame` is a [`WireReply`] carrying a stored message.
pub fn is_stored_message(frame: &[u8]) -> bool {
    matches!(decode::<WireReply>(frame), Ok(WireReply { reply: Reply::Stored(_) | Reply::Message(_), .. }))
}

/// Returns true when `frame` is a [`WireReply`] carrying `Pong`.
pub fn is_pong(frame: &[u8]) -> bool {
    matches!(decode::<WireReply>(frame), Ok(WireReply { reply: Reply::Pong { .. }, .. }))
}

/// Encodes a `Ping` request, which a data server replies to on the connection, without a write.
pub fn ping_request(id: u64) -> Bytes {
    Bytes::from(encode(&WireRequest { v: PROTOCOL_VERSION, id, request: Request::Ping, client: None, brief: false }))
}

/// Encodes a `PostMessage` request.
pub fn post_request(id: u64, subject: forum_protocol::ChangeId, author: &str, text: String) -> Bytes {
    let request = Request::PostMessage { subject, author: author.to_owned(), text };
    // A client id makes each post carry an idempotency key, and `brief` requests the short
    // reply, as a web server's posts do, so the data server does the same work as in the forum.
    Bytes::from(encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: Some(BENCH_CLIENT), brief: true }))
}
