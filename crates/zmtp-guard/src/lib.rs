//! ZMTP servers that check what their clients send, ZMTP client sockets that
//! check what their servers send, and a TCP front that does the same for a
//! zeromq socket.
//!
//! [`ZmtpListener`] and [`Publisher`] serve ZMTP themselves: the data server's
//! request port (a ROUTER) and its PUB port. [`Dealer`] and [`Subscriber`]
//! connect out: the web server's sockets to its data server, and a data
//! server's sockets to its peers. [`Guard`] relays checked bytes to a zeromq
//! socket bound on loopback. All of them check the bytes they receive with the
//! same [`ZmtpChecker`] and [`Limits`].
//!
//! The `zeromq` crate (0.7) has no limits on what a peer sends. Its frame
//! decoder reserves the size that a frame header declares, so 73 bytes (a
//! valid greeting, then a long frame header declaring 2^45 bytes) make the
//! allocation fail and abort the whole process. It also keeps every frame of
//! a multipart message, and waits on half-sent frames without a timeout.
//!
//! A [`Guard`] listens on the public address in place of the zeromq socket,
//! which binds an internal loopback address instead. For each client the
//! guard opens a connection to the internal address and relays bytes both
//! ways. Client bytes pass through a [`ZmtpChecker`] first, and the guard cuts
//! both sides at the first [`Violation`] of the [`Limits`], logging the peer
//! and the reason (rate-limited).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use zmtp_guard::{Guard, Limits};
//!
//! // The zeromq socket is bound to an internal address, for example with
//! // `socket.bind("tcp://127.0.0.1:0")`, and the guard takes the public one.
//! let internal = "127.0.0.1:40001".parse().unwrap();
//! let public = "0.0.0.0:5555".parse().unwrap();
//! let guard = Guard::start(public, internal, Limits::default()).await?;
//! // ...
//! guard.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! A guard started with [`RoutingId::ClientAddress`] also rewrites each
//! client's READY command so that its Identity property is the client's
//! address, such as `203.0.113.5:40112`. A ROUTER socket behind it then
//! receives every message with that address as its routing id.
//!
//! [`ZmtpListener`] serves clients without a relay: it checks and cuts their
//! streams with the same limits, and hands each one, after the handshake, to
//! a service that reads frames with [`codec::FrameReader`] and writes its
//! own. The data server's request port is such a ROUTER.
//!
//! A [`Publisher`] may demand a subscriber token made with a [`SubscriberKey`]
//! before it sends a subscriber anything. It caps the connections that have
//! not yet subscribed or sent a token apart from its admitted subscribers, so
//! idle connections cannot fill their places.
//!
//! [`Dealer`] and [`Subscriber`] connect to one `tcp://HOST:PORT` endpoint and
//! read the server's stream through a [`codec::FrameReader`] as well. They cut
//! a server that breaks the limits, log it as a warning (rate-limited) with
//! the server's address and the reason, and return a [`ClientError`]. They
//! never reconnect by themselves, so the caller connects a new socket, after
//! a pause of its choosing.
//!
//! ```no_run
//! # async fn example() -> Result<(), zmtp_guard::ClientError> {
//! use std::time::Duration;
//! use zmtp_guard::{Limits, Subscriber};
//!
//! let limits = Limits::default();
//! let mut subscriber = Subscriber::connect("tcp://127.0.0.1:5556", &[b"news"], &limits, Duration::from_secs(1)).await?;
//! let frames = subscriber.recv().await?;
//! # let _ = frames;
//! # Ok(()) }
//! ```
//!
//! NOTE: the internal address is still reachable by any local process on the
//! host, which the guard does not protect against.

mod admission;
mod checker;
mod client;
pub mod codec;
mod guard;
mod limits;
mod log_limit;
mod publish;
mod ready;
mod relay;
mod server;
mod stats;
mod token;

pub use admission::Admission;
pub use client::{ClientError, Dealer, DealerReceiver, DealerSender, Subscriber};
pub use checker::{Phase, Violation, ZmtpChecker, GREETING_LEN};
pub use guard::{Guard, RoutingId};
pub use publish::{Publisher, SubscriberPolicy, QUEUE_MESSAGES};
pub use limits::{Limits, SubscriptionLimits, MAX_COMMAND_BYTES};
pub use relay::Rejection;
pub use server::{wait_until_stopping, Connection, ConnectionEnd, SocketSpec, ZmtpListener};
pub use stats::GuardStats;
pub use token::{SubscriberKey, TokenError, TOKEN_LABEL, TOKEN_LEN, TOKEN_MAX_AGE, TOKEN_PREFIX};
