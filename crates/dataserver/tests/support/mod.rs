//! Shared set-up for the data server tests: servers on ephemeral ports with a temporary data
//! directory, a REQ client and a subscriber that collects published changes.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use forum_dataserver::{Config, DataServer};
use forum_protocol::{
    decode, encode, Change, Reply, Request, ServerId, WireChange, WireFeedHeader, WireReply, WireRequest, PROTOCOL_VERSION,
    TOPIC_HEARTBEAT, TOPIC_WEBSERVER, WEBSERVER_FRAMES,
};
use zeromq::{ReqSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The time a fresh SUB socket is given to have its subscription registered by the PUB side,
/// which zeromq does asynchronously after `connect` returns.
pub const SUBSCRIPTION_SETTLE: Duration = Duration::from_millis(300);

/// Starts a server with ephemeral ports and no peers.
pub async fn start(id: ServerId, data_dir: &Path) -> DataServer {
    let config = Config {
        id,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        peers: Vec::new(),
    };
    DataServer::start(config).await.expect("the data server starts")
}

/// A REQ client that numbers its requests and checks each reply's id.
pub struct Client {
    socket: ReqSocket,
    next_id: u64,
}

impl Client {
    pub async fn connect(server: &DataServer) -> Client {
        let mut socket = ReqSocket::new();
        socket.connect(server.request_endpoint()).await.expect("the REQ client connects");
        Client { socket, next_id: 1 }
    }

    /// Sends raw payload bytes and returns the decoded reply.
    pub async fn send_raw(&mut self, payload: Vec<u8>) -> WireReply {
        self.socket.send(ZmqMessage::from(payload)).await.expect("the request is sent");
        let message = tokio::time::timeout(PATIENCE, self.socket.recv())
            .await
            .expect("a reply arrives in time")
            .expect("the reply is received");
        assert_eq!(message.len(), 1, "a REQ socket gets the payload frame only");
        decode(message.get(0).unwrap()).expect("the reply decodes")
    }

    /// Sends a request and returns its reply, checking that the reply has the request's id.
    pub async fn request(&mut self, request: Request) -> Reply {
        let id = self.next_id;
        self.next_id += 1;
        let reply = self.send_raw(encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: None, brief: false })).await;
        assert_eq!(reply.id, id, "the reply carries the request id");
        reply.reply
    }

    pub async fn register(&mut self, name: &str, password: &str) -> Reply {
        self.request(Request::Register { name: name.into(), password: password.into() }).await
    }
}

/// A SUB socket on one server's PUB endpoint, subscribed to every topic.
pub struct Subscriber {
    socket: SubSocket,
}

impl Subscriber {
    pub async fn connect(server: &DataServer) -> Subscriber {
        let mut socket = SubSocket::new();
        socket.connect(server.pub_endpoint()).await.expect("the SUB client connects");
        socket.subscribe("").await.expect("the SUB client subscribes");
        Subscriber { socket }
    }

    /// Collects (topic, change) pairs until no change arrives for `quiet`, skipping heartbeats.
    pub async fn collect(&mut self, quiet: Duration) -> Vec<(String, Change)> {
        self.collect_published(quiet).await.into_iter().map(|published| (published.topic, published.change)).collect()
    }

    /// Collects the published changes with their frames until no change arrives for `quiet`,
    /// skipping heartbeats. Checks the layout of each message: `[checkpoint, change]` or
    /// `[webserver, header, change]`.
    pub async fn collect_published(&mut self, quiet: Duration) -> Vec<Published> {
        let mut received = Vec::new();
        let mut deadline = tokio::time::Instant::now() + quiet;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.socket.recv()).await {
            let frames = message.expect("the SUB client receives").into_vec();
            let topic = String::from_utf8(frames[0].to_vec()).expect("the topic is text");
            if topic == TOPIC_HEARTBEAT {
                continue;
            }
            deadline = tokio::time::Instant::now() + quiet;
            let header = if topic == TOPIC_WEBSERVER {
                assert_eq!(frames.len(), WEBSERVER_FRAMES, "a webserver message has a topic, a header and a change frame");
                Some(decode::<WireFeedHeader>(&frames[1]).expect("the header decodes"))
            } else {
                assert_eq!(frames.len(), 2, "a {topic} message has a topic frame and a change frame");
                None
            };
            let wire: WireChange = decode(frames.last().unwrap()).expect("the change decodes");
            received.push(Published { topic, change: wire.change, header, frames });
        }
        received
    }
}

/// One published change as a subscriber received it.
#[derive(Debug)]
pub struct Published {
    pub topic: String,
    pub change: Change,
    /// The header frame, decoded, of a webserver message.
    pub header: Option<WireFeedHeader>,
    /// Every frame of the message, the topic first and the change frame last.
    pub frames: Vec<Bytes>,
}

impl Published {
    /// Returns the frame that contains the encoded change.
    pub fn change_frame(&self) -> &Bytes {
        self.frames.last().expect("a published message has frames")
    }
}

/// Builds a two-frame `[topic, WireChange]` message as a data server publishes it.
pub fn change_message(topic: &str, change: &Change) -> ZmqMessage {
    let payload = encode(&WireChange { v: PROTOCOL_VERSION, change: change.clone() });
    ZmqMessage::try_from(vec![Bytes::copy_from_slice(topic.as_bytes()), Bytes::from(payload)]).unwrap()
}

/// Repeats a request until its reply passes `accept`, failing the test after [`PATIENCE`].
pub async fn wait_for_reply(what: &str, client: &mut Client, request: impl Fn() -> Request, accept: impl Fn(&Reply) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = client.request(request()).await;
        if accept(&reply) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}; the last reply was {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
