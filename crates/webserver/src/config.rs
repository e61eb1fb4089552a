//! The settings of one web server.

use std::net::SocketAddr;
use std::time::Duration;

/// The default time a request to the data server may take before the API returns 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings that have a default, kept apart from [`Config`] so that a `Config` literal need
/// not name them.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The key that encrypts and authenticates every ZeroMQ message to and from the data
    /// servers; it must be the data servers' key. Without one, messages are sent in clear.
    pub cluster_key: Option<forum_protocol::ClusterKey>,
    /// Limits on HTTP connections: the connection cap and the header-read timeout.
    pub http: crate::listener::HttpLimits,
}

/// The settings of one web server.
#[derive(Clone, Debug)]
pub struct Config {
    /// The HTTP address to listen on; port 0 picks a free port (see [`crate::WebServer::local_addr`]).
    pub listen: SocketAddr,
    /// The data servers' request (ROUTER) endpoints, separated by commas, such as
    /// `tcp://127.0.0.1:21000` or `tcp://127.0.0.1:21000,tcp://127.0.0.1:21001`. The web server
    /// uses the first, and moves to the next when the one in use stops answering.
    pub data_request_endpoint: String,
    /// The same data servers' change-feed (PUB) endpoints, separated by commas, in the same
    /// order and as many as in `data_request_endpoint`.
    pub data_pub_endpoint: String,
    /// This web server's name in presence records.
    pub name: String,
    /// How long a request to the data server may take before it fails with HTTP 503.
    pub request_timeout: Duration,
}
