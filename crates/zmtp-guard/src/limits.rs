//! Limits on each client connection of a guard, a ZMTP listener or a publisher.

use std::time::Duration;

/// Maximum size of a command frame body in bytes, READY included.
///
/// A READY command from the zeromq crate (0.7) carries Socket-Type and at most
/// a 255-byte Identity, under 300 bytes in all. libzmq adds the properties set
/// with ZMQ_METADATA, so 4 KiB leaves about 3.7 KiB for those. SUBSCRIBE,
/// CANCEL, PING and PONG commands of ZMTP 3.1 are smaller than READY unless a
/// subscription topic is itself kilobytes long.
pub const MAX_COMMAND_BYTES: u64 = 4096;

/// Limits on each connection that a [`Guard`](crate::Guard), a
/// [`ZmtpListener`](crate::ZmtpListener) or a [`Publisher`](crate::Publisher)
/// accepts.
///
/// A zeromq 0.7 socket behind a guard reserves the declared size of a frame
/// before reading it, and keeps every frame of a multipart message until the
/// last arrives. The listener's reader also keeps the frames of one message.
/// So the memory a client can make the server reserve is bounded by
/// `max_connections` (plus `max_pending` on a publisher) times about
/// `max_message_bytes`, plus a per-frame
/// overhead of a few dozen bytes times `max_frames_per_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of one message frame in bytes. Default: 1 MiB.
    pub max_frame_bytes: u64,
    /// Maximum sum of the frame sizes of one message in bytes. Default: 1 MiB.
    pub max_message_bytes: u64,
    /// Maximum number of frames in one message. Default: 1024.
    pub max_frames_per_message: u64,
    /// Maximum number of client connections open at once. Further
    /// connections are accepted and closed at once. On a
    /// [`Publisher`](crate::Publisher) it is the maximum number of admitted
    /// subscribers instead, and connections not yet admitted count against
    /// [`SubscriberPolicy::max_pending`](crate::SubscriberPolicy::max_pending).
    /// Default: 4096.
    pub max_connections: usize,
    /// Time from accepting a connection until the client's greeting and READY
    /// command must be complete. Default: 5 s.
    pub greeting_timeout: Duration,
    /// Maximum time without a byte from the client while a frame or a
    /// multipart message is incomplete. Between messages a client may stay
    /// quiet for any time. Default: 10 s.
    pub stalled_frame_timeout: Duration,
    /// Maximum time that writing to the client may wait because the client
    /// reads none of our bytes. Such a wait starts only once the TCP buffers
    /// towards the client are full; then the client is cut. Behind a guard,
    /// the zeromq socket queues every message for the client meanwhile, and
    /// zeromq 0.7 waits without a bound when that queue is full. Default: 10 s.
    pub stalled_read_timeout: Duration,
    /// Limits on subscriptions, for a port that fronts a PUB socket; `None`
    /// on other ports. Default: `None`.
    pub subscriptions: Option<SubscriptionLimits>,
}

/// Limits on what a subscriber may send to a PUB socket.
///
/// A PUB socket keeps every subscription that a subscriber sends for as
/// long as the connection lasts, so without these limits one connection
/// could make the server keep any number of bytes. With them, one connection
/// stores at most `max_count` times `max_bytes`.
///
/// On such a port the guard counts every message frame (ZMTP 3.0 sends a
/// subscription as a message whose first byte is 1, a cancel as one whose
/// first byte is 0) and every SUBSCRIBE and CANCEL command (ZMTP 3.1). PING
/// and PONG commands are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Maximum size of one subscribe or cancel message frame in bytes, the
    /// leading 1 or 0 included; a SUBSCRIBE or CANCEL command may exceed it
    /// only by its name. Default: 256.
    pub max_bytes: u64,
    /// Maximum number of subscribe and cancel messages and commands on one
    /// connection. Default: 64.
    pub max_count: u64,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256,
            max_count: 64,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_frames_per_message: 1024,
            max_connections: 4096,
            greeting_timeout: Duration::from_secs(5),
            stalled_frame_timeout: Duration::from_secs(10),
            stalled_read_timeout: Duration::from_secs(10),
            subscriptions: None,
        }
    }
}

impl Limits {
    /// Returns the default limits with the default [`SubscriptionLimits`],
    /// for a port that fronts a PUB socket.
    pub fn for_pub_socket() -> Self {
        Self {
            subscriptions: Some(SubscriptionLimits::default()),
            ..Self::default()
        }
    }
}
