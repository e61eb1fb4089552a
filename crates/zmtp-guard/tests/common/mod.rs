//! Test harness: a zeromq ROUTER echo server on 127.0.0.1 behind a `Guard`,
//! plus raw ZMTP byte builders and the hostile clients in `attacks`.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod attacks;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use zeromq::{Endpoint, Host, ReqSocket, RouterSocket, Socket, SocketRecv, SocketSend};
use zmtp_guard::{Guard, Limits};

/// Time a fresh client gets to connect through the guard and receive a reply.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(1);

/// Default limits with timeouts short enough for tests.
pub fn test_limits() -> Limits {
    Limits {
        max_connections: 1000,
        greeting_timeout: Duration::from_millis(300),
        stalled_frame_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Converts a TCP endpoint returned by a zeromq `bind` to a socket address.
pub fn socket_addr(endpoint: &Endpoint) -> SocketAddr {
    match endpoint {
        Endpoint::Tcp(Host::Ipv4(ip), port) => SocketAddr::from((*ip, *port)),
        Endpoint::Tcp(Host::Ipv6(ip), port) => SocketAddr::from((*ip, *port)),
        other => panic!("expected a TCP endpoint with an IP address, got {other}"),
    }
}

/// Returns the zeromq endpoint string for `address`.
pub fn endpoint_of(address: SocketAddr) -> String {
    format!("tcp://{address}")
}

/// A ROUTER socket that sends every message back to its sender, bound on an
/// internal 127.0.0.1 port, with a guard in front of it.
pub struct Harness {
    pub guard: Guard,
    pub internal: SocketAddr,
    echo: JoinHandle<()>,
}

impl Harness {
    pub async fn start(limits: Limits) -> Harness {
        let mut router = RouterSocket::new();
        let bound = router
            .bind("tcp://127.0.0.1:0")
            .await
            .expect("bind the ROUTER socket");
        let internal = socket_addr(&bound);
        let echo = tokio::spawn(async move {
            // recv fails only once the socket has no peers queue left.
            while let Ok(message) = router.recv().await {
                // A send fails when the peer left meanwhile, which is no reason to stop.
                let _ = router.send(message).await;
            }
        });

        let public = SocketAddr::from(([127, 0, 0, 1], 0));
        let guard = Guard::start(public, internal, limits)
            .await
            .expect("start the guard");
        Harness {
            guard,
            internal,
            echo,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.guard.local_addr()
    }

    pub fn endpoint(&self) -> String {
        endpoint_of(self.guard.local_addr())
    }

    /// Asserts that a fresh REQ socket connected to the guard gets its
    /// request echoed within [`REPLY_DEADLINE`], and returns the time taken.
    pub async fn assert_serves(&self) -> Duration {
        let started = Instant::now();
        let round_trip = async {
            let mut request = ReqSocket::new();
            request
                .connect(&self.endpoint())
                .await
                .expect("connect the REQ socket");
            request.send("ping".into()).await.expect("send the request");
            let reply = request.recv().await.expect("receive the reply");
            assert_eq!(reply.get(0).map(|frame| frame.as_ref()), Some(&b"ping"[..]));
        };
        tokio::time::timeout(REPLY_DEADLINE, round_trip)
            .await
            .expect("no reply through the guard within 1 s");
        started.elapsed()
    }

    /// Waits up to 1 s for the guard's rejection counter to reach `count`.
    pub async fn wait_for_rejections(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.guard.rejected_connections() < count {
            assert!(
                Instant::now() < deadline,
                "rejected_connections is {}, expected {count}",
                self.guard.rejected_connections()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits up to 1 s for the guard's active connection count to reach `count`.
    pub async fn wait_for_active(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.guard.active_connections() != count {
            assert!(
                Instant::now() < deadline,
                "active_connections is {}, expected {count}",
                self.guard.active_connections()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) {
        self.guard.shutdown().await;
        self.echo.abort();
    }
}

/// Returns the resident set size of this process in bytes, from /proc/self/status.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmRSS value in KiB");
    kib * 1024
}

/// Builds the 64-byte ZMTP 3.0 greeting of a NULL-mechanism client.
pub fn greeting() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0] = 0xFF;
    bytes[9] = 0x7F;
    bytes[10] = 3;
    bytes[12..16].copy_from_slice(b"NULL");
    bytes
}

/// Builds a READY command frame announcing a DEALER socket.
pub fn ready_dealer() -> Vec<u8> {
    let mut body = vec![5u8];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(b"DEALER");

    let mut frame = vec![0x04, body.len() as u8];
    frame.extend(body);
    frame
}

/// Builds the greeting and READY that a DEALER sends before its first message.
pub fn handshake() -> Vec<u8> {
    [greeting(), ready_dealer()].concat()
}
