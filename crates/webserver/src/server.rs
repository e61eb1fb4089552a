//! Starting and stopping a web server: the HTTP listener and the background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use forum_protocol::parse_endpoint;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::changes;
use crate::config::Config;
use crate::data_client::DataClient;
use crate::presence::{self, Presence};
use crate::routes::routes;
use crate::sessions::Sessions;
use crate::state::AppState;

/// Extra time that shutdown gives HTTP requests beyond the request timeout before it drops
/// them.
const HTTP_DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// A running web server. Drop it only after [`WebServer::shutdown`]; dropping it without
/// that leaves its tasks running until the runtime stops.
pub struct WebServer {
    local_addr: SocketAddr,
    request_timeout: Duration,
    state: Arc<AppState>,
    http: JoinHandle<()>,
    presence_stop: CancellationToken,
    presence_reporter: JoinHandle<()>,
    sockets_stop: CancellationToken,
    sockets: TaskTracker,
}

impl WebServer {
    /// Binds the HTTP listener and starts the tasks that talk to the data server.
    ///
    /// Fails on an invalid endpoint or when the listen address cannot be bound. The data
    /// server need not be up yet: the sockets connect in the background, and API requests
    /// made before that wait for it up to the request timeout.
    pub async fn start(config: Config) -> anyhow::Result<WebServer> {
        let request_endpoint = parse_endpoint(&config.data_request_endpoint)
            .context("invalid data server request endpoint")?;
        let pub_endpoint = parse_endpoint(&config.data_pub_endpoint).context("invalid data server pub endpoint")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let local_addr = listener.local_addr().context("failed to read the bound HTTP address")?;

        let sockets_stop = CancellationToken::new();
        let sockets = TaskTracker::new();
        let data = DataClient::start(request_endpoint, config.request_timeout, sockets_stop.clone(), &sockets);
        let changes = changes::channel();
        sockets.spawn(changes::subscribe(pub_endpoint, changes.clone(), sockets_stop.clone()));

        let presence = Arc::new(Presence::default());
        let presence_stop = CancellationToken::new();
        let presence_reporter =
            tokio::spawn(presence::report(Arc::clone(&presence), data.clone(), config.name.clone(), presence_stop.clone()));

        let state = Arc::new(AppState {
            data,
            sessions: Sessions::default(),
            presence,
            changes,
            shutdown: CancellationToken::new(),
            streams: TaskTracker::new(),
        });
        let http = tokio::spawn(
            warp::serve(routes(Arc::clone(&state)))
                .incoming(listener)
                .graceful(state.shutdown.clone().cancelled_owned())
                .run(),
        );
        tracing::info!(%local_addr, name = %config.name, "web server listening");
        Ok(WebServer {
            local_addr,
            request_timeout: config.request_timeout,
            state,
            http,
            presence_stop,
            presence_reporter,
            sockets_stop,
            sockets,
        })
    }

    /// Returns the address the HTTP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server in order: no new connections, event streams end, in-flight
    /// requests finish (up to the request timeout plus a margin, then they are dropped),
    /// users with streams are reported offline, and the sockets close.
    pub async fn shutdown(self) {
        tracing::info!(local_addr = %self.local_addr, "web server shutting down");
        self.state.shutdown.cancel();
        let mut http = self.http;
        let drain = self.request_timeout + HTTP_DRAIN_MARGIN;
        if tokio::time::timeout(drain, &mut http).await.is_err() {
            tracing::warn!(?drain, "HTTP connections did not finish in time; dropping them");
            http.abort();
            let _ = http.await;
        }
        self.state.streams.close();
        self.state.streams.wait().await;

        self.presence_stop.cancel();
        let _ = self.presence_reporter.await;

        self.sockets_stop.cancel();
        self.sockets.close();
        self.sockets.wait().await;
        tracing::info!(local_addr = %self.local_addr, "web server stopped");
    }
}
