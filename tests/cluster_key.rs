//! The cluster key: only the group joins the group, and only the group reads its messages. A
//! data server with a key replies only to requests sealed under that key, applies only changes and heartbeats from peers with the same
//! key, and a data server without a key binds loopback addresses only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::data_client::DataClient;
use forum_dataserver::{Config, DataServer, Options};
use forum_protocol::{decode, encode, seal, unseal, ClusterKey, MacContext, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use forum_webserver::{Config as WebConfig, WebServer};
use serde_json::json;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// How long a client waits before it concludes that a request was dropped.
const DROPPED_AFTER: Duration = Duration::from_secs(1);

fn key(byte: u8) -> ClusterKey {
    ClusterKey::new(&[byte; 32], "a test key").unwrap()
}

async fn start_data_server(dir: &std::path::Path, id: u32, cluster_key: Option<ClusterKey>, peers: Vec<String>) -> DataServer {
    common::init_logging();
    let config = Config {
        id,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.join(format!("data-{id}")),
        peers,
    };
    DataServer::start_with(config, Options { cluster_key, ..Options::default() }).await.expect("starting a data server")
}

/// Sends one request on a fresh DEALER socket, sealed under `cluster_key` when given, and
/// returns the reply, or `None` when none came within [`DROPPED_AFTER`]. A reply must open
/// under the same key.
async fn request(endpoint: &str, cluster_key: Option<&ClusterKey>, request: Request) -> Option<Reply> {
    let mut socket = DealerSocket::new();
    socket.connect(endpoint).await.expect("connecting a DEALER socket");
    let envelope = WireRequest { v: PROTOCOL_VERSION, id: 7, request, client: None };
    let mut frames = vec![Bytes::from(encode(&envelope))];
    seal(cluster_key, MacContext::Request, &mut frames, 1);
    socket.send(ZmqMessage::try_from(frames).unwrap()).await.expect("sending a request");
    let message = tokio::time::timeout(DROPPED_AFTER, socket.recv()).await.ok()?.expect("receiving a reply");
    let mut frames = message.into_vec();
    unseal(cluster_key, MacContext::Reply, &mut frames, 1).expect("a reply sealed under the same key");
    let reply: WireReply = decode(frames.last().expect("a payload frame")).expect("a decodable reply");
    Some(reply.reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_valid_mac() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_data_server(dir.path(), 1, Some(key(1)), Vec::new()).await;
    let endpoint = server.request_endpoint().to_owned();

    let signed = request(&endpoint, Some(&key(1)), Request::Ping).await;
    assert!(matches!(signed, Some(Reply::Pong { server: 1 })), "{signed:?}");

    let unsigned = request(&endpoint, None, Request::Ping).await;
    assert!(unsigned.is_none(), "an unsealed request was answered: {unsigned:?}");
    let wrong_key = request(&endpoint, Some(&key(2)), Request::Ping).await;
    assert!(wrong_key.is_none(), "a request under another key was answered: {wrong_key:?}");

    // Without the key, a client cannot create a session for another user, register, or
    // read anything.
    let forged = Request::CreateSession { token_hash: "00".repeat(32), user: "ana".into(), expires_at: u64::MAX };
    assert!(request(&endpoint, Some(&key(2)), forged).await.is_none());
    assert!(request(&endpoint, None, Request::Register { name: "mallory".into(), password: "password-of-mallory".into() }).await.is_none());
    assert!(request(&endpoint, None, Request::ListUsers).await.is_none());
    let users = request(&endpoint, Some(&key(1)), Request::ListUsers).await;
    assert!(matches!(&users, Some(Reply::Users(users)) if users.is_empty()), "{users:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_other_key_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_data_server(dir.path(), 1, Some(key(1)), Vec::new()).await;
    let member = start_data_server(dir.path(), 2, Some(key(1)), vec![origin.pub_endpoint().to_owned()]).await;
    let outsider = start_data_server(dir.path(), 3, Some(key(2)), vec![origin.pub_endpoint().to_owned()]).await;

    let registered = request(
        origin.request_endpoint(),
        Some(&key(1)),
        Request::Register { name: "ana".into(), password: "password-of-ana".into() },
    )
    .await;
    assert!(matches!(registered, Some(Reply::User(_))), "{registered:?}");

    let users_of = |server: &DataServer, cluster_key: ClusterKey| {
        let endpoint = server.request_endpoint().to_owned();
        async move {
            match request(&endpoint, Some(&cluster_key), Request::ListUsers).await {
                Some(Reply::Users(users)) => users.len(),
                other => panic!("unexpected reply to ListUsers: {other:?}"),
            }
        }
    };
    common::eventually("the member with the group's key receives ana", || {
        let count = users_of(&member, key(1));
        async move { count.await == 1 }
    })
    .await;
    // The member received it, so the outsider had the same time to receive it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(users_of(&outsider, key(2)).await, 0, "a peer under another key applied a change");

    outsider.shutdown().await;
    member.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_server_binds_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        id: 1,
        request_endpoint: "tcp://0.0.0.0:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.path().to_owned(),
        peers: Vec::new(),
    };
    let error = DataServer::start(config).await.err().expect("a keyless server bound a wildcard address");
    let message = format!("{error:#}");
    assert!(message.contains("tcp://0.0.0.0:0"), "{message}");
    assert!(message.contains("FORUM_CLUSTER_KEY"), "{message}");

    let keyless = start_data_server(dir.path(), 2, None, Vec::new()).await;
    let pong = DataClient::new(keyless.request_endpoint()).request(Request::Ping).await;
    assert!(matches!(pong, Some(Reply::Pong { server: 2 })), "{pong:?}");
    keyless.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_server_needs_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = start_data_server(dir.path(), 1, Some(key(1)), Vec::new()).await;
    let web_config = |name: &str| WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: data.request_endpoint().to_owned(),
        data_pub_endpoint: data.pub_endpoint().to_owned(),
        name: name.to_owned(),
        request_timeout: Duration::from_secs(1),
    };
    let member = WebServer::start_with(web_config("member"), forum_webserver::Options { cluster_key: Some(key(1)), ..Default::default() })
        .await
        .unwrap();
    let outsider = WebServer::start(web_config("outsider")).await.unwrap();

    let ana = common::WebClient::new(member.local_addr()).user("ana").await;
    ana.create_subject("Keyed").await;
    let rejected = common::WebClient::new(outsider.local_addr())
        .post("/api/users", json!({"name": "mallory", "password": "password-of-mallory"}))
        .await;
    assert_eq!(rejected.status, 503, "{rejected:?}");

    outsider.shutdown().await;
    member.shutdown().await;
    data.shutdown().await;
}
