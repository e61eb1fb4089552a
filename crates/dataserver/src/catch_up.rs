//! Catch-up: fetching the changes that a peer has and this server lacks, in bounded batches,
//! over a DEALER socket to the peer's request endpoint.
//!
//! The DEALER socket is `zmtp_guard`'s, which checks every reply against the limits of
//! [`reply_limits`] and cuts a peer that breaks them. It never reconnects, so a [`Fetcher`]
//! whose request fails or times out is dropped, and the next catch-up, one replicator tick
//! later at the earliest, connects a new one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use forum_protocol::{seal, unseal, ClusterKey, MacContext, decode, encode, Change, Reply, Request, ServerId, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};
use tracing::info;
use zmtp_guard::{Dealer, Limits};

use crate::command::Command;
use crate::metrics::{add, Metrics};

/// The number of changes asked for in one `FetchChanges` request, and the most a server
/// returns for one.
pub(crate) const FETCH_BATCH: u32 = 1000;

/// The most encoded bytes a server puts in one `FetchChanges` reply. With messages of up to
/// 4 KiB, 1,000 changes could reach 4 MiB, so large messages make smaller batches.
pub(crate) const FETCH_MAX_BYTES: usize = 1024 * 1024;

/// How long a fetch waits for its reply before it drops the socket.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the TCP connection of a fetcher may take, and then its ZMTP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest reply accepted from a peer, in bytes. A batch stops once it reaches
/// [`FETCH_MAX_BYTES`], so its last change may take it over by at most the size of one change,
/// a few KiB; twice the batch size leaves ample room.
const MAX_REPLY_BYTES: u64 = 2 * FETCH_MAX_BYTES as u64;

/// Returns the limits on what a peer's request port sends to a fetcher.
fn reply_limits() -> Limits {
    Limits { max_frame_bytes: MAX_REPLY_BYTES, max_message_bytes: MAX_REPLY_BYTES, greeting_timeout: CONNECT_TIMEOUT, ..Limits::default() }
}

/// How many fetched batches may wait for the actor's commit while the next one is fetched.
const BATCHES_IN_FLIGHT: usize = 2;

/// A DEALER socket connected to one peer's request endpoint.
pub(crate) struct Fetcher {
    pub endpoint: String,
    socket: Dealer,
    next_request_id: u64,
    cluster_key: Option<ClusterKey>,
}

impl Fetcher {
    pub async fn connect(endpoint: &str, cluster_key: Option<ClusterKey>) -> anyhow::Result<Fetcher> {
        let socket = Dealer::connect(endpoint, &reply_limits(), CONNECT_TIMEOUT)
            .await
            .map_err(|error| anyhow::anyhow!("failed to connect to the fetch endpoint {endpoint}: {error}"))?;
        Ok(Fetcher { endpoint: endpoint.to_owned(), socket, next_request_id: 1, cluster_key })
    }

    /// Asks for the changes of `origin` after `after_seq`. An error means the socket can no
    /// longer be trusted and must be dropped.
    async fn fetch(&mut self, origin: ServerId, after_seq: u64) -> anyhow::Result<Vec<Change>> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let request = WireRequest { v: PROTOCOL_VERSION, id, request: Request::FetchChanges { origin, after_seq, limit: FETCH_BATCH }, client: None, brief: false };
        let mut frames = vec![Bytes::from(encode(&request))];
        seal(self.cluster_key.as_ref(), MacContext::Request, &mut frames, 1);
        self.socket
            .send(&frames)
            .await
            .map_err(|error| anyhow::anyhow!("failed to send a fetch request to {}: {error}", self.endpoint))?;
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        loop {
            let mut frames = tokio::time::timeout_at(deadline, self.socket.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no reply from {} within {FETCH_TIMEOUT:?}", self.endpoint))?
                .map_err(|error| anyhow::anyhow!("failed to receive from {}: {error}", self.endpoint))?;
            unseal(self.cluster_key.as_ref(), MacContext::Reply, &mut frames, 1)
                .map_err(|error| anyhow::anyhow!("dropped a reply from {}: {error}", self.endpoint))?;
            let payload = frames.pop().unwrap_or_default();
            let reply: WireReply = decode(&payload).map_err(|error| anyhow::anyhow!("undecodable reply from {}: {error}", self.endpoint))?;
            if reply.id != id {
                // A late reply to a request of an earlier catch-up; skip it.
                continue;
            }
            return match reply.reply {
                Reply::Changes(changes) => Ok(changes),
                other => Err(anyhow::anyhow!("unexpected reply from {} to a fetch: {other:?}", self.endpoint)),
            };
        }
    }
}

/// A range of one origin's changes to fetch: sequence numbers after `after_seq` up to and
/// including `until_seq`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub origin: ServerId,
    pub after_seq: u64,
    pub until_seq: u64,
}

/// Fetches every range from the peer and hands each batch to the actor, keeping at most
/// [`BATCHES_IN_FLIGHT`] batches waiting for their commit. Returns the fetcher when it is
/// still usable, and the number of changes fetched or the error that stopped the work.
pub(crate) async fn catch_up(
    server: ServerId,
    peer: ServerId,
    mut fetcher: Fetcher,
    ranges: Vec<Range>,
    actor: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) -> (Option<Fetcher>, anyhow::Result<u64>) {
    let started = Instant::now();
    let mut fetched = 0u64;
    let mut waiting: VecDeque<oneshot::Receiver<()>> = VecDeque::new();
    for range in &ranges {
        let mut cursor = range.after_seq;
        while cursor < range.until_seq {
            let changes = match fetcher.fetch(range.origin, cursor).await {
                Ok(changes) => changes,
                Err(error) => {
                    add(&metrics.fetch_failures, 1);
                    return (None, Err(error));
                }
            };
            let Some(last) = changes.last() else {
                // The peer no longer has what it announced, which happens only when its
                // store was replaced; the next heartbeat decides again.
                break;
            };
            cursor = last.id.seq;
            fetched += changes.len() as u64;
            if waiting.len() >= BATCHES_IN_FLIGHT {
                let oldest = waiting.pop_front().expect("the queue is not empty");
                if oldest.await.is_err() {
                    return (Some(fetcher), Err(anyhow::anyhow!("the actor failed to store a fetched batch")));
                }
            }
            let (stored, acknowledgement) = oneshot::channel();
            if actor.send(Command::Fetched { changes, stored }).await.is_err() {
                return (Some(fetcher), Err(anyhow::anyhow!("the actor has stopped")));
            }
            waiting.push_back(acknowledgement);
        }
    }
    for acknowledgement in waiting {
        if acknowledgement.await.is_err() {
            return (Some(fetcher), Err(anyhow::anyhow!("the actor failed to store a fetched batch")));
        }
    }
    let elapsed = started.elapsed();
    if fetched > 0 {
        let rate = fetched as f64 / elapsed.as_secs_f64().max(1e-6);
        info!(server, peer, endpoint = fetcher.endpoint, fetched, ?elapsed, changes_per_second = rate as u64, "caught up from peer");
    }
    (Some(fetcher), Ok(fetched))
}
