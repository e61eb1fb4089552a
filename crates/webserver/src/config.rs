//! The settings of one web server.

use std::net::SocketAddr;
use std::time::Duration;

/// The default time a request to the data server may take before the API returns 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings of one web server.
#[derive(Clone, Debug)]
pub struct Config {
    /// The HTTP address to listen on; port 0 picks a free port (see [`crate::WebServer::local_addr`]).
    pub listen: SocketAddr,
    /// The data server's request (ROUTER) endpoint, such as `tcp://127.0.0.1:21000`.
    pub data_request_endpoint: String,
    /// The data server's change-feed (PUB) endpoint, such as `tcp://127.0.0.1:20000`.
    pub data_pub_endpoint: String,
    /// This web server's name in presence records.
    pub name: String,
    /// How long a request to the data server may take before it fails with HTTP 503.
    pub request_timeout: Duration,
}
