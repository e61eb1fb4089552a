//! The limits of the data server's PUB port, and the parsing of endpoints.
//!
//! Both ZeroMQ ports are ZMTP servers of our own, on `zmtp_guard::ZmtpListener`: the request
//! port (`request_socket.rs`) and the PUB port (`zmtp_guard::Publisher`). No zeromq socket
//! decodes a client's bytes, so a frame header that declares 2^45 bytes, which makes zeromq
//! 0.7 abort the whole process, is cut by the checker before any byte is reserved for it.

use std::net::SocketAddr;

use anyhow::Context;
use forum_protocol::ClusterKey;
use zmtp_guard::{Limits, Publisher, SubscriberKey, SubscriberPolicy};

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

/// Starts the native PUB port on `public`. Its subscribers may send only a few small
/// subscriptions. With a cluster key, each must first prove with a subscriber token that it
/// has the key. Without one, it must subscribe soon after its handshake.
pub(crate) async fn start_publisher(public: SocketAddr, cluster_key: Option<&ClusterKey>) -> anyhow::Result<Publisher> {
    Publisher::start_with_policy(public, pub_limits(), pub_policy(cluster_key))
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
/// The maximum number of pub port connections that are not admitted yet, in their handshake
/// or before their token (with a key) or first subscription (without one). A new connection
/// beyond it evicts the oldest of them, so they never take the admitted subscribers' places.
pub const PUB_MAX_PENDING: usize = 16;
/// The maximum number of subscribe or cancel messages one subscriber may send. A peer subscribes to one
/// topic prefix and a web server to one topic.
pub const PUB_MAX_SUBSCRIPTIONS: u64 = 8;

/// Returns the limits of the pub port's guard.
///
/// Every publication is matched against every subscription, so these caps bound that work:
/// 64 connections of 8 subscriptions each. With zeromq 0.7's PUB socket, which the port used
/// before, 500 connections of 64 subscriptions each froze a data server for good
/// (`hostile_zmq::many_subscribers_keep_server_alive`).
/// Returns the pub port's admission rules: a token within 2 s with a key, a subscription
/// within 5 s without one.
fn pub_policy(cluster_key: Option<&ClusterKey>) -> SubscriberPolicy {
    SubscriberPolicy {
        key: cluster_key.map(|key| SubscriberKey::new(key.subscriber_key())),
        max_pending: PUB_MAX_PENDING,
        ..SubscriberPolicy::default()
    }
}

fn pub_limits() -> Limits {
    let mut limits = Limits::for_pub_socket();
    limits.max_connections = PUB_MAX_CONNECTIONS;
    if let Some(subscriptions) = limits.subscriptions.as_mut() {
        subscriptions.max_count = PUB_MAX_SUBSCRIPTIONS;
    }
    limits
}
