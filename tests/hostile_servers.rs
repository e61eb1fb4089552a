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
use common::{eventually, free_port, init_logging, zmtp_greeting, zmtp_ready, ServerProcess};
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

impl Attack {
    fn bytes(self) -> Vec<u8> {
        let mut bytes = zmtp_greeting();
        if let Attack::AfterHandshake { socket_type } = self {
            bytes.extend(zmtp_ready(socket_type));
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

/// Starts a fake data server that completes the handshake as a ROUTER, replies to each Ping
/// with a Pong, and closes the connection 10 ms after its first Pong. Returns its endpoint and
/// its count of connections.
async fn start_flapping_data_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(("127.0.0.1", free_port())).await.expect("binding the flapping server");
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = stream;
                let mut handshake = zmtp_greeting();
                handshake.extend(zmtp_ready("ROUTER"));
                let mut client_greeting = [0u8; 64];
                if stream.write_all(&handshake).await.is_err() || stream.read_exact(&mut client_greeting).await.is_err() {
                    return;
                }
                let mut closes_at = None;
                loop {
                    let next = match closes_at {
                        Some(deadline) => match tokio::time::timeout_at(deadline, answer_pings(&mut stream)).await {
                            Ok(next) => next,
                            Err(_elapsed) => return,
                        },
                        None => answer_pings(&mut stream).await,
                    };
                    match next {
                        Some(true) if closes_at.is_none() => closes_at = Some(tokio::time::Instant::now() + Duration::from_millis(10)),
                        Some(_) => {}
                        None => return,
                    }
                }
            });
        }
    });
    (endpoint, connections)
}

/// Reads one message from the client and replies with a Pong when it is a Ping. Returns whether it replied, or `None` when the
/// connection ended or sent something unexpected.
async fn answer_pings(stream: &mut tokio::net::TcpStream) -> Option<bool> {
    // Frames until the end of one message; commands (the client's READY) are skipped.
    let mut message: Vec<Vec<u8>> = Vec::new();
    loop {
        let flags = stream.read_u8().await.ok()?;
        let size = if flags & 0x02 != 0 { stream.read_u64().await.ok()? } else { u64::from(stream.read_u8().await.ok()?) };
        if size > 65536 {
            return None;
        }
        let mut body = vec![0u8; size as usize];
        stream.read_exact(&mut body).await.ok()?;
        if flags & 0x04 != 0 {
            continue;
        }
        message.push(body);
        if flags & 0x01 == 0 {
            break;
        }
    }

    let payload = message.pop()?;
    let request = forum_protocol::decode::<forum_protocol::WireRequest>(&payload).ok()?;
    if !matches!(request.request, Request::Ping) {
        return Some(false);
    }
    let reply = forum_protocol::WireReply { v: forum_protocol::PROTOCOL_VERSION, id: request.id, reply: Reply::Pong { server: 7 } };
    message.push(forum_protocol::encode(&reply));

    let mut bytes = Vec::new();
    for (index, frame) in message.iter().enumerate() {
        let more = if index + 1 < message.len() { 0x01 } else { 0x00 };
        bytes.push(0x02 | more);
        bytes.extend_from_slice(&(frame.len() as u64).to_be_bytes());
        bytes.extend_from_slice(frame);
    }
    stream.write_all(&bytes).await.ok()?;
    Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webserver_backs_off_from_flapping_data_servers() {
    init_logging();
    let (first, first_connections) = start_flapping_data_server().await;
    let (second, second_connections) = start_flapping_data_server().await;
    let connections = || first_connections.load(Ordering::SeqCst) + second_connections.load(Ordering::SeqCst);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut web = spawn_web_server(&listen, &format!("{first},{second}"), &format!("{first},{second}"));

    eventually("the web server connects to both flapping data servers", || async {
        first_connections.load(Ordering::SeqCst) >= 1 && second_connections.load(Ordering::SeqCst) >= 1
    })
    .await;
    let before = connections();
    tokio::time::sleep(WATCH).await;
    let new_connections = connections() - before;
    eprintln!("the web server connected {new_connections} times to the flapping data servers in {WATCH:?}");
    assert!(new_connections >= 1, "the web server stopped reconnecting");
    assert!(new_connections <= MAX_CONNECTIONS_IN_WATCH, "{new_connections} connections in {WATCH:?}: no backoff");
    assert_running(&mut web, "webserver");
    assert_serves_page(&listen).await;
}
