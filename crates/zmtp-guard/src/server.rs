//! A ZMTP server that accepts clients on the public address itself, with the limits of a
//! [`Guard`](crate::Guard) but without the relay to a zeromq socket.
//!
//! [`ZmtpListener`] admits at most `max_connections` clients, runs the NULL handshake
//! within `greeting_timeout` (our greeting and READY, then the client's), accepts only the
//! peer socket types that the [`SocketSpec`] names, and hands each client to a service
//! function as a [`Connection`]. The service reads the client's messages through the
//! connection's [`FrameReader`], which enforces the frame and message limits, and
//! writes with the `write_*` functions of [`codec`](crate::codec). It returns how the
//! connection ended, and the listener counts and logs every cut, rate-limited.
//!
//! A listener made [`with_pending_limit`](ZmtpListener::with_pending_limit) caps pending
//! connections (in their handshake, or not yet admitted by the service through
//! [`Connection::admission`]) apart from admitted ones, and a new connection evicts the
//! oldest pending one instead of being closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::admission::{Admission, PendingPool};
use crate::codec::{ready_property, write_greeting, write_ready, Event, FrameReader, ReadError, SOCKET_TYPE_PROPERTY};
use crate::limits::Limits;
use crate::log_limit::LogRateLimiter;
use crate::relay::Rejection;
use crate::stats::{Counters, GuardStats};

/// Log lines per kind (cut, over capacity, failure) admitted per window.
const LOG_LINES_PER_WINDOW: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Pause after a failed accept, so that running out of file descriptors does not turn the
/// accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Our socket type and the peer socket types that may talk to it, as ZMTP names them.
#[derive(Debug, Clone, Copy)]
pub struct SocketSpec {
    /// The Socket-Type of our READY command, such as `ROUTER`.
    pub socket_type: &'static str,
    /// The Socket-Type values accepted from peers, such as `REQ` and `DEALER`.
    pub peer_types: &'static [&'static str],
}

/// A client after a complete handshake, handed to the service function.
///
/// The listener enforces `max_connections`, `greeting_timeout` and, through the reader, the
/// frame and message limits. The service enforces `stalled_frame_timeout` while the reader's
/// [`Phase`](crate::Phase) is `InsideMessage`, and `stalled_read_timeout` while its replies
/// wait for a client that does not read them.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
    /// The client's address, unique among open connections.
    pub peer: SocketAddr,
    /// The Socket-Type of the client's READY, one of [`SocketSpec::peer_types`].
    pub peer_type: &'static str,
    /// The reader that checked the handshake. It may already hold bytes that arrived after
    /// the READY command, so take its events before reading again.
    pub reader: FrameReader,
    pub limits: Arc<Limits>,
    /// The connection's place in the listener's caps. On a listener with a pending limit the
    /// service admits it once it has proven itself.
    pub admission: Admission,
    /// Turns true when the server stops. The service should then finish and return.
    pub stopping: watch::Receiver<bool>,
}

/// The end of a connection, as the service function returns it.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The client or the server closed the connection, or a read or write failed.
    Closed(Option<io::Error>),
    /// The client broke a limit or a rule, and the server cut it.
    Cut(Rejection),
}

impl From<ReadError> for ConnectionEnd {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Io(error) => ConnectionEnd::Closed(Some(error)),
            ReadError::Violation(violation) => ConnectionEnd::Cut(violation.into()),
        }
    }
}

/// A bound TCP listener for a ZMTP server, not yet serving.
///
/// Binding comes first, so the caller learns the real port and gets the [`GuardStats`]
/// before it builds the service that may need them.
#[derive(Debug)]
pub struct ZmtpListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    limits: Arc<Limits>,
    counters: Arc<Counters>,
    pool: Option<Arc<PendingPool>>,
}

impl ZmtpListener {
    /// Binds `public` (port 0 allowed).
    ///
    /// Returns an `InvalidInput` error if `limits.max_connections` exceeds
    /// [`Semaphore::MAX_PERMITS`], or the error of binding `public`.
    pub async fn bind(public: SocketAddr, limits: Limits) -> io::Result<Self> {
        if limits.max_connections > Semaphore::MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max_connections {} exceeds the maximum of {}", limits.max_connections, Semaphore::MAX_PERMITS),
            ));
        }
        let listener = TcpListener::bind(public).await?;
        let local_addr = listener.local_addr()?;
        let counters = Arc::new(Counters::new(limits.max_connections));
        Ok(Self { listener, local_addr, limits: Arc::new(limits), counters, pool: None })
    }

    /// Caps pending connections at `max_pending`, apart from the `max_connections` that the
    /// service admits (see [`Admission`]). Call it before [`stats`](Self::stats), because it
    /// replaces the counters.
    ///
    /// Returns an `InvalidInput` error if `max_pending` is 0 or the sum of both caps exceeds
    /// [`Semaphore::MAX_PERMITS`].
    pub fn with_pending_limit(mut self, max_pending: usize) -> io::Result<Self> {
        let total = self.limits.max_connections.checked_add(max_pending).filter(|total| *total <= Semaphore::MAX_PERMITS);
        let Some(total) = total.filter(|_| max_pending > 0) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max_pending {max_pending} must be at least 1, and with max_connections at most {}", Semaphore::MAX_PERMITS),
            ));
        };
        self.counters = Arc::new(Counters::new(total));
        let permits = self.counters.permits();
        self.pool = Some(Arc::new(PendingPool::new(max_pending, self.limits.max_connections, permits)));
        Ok(self)
    }

    /// Returns the address as bound, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns a reader of this port's counters.
    pub fn stats(&self) -> GuardStats {
        GuardStats::new(self.local_addr, Arc::clone(&self.counters))
    }

    /// Accepts clients and runs `service` on each one after its handshake, until `stopping`
    /// turns true. The returned task then stops accepting, cuts clients still in their
    /// handshake and waits for every service to return.
    pub fn serve<S, F>(self, spec: SocketSpec, stopping: watch::Receiver<bool>, service: S) -> JoinHandle<()>
    where
        S: Fn(Connection) -> F + Send + Sync + 'static,
        F: Future<Output = ConnectionEnd> + Send + 'static,
    {
        info!(public = %self.local_addr, limits = ?self.limits, socket_type = spec.socket_type, "ZMTP server started");
        let shared = Arc::new(Shared {
            spec,
            limits: self.limits,
            counters: self.counters,
            pool: self.pool,
            cut_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            over_capacity_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            failure_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
        });
        tokio::spawn(accept_loop(self.listener, self.local_addr, shared, stopping, Arc::new(service)))
    }
}

#[derive(Debug)]
struct Shared {
    spec: SocketSpec,
    limits: Arc<Limits>,
    counters: Arc<Counters>,
    pool: Option<Arc<PendingPool>>,
    cut_log: LogRateLimiter,
    over_capacity_log: LogRateLimiter,
    failure_log: LogRateLimiter,
}

async fn accept_loop<S, F>(
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
    service: Arc<S>,
) where
    S: Fn(Connection) -> F + Send + Sync + 'static,
    F: Future<Output = ConnectionEnd> + Send + 'static,
{
    let mut connections = JoinSet::new();
    // The receiver that each connection gets a clone of. `stopping` itself is borrowed by
    // the wait below.
    let connection_stopping = stopping.clone();
    loop {
        tokio::select! {
            () = wait_until_stopping(&mut stopping) => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(join_error) = joined {
                    error!(public = %local_addr, %join_error, "ZMTP server connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = match &shared.pool {
                        // Evicts the oldest pending connection when needed, which logs its cut.
                        Some(pool) => pool.enter().map(|admission| (admission, None)),
                        None => shared.counters.try_admit().map(|permit| (Admission::unlimited(), Some(permit))),
                    };
                    let Some((admission, permit)) = admitted else {
                        drop(stream);
                        if let Some(suppressed) = shared.over_capacity_log.admit() {
                            warn!(%peer, max_connections = shared.limits.max_connections, suppressed, "ZMTP server closed a connection because max_connections are open");
                        }
                        continue;
                    };
                    let task = run_connection(stream, peer, Arc::clone(&shared), connection_stopping.clone(), Arc::clone(&service), admission, permit);
                    connections.spawn(task);
                }
                Err(accept_error) => {
                    if let Some(suppressed) = shared.failure_log.admit() {
                        warn!(%accept_error, suppressed, "ZMTP server failed to accept a connection, retrying");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }

    drop(listener);
    while let Some(joined) = connections.join_next().await {
        if let Err(join_error) = joined {
            error!(public = %local_addr, %join_error, "ZMTP server connection task failed");
        }
    }
    info!(public = %local_addr, "ZMTP server stopped");
}

/// Runs the handshake and then the service for one client, and logs how it ended. The
/// permit or the admission is released when this returns.
async fn run_connection<S, F>(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
    service: Arc<S>,
    mut admission: Admission,
    _permit: Option<OwnedSemaphorePermit>,
) where
    S: Fn(Connection) -> F + Send + Sync + 'static,
    F: Future<Output = ConnectionEnd> + Send + 'static,
{
    // ZMTP messages are often small and latency-sensitive, so no write waits to coalesce
    // segments. The service batches its own writes instead.
    if let Err(nodelay_error) = stream.set_nodelay(true) {
        debug!(%peer, %nodelay_error, "ZMTP server could not set TCP_NODELAY");
    }
    let mut reader = FrameReader::new(&shared.limits);
    let timeout = shared.limits.greeting_timeout;
    let handshake = tokio::time::timeout(timeout, handshake(&mut stream, &mut reader, shared.spec));
    let max_pending = shared.pool.as_ref().map_or(0, |pool| pool.max_pending());
    let handshake_end = tokio::select! {
        () = wait_until_stopping(&mut stopping) => Err(ConnectionEnd::Closed(None)),
        () = admission.evicted() => Err(ConnectionEnd::Cut(Rejection::Evicted(max_pending))),
        result = handshake => match result {
            Err(_elapsed) => Err(ConnectionEnd::Cut(Rejection::HandshakeTimedOut(timeout))),
            Ok(handshake_end) => handshake_end,
        },
    };
    let end = match handshake_end {
        Ok(peer_type) => {
            let limits = Arc::clone(&shared.limits);
            let connection = Connection { stream, peer, peer_type, reader, limits, admission, stopping };
            service(connection).await
        }
        Err(end) => end,
    };
    match end {
        ConnectionEnd::Closed(None) => debug!(%peer, "ZMTP connection closed"),
        ConnectionEnd::Closed(Some(io_error)) => debug!(%peer, %io_error, "ZMTP connection closed after an I/O error"),
        ConnectionEnd::Cut(reason) => {
            shared.counters.count_rejection();
            if let Some(suppressed) = shared.cut_log.admit() {
                warn!(%peer, %reason, suppressed, "ZMTP server cut a connection");
            }
        }
    }
}

/// Sends our greeting and READY, then reads the client's, and returns the client's socket
/// type.
async fn handshake(stream: &mut TcpStream, reader: &mut FrameReader, spec: SocketSpec) -> Result<&'static str, ConnectionEnd> {
    let mut ours = BytesMut::with_capacity(128);
    write_greeting(&mut ours);
    write_ready(&mut ours, spec.socket_type);
    stream.write_all(&ours).await.map_err(|error| ConnectionEnd::Closed(Some(error)))?;

    loop {
        // The checker rejects anything but a greeting and then READY, so the first command
        // event is the READY command.
        while let Some(event) = reader.next_event().map_err(|error| ConnectionEnd::Cut(error.into()))? {
            let Event::Command(ready) = event else { continue };
            let socket_type = ready_property(&ready.data, SOCKET_TYPE_PROPERTY)
                .map_err(|error| ConnectionEnd::Cut(error.into()))?
                .ok_or(ConnectionEnd::Cut(Rejection::MissingSocketType))?;
            return spec.peer_types.iter().copied().find(|accepted| accepted.as_bytes() == socket_type).ok_or_else(|| {
                let found = String::from_utf8_lossy(socket_type).into_owned();
                ConnectionEnd::Cut(Rejection::PeerSocketType { found, expected: spec.peer_types })
            });
        }
        if reader.read_from(stream).await? == 0 {
            return Err(ConnectionEnd::Closed(None));
        }
    }
}

/// Waits until `stopping` turns true or its sender is dropped.
pub async fn wait_until_stopping(stopping: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which stops the server as well.
    let _ = stopping.wait_for(|stop| *stop).await;
}
