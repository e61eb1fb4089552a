//! A small DEALER client of a data server's request socket, speaking the protocol crate's
//! envelopes, with a timeout on every reply.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use forum_protocol::{decode, encode, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// How long a request waits for its reply before the client gives up on the socket.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one data server. zeromq 0.7's DEALER does not reconnect, so after a timeout
/// or an error the client drops its socket and connects a new one on the next request.
pub struct DataClient {
    endpoint: String,
    socket: Option<DealerSocket>,
    next_id: u64,
}

impl DataClient {
    pub fn new(endpoint: &str) -> DataClient {
        DataClient { endpoint: endpoint.to_owned(), socket: None, next_id: 1 }
    }

    async fn socket(&mut self) -> Option<&mut DealerSocket> {
        if self.socket.is_none() {
            let mut options = SocketOptions::default();
            options.connect_timeout(Duration::from_secs(1));
            let mut socket = DealerSocket::with_options(options);
            socket.connect(&self.endpoint).await.ok()?;
            self.socket = Some(socket);
        }
        self.socket.as_mut()
    }

    /// Sends one request and returns its reply, or `None` when the server did not answer in time.
    pub async fn request(&mut self, request: Request) -> Option<Reply> {
        self.pipeline(vec![request]).await.and_then(|mut replies| replies.pop())
    }

    /// Sends every request before reading any reply, so the server can commit them in groups,
    /// and returns the replies in request order, or `None` when any did not come in time.
    pub async fn pipeline(&mut self, requests: Vec<Request>) -> Option<Vec<Reply>> {
        let first_id = self.next_id;
        self.next_id += requests.len() as u64;
        let count = requests.len();
        let outcome = tokio::time::timeout(REPLY_TIMEOUT + Duration::from_millis(count as u64 * 20), async {
            let socket = self.socket().await?;
            for (offset, request) in requests.into_iter().enumerate() {
                let envelope = WireRequest { v: PROTOCOL_VERSION, id: first_id + offset as u64, request, client: None, brief: false };
                socket.send(ZmqMessage::from(Bytes::from(encode(&envelope)))).await.ok()?;
            }
            let mut replies = HashMap::new();
            while replies.len() < count {
                let message = socket.recv().await.ok()?;
                let payload = message.into_vec().pop()?;
                let reply: WireReply = decode(&payload).ok()?;
                if reply.id >= first_id && reply.id < first_id + count as u64 {
                    replies.insert(reply.id, reply.reply);
                }
            }
            Some((0..count as u64).map(|offset| replies.remove(&(first_id + offset)).expect("every reply arrived")).collect())
        })
        .await;
        match outcome {
            Ok(Some(replies)) => Some(replies),
            _ => {
                self.socket = None;
                None
            }
        }
    }

    /// Sends a request that must be answered, panicking with `what` otherwise.
    pub async fn expect(&mut self, what: &str, request: Request) -> Reply {
        match self.request(request).await {
            Some(reply) => reply,
            None => panic!("no reply from {} while {what}", self.endpoint),
        }
    }
}
