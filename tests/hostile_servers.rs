//! Hostile servers at the addresses that our processes connect to: a web server's data server
//! (request and PUB endpoints), a data server's peer PUB endpoint and a peer's advertised
//! fetch endpoint. Each fake server on 127.0.0.1 sends the 73 bytes that abort a zeromq 0.7
//! process (a valid greeting, then a long frame header declaring 2^45 bytes), or a valid
//! handshake and then that frame header. The process under attack must keep serving, connect
//! again later, and wait between attempts instead of spinning.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::data_client::DataClient;
use common::{eventually, free_port, init_logging, ServerProcess};
use forum_dataserver::{Config, DataServer, Options};
use forum_protocol::{Reply, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Frame size declared by the attack: 32 TiB.
const ATTACK_FRAME_SIZE: u64 = 1 << 45;

/// How long each test watches the reconnections after the first attack.
const WATCH: Duration = Duration::from_secs(3);

/// The maximum number of connections that a client with a backoff makes to a hostile server during
/// [`WATCH`]. The backoffs (200 ms for the data client, 1 s for the change feed, 100 ms
/// doubling for a peer subscriber, one replicator tick of 250 ms for catch-up) allow about
/// 15; a client that spins makes thousands.
const MAX_CONNECTIONS_IN_WATCH: usize = 40;

/// What a hostile server sends on each connection.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// A valid greeting, then a long message frame header declaring [`ATTACK_FRAME_SIZE`]
    /// bytes: 73 bytes in all.
    InGreeting,
    /// A greeting and a READY command of `socket_type`, then the same frame header.
    AfterHandshake { socket_type: &'static str },
}

fn greeting() -> Vec<u8> {
    let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    bytes.extend_from_slice(b"NULL");
    bytes.resize(32, 0);
    bytes.push(0); // as-server
    bytes.resize(64, 0);
    bytes
}

fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut bytes = vec![0x04, body.len() as u8];
    bytes.extend_from_slice(&body);
    bytes
}

impl Attack {
    fn bytes(self) -> Vec<u8> {
        let mut bytes = greeting();
        if let Attack::AfterHandshake { socket_type } = self {
            bytes.extend(ready(socket_type));
        }
        bytes.push(0x02);
        bytes.extend_from_slice(&ATTACK_FRAME_SIZE.to_be_bytes());
        if matches!(self, Attack::InGreeting) {
            assert_eq!(bytes.len(), 73);
        }
        bytes
    }
}

/// A fake server on a loopback port that sends its attack on every connection and counts the
/// connections.
struct HostileServer {
    endpoint: String,
    connections: Arc<AtomicUsize>,
}

impl HostileServer {
    async fn start(attack: Attack) -> HostileServer {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).await.expect("binding the hostile server");
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let bytes = attack.bytes();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let _ = stream.write_all(&bytes).await;
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                });
            }
        });
        HostileServer { endpoint, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until the victim has connected twice, so it reconnected after a cut, then
    /// checks that it does not reconnect in a tight loop.
    async fn assert_reconnects_with_backoff(&self, victim: &str) {
        eventually(&format!("{victim} connects twice to {}", self.endpoint), || async { self.connections() >= 2 }).await;
        let before = self.connections();
        tokio::time::sleep(WATCH).await;
        let new_connections = self.connections() - before;
        eprintln!("{victim} connected {new_connections} times to {} in {WATCH:?}", self.endpoint);
        assert!(new_connections >= 1, "{victim} stopped reconnecting to {}", self.endpoint);
        assert!(new_connections <= MAX_CONNECTIONS_IN_WATCH, "{victim} connected {new_connections} times in {WATCH:?}: no backoff");
    }
}

fn assert_running(process: &mut ServerProcess, what: &str) {
    let status = process.child.try_wait().expect("checking the process");
    assert!(status.is_none(), "the {what} process died: {status:?}");
}

/// Asserts that the web server at `listen` serves its page.
async fn assert_serves_page(listen: &str) {
    let response = reqwest::get(format!("http://{listen}/")).await.expect("the web server answers HTTP");
    assert!(response.status().is_success(), "GET / returned {}", response.status());
}

/// Asserts that the data server at `request` replies to a Ping.
async fn assert_answers_ping(request: &str, id: u32) {
    let reply = DataClient::new(request).request(Request::Ping).await;
    assert!(matches!(reply, Some(Reply::Pong { server }) if server == id), "no Pong from {request}: {reply:?}");
}

fn spawn_web_server(listen: &str, data_request: &str, data_pub: &str) -> ServerProcess {
    ServerProcess::spawn("webserver", &["--listen", listen, "--data-request", data_request, "--data-pub", data_pub])
}

async fn start_data_server(dir: &std::path::Path, advertise: Option<String>) -> DataServer {
    let config = Config {
        id: 2,
        request_endpoint: format!("tcp://127.0.0.1:{}", free_port()),
        pub_endpoint: format!("tcp://127.0.0.1:{}", free_port()),
        data_dir: dir.to_owned(),
        peers: Vec::new(),
    };
    DataServer::start_with(config, Options { advertise, ..Options::default() }).await.expect("starting a data server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webserver_survives_hostile_data_server() {
    init_logging();
    let hostile = HostileServer::start(Attack::InGreeting).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut web = spawn_web_server(&listen, &hostile.endpoint, &hostile.endpoint);

    hostile.assert_reconnects_with_backoff("the web server's data client").await;
    assert_running(&mut web, "webserver");
    assert_serves_page(&listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webserver_survives_hostile_change_feed() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let data = start_data_server(dir.path(), None).await;
    for attack in [Attack::InGreeting, Attack::AfterHandshake { socket_type: "PUB" }] {
        let hostile = HostileServer::start(attack).await;
        let listen = format!("127.0.0.1:{}", free_port());
        let mut web = spawn_web_server(&listen, data.request_endpoint(), &hostile.endpoint);

        hostile.assert_reconnects_with_backoff(&format!("the web server's change feed ({attack:?})")).await;
        assert_running(&mut web, "webserver");
        assert_serves_page(&listen).await;
        let subjects = reqwest::get(format!("http://{listen}/api/subjects")).await.expect("the web server answers HTTP");
        assert!(subjects.status().is_success(), "GET /api/subjects returned {}", subjects.status());
    }
    data.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataserver_survives_hostile_peers() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let in_greeting = HostileServer::start(Attack::InGreeting).await;
    let after_handshake = HostileServer::start(Attack::AfterHandshake { socket_type: "PUB" }).await;
    let request = format!("tcp://127.0.0.1:{}", free_port());
    let publish = format!("tcp://127.0.0.1:{}", free_port());
    let peers = format!("{},{}", in_greeting.endpoint, after_handshake.endpoint);
    let data_dir = dir.path().to_str().expect("UTF-8 path");
    let mut data = ServerProcess::spawn("dataserver", &["--id", "1", "--request", &request, "--pub", &publish, "--data-dir", data_dir, &peers]);

    in_greeting.assert_reconnects_with_backoff("a peer subscriber").await;
    after_handshake.assert_reconnects_with_backoff("a peer subscriber").await;
    assert_running(&mut data, "dataserver");
    assert_answers_ping(&request, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataserver_survives_hostile_fetch_endpoint() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    for attack in [Attack::InGreeting, Attack::AfterHandshake { socket_type: "ROUTER" }] {
        let hostile = HostileServer::start(attack).await;
        // A real peer that is ahead and advertises the hostile server as its fetch endpoint.
        let peer_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let peer = start_data_server(peer_dir.path(), Some(hostile.endpoint.clone())).await;
        let register = Request::Register { name: "ana".into(), password: "password-of-ana".into() };
        DataClient::new(peer.request_endpoint()).expect("registering on the peer", register).await;

        let request = format!("tcp://127.0.0.1:{}", free_port());
        let publish = format!("tcp://127.0.0.1:{}", free_port());
        let data_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let data_dir_text = data_dir.path().to_str().expect("UTF-8 path");
        let mut data = ServerProcess::spawn(
            "dataserver",
            &["--id", "1", "--request", &request, "--pub", &publish, "--data-dir", data_dir_text, peer.pub_endpoint()],
        );

        hostile.assert_reconnects_with_backoff(&format!("catch-up ({attack:?})")).await;
        assert_running(&mut data, "dataserver");
        assert_answers_ping(&request, 1).await;
        peer.shutdown().await;
    }
}
