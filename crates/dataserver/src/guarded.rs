//! The ZMTP guard in front of the data server's PUB socket, and the parsing of endpoints.
//!
//! zeromq 0.7 reserves whatever size a frame header declares, so one 73-byte stream (a
//! greeting, then a frame header declaring 2^45 bytes) aborts the whole process. So the
//! zeromq PUB socket listens on an ephemeral loopback port only, and a [`Guard`] takes the
//! configured endpoint: it checks every client's greeting and frame headers against
//! [`Limits`] and relays what passes. A client that breaks a limit is cut and counted. The
//! request port needs no guard, because it is a ZMTP server of our own with the same limits
//! (see `request_socket.rs`).

use std::net::SocketAddr;

use anyhow::Context;
use zmtp_guard::{Guard, Limits, RoutingId};

/// The endpoint that the zeromq PUB socket binds behind its guard: an ephemeral loopback port.
pub(crate) const INTERNAL_ENDPOINT: &str = "tcp://127.0.0.1:0";

/// Resolves the address that a configured `tcp://HOST:PORT` endpoint names. The host `*`
/// means every IPv4 interface, as in libzmq; a host name resolves to its first address.
pub(crate) async fn public_address(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let invalid = || format!("invalid endpoint {endpoint:?}; expected tcp://HOST:PORT, such as tcp://127.0.0.1:21000");
    let rest = endpoint.strip_prefix("tcp://").with_context(invalid)?;
    let (host, port) = rest.rsplit_once(':').with_context(invalid)?;
    let port: u16 = port.parse().ok().with_context(invalid)?;
    let host = match host {
        "*" => "0.0.0.0",
        bracketed if bracketed.starts_with('[') => bracketed.trim_start_matches('[').trim_end_matches(']'),
        name => name,
    };
    let mut addresses = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("failed to resolve the host of the endpoint {endpoint}"))?;
    addresses.next().with_context(|| format!("the host of the endpoint {endpoint} resolves to no address"))
}

/// Returns the endpoint that clients use for a guard's public address.
pub(crate) fn endpoint_of(address: SocketAddr) -> String {
    format!("tcp://{address}")
}

/// Starts the guard on `public` that relays to the PUB socket bound at `internal_endpoint`
/// (as zeromq reports it, `tcp://127.0.0.1:PORT`).
pub(crate) async fn start_pub(public: SocketAddr, internal_endpoint: &str) -> anyhow::Result<Guard> {
    let internal: SocketAddr = internal_endpoint
        .strip_prefix("tcp://")
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("the pub socket bound {internal_endpoint:?}, which is not tcp://IP:PORT"))?;
    Guard::start_with_routing_id(public, internal, pub_limits(), RoutingId::AsSent)
        .await
        .with_context(|| format!("failed to bind the pub endpoint {}", endpoint_of(public)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn public_address_forms() {
        assert_eq!(public_address("tcp://127.0.0.1:21000").await.unwrap(), "127.0.0.1:21000".parse().unwrap());
        assert_eq!(public_address("tcp://*:5").await.unwrap(), "0.0.0.0:5".parse().unwrap());
        assert_eq!(public_address("tcp://[::1]:7").await.unwrap(), "[::1]:7".parse().unwrap());
        assert!(public_address("udp://127.0.0.1:1").await.is_err());
        assert!(public_address("tcp://127.0.0.1:x").await.is_err());
    }
}

/// The maximum number of subscribers the pub port admits at once: the group's peers, its web servers and a
/// few monitors.
pub const PUB_MAX_CONNECTIONS: usize = 64;
/// The maximum number of subscribe or cancel messages one subscriber may send. A peer subscribes to one
/// topic prefix and a web server to one topic.
pub const PUB_MAX_SUBSCRIPTIONS: u64 = 8;

/// Returns the limits of the pub port's guard.
///
/// NOTE: zeromq 0.7's PUB socket blocks a runtime thread when a subscription message arrives
/// while a publication is being fanned out to the same part of its subscriber table. 500
/// connections of 64 subscriptions each froze a data server for good, with both worker
/// threads blocked there (`hostile_zmq::many_subscribers_keep_server_alive`). These caps keep the table small, which made the freeze stop
/// in tests; they do not remove the lock itself.
fn pub_limits() -> Limits {
    let mut limits = Limits::for_pub_socket();
    limits.max_connections = PUB_MAX_CONNECTIONS;
    if let Some(subscriptions) = limits.subscriptions.as_mut() {
        subscriptions.max_count = PUB_MAX_SUBSCRIPTIONS;
    }
    limits
}
