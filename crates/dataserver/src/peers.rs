//! One subscriber task per peer: it receives the peer's own changes on the checkpoint topic
//! and hands them to the actor.
//!
//! Each peer has its own SUB socket so that a peer's liveness can be tracked on its own.
//! zeromq 0.7's `connect` fails when the peer is not up within the connect timeout, so the
//! task retries it with backoff. Once connected, the SUB socket reconnects by itself.

use std::time::Duration;

use forum_protocol::{decode, ServerId, WireChange, TOPIC_CHECKPOINT};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use zeromq::{Socket, SocketOptions, SocketRecv, SubSocket, ZmqMessage};

use crate::command::Command;
use crate::rate_limit::LogRateLimit;

/// How long one connection attempt may take before it is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first and the longest wait between failed connection attempts.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Subscribes to one peer until `shutdown` turns true.
pub(crate) async fn run(server: ServerId, peer: String, actor: mpsc::Sender<Command>, mut shutdown: watch::Receiver<bool>) {
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    tokio::select! {
        () = stopping => {}
        () = subscribe(server, &peer, actor) => {}
    }
    info!(server, peer, "peer subscriber stopped");
}

async fn subscribe(server: ServerId, peer: &str, actor: mpsc::Sender<Command>) {
    let mut socket = connect(server, peer).await;
    info!(server, peer, "connected to peer");

    let mut receive_failures = LogRateLimit::new();
    let mut decode_failures = LogRateLimit::new();
    loop {
        let message = match socket.recv().await {
            Ok(message) => message,
            Err(error) => {
                if let Some(suppressed) = receive_failures.check() {
                    warn!(server, peer, %error, suppressed, "failed to receive from peer; the socket reconnects by itself");
                }
                tokio::time::sleep(FIRST_RETRY_DELAY).await;
                continue;
            }
        };
        let change = match parse(&message) {
            Ok(change) => change,
            Err(reason) => {
                if let Some(suppressed) = decode_failures.check() {
                    warn!(server, peer, reason, suppressed, "dropped an undecodable message from peer");
                }
                continue;
            }
        };
        // Waiting on a full actor channel leaves messages queued in the SUB socket. Beyond
        // its queue the peer's PUB socket drops them.
        // NOTE: a change missed here, or published while this server was disconnected, is
        // never fetched again; there is no catch-up from a peer's log yet.
        if actor.send(Command::Replicated { change: change.change }).await.is_err() {
            return;
        }
    }
}

/// Connects and subscribes, retrying with backoff until it succeeds.
async fn connect(server: ServerId, peer: &str) -> SubSocket {
    let mut delay = FIRST_RETRY_DELAY;
    let mut failures = LogRateLimit::new();
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_TIMEOUT);
        let mut socket = SubSocket::with_options(options);
        let result = match socket.connect(peer).await {
            Ok(()) => socket.subscribe(TOPIC_CHECKPOINT).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => return socket,
            Err(error) => {
                if let Some(suppressed) = failures.check() {
                    warn!(server, peer, %error, suppressed, retry_in = ?delay, "failed to connect to peer; retrying");
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Reads a `[topic, WireChange]` message from the checkpoint topic.
fn parse(message: &ZmqMessage) -> Result<WireChange, String> {
    if message.len() != 2 {
        return Err(format!("expected 2 frames, got {}", message.len()));
    }
    let topic = message.get(0).expect("the message has 2 frames");
    if topic.as_ref() != TOPIC_CHECKPOINT.as_bytes() {
        return Err(format!("unexpected topic {:?}", String::from_utf8_lossy(topic)));
    }
    let payload = message.get(1).expect("the message has 2 frames");
    decode(payload).map_err(|error| error.to_string())
}
