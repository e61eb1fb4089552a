//! The listener that accepts client connections and starts one relay each.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::limits::Limits;
use crate::stats::{Counters, GuardStats};
use crate::log_limit::LogRateLimiter;
use crate::ready::ReadyRewriter;
use crate::relay::{relay, RelayEnd};

/// Log lines per kind (rejection, over capacity, failure) admitted per window.
const LOG_LINES_PER_WINDOW: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Pause after a failed accept, so that running out of file descriptors does
/// not turn the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A TCP front for one zeromq socket: it accepts connections on a public
/// address and relays each one to the socket's internal address while
/// enforcing [`Limits`].
///
/// Dropping a `Guard` stops the accept loop and closes the relays in the
/// background. [`shutdown`](Self::shutdown) does the same and waits for them.
#[derive(Debug)]
pub struct Guard {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    accept_task: JoinHandle<()>,
}

/// The routing id that the zeromq socket behind a guard receives for each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingId {
    /// The client's READY command is relayed unchanged, so the routing id is
    /// the client's Identity property, or a random one that zeromq picks.
    #[default]
    AsSent,
    /// The guard sets the Identity property of the client's READY command to
    /// the client's address as text, such as `203.0.113.5:40112`, and removes
    /// the client's own. zeromq 0.7 takes that property as the routing id of
    /// the connection. Addresses are unique among open connections, so no
    /// client can take over the replies of another.
    ClientAddress,
}

/// State shared by the accept loop, the relay tasks and the `Guard` handle.
#[derive(Debug)]
struct Shared {
    internal: SocketAddr,
    limits: Limits,
    routing_id: RoutingId,
    counters: Arc<Counters>,
    rejection_log: LogRateLimiter,
    over_capacity_log: LogRateLimiter,
    failure_log: LogRateLimiter,
}

impl Guard {
    /// Binds `public` (a std SocketAddr, port 0 allowed), and relays accepted
    /// connections to `internal` after checks, with each READY command
    /// unchanged.
    ///
    /// Returns an `InvalidInput` error if `limits.max_connections` exceeds
    /// [`Semaphore::MAX_PERMITS`], or the error of binding `public`.
    pub async fn start(
        public: SocketAddr,
        internal: SocketAddr,
        limits: Limits,
    ) -> io::Result<Guard> {
        Self::start_with_routing_id(public, internal, limits, RoutingId::AsSent).await
    }

    /// Same as [`start`](Self::start), but sets the routing id of each client
    /// as `routing_id` selects.
    pub async fn start_with_routing_id(
        public: SocketAddr,
        internal: SocketAddr,
        limits: Limits,
        routing_id: RoutingId,
    ) -> io::Result<Guard> {
        if limits.max_connections > Semaphore::MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "max_connections {} exceeds the maximum of {}",
                    limits.max_connections,
                    Semaphore::MAX_PERMITS
                ),
            ));
        }
        let listener = TcpListener::bind(public).await?;
        let local_addr = listener.local_addr()?;
        info!(public = %local_addr, %internal, ?limits, ?routing_id, "ZMTP guard started");

        let shared = Arc::new(Shared {
            internal,
            routing_id,
            counters: Arc::new(Counters::new(limits.max_connections)),
            limits,
            rejection_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            over_capacity_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
            failure_log: LogRateLimiter::new(LOG_LINES_PER_WINDOW, LOG_WINDOW),
        });
        let (stop, stopped) = oneshot::channel();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(Guard {
            local_addr,
            shared,
            stop,
            accept_task,
        })
    }

    /// Returns the public address that the guard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the number of connections closed for breaking a limit, those
    /// closed at accept because `max_connections` were open included.
    pub fn rejected_connections(&self) -> u64 {
        self.shared.counters.rejected()
    }

    /// Returns the number of connections being relayed now.
    pub fn active_connections(&self) -> usize {
        self.shared.counters.active()
    }

    /// Returns a handle that reads this guard's counters and outlives the guard, for status
    /// reports owned by other tasks.
    pub fn stats(&self) -> GuardStats {
        GuardStats::new(self.local_addr, Arc::clone(&self.shared.counters))
    }

    /// Stops accepting, closes every relayed connection and waits for the tasks.
    pub async fn shutdown(self) {
        // A failed send means the accept loop has already ended, so it is ignored.
        let _ = self.stop.send(());
        if let Err(join_error) = self.accept_task.await {
            error!(public = %self.local_addr, %join_error, "ZMTP guard accept loop failed");
        }
        info!(public = %self.local_addr, "ZMTP guard stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(joined) = relays.join_next(), if !relays.is_empty() => {
                if let Err(join_error) = joined {
                    error!(%join_error, "ZMTP guard relay task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => admit(client, peer, &shared, &mut relays),
                Err(accept_error) => {
                    if let Some(suppressed) = shared.failure_log.admit() {
                        warn!(%accept_error, suppressed, "ZMTP guard failed to accept a connection, retrying");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }

    drop(listener);
    relays.shutdown().await;
}

/// Starts a relay for `client`, or closes it at once if `max_connections`
/// relays are running.
fn admit(client: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, relays: &mut JoinSet<()>) {
    let Some(permit) = shared.counters.try_admit() else {
        drop(client);
        if let Some(suppressed) = shared.over_capacity_log.admit() {
            warn!(
                %peer,
                max_connections = shared.limits.max_connections,
                suppressed,
                "ZMTP guard closed a connection because max_connections are open"
            );
        }
        return;
    };
    relays.spawn(serve(client, peer, Arc::clone(shared), permit));
}

/// Connects to the internal socket and relays `client` until it ends.
/// The permit is released when this returns.
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let internal = shared.internal;
    let connected =
        tokio::time::timeout(shared.limits.greeting_timeout, TcpStream::connect(internal)).await;
    let server = match connected {
        Ok(Ok(server)) => server,
        Ok(Err(connect_error)) => {
            if let Some(suppressed) = shared.failure_log.admit() {
                warn!(%peer, %internal, %connect_error, suppressed, "ZMTP guard failed to connect to the internal zeromq socket and closed the client; check that the socket is still bound to this address");
            }
            return;
        }
        Err(_elapsed) => {
            if let Some(suppressed) = shared.failure_log.admit() {
                warn!(%peer, %internal, suppressed, "ZMTP guard timed out connecting to the internal zeromq socket and closed the client; check that the server is running");
            }
            return;
        }
    };
    // ZMTP messages are often small and latency-sensitive, as zeromq sockets
    // are, so neither hop should wait to coalesce segments.
    if let Err(nodelay_error) = client
        .set_nodelay(true)
        .and_then(|()| server.set_nodelay(true))
    {
        debug!(%peer, %nodelay_error, "ZMTP guard could not set TCP_NODELAY");
    }

    let rewriter = match shared.routing_id {
        RoutingId::AsSent => None,
        RoutingId::ClientAddress => Some(ReadyRewriter::for_peer(peer)),
    };
    match relay(client, server, &shared.limits, rewriter).await {
        RelayEnd::Closed(None) => debug!(%peer, "ZMTP guard relay closed"),
        RelayEnd::Closed(Some(io_error)) => {
            debug!(%peer, %io_error, "ZMTP guard relay closed after an I/O error")
        }
        RelayEnd::Rejected(reason) => {
            shared.counters.count_rejection();
            if let Some(suppressed) = shared.rejection_log.admit() {
                warn!(%peer, %reason, suppressed, "ZMTP guard cut a connection that broke a limit");
            }
        }
    }
}
