//! The ROUTER socket that serves requests.
//!
//! The receive loop parses frames and decodes each request, then keeps it in flight while
//! it waits for the actor, so pipelined clients get their requests handled concurrently.
//! Requests with small replies, writes among them, run as futures that the loop itself
//! polls, which costs less than a task each. A request whose reply can be large runs in a task
//! of its own, so encoding that reply does not hold up the loop. The requests in flight are
//! bounded, and a request beyond the bound gets an `Overloaded` reply at once. A separate task
//! owns the send half and writes the replies.
//!
//! Frames as zeromq 0.7's ROUTER receives them: `[identity, empty, payload]` from a REQ
//! socket, which adds the empty delimiter, and `[identity, payload]` from a DEALER that sends
//! no delimiter. Replies go back in the same shape.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{seal, unseal, ClusterKey, MacContext, encode, peek_request_id, ErrorCode, Reply, ServerId, WireReply, PROTOCOL_VERSION};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::handler::{Decoded, Handler};
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

/// Splits a request's frames in place, so the envelope keeps the frames' vector and the reply
/// is built in it without another allocation.
fn split_frames(mut frames: Vec<Bytes>) -> Incoming {
    let routing_frames = if frames.get(1).is_some_and(Bytes::is_empty) { 2 } else { 1 };
    let payload = if frames.len() == routing_frames + 1 { frames.pop() } else { None };
    frames.truncate(routing_frames);
    Incoming { envelope: frames, payload }
}

fn reply_message(mut frames: Vec<Bytes>, reply: &WireReply, cluster_key: Option<&ClusterKey>) -> ZmqMessage {
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
    fn check(&mut self, message: ZmqMessage) -> Option<Vec<Bytes>> {
        let mut frames = message.into_vec();
        let Err(error) = unseal(self.cluster_key.as_ref(), MacContext::Request, &mut frames, 1) else {
            return Some(frames);
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
    // makes requests in flight and the receive loop wait, which slows down reading new requests.
    let (replies, reply_queue) = mpsc::channel::<ZmqMessage>(MAX_IN_FLIGHT);
    let sender = tokio::spawn(send_replies(server, send_half, reply_queue));

    // Requests in flight whose replies are small, polled by this loop.
    let mut polled = FuturesUnordered::new();
    // Requests in flight whose replies can be large, each in its own task.
    let mut spawned = JoinSet::new();
    let mut receive_failures = LogRateLimit::new();
    let mut rejections = LogRateLimit::new();
    let mut authenticator =
        RequestAuthenticator { server, cluster_key: cluster_key.clone(), logged: HashSet::new(), overflow_log: LogRateLimit::new() };
    loop {
        let message = tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            // This branch completes only once every polled request is done. Until then it
            // finishes each polled request that is ready, several at a time.
            () = finish_all(&mut polled), if !polled.is_empty() => continue,
            Some(_) = spawned.join_next(), if !spawned.is_empty() => continue,
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

        let Some(frames) = authenticator.check(message) else { continue };
        let Incoming { envelope, payload } = split_frames(frames);
        let Some(payload) = payload else {
            let reply = error_reply(0, ErrorCode::Malformed, "expected one payload frame after the routing frames");
            queue_from_loop(&replies, &mut polled, reply_message(envelope, &reply, cluster_key.as_ref())).await;
            continue;
        };
        if polled.len() + spawned.len() >= MAX_IN_FLIGHT {
            if let Some(suppressed) = rejections.check() {
                warn!(server, limit = MAX_IN_FLIGHT, suppressed, "rejected a request because too many are in flight");
            }
            let id = peek_request_id(&payload).unwrap_or(0);
            let reply = error_reply(id, ErrorCode::Overloaded, "the data server has too many requests in flight; retry later");
            queue_from_loop(&replies, &mut polled, reply_message(envelope, &reply, cluster_key.as_ref())).await;
            continue;
        }

        let work = match handler.decode(&payload) {
            Ok(request) => Work::Handle { envelope, request },
            Err(reply) => Work::Queue(reply_message(envelope, &reply, cluster_key.as_ref())),
        };
        if matches!(&work, Work::Handle { request, .. } if request.has_large_reply()) {
            let handler = handler.clone();
            let replies = replies.clone();
            let cluster_key = cluster_key.clone();
            spawned.spawn(async move { serve(&handler, &replies, cluster_key.as_ref(), work).await });
        } else {
            polled.push(serve(&handler, &replies, cluster_key.as_ref(), work));
        }
    }

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        finish_all(&mut polled).await;
        while spawned.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(server, abandoned = polled.len() + spawned.len(), "abandoned requests still in flight at shutdown");
        spawned.shutdown().await;
    }
    drop(polled);
    drop(replies);
    let _ = sender.await;
    drop(receive_half);
    info!(server, "request socket stopped");
}

/// The work left for a request in flight.
enum Work {
    /// Handle the request, then send the reply to the routing frames in `envelope`.
    Handle { envelope: Vec<Bytes>, request: Decoded },
    /// Queue a reply that is ready, such as the error for a request that cannot be decoded.
    Queue(ZmqMessage),
}

/// Does the work left for one request and queues its reply.
async fn serve(handler: &Handler, replies: &mpsc::Sender<ZmqMessage>, cluster_key: Option<&ClusterKey>, work: Work) {
    let message = match work {
        Work::Handle { envelope, request } => {
            let reply = handler.handle(request).await;
            reply_message(envelope, &reply, cluster_key)
        }
        Work::Queue(message) => message,
    };
    let _ = replies.send(message).await;
}

/// Queues a reply that the receive loop itself makes, while it keeps polling the requests in
/// flight.
///
/// The loop must not simply await `replies.send`. The reply queue hands out its room in the
/// order that senders requested it, so when the queue is full, room that the send task frees
/// goes first to polled requests that were already waiting. Those requests finish only when
/// the loop polls them, which a loop waiting for room of its own never does. The queue then
/// stays empty while every request in flight keeps the room it was given, and the server
/// stops sending replies to anyone. Reserving room while polling the requests lets them
/// finish first.
async fn queue_from_loop<F: std::future::Future<Output = ()>>(
    replies: &mpsc::Sender<ZmqMessage>,
    polled: &mut FuturesUnordered<F>,
    message: ZmqMessage,
) {
    let reserve = replies.reserve();
    tokio::pin!(reserve);
    loop {
        tokio::select! {
            permit = &mut reserve => {
                if let Ok(permit) = permit {
                    permit.send(message);
                }
                return;
            }
            Some(()) = polled.next(), if !polled.is_empty() => {}
        }
    }
}

/// Polls `requests` until every one is done.
async fn finish_all<F: std::future::Future<Output = ()>>(requests: &mut FuturesUnordered<F>) {
    while requests.next().await.is_some() {}
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

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|part| Bytes::from_static(part)).collect()
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
