//! The ROUTER port that serves requests, a ZMTP server of our own (see
//! [`zmtp_guard::ZmtpListener`]).
//!
//! Each client connection runs in one task, which reads the client's requests, keeps them
//! in flight while they wait for the actor, and writes their replies back to the same
//! connection. Requests with small replies, writes among them, run as futures that the
//! connection's loop polls, which costs less than a task each. A request whose reply can be
//! large runs in a task of its own, so encoding that reply does not hold up the loop. The
//! requests in flight on all connections together are bounded, and a request beyond the
//! bound gets an `Overloaded` reply at once.
//!
//! Replies wait in the connection's own write buffer, and every write takes all of them, so
//! a busy connection sends many replies per system call. A client that reads none of them
//! for `stalled_read_timeout` while the buffer is not empty is cut. It can delay no other
//! client, because nothing is shared between connections but the actor and the in-flight
//! bound, and a request in flight gives its permit back as soon as its reply is built.
//!
//! A message is `[payload]` from a DEALER and `[empty, payload]` from a REQ socket, which
//! adds the empty delimiter. The reply goes back in the same shape. A ROUTER socket would
//! put the routing id of the connection in front; here the connection is known, and its
//! `IP:PORT` names the client in logs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use forum_protocol::{
    encode, encode_into, peek_request_id, seal, unseal, ClusterKey, ErrorCode, MacContext, Reply, ServerId, WireReply, PROTOCOL_VERSION,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{error, warn};
use zmtp_guard::codec::{write_frame, write_frame_with, write_pong, Event, FrameReader};
use zmtp_guard::{wait_until_stopping, Connection, ConnectionEnd, Limits, Phase, Rejection, SocketSpec, ZmtpListener};

use crate::handler::{Decoded, Handler};
use crate::rate_limit::LogRateLimit;

/// The maximum number of requests in flight on all connections; more get an `Overloaded`
/// reply.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long shutdown waits for a connection's requests in flight and unsent replies before
/// it abandons them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The unsent reply bytes of one connection above which it reads no more requests. The
/// buffer can exceed it only by the replies to requests already in flight.
const MAX_UNSENT_BYTES: usize = 256 * 1024;

/// The starting capacity of a connection's write buffer, enough for dozens of small replies.
const WRITE_BUFFER_CAPACITY: usize = 8 * 1024;

/// Our socket type and the client socket types that can talk to it.
const SOCKET_SPEC: SocketSpec = SocketSpec { socket_type: "ROUTER", peer_types: &["REQ", "DEALER"] };

/// The maximum number of client addresses remembered as already logged for a failed
/// authentication. Beyond it, failures are logged under the usual rate limit only.
const MAX_LOGGED_CLIENTS: usize = 1024;

/// Binds the request port. The limits admit the largest request (64 KiB) with room to spare,
/// so an oversized request still reaches the handler and gets an error reply instead of a
/// cut connection.
pub(crate) async fn bind(public: SocketAddr) -> anyhow::Result<ZmtpListener> {
    ZmtpListener::bind(public, Limits::default())
        .await
        .map_err(|error| anyhow::anyhow!("failed to bind the request endpoint tcp://{public}: {error}"))
}

/// Serves requests until `shutdown` turns true. The returned task then waits for each
/// connection's requests in flight and unsent replies, at most [`DRAIN_TIMEOUT`], and closes
/// the connections.
pub(crate) fn serve(
    server: ServerId,
    listener: ZmtpListener,
    handler: Handler,
    cluster_key: Option<ClusterKey>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let context = Arc::new(RequestContext {
        server,
        handler,
        cluster_key,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        authentication_log: Mutex::new(AuthenticationLog { logged: HashSet::new(), overflow: LogRateLimit::new() }),
        overload_log: Mutex::new(LogRateLimit::new()),
    });
    listener.serve(SOCKET_SPEC, shutdown, move |connection| serve_connection(Arc::clone(&context), connection))
}

/// The state that every connection of the request port shares.
struct RequestContext {
    server: ServerId,
    handler: Handler,
    cluster_key: Option<ClusterKey>,
    /// One permit per request in flight, [`MAX_IN_FLIGHT`] in all.
    in_flight: Arc<Semaphore>,
    authentication_log: Mutex<AuthenticationLog>,
    overload_log: Mutex<LogRateLimit>,
}

/// The clients already logged for a request that failed authentication, so each is logged
/// once.
struct AuthenticationLog {
    logged: HashSet<Bytes>,
    overflow: LogRateLimit,
}

/// A request accepted for handling, with what its reply needs.
struct Pending {
    /// Whether the client sent the empty delimiter frame, which the reply then repeats.
    delimiter: bool,
    request: Decoded,
    permit: OwnedSemaphorePermit,
}

/// A reply to a request that was in flight.
struct Answer {
    delimiter: bool,
    payload: AnswerPayload,
}

enum AnswerPayload {
    /// A reply still to encode.
    Reply(WireReply),
    /// A reply that its own task encoded and sealed.
    Encoded(Bytes),
    /// No reply, because the task handling the request failed.
    Failed,
}

/// The event that woke a connection's loop.
enum Wake {
    Answer(Answer),
    Written(std::io::Result<usize>),
    Read(Result<usize, zmtp_guard::codec::ReadError>),
    WriteStalled,
    FrameStalled,
    Stopping,
    DrainTimedOut,
}

/// Serves one client until it closes, is cut or the server stops.
async fn serve_connection(context: Arc<RequestContext>, connection: Connection) -> ConnectionEnd {
    let Connection { mut stream, peer, mut reader, limits, mut stopping, .. } = connection;
    let client = Bytes::from(peer.to_string());
    let (mut receive, mut send) = stream.split();
    let mut unsent = BytesMut::with_capacity(WRITE_BUFFER_CAPACITY);
    let mut requests = FuturesUnordered::new();
    let mut drain_deadline: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut last_written = Instant::now();

    loop {
        // The reader may hold requests that arrived with the handshake, or that were left
        // there because the replies waiting to be written reached MAX_UNSENT_BYTES.
        if drain_deadline.is_none() {
            let taken = take_events(&context, &client, &mut reader, &mut unsent, |pending| requests.push(answer(&context, pending)));
            if let Err(end) = taken {
                return end;
            }
        }
        if drain_deadline.is_some() && requests.is_empty() && unsent.is_empty() {
            return ConnectionEnd::Closed(None);
        }
        if unsent.is_empty() {
            // The write timeout counts from the moment a reply waits.
            last_written = Instant::now();
        }
        let reading = drain_deadline.is_none() && unsent.len() < MAX_UNSENT_BYTES;
        let frame_deadline = (reading && reader.phase() == Phase::InsideMessage).then(|| last_read + limits.stalled_frame_timeout);
        let write_deadline = last_written + limits.stalled_read_timeout;

        // Replies that are ready go into the buffer before the next write, so one write
        // sends every one of them.
        let wake = tokio::select! {
            biased;
            Some(answer) = requests.next(), if !requests.is_empty() => Wake::Answer(answer),
            written = send.write(&unsent), if !unsent.is_empty() => Wake::Written(written),
            read = reader.read_from(&mut receive), if reading => Wake::Read(read),
            () = sleep_until(write_deadline), if !unsent.is_empty() => Wake::WriteStalled,
            () = sleep_until(frame_deadline.unwrap_or(write_deadline)), if frame_deadline.is_some() => Wake::FrameStalled,
            () = wait_until_stopping(&mut stopping), if drain_deadline.is_none() => Wake::Stopping,
            () = sleep_until(drain_deadline.unwrap_or(write_deadline)), if drain_deadline.is_some() => Wake::DrainTimedOut,
        };

        match wake {
            Wake::Answer(answer) => write_answer(&context, &mut unsent, answer),
            Wake::Written(Ok(0)) => return ConnectionEnd::Closed(Some(std::io::ErrorKind::WriteZero.into())),
            Wake::Written(Ok(written)) => {
                // Advancing keeps the buffer's one allocation, which the next reply reuses.
                unsent.advance(written);
                last_written = Instant::now();
            }
            Wake::Written(Err(error)) => return ConnectionEnd::Closed(Some(error)),
            Wake::Read(Ok(0)) => return ConnectionEnd::Closed(None),
            Wake::Read(Ok(_)) => last_read = Instant::now(),
            Wake::Read(Err(error)) => return error.into(),
            Wake::WriteStalled => return ConnectionEnd::Cut(Rejection::ReadStalled(limits.stalled_read_timeout)),
            Wake::FrameStalled => return ConnectionEnd::Cut(Rejection::FrameStalled(limits.stalled_frame_timeout)),
            Wake::Stopping => drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT),
            Wake::DrainTimedOut => {
                warn!(server = context.server, client = %peer, abandoned = requests.len(), unsent = unsent.len(), "abandoned requests and replies of a client at shutdown");
                return ConnectionEnd::Closed(None);
            }
        }
    }
}

/// Takes the complete messages and commands in the reader until [`MAX_UNSENT_BYTES`] of
/// replies wait: it writes a PONG for each PING and the replies that need no handling, and
/// passes the other requests to `push`. The rest stays in the reader for a later call.
///
/// One read can contain a million bytes of 2-byte messages, and the error reply to each is
/// dozens of bytes. Taking every event of a read would so let a client that never reads
/// make its connection buffer many times MAX_UNSENT_BYTES.
fn take_events(
    context: &RequestContext,
    client: &Bytes,
    reader: &mut FrameReader,
    unsent: &mut BytesMut,
    mut push: impl FnMut(Pending),
) -> Result<(), ConnectionEnd> {
    while unsent.len() < MAX_UNSENT_BYTES {
        let Some(event) = reader.next_event().map_err(|error| ConnectionEnd::Cut(error.into()))? else { break };
        match event {
            Event::Message(frames) => {
                if let Some(pending) = accept_request(context, client, frames, unsent) {
                    push(pending);
                }
            }
            Event::Command(command) if command.name.as_ref() == b"PING" => write_pong(unsent, &command.data),
            // Other commands, such as SUBSCRIBE, mean nothing to a ROUTER, so they are
            // ignored. The greeting has been checked already.
            Event::Command(_) | Event::Greeting { .. } => {}
        }
    }
    Ok(())
}

/// Authenticates and decodes one request. Returns it for handling, or writes its reply at
/// once when it is malformed or over the in-flight bound, or drops it when it fails
/// authentication.
///
/// Writing a reply only appends to the connection's buffer and never waits for room. An
/// earlier design queued replies on one bounded channel to a send task, where the loop
/// waiting for room to queue an `Overloaded` reply could deadlock with the requests in
/// flight that held the room. Here the buffer's size is bounded instead by reading no more
/// once [`MAX_UNSENT_BYTES`] wait.
fn accept_request(context: &RequestContext, client: &Bytes, mut frames: Vec<Bytes>, unsent: &mut BytesMut) -> Option<Pending> {
    if let Err(error) = unseal(context.cluster_key.as_ref(), MacContext::Request, &mut frames, 1) {
        log_failed_authentication(context, client, &error);
        return None;
    }
    let (delimiter, payload) = split_frames(frames);
    let Some(payload) = payload else {
        let reply = error_reply(0, ErrorCode::Malformed, "expected one payload frame after the routing frames");
        write_reply(unsent, delimiter, context.cluster_key.as_ref(), &reply);
        return None;
    };
    let Ok(permit) = Arc::clone(&context.in_flight).try_acquire_owned() else {
        let suppressed = context.overload_log.lock().expect("the rate limit lock is never poisoned").check();
        if let Some(suppressed) = suppressed {
            warn!(server = context.server, limit = MAX_IN_FLIGHT, suppressed, "rejected a request because too many are in flight");
        }
        let id = peek_request_id(&payload).unwrap_or(0);
        let reply = error_reply(id, ErrorCode::Overloaded, "the data server has too many requests in flight; retry later");
        write_reply(unsent, delimiter, context.cluster_key.as_ref(), &reply);
        return None;
    };
    match context.handler.decode(&payload) {
        Ok(request) => Some(Pending { delimiter, request, permit }),
        Err(reply) => {
            write_reply(unsent, delimiter, context.cluster_key.as_ref(), &reply);
            None
        }
    }
}

/// Logs a request that failed authentication, once per client. A request that fails is
/// dropped without a reply, so a client without the key learns nothing.
fn log_failed_authentication(context: &RequestContext, client: &Bytes, error: &dyn std::fmt::Display) {
    let mut log = context.authentication_log.lock().expect("the authentication log lock is never poisoned");
    let client_text = String::from_utf8_lossy(client);
    if log.logged.len() < MAX_LOGGED_CLIENTS {
        if log.logged.insert(client.clone()) {
            warn!(server = context.server, client = %client_text, %error, "dropped a request that failed authentication; check that the client uses this group's cluster key");
        }
    } else if let Some(suppressed) = log.overflow.check() {
        warn!(server = context.server, client = %client_text, %error, suppressed, "dropped a request that failed authentication");
    }
}

/// Splits a message into whether it starts with the empty delimiter and its one payload
/// frame, or `None` when it has more or fewer frames than that.
fn split_frames(mut frames: Vec<Bytes>) -> (bool, Option<Bytes>) {
    let delimiter = frames.len() > 1 && frames[0].is_empty();
    let routing_frames = usize::from(delimiter);
    let payload = if frames.len() == routing_frames + 1 { frames.pop() } else { None };
    (delimiter, payload)
}

/// Handles one request and returns its reply. The permit is given back when the reply is
/// built, before it is written.
async fn answer(context: &RequestContext, pending: Pending) -> Answer {
    let Pending { delimiter, request, permit } = pending;
    let payload = if request.has_large_reply() {
        let handler = context.handler.clone();
        let cluster_key = context.cluster_key.clone();
        let task = tokio::spawn(async move {
            let reply = handler.handle(request).await;
            encode_payload(cluster_key.as_ref(), &reply)
        });
        match task.await {
            Ok(payload) => AnswerPayload::Encoded(payload),
            Err(join_error) => {
                error!(server = context.server, %join_error, "the task handling a request failed");
                AnswerPayload::Failed
            }
        }
    } else {
        let id = request.id;
        let reply = context.handler.start(request).reply().await;
        AnswerPayload::Reply(WireReply { v: PROTOCOL_VERSION, id, reply })
    };
    drop(permit);
    Answer { delimiter, payload }
}

fn write_answer(context: &RequestContext, unsent: &mut BytesMut, answer: Answer) {
    match answer.payload {
        AnswerPayload::Reply(reply) => write_reply(unsent, answer.delimiter, context.cluster_key.as_ref(), &reply),
        AnswerPayload::Encoded(payload) => {
            if answer.delimiter {
                write_frame(unsent, &[], true);
            }
            write_frame(unsent, &payload, false);
        }
        AnswerPayload::Failed => {}
    }
}

/// Appends a reply message to the write buffer, encoded in place when no key seals it.
fn write_reply(unsent: &mut BytesMut, delimiter: bool, cluster_key: Option<&ClusterKey>, reply: &WireReply) {
    if delimiter {
        write_frame(unsent, &[], true);
    }
    match cluster_key {
        None => write_frame_with(unsent, false, |buffer| encode_into(&mut buffer.writer(), reply)),
        Some(_) => write_frame(unsent, &encode_payload(cluster_key, reply), false),
    }
}

/// Encodes a reply and seals it when a key is set.
fn encode_payload(cluster_key: Option<&ClusterKey>, reply: &WireReply) -> Bytes {
    let mut frames = [Bytes::from(encode(reply))];
    seal(cluster_key, MacContext::Reply, &mut frames, 1);
    let [payload] = frames;
    payload
}

fn error_reply(id: u64, code: ErrorCode, message: impl Into<String>) -> WireReply {
    WireReply { v: PROTOCOL_VERSION, id, reply: Reply::error(code, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|part| Bytes::from_static(part)).collect()
    }

    #[test]
    fn split_frames_keeps_delimiter() {
        assert_eq!(split_frames(frames(&[b"", b"payload"])), (true, Some(Bytes::from_static(b"payload"))));
    }

    #[test]
    fn split_frames_without_delimiter() {
        assert_eq!(split_frames(frames(&[b"payload"])), (false, Some(Bytes::from_static(b"payload"))));
    }

    #[test]
    fn split_frames_rejects_extra_frames() {
        assert_eq!(split_frames(frames(&[b"", b"one", b"two"])).1, None);
        assert_eq!(split_frames(frames(&[b"one", b"two"])).1, None);
        assert_eq!(split_frames(frames(&[b"", b""])), (true, Some(Bytes::new())), "an empty payload after the delimiter");
    }
}
