//! The subscriber to the data server's change feed and the fan-out to event streams.
//!
//! A SUB socket subscribed to [`TOPIC_WEBSERVER`] receives two-frame messages `[topic,
//! WireChange]`. Each decoded change gets the next number of this web server's event counter
//! and goes to every open event stream through a tokio broadcast channel.

use std::sync::Arc;
use std::time::Duration;

use forum_protocol::{decode, Change, WireChange, TOPIC_WEBSERVER};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SubSocket};

/// Changes the broadcast channel keeps for streams that have not read them yet.
///
/// Policy: the channel never blocks the subscriber. A stream that falls more than this many
/// changes behind loses the oldest ones, gets a `resync` event telling the page to refetch,
/// and continues with the newest changes.
pub const CHANGE_CHANNEL_CAPACITY: usize = 1024;

/// Pause after a failed connection attempt or a receive error.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A change with the number this web server gave it, which event streams send as the `id:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberedChange {
    pub number: u64,
    pub change: Change,
}

/// Creates the broadcast channel that the subscriber feeds and event streams read.
pub fn channel() -> broadcast::Sender<Arc<NumberedChange>> {
    broadcast::channel(CHANGE_CHANNEL_CAPACITY).0
}

/// Receives changes from `endpoint` and broadcasts them, until `shutdown`.
///
/// The SUB socket of zeromq 0.7 reconnects by itself once its first connection succeeded,
/// but the first `connect` fails after its timeout when the data server is down, so that
/// attempt is repeated here.
pub async fn subscribe(endpoint: String, changes: broadcast::Sender<Arc<NumberedChange>>, shutdown: CancellationToken) {
    let mut socket = SubSocket::new();
    if let Err(error) = socket.subscribe(TOPIC_WEBSERVER).await {
        tracing::error!(%error, "failed to subscribe to the change feed");
        return;
    }
    let mut logged_unreachable = false;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = socket.connect(&endpoint) => result,
        };
        match connected {
            Ok(()) => break,
            Err(error) => {
                if !logged_unreachable {
                    tracing::warn!(%endpoint, %error, "failed to connect to the change feed; retrying until it is up");
                    logged_unreachable = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }
    tracing::info!(%endpoint, "subscribed to the data server's change feed");

    let mut number: u64 = 0;
    let mut undecodable: u64 = 0;
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "failed to receive from the change feed; the socket reconnects by itself");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => continue,
                }
            }
        };
        let Some(payload) = message.get(1) else {
            undecodable += 1;
            continue;
        };
        match decode::<WireChange>(payload) {
            Ok(wire) => {
                number += 1;
                // An error only means that no event stream is open right now.
                let _ = changes.send(Arc::new(NumberedChange { number, change: wire.change }));
            }
            Err(error) => {
                undecodable += 1;
                if undecodable.is_power_of_two() {
                    tracing::warn!(%error, count = undecodable, "ignored undecodable changes from the data server");
                }
            }
        }
    }
}
