//! Starting and stopping a web server: the HTTP listener and the background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use forum_protocol::parse_peer_list;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::changes::{self, Feed};
use crate::config::{Config, Options};
use crate::data_client::DataClient;
use crate::presence::{self, Presence};
use crate::listener;
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
    /// Fails on an invalid endpoint list or when the listen address cannot be bound. The data
    /// servers need not be up yet: the sockets connect in the background, and API requests
    /// made before that wait for one up to the request timeout.
    pub async fn start(config: Config) -> anyhow::Result<WebServer> {
        WebServer::start_with(config, Options::default()).await
    }

    /// Starts a web server as [`WebServer::start`] does, with `options`.
    pub async fn start_with(config: Config, options: Options) -> anyhow::Result<WebServer> {
        let (request_endpoints, pub_endpoints) =
            data_server_endpoints(&config.data_request_endpoint, &config.data_pub_endpoint)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let local_addr = listener.local_addr().context("failed to read the bound HTTP address")?;

        let sockets_stop = CancellationToken::new();
        let sockets = TaskTracker::new();
        let data = DataClient::start(request_endpoints, config.request_timeout, options.cluster_key, sockets_stop.clone(), &sockets);
        let feed = Arc::new(Feed::new());
        sockets.spawn(changes::run(Arc::clone(&feed), data.clone(), pub_endpoints, sockets_stop.clone()));

        let presence = Arc::new(Presence::default());
        let presence_stop = CancellationToken::new();
        let presence_reporter =
            tokio::spawn(presence::report(Arc::clone(&presence), data.clone(), config.name.clone(), presence_stop.clone()));

        let state = Arc::new(AppState {
            login_limiter: Default::default(),
            sessions: Sessions::new(data.clone()),
            data,
            presence,
            feed,
            request_timeout: config.request_timeout,
            shutdown: CancellationToken::new(),
            streams: TaskTracker::new(),
        });
        let http = tokio::spawn(listener::serve(listener, Arc::clone(&state), options.http, state.shutdown.clone()));
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

    /// Returns the id of the data server in use, or `None` while connecting to one.
    pub fn data_server(&self) -> Option<forum_protocol::ServerId> {
        self.state.data.active().borrow().map(|active| active.server)
    }

    /// Returns the number of event streams open now.
    pub fn open_streams(&self) -> usize {
        self.state.streams.len()
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

/// Parses the comma-separated request and PUB endpoint lists of the data servers, which must
/// name the same number of servers, in the same order.
fn data_server_endpoints(requests: &str, pubs: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let request_endpoints = parse_peer_list(requests).context("invalid data server request endpoint")?;
    let pub_endpoints = parse_peer_list(pubs).context("invalid data server pub endpoint")?;
    if request_endpoints.is_empty() {
        anyhow::bail!("no data server request endpoint given; give at least one, such as tcp://127.0.0.1:21000");
    }
    if request_endpoints.len() != pub_endpoints.len() {
        anyhow::bail!(
            "{} data server request endpoints but {} pub endpoints were given; give one of each per data server, in the same order",
            request_endpoints.len(),
            pub_endpoints.len()
        );
    }
    Ok((request_endpoints, pub_endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_pair_up() {
        let (requests, pubs) = data_server_endpoints("tcp://127.0.0.1:1,tcp://127.0.0.1:2", "tcp://127.0.0.1:3,tcp://127.0.0.1:4").unwrap();
        assert_eq!(requests, ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]);
        assert_eq!(pubs, ["tcp://127.0.0.1:3", "tcp://127.0.0.1:4"]);

        let single = data_server_endpoints("tcp://127.0.0.1:1", "tcp://127.0.0.1:3").unwrap();
        assert_eq!(single, (vec!["tcp://127.0.0.1:1".to_owned()], vec!["tcp://127.0.0.1:3".to_owned()]));
    }

    #[test]
    fn endpoint_lists_must_match() {
        let error = data_server_endpoints("tcp://127.0.0.1:1,tcp://127.0.0.1:2", "tcp://127.0.0.1:3").unwrap_err();
        assert!(error.to_string().contains("2 data server request endpoints but 1"), "{error}");
        assert!(data_server_endpoints("", "").is_err());
        assert!(data_server_endpoints("http://x", "tcp://127.0.0.1:3").is_err());
    }
}
