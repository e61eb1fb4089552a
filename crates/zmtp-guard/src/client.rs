//! ZMTP client sockets, a DEALER and a SUB, that check what the server sends.
//!
//! Both connect to one `tcp://HOST:PORT` endpoint and speak ZMTP 3.x with the NULL
//! mechanism, as [`ZmtpListener`](crate::ZmtpListener), [`Publisher`](crate::Publisher)
//! and libzmq do. Every byte from the server passes through the same [`FrameReader`] and
//! [`Limits`] as on our listening ports. So a frame size, message size or frame count
//! beyond the limits is rejected when its header arrives, before anything is reserved for
//! it. The handshake must finish within `greeting_timeout`, and an unfinished frame or
//! message must make progress within `stalled_frame_timeout`. Of the [`Limits`], the
//! client ignores `max_connections` and `subscriptions`.
//!
//! Unlike a zeromq socket, a client socket never reconnects by itself. When the server
//! closes the connection, a read or write fails or the server breaks a limit, the socket
//! returns a [`ClientError`], and the caller drops it and connects again later. A cut
//! for a broken limit or rule is also logged as a warning that names the server and the
//! reason, at most [`LOG_LINES_PER_WINDOW`] lines per 10 s in the whole process.

use std::io;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::warn;

use crate::checker::Phase;
use crate::codec::{self, ready_property, Event, FrameReader, ReadError, SOCKET_TYPE_PROPERTY};
use crate::limits::Limits;
use crate::log_limit::LogRateLimiter;
use crate::relay::Rejection;
use crate::token::SubscriberKey;

/// Warnings about cut server connections admitted per 10 s window, for all client sockets
/// of the process together.
pub const LOG_LINES_PER_WINDOW: u32 = 10;

static CUT_LOG: LazyLock<LogRateLimiter> = LazyLock::new(|| LogRateLimiter::new(LOG_LINES_PER_WINDOW, Duration::from_secs(10)));

/// The failure of a client socket. After any error but
/// [`InvalidEndpoint`](ClientError::InvalidEndpoint) the connection is unusable, and the
/// caller should drop the socket and connect again.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not of the form `tcp://HOST:PORT`.
    #[error("invalid endpoint {endpoint:?}: expected tcp://HOST:PORT")]
    InvalidEndpoint { endpoint: String },
    /// The TCP connection was not established within the connect timeout.
    #[error("no connection to {endpoint} within {timeout:?}")]
    ConnectTimedOut { endpoint: String, timeout: Duration },
    /// Connecting, reading or writing failed.
    #[error("connection to {peer} failed: {source}")]
    Io { peer: String, source: io::Error },
    /// The server closed the connection.
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    /// The server broke a limit or a rule of ZMTP, so the client cut the connection.
    #[error("cut the connection to {peer}: {reason}")]
    Cut { peer: String, reason: Rejection },
    /// The server read none of our bytes for `stalled_read_timeout` while the TCP buffers
    /// towards it were full.
    #[error("{peer} read none of our bytes for stalled_read_timeout ({timeout:?})")]
    WriteStalled { peer: String, timeout: Duration },
}

impl ClientError {
    /// Returns true when the server broke a limit or a rule and the client cut it.
    pub fn is_cut(&self) -> bool {
        matches!(self, ClientError::Cut { .. })
    }
}

/// Logs the cut, rate-limited, and returns it as an error.
fn cut(peer: SocketAddr, reason: Rejection) -> ClientError {
    if let Some(suppressed) = CUT_LOG.admit() {
        warn!(%peer, %reason, suppressed, "ZMTP client cut a connection to a server that broke a limit or a rule of ZMTP");
    }
    ClientError::Cut { peer: peer.to_string(), reason }
}

/// Returns the `HOST:PORT` part of a `tcp://HOST:PORT` endpoint.
fn tcp_address(endpoint: &str) -> Result<&str, ClientError> {
    match endpoint.strip_prefix("tcp://") {
        Some(address) if !address.is_empty() && address.contains(':') => Ok(address),
        _ => Err(ClientError::InvalidEndpoint { endpoint: endpoint.to_owned() }),
    }
}

/// Our socket type and the server socket types it may talk to.
struct Pairing {
    socket_type: &'static str,
    peer_types: &'static [&'static str],
}

const DEALER_PAIRING: Pairing = Pairing { socket_type: "DEALER", peer_types: &["ROUTER", "DEALER"] };
const SUB_PAIRING: Pairing = Pairing { socket_type: "SUB", peer_types: &["PUB", "XPUB"] };

/// Connects to `endpoint` within `connect_timeout`, then runs the handshake within
/// `limits.greeting_timeout`.
async fn open(endpoint: &str, limits: &Limits, connect_timeout: Duration, pairing: &Pairing) -> Result<(Incoming, Outgoing), ClientError> {
    let address = tcp_address(endpoint)?;
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ClientError::Io { peer: endpoint.to_owned(), source }),
        Err(_elapsed) => return Err(ClientError::ConnectTimedOut { endpoint: endpoint.to_owned(), timeout: connect_timeout }),
    };
    let peer = stream.peer_addr().map_err(|source| ClientError::Io { peer: endpoint.to_owned(), source })?;
    // Requests and publications are small and latency-sensitive, as on the server side.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut incoming = Incoming { read, reader: FrameReader::new(limits), peer, stalled_frame_timeout: limits.stalled_frame_timeout, last_read: Instant::now() };
    let mut outgoing = Outgoing { write, buffer: BytesMut::new(), peer, stalled_read_timeout: limits.stalled_read_timeout };

    let timeout = limits.greeting_timeout;
    match tokio::time::timeout(timeout, handshake(&mut incoming, &mut outgoing, pairing)).await {
        Ok(Ok(())) => Ok((incoming, outgoing)),
        Ok(Err(error)) => Err(error),
        Err(_elapsed) => Err(cut(peer, Rejection::HandshakeTimedOut(timeout))),
    }
}

/// Sends our greeting and READY, then reads the server's and checks its socket type.
async fn handshake(incoming: &mut Incoming, outgoing: &mut Outgoing, pairing: &Pairing) -> Result<(), ClientError> {
    let mut ours = BytesMut::with_capacity(128);
    codec::write_greeting(&mut ours);
    codec::write_ready(&mut ours, pairing.socket_type);
    outgoing.write_bytes(&ours).await?;

    loop {
        // The checker accepts only a greeting and then READY here, so the first command is
        // the READY command.
        let Event::Command(ready) = incoming.next_event().await? else { continue };
        let peer = incoming.peer;
        let socket_type = ready_property(&ready.data, SOCKET_TYPE_PROPERTY)
            .map_err(|error| cut(peer, error.into()))?
            .ok_or_else(|| cut(peer, Rejection::MissingSocketType))?;
        if pairing.peer_types.iter().any(|accepted| accepted.as_bytes() == socket_type) {
            return Ok(());
        }
        let found = String::from_utf8_lossy(socket_type).into_owned();
        return Err(cut(peer, Rejection::PeerSocketType { found, expected: pairing.peer_types }));
    }
}

/// The read side of a connection: the checked frames from the server.
#[derive(Debug)]
struct Incoming {
    read: OwnedReadHalf,
    reader: FrameReader,
    peer: SocketAddr,
    stalled_frame_timeout: Duration,
    /// When the last read returned bytes. An unfinished frame or message must get its next
    /// bytes within `stalled_frame_timeout` of it, even across cancelled calls.
    last_read: Instant,
}

impl Incoming {
    /// Returns the next greeting, command or message. Cancel-safe: a cancelled call has
    /// taken no bytes that a later call does not see.
    async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            match self.reader.next_event() {
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(error) => return Err(cut(self.peer, error.into())),
            }
            let inside_message = self.reader.phase() == Phase::InsideMessage;
            let read_once = self.reader.read_from(&mut self.read);
            let result = if inside_message {
                let deadline = self.last_read + self.stalled_frame_timeout;
                match tokio::time::timeout_at(deadline, read_once).await {
                    Ok(result) => result,
                    Err(_elapsed) => return Err(cut(self.peer, Rejection::FrameStalled(self.stalled_frame_timeout))),
                }
            } else {
                read_once.await
            };
            match result {
                Ok(0) => return Err(ClientError::Closed { peer: self.peer.to_string() }),
                Ok(_) => self.last_read = Instant::now(),
                Err(ReadError::Io(source)) => return Err(ClientError::Io { peer: self.peer.to_string(), source }),
                Err(ReadError::Violation(violation)) => return Err(cut(self.peer, violation.into())),
            }
        }
    }
}

/// The write side of a connection.
#[derive(Debug)]
struct Outgoing {
    write: OwnedWriteHalf,
    buffer: BytesMut,
    peer: SocketAddr,
    stalled_read_timeout: Duration,
}

impl Outgoing {
    /// Writes one message of `frames`. Sends nothing for an empty slice.
    async fn send(&mut self, frames: &[Bytes]) -> Result<(), ClientError> {
        for (index, frame) in frames.iter().enumerate() {
            codec::write_frame(&mut self.buffer, frame, index + 1 < frames.len());
        }
        let message = self.buffer.split();
        self.write_bytes(&message).await
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut unwritten = bytes;
        while !unwritten.is_empty() {
            // The deadline restarts whenever the server takes some bytes.
            match tokio::time::timeout(self.stalled_read_timeout, self.write.write(unwritten)).await {
                Ok(Ok(0)) => return Err(ClientError::Io { peer: self.peer.to_string(), source: io::ErrorKind::WriteZero.into() }),
                Ok(Ok(written)) => unwritten = &unwritten[written..],
                Ok(Err(source)) => return Err(ClientError::Io { peer: self.peer.to_string(), source }),
                Err(_elapsed) => return Err(ClientError::WriteStalled { peer: self.peer.to_string(), timeout: self.stalled_read_timeout }),
            }
        }
        Ok(())
    }
}

/// A DEALER socket connected to one ROUTER or DEALER server.
///
/// Messages go out as they are given, with no envelope added, so a ROUTER server receives
/// `[routing id, frames...]`.
///
/// NOTE: PING commands from the server get no PONG, because the receive half cannot write.
/// Our servers send no PING. A libzmq server with `ZMQ_HEARTBEAT_IVL` and
/// `ZMQ_HEARTBEAT_TIMEOUT` set may close a connection that carries no messages.
#[derive(Debug)]
pub struct Dealer {
    sender: DealerSender,
    receiver: DealerReceiver,
}

/// The send half of a [`Dealer`].
#[derive(Debug)]
pub struct DealerSender {
    outgoing: Outgoing,
}

/// The receive half of a [`Dealer`].
#[derive(Debug)]
pub struct DealerReceiver {
    incoming: Incoming,
}

impl Dealer {
    /// Connects to `endpoint` (`tcp://HOST:PORT`) within `connect_timeout` and runs the
    /// handshake within `limits.greeting_timeout`.
    pub async fn connect(endpoint: &str, limits: &Limits, connect_timeout: Duration) -> Result<Dealer, ClientError> {
        let (incoming, outgoing) = open(endpoint, limits, connect_timeout, &DEALER_PAIRING).await?;
        Ok(Dealer { sender: DealerSender { outgoing }, receiver: DealerReceiver { incoming } })
    }

    /// Returns the server's address.
    pub fn peer(&self) -> SocketAddr {
        self.receiver.incoming.peer
    }

    /// Sends one message; see [`DealerSender::send`].
    pub async fn send(&mut self, frames: &[Bytes]) -> Result<(), ClientError> {
        self.sender.send(frames).await
    }

    /// Receives one message; see [`DealerReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, ClientError> {
        self.receiver.recv().await
    }

    /// Splits the socket so that one task can send while another receives.
    pub fn split(self) -> (DealerSender, DealerReceiver) {
        (self.sender, self.receiver)
    }
}

impl DealerSender {
    /// Sends one message of `frames`, waiting while the server reads none of our bytes, up to
    /// `stalled_read_timeout`.
    ///
    /// Not cancel-safe: a cancelled send may leave part of a message on the connection, so
    /// drop the socket after cancelling one.
    pub async fn send(&mut self, frames: &[Bytes]) -> Result<(), ClientError> {
        self.outgoing.send(frames).await
    }
}

impl DealerReceiver {
    /// Receives the frames of the next message. Commands from the server are skipped.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, ClientError> {
        loop {
            if let Event::Message(frames) = self.incoming.next_event().await? {
                return Ok(frames);
            }
        }
    }
}

/// A SUB socket connected to one PUB or XPUB server.
///
/// It subscribes with ZMTP 3.0 subscription messages (a 1 byte, then the topic prefix),
/// which our [`Publisher`](crate::Publisher) and libzmq 4.x PUB sockets accept from ZMTP 3.0
/// and 3.1 peers. Connected with a [`SubscriberKey`], it first sends a subscriber token as
/// such a subscription, because a publisher with the same key demands one. Other PUB sockets
/// keep the token as a subscription that matches no text topic. It replies to PING commands
/// with PONG and passes on only messages whose first frame starts with one of its topic
/// prefixes.
#[derive(Debug)]
pub struct Subscriber {
    incoming: Incoming,
    outgoing: Outgoing,
    topics: Vec<Bytes>,
}

impl Subscriber {
    /// Connects to `endpoint` (`tcp://HOST:PORT`) within `connect_timeout`, runs the
    /// handshake within `limits.greeting_timeout` and subscribes to each prefix of
    /// `topics`. An empty prefix subscribes to every message.
    pub async fn connect(endpoint: &str, topics: &[&[u8]], limits: &Limits, connect_timeout: Duration) -> Result<Subscriber, ClientError> {
        Subscriber::connect_with_key(endpoint, None, topics, limits, connect_timeout).await
    }

    /// Connects as [`connect`](Self::connect) does, and with a `key` sends a new subscriber
    /// token before the topics, so that a [`Publisher`](crate::Publisher) with the same key
    /// admits it.
    pub async fn connect_with_key(
        endpoint: &str,
        key: Option<&SubscriberKey>,
        topics: &[&[u8]],
        limits: &Limits,
        connect_timeout: Duration,
    ) -> Result<Subscriber, ClientError> {
        let (incoming, mut outgoing) = open(endpoint, limits, connect_timeout, &SUB_PAIRING).await?;
        if let Some(key) = key {
            let token = key.token();
            let mut subscription = Vec::with_capacity(1 + token.len());
            subscription.push(1);
            subscription.extend_from_slice(&token);
            outgoing.send(&[Bytes::from(subscription)]).await?;
        }
        for topic in topics {
            let mut subscription = Vec::with_capacity(1 + topic.len());
            subscription.push(1);
            subscription.extend_from_slice(topic);
            outgoing.send(&[Bytes::from(subscription)]).await?;
        }
        let topics = topics.iter().map(|topic| Bytes::copy_from_slice(topic)).collect();
        Ok(Subscriber { incoming, outgoing, topics })
    }

    /// Returns the server's address.
    pub fn peer(&self) -> SocketAddr {
        self.incoming.peer
    }

    /// Receives the frames of the next message that matches a subscription.
    ///
    /// Cancel-safe, except while it writes a PONG: a call cancelled then may leave part of
    /// the PONG on the connection, and the server may then cut it.
    pub async fn recv(&mut self) -> Result<Vec<Bytes>, ClientError> {
        loop {
            match self.incoming.next_event().await? {
                Event::Message(frames) => {
                    let topic = frames.first().map(|frame| &frame[..]).unwrap_or_default();
                    if self.topics.iter().any(|prefix| topic.starts_with(prefix)) {
                        return Ok(frames);
                    }
                }
                Event::Command(command) if &command.name[..] == b"PING" => {
                    let mut pong = BytesMut::new();
                    codec::write_pong(&mut pong, &command.data);
                    self.outgoing.write_bytes(&pong).await?;
                }
                Event::Command(_) | Event::Greeting { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_needs_tcp_scheme_and_port() {
        assert_eq!(tcp_address("tcp://127.0.0.1:5555").unwrap(), "127.0.0.1:5555");
        assert_eq!(tcp_address("tcp://localhost:1").unwrap(), "localhost:1");
        for invalid in ["127.0.0.1:5555", "tcp://", "tcp://host", "ipc:///tmp/socket"] {
            assert!(matches!(tcp_address(invalid), Err(ClientError::InvalidEndpoint { .. })), "{invalid}");
        }
    }
}
