//! The cluster key: only the group joins the group, and only the group reads its messages. A
//! data server with a key replies only to requests sealed under that key, applies only changes and heartbeats from peers with the same
//! key, and a data server without a key binds loopback addresses only.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::data_client::DataClient;
use forum_dataserver::{Config, DataServer, Options};
use forum_protocol::{decode, encode, seal, unseal, ClusterKey, MacContext, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use forum_webserver::{Config as WebConfig, WebServer};
use serde_json::json;
use tokio::io::AsyncWriteExt;
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
    let envelope = WireRequest { v: PROTOCOL_VERSION, id: 7, request, client: None, brief: false };
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

/// The start of the log line for a request that failed authentication.
const FAILED_AUTHENTICATION: &str = "dropped a request that failed authentication";

/// Returns the ZMTP 3.0 greeting and the READY command of a DEALER socket that sets its own
/// Identity, which the request port must ignore in favour of the client's address.
fn dealer_handshake() -> Vec<u8> {
    let mut greeting = vec![0u8; 64];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");

    let mut ready = b"\x05READY".to_vec();
    for (name, value) in [(&b"Socket-Type"[..], &b"DEALER"[..]), (b"Identity", b"chosen-by-client")] {
        ready.push(name.len() as u8);
        ready.extend_from_slice(name);
        ready.extend_from_slice(&(value.len() as u32).to_be_bytes());
        ready.extend_from_slice(value);
    }
    [greeting, vec![0x04, ready.len() as u8], ready].concat()
}

/// Encodes a ping as a one-frame ZMTP message, sealed under `cluster_key` when given.
fn ping_frame(cluster_key: Option<&ClusterKey>) -> Vec<u8> {
    let envelope = WireRequest { v: PROTOCOL_VERSION, id: 9, request: Request::Ping, client: None, brief: false };
    let mut frames = vec![Bytes::from(encode(&envelope))];
    seal(cluster_key, MacContext::Request, &mut frames, 1);
    let payload = &frames[0];
    let mut frame = vec![0x00, u8::try_from(payload.len()).expect("a ping shorter than 256 bytes")];
    frame.extend_from_slice(payload);
    frame
}

fn failure_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(FAILED_AUTHENTICATION)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_request_logs_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster_key, key_text) = ClusterKey::generate();
    let endpoint = format!("tcp://127.0.0.1:{}", common::free_port());
    let log_path = dir.path().join("dataserver.log");
    let log = std::fs::File::create(&log_path).expect("creating the server log");
    let child = Command::new(common::workspace_binary("dataserver"))
        .args(["--id", "1", "--request", &endpoint])
        .arg("--pub")
        .arg(format!("tcp://127.0.0.1:{}", common::free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("FORUM_CLUSTER_KEY", &key_text)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("sharing the log file"))
        .stderr(log)
        .spawn()
        .expect("starting a dataserver process");
    let _server = common::ServerProcess { child };
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    common::eventually("the data server answers a sealed ping", || {
        let endpoint = endpoint.clone();
        let cluster_key = cluster_key.clone();
        async move { request(&endpoint, Some(&cluster_key), Request::Ping).await.is_some() }
    })
    .await;
    assert!(failure_lines(&read_log()).is_empty(), "a sealed request was logged as failed:\n{}", read_log());

    // One connection sends an unsealed ping and two under another key, in separate writes.
    let address = endpoint.strip_prefix("tcp://").unwrap();
    let mut outsider = tokio::net::TcpStream::connect(address).await.expect("connecting to the request port");
    let outsider_address = outsider.local_addr().expect("the outsider's address").to_string();
    outsider.write_all(&dealer_handshake()).await.expect("sending the handshake");
    for cluster_key in [None, Some(key(2)), Some(key(2))] {
        outsider.write_all(&ping_frame(cluster_key.as_ref())).await.expect("sending a ping");
    }
    // A zeromq DEALER without the key, on a second connection.
    assert!(request(&endpoint, None, Request::Ping).await.is_none(), "an unsealed request was answered");

    let pong = request(&endpoint, Some(&cluster_key), Request::Ping).await;
    assert!(matches!(pong, Some(Reply::Pong { server: 1 })), "a keyed client was not served: {pong:?}");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while failure_lines(&read_log()).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the server did not log both clients within {:?}:\n{}", common::PATIENCE, read_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a late duplicate line time to appear.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log_text = read_log();
    let lines = failure_lines(&log_text);
    assert_eq!(lines.len(), 2, "expected one line per connection:\n{log_text}");
    let outsider_lines: Vec<_> = lines.iter().filter(|line| line.contains(&format!("client={outsider_address} "))).collect();
    assert_eq!(outsider_lines.len(), 1, "expected one line naming {outsider_address}:\n{log_text}");
    assert!(!log_text.contains("chosen-by-client"), "the client's own Identity reached the log:\n{log_text}");
    let dealer_line = lines.iter().find(|line| !line.contains(&outsider_address)).expect("a line for the DEALER");
    assert!(dealer_line.contains("client=127.0.0.1:"), "the DEALER's line names no address: {dealer_line}");
    drop(outsider);
}
