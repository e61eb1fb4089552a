//! The ROUTER socket that serves requests.
//!
//! The receive loop only parses frames and starts one task per request, so pipelined clients
//! get their requests handled concurrently. A semaphore bounds the requests in flight, and a
//! request beyond the bound gets an `Overloaded` reply at once. A separate task owns the send
//! half and writes the replies.
//!
//! Frames as zeromq 0.7's ROUTER receives them: `[identity, empty, payload]` from a REQ
//! socket, which adds the empty delimiter, and `[identity, payload]` from a DEALER that sends
//! no delimiter. Replies go back in the same shape.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{seal, unseal, ClusterKey, MacContext, decode, encode, ErrorCode, Reply, ServerId, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::handler::Handler;
use crate::rate_limit::LogRateLimit;

/// The maximum number of requests in flight; more get an `Overloaded` reply.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long shutdown waits for requests in flight before it abandons them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a ROUTER socket and returns it with the endpoint as bound (with the real port).
pub(crate) async fn bind(endpoint: &str) -> anyhow::Result<(RouterSocket, String)> {
    let mut socket = RouterSocket::new();
    let bound = socket
        .bind(endpoint)
        .await
        .map_err(|error| anyhow::anyhow!("failed to bind the request endpoint {endpoint}: {error}"))?;
    Ok((socket, bound.to_string()))
}

/// A received request split into its routing frames and its payload.
struct Incoming {
    /// The identity frame, followed by the empty delimiter when the client sent one.
    envelope: Vec<Bytes>,
    /// The payload, or `None` when the message had more or fewer frames than expected.
    payload: Option<Bytes>,
}

fn split_frames(message: ZmqMessage) -> Incoming {
    let mut frames = message.into_vec().into_iter();
    let mut envelope: Vec<Bytes> = frames.next().into_iter().collect();
    let mut rest: Vec<Bytes> = frames.collect();
    if rest.first().is_some_and(|frame| frame.is_empty()) {
        envelope.push(rest.remove(0));
    }
    let payload = if rest.len() == 1 { rest.pop() } else { None };
    Incoming { envelope, payload }
}

fn reply_message(envelope: Vec<Bytes>, reply: &WireReply, cluster_key: Option<&ClusterKey>) -> ZmqMessage {
    let mut frames = envelope;
    frames.push(Bytes::from(encode(reply)));
    seal(cluster_key, MacContext::Reply, &mut frames, 1);
    ZmqMessage::try_from(frames).expect("a reply has at least the payload frame")
}

/// The maximum number of client addresses remembered as already logged for a failed
/// authentication. Beyond it, failures are logged under the usual rate limit only.
const MAX_LOGGED_CLIENTS: usize = 1024;

/// Decrypts and authenticates the payload of a received request when a key is set. A request
/// that fails is dropped without a reply, so a client without the key learns nothing.
///
/// Each client is logged once, under its routing id. The request guard sets that id to the
/// client's `IP:PORT` (see `guarded.rs`), so the log names the connection that sent it.
struct RequestAuthenticator {
    server: ServerId,
    cluster_key: Option<ClusterKey>,
    logged: HashSet<Bytes>,
    overflow_log: LogRateLimit,
}

impl RequestAuthenticator {
    fn check(&mut self, message: ZmqMessage) -> Option<ZmqMessage> {
        let mut frames = message.into_vec();
        let Err(error) = unseal(self.cluster_key.as_ref(), MacContext::Request, &mut frames, 1) else {
            return ZmqMessage::try_from(frames).ok();
        };
        let identity = frames.first().cloned().unwrap_or_default();
        // A process on this host can reach the internal port without the guard and choose any
        // routing id, so the id is escaped rather than trusted to be an address.
        let client = identity.escape_ascii().to_string();
        if self.logged.len() < MAX_LOGGED_CLIENTS {
            if self.logged.insert(identity) {
                warn!(server = self.server, %client, %error, "dropped a request that failed authentication; check that the client uses this group's cluster key");
            }
        } else if let Some(suppressed) = self.overflow_log.check() {
            warn!(server = self.server, %client, %error, suppressed, "dropped a request that failed authentication");
        }
        None
    }
}

fn error_reply(id: u64, code: ErrorCode, message: impl Into<String>) -> WireReply {
    WireReply { v: PROTOCOL_VERSION, id, reply: Reply::error(code, message) }
}

/// Serves requests until `shutdown` turns true, then waits for the requests in flight and
/// closes the socket.
pub(crate) async fn run(
    server: ServerId,
    socket: RouterSocket,
    handler: Handler,
    cluster_key: Option<ClusterKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (send_half, mut receive_half) = socket.split();
    // Replies waiting for the send task. The bound is the in-flight limit: a full channel
    // makes request tasks and the receive loop wait, which slows down reading new requests.
    let (replies, reply_queue) = mpsc::channel::<ZmqMessage>(MAX_IN_FLIGHT);
    let sender = tokio::spawn(send_replies(server, send_half, reply_queue));

    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    let mut receive_failures = LogRateLimit::new();
    let mut rejections = LogRateLimit::new();
    let mut authenticator =
        RequestAuthenticator { server, cluster_key: cluster_key.clone(), logged: HashSet::new(), overflow_log: LogRateLimit::new() };
    loop {
        let message = tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
            received = receive_half.recv() => received,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                if let Some(suppressed) = receive_failures.check() {
                    warn!(server, %error, suppressed, "failed to receive a request");
                }
                continue;
            }
        };

        let Some(message) = authenticator.check(message) else { continue };
        let Incoming { envelope, payload } = split_frames(message);
        let Some(payload) = payload else {
            let reply = error_reply(0, ErrorCode::Malformed, "expected one payload frame after the routing frames");
            let _ = replies.send(reply_message(envelope, &reply, cluster_key.as_ref())).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(suppressed) = rejections.check() {
                warn!(server, limit = MAX_IN_FLIGHT, suppressed, "rejected a request because too many are in flight");
            }
            let id = decode::<WireRequest>(&payload).map_or(0, |request| request.id);
            let reply = error_reply(id, ErrorCode::Overloaded, "the data server has too many requests in flight; retry later");
            let _ = replies.send(reply_message(envelope, &reply, cluster_key.as_ref())).await;
            continue;
        };

        let handler = handler.clone();
        let replies = replies.clone();
        let cluster_key = cluster_key.clone();
        in_flight.spawn(async move {
            let reply = handler.handle(&payload).await;
            let _ = replies.send(reply_message(envelope, &reply, cluster_key.as_ref())).await;
            drop(permit);
        });
    }

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(server, abandoned = in_flight.len(), "abandoned requests still in flight at shutdown");
        in_flight.shutdown().await;
    }
    drop(replies);
    let _ = sender.await;
    drop(receive_half);
    info!(server, "request socket stopped");
}

/// Writes replies until every reply sender is dropped.
async fn send_replies(server: ServerId, mut socket: zeromq::RouterSendHalf, mut queue: mpsc::Receiver<ZmqMessage>) {
    let mut failures = LogRateLimit::new();
    while let Some(message) = queue.recv().await {
        if let Err(error) = socket.send(message).await {
            // Most often the client disconnected before its reply was ready.
            if let Some(suppressed) = failures.check() {
                warn!(server, %error, suppressed, "failed to send a reply");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> ZmqMessage {
        ZmqMessage::try_from(parts.iter().map(|part| Bytes::from_static(part)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn split_frames_keeps_delimiter() {
        let incoming = split_frames(frames(&[b"id", b"", b"payload"]));
        assert_eq!(incoming.envelope, vec![Bytes::from_static(b"id"), Bytes::new()]);
        assert_eq!(incoming.payload, Some(Bytes::from_static(b"payload")));
    }

    #[test]
    fn split_frames_without_delimiter() {
        let incoming = split_frames(frames(&[b"id", b"payload"]));
        assert_eq!(incoming.envelope, vec![Bytes::from_static(b"id")]);
        assert_eq!(incoming.payload, Some(Bytes::from_static(b"payload")));
    }

    #[test]
    fn split_frames_rejects_extra_frames() {
        assert_eq!(split_frames(frames(&[b"id", b"", b"one", b"two"])).payload, None);
        assert_eq!(split_frames(frames(&[b"id", b""])).payload, None);
        assert_eq!(split_frames(frames(&[b"id"])).payload, None);
    }
}
