//! The HTTP accept loop: it serves the warp routes with hyper, with a cap on open connections
//! and timeouts on reading request headers and bodies.
//!
//! warp 0.4's `serve` gives hyper no timer. So a client that sends a request line and some
//! headers, but never the blank line that ends them, keeps its connection open forever, and
//! thousands of such clients use up the file descriptors. This loop serves each connection
//! with hyper's HTTP/1.1 server, whose `header_read_timeout` closes it when a request's headers
//! are not complete in time, from the moment the server waits for a request (so an idle or
//! silent connection is closed too). Event streams are unaffected because their headers are
//! complete. Request bodies have their own timeout, in `request_body.rs`. A connection beyond
//! `max_connections` is accepted and closed at once. HTTP/2 and
//! protocol upgrades (WebSocket) are not served, because the forum uses neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::request_body;
use crate::routes::routes;
use crate::state::AppState;

/// Limits on the HTTP connections of one web server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The maximum number of connections open at once, event streams included. Default: 16,384, or three
    /// quarters of the process's open-file limit when that is lower.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from when the server
    /// starts waiting for the request. Default: 10 s.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, counted from the end of its
    /// headers. Default: 10 s.
    pub body_read_timeout: Duration,
}

/// The default cap on connections before the open-file limit is taken into account.
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl Default for HttpLimits {
    fn default() -> Self {
        let max_connections = match open_file_limit() {
            Some(limit) => DEFAULT_MAX_CONNECTIONS.min(limit / 4 * 3).max(1),
            None => DEFAULT_MAX_CONNECTIONS,
        };
        HttpLimits { max_connections, header_read_timeout: Duration::from_secs(10), body_read_timeout: Duration::from_secs(10) }
    }
}

/// Returns the soft limit on open files of this process, from /proc/self/limits (Linux only).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The client's address, which the accept loop adds to every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Pause after a failed accept, so that running out of file descriptors does not turn the
/// loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves HTTP on `listener` until `shutdown`, then stops accepting and waits for the open
/// connections to finish.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AppState>, limits: HttpLimits, shutdown: CancellationToken) {
    let service = warp::service(routes(Arc::clone(&state)));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Repeated failures are logged at the 1st, 2nd, 4th, 8th... occurrence.
    let mut accept_failures: u64 = 0;
    let mut over_capacity: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok((stream, client)) => {
                // An event stream writes many small events. With Nagle's algorithm, each one
                // after the first waits for the browser's ACK of the previous, which a delayed
                // ACK holds back for up to 40 ms.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%client, %error, "could not set TCP_NODELAY on an HTTP connection");
                }
                (stream, client)
            }
            Err(error) => {
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(%error, count = accept_failures, "failed to accept an HTTP connection; retrying");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(stream);
            over_capacity += 1;
            if over_capacity.is_power_of_two() {
                tracing::warn!(%client, max_connections = limits.max_connections, count = over_capacity, "closed an HTTP connection because max_connections are open");
            }
            continue;
        };

        let service = service.clone();
        let body_read_timeout = limits.body_read_timeout;
        let request_service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(client));
            // HEAD gets the GET route's status and headers. hyper reads the request's method
            // from the wire and writes no body for it.
            if request.method() == hyper::Method::HEAD {
                *request.method_mut() = hyper::Method::GET;
            }
            let mut service = service.clone();
            async move {
                match request_body::read(request, body_read_timeout, client).await {
                    Ok(request) => tower_service::Service::call(&mut service, request).await,
                    Err(response) => Ok(response),
                }
            }
        });
        let watcher = graceful.watcher();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), request_service);
            if let Err(error) = watcher.watch(connection).await {
                // Clients cause most of these (a header timeout, a reset), so they are not warnings.
                tracing::debug!(%client, %error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
