//! Hostile ZeroMQ input sent to a data server: hostile requests get an error reply and
//! nothing is stored, and hostile byte streams on every bound port (the request and pub
//! sockets) are cut by the ZMTP guards. After each attack the server still answers a new
//! client promptly, and a server run as a process keeps its memory bounded.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::data_client::DataClient;
use common::{free_port, zmtp_greeting as greeting, zmtp_ready};
use forum_dataserver::{Config, DataServer};
use forum_protocol::{decode, encode, ErrorCode, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{Socket, SocketRecv, SocketSend};

async fn start_server(dir: &std::path::Path) -> DataServer {
    common::init_logging();
    DataServer::start(Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        peers: Vec::new(),
    })
    .await
    .expect("starting a data server")
}

/// Sends one payload on a fresh REQ socket and returns the decoded reply.
async fn request_raw(endpoint: &str, payload: Vec<u8>) -> WireReply {
    let mut socket = zeromq::ReqSocket::new();
    socket.connect(endpoint).await.expect("connecting a REQ socket");
    socket.send(zeromq::ZmqMessage::from(Bytes::from(payload))).await.expect("sending a request");
    let reply = tokio::time::timeout(common::PATIENCE, socket.recv()).await.expect("a reply in time").expect("a reply");
    decode(&reply.into_vec()[0]).expect("a decodable reply")
}

fn error_code(reply: &WireReply) -> Option<ErrorCode> {
    match &reply.reply {
        Reply::Error(error) => Some(error.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_request_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let endpoint = server.request_endpoint().to_owned();

    // Without a structure scan before decoding, a few hundred nested array headers overflow
    // the stack of a debug build and abort the process.
    for depth in [800, 20_000, 60_000] {
        let mut payload = b"\x83\xa1v\x01\xa2id\x01\xa7request".to_vec();
        payload.extend(std::iter::repeat_n(0x91u8, depth));
        payload.push(0xc0);
        let reply = request_raw(&endpoint, payload).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "depth {depth}: {reply:?}");
    }
    let mut nested_maps = b"\x84\xa1v\x01\xa2id\x01\xa7request\xa4Ping\xa5extra".to_vec();
    nested_maps.extend(std::iter::repeat_n([0x81u8, 0xa1, b'k'], 20_000).flatten());
    nested_maps.push(0xc0);
    let reply = request_raw(&endpoint, nested_maps).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "nested maps: {reply:?}");

    let ping = encode(&WireRequest { v: PROTOCOL_VERSION, id: 5, request: Request::Ping, client: None, brief: false });
    let reply = request_raw(&endpoint, ping).await;
    assert!(matches!(reply.reply, Reply::Pong { server: 1 }), "the server stopped serving: {reply:?}");
    server.shutdown().await;
}

/// How long a fresh client may take to connect and get a Pong after an attack. A passing run
/// measures a few milliseconds; the bound leaves room for a busy CI machine.
const PROMPT_REPLY: Duration = Duration::from_secs(1);

/// How much a data server's resident memory may grow during one attack. The 73-byte attack
/// alone would ask zeromq 0.7 for 32 TiB, and 1,000 idle connections cost a few MiB.
const MAX_RSS_GROWTH_KIB: u64 = 128 * 1024;

/// A `dataserver` process on loopback ports picked for it. It is killed when dropped.
struct ServerProcess {
    child: Child,
    request: String,
    publish: String,
    _data_dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start() -> ServerProcess {
        let data_dir = tempfile::tempdir().expect("creating a temporary folder");
        let request = format!("tcp://127.0.0.1:{}", free_port());
        let publish = format!("tcp://127.0.0.1:{}", free_port());
        let child = Command::new(common::workspace_binary("dataserver"))
            .args(["--id", "1", "--request", &request, "--pub", &publish])
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a dataserver process");
        let mut server = ServerProcess { child, request, publish, _data_dir: data_dir };
        let deadline = Instant::now() + common::PATIENCE;
        while DataClient::new(&server.request).request(Request::Ping).await.is_none() {
            assert!(server.child.try_wait().unwrap().is_none(), "the dataserver process exited at start");
            assert!(Instant::now() < deadline, "the dataserver process did not answer within {:?}", common::PATIENCE);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// Returns the process's resident memory in KiB, from /proc/PID/status.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("reading /proc/PID/status");
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a VmRSS value in kB")
    }

    /// Asserts that the process is alive and that a new client gets a Pong within
    /// [`PROMPT_REPLY`], and returns the time that took.
    async fn assert_serves(&mut self, after: &str) -> Duration {
        assert!(self.child.try_wait().unwrap().is_none(), "the dataserver process died after {after}");
        let started = Instant::now();
        let reply = DataClient::new(&self.request).request(Request::Ping).await;
        let elapsed = started.elapsed();
        assert!(matches!(reply, Some(Reply::Pong { server: 1 })), "no Pong after {after}: {reply:?}");
        assert!(elapsed < PROMPT_REPLY, "the Pong after {after} took {elapsed:?}");
        eprintln!("Pong after {after} in {elapsed:?}");
        elapsed
    }

    /// Asserts that resident memory grew by less than [`MAX_RSS_GROWTH_KIB`] since `baseline`.
    fn assert_memory_bounded(&self, baseline: u64, after: &str) {
        let now = self.rss_kib();
        eprintln!("VmRSS after {after}: {now} KiB (baseline {baseline} KiB)");
        assert!(now < baseline + MAX_RSS_GROWTH_KIB, "VmRSS grew from {baseline} KiB to {now} KiB after {after}");
    }

    fn ports(&self) -> [(&'static str, String); 2] {
        [("request", address_of(&self.request)), ("pub", address_of(&self.publish))]
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_of(endpoint: &str) -> String {
    endpoint.trim_start_matches("tcp://").to_owned()
}

/// A greeting followed by the READY command of a DEALER socket: a valid, idle client.
fn handshake() -> Vec<u8> {
    handshake_as("DEALER")
}

/// Returns a greeting followed by the READY command of a socket of type `socket_type`.
fn handshake_as(socket_type: &str) -> Vec<u8> {
    let mut bytes = greeting();
    bytes.extend(zmtp_ready(socket_type));
    bytes
}

/// Writes `bytes` and ignores a write error, which means the guard already cut the connection.
async fn send(address: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connecting to a guarded port");
    let _ = stream.write_all(bytes).await;
    stream
}

/// Reads until the server closes `stream`, and returns the time that took from `since`.
async fn wait_for_close(stream: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the connection stayed open for {within:?}");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_attack_on_every_port() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    for (socket, address) in server.ports() {
        // 64 bytes of greeting and a 9-byte long frame header declaring 2^45 bytes.
        let mut attack = greeting();
        attack.push(0x02);
        attack.extend_from_slice(&(1u64 << 45).to_be_bytes());
        assert_eq!(attack.len(), 73);
        let started = Instant::now();
        let mut stream = send(&address, &attack).await;
        let cut = wait_for_close(&mut stream, started, PROMPT_REPLY).await;
        eprintln!("73-byte attack on the {socket} port cut in {cut:?}");
        server.assert_serves(&format!("the 73-byte attack on the {socket} port")).await;
    }
    server.assert_memory_bounded(baseline, "the 73-byte attacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_every_port() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    for (socket, address) in server.ports() {
        for _ in 0..20 {
            let noise: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
            let started = Instant::now();
            let mut stream = send(&address, &noise).await;
            wait_for_close(&mut stream, started, PROMPT_REPLY).await;
        }
        server.assert_serves(&format!("random bytes on the {socket} port")).await;
    }
    server.assert_memory_bounded(baseline, "random bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    let started = Instant::now();
    let mut held = Vec::new();
    for (_, address) in server.ports() {
        held.push(("a greeting then silence", send(&address, &greeting()).await));
        // A long frame header that stops after 3 of its 9 bytes.
        let mut partial = handshake();
        partial.extend_from_slice(&[0x02, 0, 0]);
        held.push(("an unfinished frame header", send(&address, &partial).await));
    }
    server.assert_serves("silent clients connected").await;

    // The guard allows 5 s for the greeting and 10 s of silence inside a frame.
    for (attack, stream) in &mut held {
        let cut = wait_for_close(stream, started, Duration::from_secs(15)).await;
        eprintln!("{attack} cut after {cut:?}");
    }
    server.assert_serves("silent clients were cut").await;
    server.assert_memory_bounded(baseline, "silent clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_tiny_frames_are_cut() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    for (socket, address) in server.ports() {
        let mut stream = send(&address, &handshake()).await;
        let started = Instant::now();
        // Empty frames with the MORE flag: two bytes each, one message that never ends.
        let chunk = [0x01u8, 0x00].repeat(10_000);
        for _ in 0..100 {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let cut = wait_for_close(&mut stream, started, PROMPT_REPLY).await;
        eprintln!("a million tiny frames on the {socket} port cut in {cut:?}");
        server.assert_serves(&format!("a million tiny frames on the {socket} port")).await;
    }
    server.assert_memory_bounded(baseline, "a million tiny frames");
}

/// Returns a ZMTP 3.0 subscription message (a 1, then the topic) with `topic_bytes` bytes of
/// topic and a long frame header.
fn subscription(topic_bytes: usize) -> Vec<u8> {
    let mut bytes = vec![0x02];
    bytes.extend_from_slice(&(1 + topic_bytes as u64).to_be_bytes());
    bytes.push(1);
    bytes.resize(bytes.len() + topic_bytes, b't');
    bytes
}

/// Asserts that `subscriber` receives two heartbeats within 2 s. The server sends one every
/// 500 ms, so at least one of them was sent after this call started.
async fn assert_receives_heartbeat(subscriber: &mut zeromq::SubSocket, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut received = 0;
    while received < 2 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, subscriber.recv()).await {
            Ok(Ok(_)) => received += 1,
            Ok(Err(error)) => panic!("the good subscriber failed after {after}: {error}"),
            Err(_) => panic!("the good subscriber received {received} of 2 heartbeats within 2 s after {after}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_flood_is_cut() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    let mut good = zeromq::SubSocket::new();
    good.connect(&server.publish).await.expect("connecting the good subscriber");
    good.subscribe(forum_protocol::TOPIC_HEARTBEAT).await.expect("subscribing to heartbeats");
    assert_receives_heartbeat(&mut good, "subscribing").await;
    let address = address_of(&server.publish);

    // Each subscription is just under the 1 MiB frame limit. Without the subscription limits,
    // zeromq 0.7's PUB socket keeps all 1,000 of them, about 1 GB. The guard cuts the
    // connection at the first header.
    let started = Instant::now();
    let mut stream = send(&address, &handshake_as("SUB")).await;
    let big = subscription(1_000_000);
    for _ in 0..1000 {
        if stream.write_all(&big).await.is_err() {
            break;
        }
    }
    let cut = wait_for_close(&mut stream, started, PROMPT_REPLY).await;
    eprintln!("1,000 subscriptions of 1 MB cut in {cut:?}");

    // Small subscriptions pass, up to a few dozen per connection.
    let started = Instant::now();
    let mut stream = send(&address, &handshake_as("SUB")).await;
    let small = subscription(200);
    let mut written = 0;
    for _ in 0..1000 {
        if stream.write_all(&small).await.is_err() {
            break;
        }
        written += 1;
    }
    let cut = wait_for_close(&mut stream, started, PROMPT_REPLY).await;
    eprintln!("{written} of 1,000 subscriptions of 200 bytes written before the cut, after {cut:?}");

    assert_receives_heartbeat(&mut good, "the subscription floods").await;
    server.assert_serves("the subscription floods").await;
    server.assert_memory_bounded(baseline, "the subscription floods");
}

/// Reads the ZMTP frames that the request port sent until it closes `stream`: our greeting
/// and READY, then the PONG for a PING, or nothing more when the client is cut.
async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(PROMPT_REPLY, stream.read_to_end(&mut received)).await;
    assert!(outcome.is_ok(), "the connection stayed open for {PROMPT_REPLY:?}");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_port_checks_socket_type_and_pings() {
    let mut server = ServerProcess::start().await;
    let (_, address) = &server.ports()[0];

    // The request port is a ROUTER, so a PUB client is cut after our handshake.
    let mut publisher = send(address, &handshake_as("PUB")).await;
    let received = read_until_close(&mut publisher).await;
    assert_eq!(&received[..11], &[0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3], "the server's greeting starts the stream");
    assert!(received.windows(6).any(|window| window == b"ROUTER"), "the server's READY names its socket type");
    server.assert_serves("a PUB client on the request port").await;

    // A ZMTP 3.1 PING gets a PONG that repeats its context.
    let mut dealer = send(address, &handshake_as("DEALER")).await;
    dealer.write_all(b"\x04\x0e\x04PING\x00\x0acontext").await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    let pong: &[u8] = b"\x04\x0c\x04PONGcontext";
    while !received.windows(pong.len()).any(|window| window == pong) {
        let read = tokio::time::timeout(PROMPT_REPLY, dealer.read(&mut buffer)).await.expect("a PONG within the deadline").unwrap();
        assert!(read > 0, "the server closed the connection instead of sending a PONG");
        received.extend_from_slice(&buffer[..read]);
    }
    server.assert_serves("a PING").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_held_connections() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    let (_, address) = &server.ports()[0];
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(send(address, &handshake()).await);
    }
    // Idle clients that finished the handshake may stay; the server must still serve others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.assert_serves("1,000 held connections").await;
    server.assert_memory_bounded(baseline, "1,000 held connections");
    drop(held);
    server.assert_serves("1,000 connections closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_keep_server_alive() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    let address = address_of(&server.publish);
    let mut good = zeromq::SubSocket::new();
    good.connect(&server.publish).await.expect("connecting the good subscriber");
    good.subscribe(forum_protocol::TOPIC_HEARTBEAT).await.expect("subscribing to heartbeats");
    assert_receives_heartbeat(&mut good, "subscribing").await;

    // Before the pub port's caps, 500 connections of 64 distinct subscriptions each froze a
    // data server for good: zeromq 0.7's PUB socket blocked both runtime threads on its
    // subscriber table. Each round's connections are cut or held, and then closed.
    let rounds = async {
        for round in 1..=3 {
            subscriber_round(&address, round, &mut server, &mut good).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), rounds)
        .await
        .expect("the data server froze under many subscribers: no round finished within 90 s");
    server.assert_memory_bounded(baseline, "1,500 subscribers");
}

/// Opens 500 raw SUB connections that send 64 distinct subscriptions each, then checks that
/// the server still serves requests and publishes, and closes them.
async fn subscriber_round(address: &str, round: u32, server: &mut ServerProcess, good: &mut zeromq::SubSocket) {
    {
        let mut held = Vec::new();
        for connection in 0..500u32 {
            let mut message = handshake_as("SUB");
            for index in 0..64u32 {
                let mut body = vec![1];
                body.extend_from_slice(&connection.to_be_bytes());
                body.extend_from_slice(&index.to_be_bytes());
                body.resize(200, b's');
                message.extend_from_slice(&[0x00, body.len() as u8]);
                message.extend_from_slice(&body);
            }
            let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else { continue };
            if stream.write_all(&message).await.is_ok() {
                held.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = format!("round {round} of 500 subscribers");
        server.assert_serves(&after).await;
        assert_receives_heartbeat(good, &after).await;
        drop(held);
    }
}

/// Clients that send a burst of 2-byte requests and never read must not make the request
/// port buffer much more than its bound of unsent replies.
///
/// Each empty request gets a `Malformed` error reply of dozens of bytes. The port read no
/// more once 256 KiB of replies waited, but it took every request of a read it had already
/// made. After a request of almost 1 MiB, sent in two parts, the server's read buffer has
/// room for about a megabyte, so one read contains about 500,000 requests. 8 such clients grew
/// a data server by about 200 MiB before they were cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_tiny_requests_keep_memory_bounded() {
    let mut server = ServerProcess::start().await;
    let baseline = server.rss_kib();
    let (_, address) = server.ports()[0].clone();
    let mut large = vec![0x02];
    large.extend_from_slice(&((1u64 << 20) - 16).to_be_bytes());
    large.resize(9 + (1 << 20) - 16, b'x');
    let burst = [0x00u8, 0x00].repeat(4 << 20);
    let mut held = Vec::new();
    for _ in 0..8 {
        // A small receive buffer makes the replies wait in the server rather than in the
        // kernel.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).expect("shrinking the receive buffer");
        let mut stream = socket.connect(address.parse().unwrap()).await.expect("connecting to the request port");
        stream.write_all(&handshake()).await.unwrap();
        let (first, last) = large.split_at(large.len() - 100);
        stream.write_all(first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(last).await.unwrap();
        // The server stops reading once its replies pile up, so the write may not finish.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&burst)).await;
        held.push(stream);
    }
    server.assert_memory_bounded(baseline, "8 clients that never read their replies");
    server.assert_serves("8 clients that never read their replies").await;
}
