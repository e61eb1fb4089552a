//! The `webserver` binary: parses the command line, starts a [`WebServer`] and stops it on
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use forum_protocol::{parse_peer_list, ClusterKey};
use forum_webserver::{Config, HttpLimits, Options, WebServer};

/// Serves the forum page and its HTTP API, backed by one data server of a list, with failover.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Arguments {
    /// Address and port to serve HTTP on; port 0 picks a free port.
    #[arg(long, env = "FORUM_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The data servers' request endpoints (their ROUTER sockets), as tcp://HOST:PORT separated
    /// by commas. The first is used, and the next one when it stops replying.
    #[arg(long, env = "FORUM_DATA_REQUEST", default_value = "tcp://127.0.0.1:21000", value_parser = endpoints)]
    data_request: String,

    /// The same data servers' change-feed endpoints (their PUB sockets), as tcp://HOST:PORT
    /// separated by commas, in the same order as --data-request.
    #[arg(long, env = "FORUM_DATA_PUB", default_value = "tcp://127.0.0.1:20000", value_parser = endpoints)]
    data_pub: String,

    /// This web server's name in presence records [default: web-<listen address>].
    #[arg(long, env = "FORUM_WEB_NAME", value_parser = web_server_name)]
    name: Option<String>,

    /// A file holding the cluster key of the data servers' group: every ZeroMQ message to and
    /// from them then has its payload encrypted and authenticated with XChaCha20-Poly1305 under
    /// it. When absent, the key is read from the FORUM_CLUSTER_KEY environment variable; with
    /// neither, messages are neither encrypted nor authenticated.
    #[arg(long, value_name = "FILE", env = "FORUM_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<std::path::PathBuf>,

    /// The maximum number of HTTP connections open at once, event streams included; more are closed at
    /// once [default: 16384, or 3/4 of the open-file limit when lower].
    #[arg(long, env = "FORUM_WEB_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// Milliseconds a client may take to send a request's headers before its connection is
    /// closed.
    #[arg(long, env = "FORUM_WEB_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_ms: u64,

    /// Milliseconds a client may take to send a request's body, from the end of its headers,
    /// before the server responds with 408 and closes the connection.
    #[arg(long, env = "FORUM_WEB_BODY_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout_ms: u64,

    /// Milliseconds to wait for the data server's reply before returning HTTP 503.
    #[arg(long, env = "FORUM_WEB_REQUEST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
}

/// Checks a web server name: 1 to 64 characters, none of them control characters, because
/// data servers reject presence records with any other name.
fn web_server_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().count() > 64 || text.chars().any(char::is_control) {
        return Err(format!("invalid web server name {text:?}: use 1 to 64 characters without control characters"));
    }
    Ok(text.to_owned())
}

/// Checks a comma-separated endpoint list and keeps it as given.
fn endpoints(text: &str) -> Result<String, String> {
    match parse_peer_list(text) {
        Ok(list) if list.is_empty() => Err("give at least one endpoint, such as tcp://127.0.0.1:21000".to_owned()),
        Ok(list) => Ok(list.join(",")),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let arguments = Arguments::parse();
    let config = Config {
        name: arguments.name.unwrap_or_else(|| format!("web-{}", arguments.listen)),
        listen: arguments.listen,
        data_request_endpoint: arguments.data_request,
        data_pub_endpoint: arguments.data_pub,
        request_timeout: Duration::from_millis(arguments.request_timeout_ms),
    };
    let cluster_key = ClusterKey::from_file_or_text(
        arguments.cluster_key_file.as_deref(),
        std::env::var("FORUM_CLUSTER_KEY").ok().as_deref(),
    )?;
    if cluster_key.is_none() {
        tracing::warn!("no cluster key is set: requests to the data servers are neither encrypted nor authenticated, so only data servers without a key accept them");
    }
    let mut http = HttpLimits {
        header_read_timeout: Duration::from_millis(arguments.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(arguments.body_read_timeout_ms),
        ..HttpLimits::default()
    };
    if let Some(max_connections) = arguments.max_connections {
        http.max_connections = max_connections as usize;
    }
    let server = WebServer::start_with(config, Options { cluster_key, http }).await?;
    wait_for_signal().await.context("failed to listen for shutdown signals")?;
    server.shutdown().await;
    Ok(())
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutdown signal received");
    Ok(())
}
