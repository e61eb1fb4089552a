//! Relay of one client connection to the internal zeromq socket.
//!
//! Each direction owns one buffer of [`CHUNK_BYTES`] and writes a chunk out
//! before reading the next, so a connection keeps at most one chunk per
//! direction. Client bytes are checked by [`ZmtpChecker`] before they are
//! written to the server, and a [`ReadyRewriter`], when given, also holds back
//! the client's READY command (at most one command frame) to rewrite it.
//! Server bytes are relayed unparsed, and a client that leaves them unread for
//! longer than `stalled_read_timeout` is cut.

use std::borrow::Cow;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::checker::{Phase, Violation, ZmtpChecker};
use crate::codec::FrameError;
use crate::limits::Limits;
use crate::ready::ReadyRewriter;
use crate::token::TokenError;

/// Size of the read buffer of each direction in bytes.
pub(crate) const CHUNK_BYTES: usize = 8 * 1024;

/// Reason for cutting a connection that broke a limit or a rule of ZMTP.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Violation(#[from] Violation),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("peer socket type {found:?} cannot talk to this socket; expected one of {expected:?}")]
    PeerSocketType { found: String, expected: &'static [&'static str] },
    #[error("the READY command has no Socket-Type property")]
    MissingSocketType,
    #[error("greeting and READY command not complete within greeting_timeout ({0:?})")]
    HandshakeTimedOut(Duration),
    #[error("no byte for stalled_frame_timeout ({0:?}) inside an unfinished frame or message")]
    FrameStalled(Duration),
    #[error("read nothing of the server's bytes for stalled_read_timeout ({0:?}) while its buffer was full")]
    ReadStalled(Duration),
    #[error("sent no subscription within subscribe_timeout ({0:?}) after the handshake")]
    NoSubscription(Duration),
    #[error("sent no subscriber token within token_timeout ({0:?}) after the handshake")]
    NoToken(Duration),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("evicted by a newer connection, because max_pending ({0}) connections had not yet subscribed or sent a subscriber token")]
    Evicted(usize),
    #[error("max_connections ({0}) subscribers are admitted already")]
    SubscribersFull(usize),
}

/// The reason a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client or the server closed its side, or a read or write failed.
    Closed(Option<io::Error>),
    /// The client broke a limit, and the guard cut both sides.
    Rejected(Rejection),
}

/// Relays bytes between `client` and `server` until either side closes or the
/// client breaks a limit, rewriting the client's READY command with `rewriter`
/// when given. Both streams are closed when this returns.
pub(crate) async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    limits: &Limits,
    rewriter: Option<ReadyRewriter>,
) -> RelayEnd {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let checker = ZmtpChecker::new(limits);

    tokio::select! {
        end = forward_checked(&mut client_read, &mut server_write, checker, rewriter, limits) => end,
        end = forward_unchecked(&mut server_read, &mut client_write, limits.stalled_read_timeout) => end,
    }
}

/// Copies client bytes to the server after the checker has accepted each chunk,
/// through `rewriter` until it has rewritten the READY command.
async fn forward_checked(
    client: &mut ReadHalf<'_>,
    server: &mut WriteHalf<'_>,
    mut checker: ZmtpChecker,
    mut rewriter: Option<ReadyRewriter>,
    limits: &Limits,
) -> RelayEnd {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let handshake_deadline = Instant::now() + limits.greeting_timeout;

    loop {
        // The handshake has one deadline from accept. Inside a message the
        // deadline restarts with every read. Between messages there is none.
        let limit = match checker.phase() {
            Phase::Handshake => Some((
                handshake_deadline,
                Rejection::HandshakeTimedOut(limits.greeting_timeout),
            )),
            Phase::InsideMessage => Some((
                Instant::now() + limits.stalled_frame_timeout,
                Rejection::FrameStalled(limits.stalled_frame_timeout),
            )),
            Phase::BetweenMessages => None,
        };
        let read = match limit {
            Some((deadline, rejection)) => {
                match timeout_at(deadline, client.read(&mut buffer)).await {
                    Ok(read) => read,
                    Err(_elapsed) => return RelayEnd::Rejected(rejection),
                }
            }
            None => client.read(&mut buffer).await,
        };

        let length = match read {
            Ok(0) => return RelayEnd::Closed(None),
            Ok(length) => length,
            Err(error) => return RelayEnd::Closed(Some(error)),
        };
        if let Err(violation) = checker.feed(&buffer[..length]) {
            return RelayEnd::Rejected(violation.into());
        }
        let relayed = match rewriter.as_mut() {
            Some(active) => match active.rewrite(&buffer[..length]) {
                Ok(relayed) => relayed,
                Err(violation) => return RelayEnd::Rejected(violation.into()),
            },
            None => Cow::Borrowed(&buffer[..length]),
        };
        if rewriter.as_ref().is_some_and(ReadyRewriter::is_done) {
            rewriter = None;
        }
        if let Err(error) = server.write_all(&relayed).await {
            return RelayEnd::Closed(Some(error));
        }
    }
}

/// Copies server bytes to the client unchanged, and gives up on a client that
/// takes longer than `stalled_read_timeout` to make room for one chunk.
///
/// A write waits only once the client's receive window and the kernel's send
/// buffer are full, that is when the client has left at least that much
/// unread. While it waits, the server's bytes for this client pile up in the
/// zeromq socket, so the wait must end.
async fn forward_unchecked(
    server: &mut ReadHalf<'_>,
    client: &mut WriteHalf<'_>,
    stalled_read_timeout: Duration,
) -> RelayEnd {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let length = match server.read(&mut buffer).await {
            Ok(0) => return RelayEnd::Closed(None),
            Ok(length) => length,
            Err(error) => return RelayEnd::Closed(Some(error)),
        };
        let mut unwritten = &buffer[..length];
        while !unwritten.is_empty() {
            // The deadline restarts whenever the client takes some bytes, so
            // only a client that reads nothing for the whole timeout is cut.
            match tokio::time::timeout(stalled_read_timeout, client.write(unwritten)).await {
                Ok(Ok(0)) => return RelayEnd::Closed(Some(io::ErrorKind::WriteZero.into())),
                Ok(Ok(written)) => unwritten = &unwritten[written..],
                Ok(Err(error)) => return RelayEnd::Closed(Some(error)),
                Err(_elapsed) => {
                    return RelayEnd::Rejected(Rejection::ReadStalled(stalled_read_timeout))
                }
            }
        }
    }
}
