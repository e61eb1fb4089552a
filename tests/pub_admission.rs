//! The pub port's admission rules on real `dataserver` and `webserver` processes over
//! loopback TCP. An attacker that opens a hundred idle connections, and keeps opening more,
//! does not lock out a peer data server or a web server that connects afterwards, with or
//! without a cluster key. With a key, a subscriber with the wrong key, a stale token, a
//! garbled token or no token is cut and receives nothing.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{eventually, free_port, zmtp_greeting, zmtp_ready, ServerProcess, WebClient, PATIENCE};
use forum_protocol::{decode, encode, seal, unseal, ClusterKey, MacContext, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmtp_guard::{Limits, Subscriber, SubscriberKey, TOKEN_PREFIX};

const KEY_TEXT: &str = "pub-admission-test-key-0123456789abcdef0123456789";

/// The idle connections that the flood opens at once, beyond both caps of the pub port
/// (64 admitted and 16 pending).
const FLOOD_AT_ONCE: usize = 100;

fn cluster_key() -> ClusterKey {
    ClusterKey::new(KEY_TEXT.as_bytes(), "the test key").unwrap()
}

fn subscriber_key() -> SubscriberKey {
    SubscriberKey::new(cluster_key().subscriber_key())
}

/// A `dataserver` process with its endpoints.
struct DataProcess {
    _process: ServerProcess,
    request: String,
    publish: String,
}

impl DataProcess {
    async fn start(dir: &Path, id: u32, key_file: Option<&Path>, peers: &[&str]) -> DataProcess {
        let request_endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let publish = format!("tcp://127.0.0.1:{}", free_port());
        let data_dir = dir.join(format!("data-{id}"));
        let id_text = id.to_string();
        let peer_list = peers.join(",");
        let mut arguments = vec!["--id", &id_text, "--request", &request_endpoint, "--pub", &publish];
        arguments.extend(["--data-dir", data_dir.to_str().expect("UTF-8 path")]);
        if let Some(key_file) = key_file {
            arguments.extend(["--cluster-key-file", key_file.to_str().expect("UTF-8 path")]);
        }
        arguments.push(&peer_list);
        let process = ServerProcess::spawn("dataserver", &arguments);
        let server = DataProcess { _process: process, request: request_endpoint, publish };
        let key = key_file.map(|_| cluster_key());
        eventually("the data server answers a ping", || async { request(&server.request, key.as_ref(), Request::Ping).await.is_some() }).await;
        server
    }

    fn pub_address(&self) -> String {
        self.publish.trim_start_matches("tcp://").to_owned()
    }
}

/// Sends one request on a fresh DEALER socket, sealed when `key` is set, and returns the
/// reply, or `None` when none came within 1 s.
async fn request(endpoint: &str, key: Option<&ClusterKey>, request: Request) -> Option<Reply> {
    let mut socket = DealerSocket::new();
    tokio::time::timeout(Duration::from_secs(1), socket.connect(endpoint)).await.ok()?.ok()?;
    let envelope = WireRequest { v: PROTOCOL_VERSION, id: 1, request, client: None, brief: false };
    let mut frames = vec![Bytes::from(encode(&envelope))];
    seal(key, MacContext::Request, &mut frames, 1);
    socket.send(ZmqMessage::try_from(frames).unwrap()).await.ok()?;
    let message = tokio::time::timeout(Duration::from_secs(1), socket.recv()).await.ok()?.ok()?;
    let mut frames = message.into_vec();
    unseal(key, MacContext::Reply, &mut frames, 1).expect("a reply sealed under the same key");
    let reply: WireReply = decode(frames.last().expect("a payload frame")).expect("a decodable reply");
    Some(reply.reply)
}

/// A `webserver` process whose log lines this test keeps.
struct WebProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl WebProcess {
    fn start(listen: &str, data: &DataProcess, key_file: Option<&Path>) -> WebProcess {
        let mut command = Command::new(common::workspace_binary("webserver"));
        command.args(["--listen", listen, "--data-request", &data.request, "--data-pub", &data.publish]);
        if let Some(key_file) = key_file {
            command.arg("--cluster-key-file").arg(key_file);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a webserver process");
        let log = Arc::new(Mutex::new(String::new()));
        for output in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    eprintln!("webserver: {line}");
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        WebProcess { child, log }
    }

    fn log_contains(&self, text: &str) -> bool {
        self.log.lock().unwrap().contains(text)
    }
}

impl Drop for WebProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens [`FLOOD_AT_ONCE`] connections to `address` that finish their handshake as a SUB and
/// then send nothing, and one in six that sends nothing at all. After that it opens one more
/// every 20 ms, holding the newest 200, until the task is aborted.
fn idle_flood(address: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut handshake = zmtp_greeting();
        handshake.extend_from_slice(&zmtp_ready("SUB"));
        let mut open_connections = VecDeque::new();
        for index in 0usize.. {
            if let Ok(mut stream) = TcpStream::connect(&address).await {
                if index % 6 != 5 {
                    let _ = stream.write_all(&handshake).await;
                }
                open_connections.push_back(stream);
                if open_connections.len() > 200 {
                    open_connections.pop_front();
                }
            }
            if index >= FLOOD_AT_ONCE {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

/// Runs an idle flood on one data server's pub port, then starts a peer data server and a
/// web server against it and checks that both subscribe and receive its changes.
async fn flood_does_not_lock_out(key_file: Option<&Path>, dir: &Path) {
    common::init_logging();
    let key = key_file.map(|_| cluster_key());
    let first = DataProcess::start(dir, 1, key_file, &[]).await;
    let flood = idle_flood(first.pub_address());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A subscriber of our own gets a heartbeat, which the port publishes every 500 ms.
    let token_key = key_file.map(|_| subscriber_key());
    let mut subscriber = Subscriber::connect_with_key(&first.publish, token_key.as_ref(), &[b"checkpoint.heartbeat"], &Limits::default(), PATIENCE)
        .await
        .expect("subscribing during the flood");
    let heartbeat = tokio::time::timeout(PATIENCE, subscriber.recv()).await.expect("a heartbeat during the flood").expect("a heartbeat");
    assert_eq!(heartbeat[0], Bytes::from_static(b"checkpoint.heartbeat"));

    let second = DataProcess::start(dir, 2, key_file, &[&first.publish]).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let web = WebProcess::start(&listen, &first, key_file);
    let web_address = listen.parse().unwrap();
    eventually("the web server serves the API", || async {
        reqwest::get(format!("http://{web_address}/api/subjects")).await.is_ok_and(|response| response.status().is_success())
    })
    .await;

    // A change on the first server reaches the peer, which needs its subscription for the
    // heartbeats that name the fetch endpoint as well as for the change itself.
    let ana = WebClient::new(web_address).user("ana").await;
    let mut events = ana.events().await;
    ana.create_subject("During the flood").await;
    events.expect("subject", |data| data["title"] == "During the flood").await;
    eventually("the peer holds the subject", || async {
        match request(&second.request, key.as_ref(), Request::ListSubjects).await {
            Some(Reply::Subjects(subjects)) => subjects.iter().any(|listed| listed.title == "During the flood"),
            _ => false,
        }
    })
    .await;

    assert!(web.log_contains("subscribed to the data server's change feed"), "the web server never subscribed");
    assert!(!web.log_contains("failed to receive from the change feed"), "the pub port dropped the web server's subscription");
    assert!(!web.log_contains("failed to connect to the change feed"), "the web server failed to connect to the pub port");
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_locks_out_no_one_with_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster-key");
    std::fs::write(&key_file, KEY_TEXT).unwrap();
    flood_does_not_lock_out(Some(&key_file), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_locks_out_no_one_without_key() {
    let dir = tempfile::tempdir().unwrap();
    flood_does_not_lock_out(None, dir.path()).await;
}

/// Connects a raw SUB to `address`, sends `subscriptions` as ZMTP 3.0 subscription messages,
/// and reads until the server closes the connection. Returns what arrived and when it closed.
async fn subscribe_raw(address: &str, subscriptions: &[&[u8]]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connecting to the pub port");
    let mut bytes = zmtp_greeting();
    bytes.extend_from_slice(&zmtp_ready("SUB"));
    for prefix in subscriptions {
        bytes.extend_from_slice(&[0x00, prefix.len() as u8 + 1, 0x01]);
        bytes.extend_from_slice(prefix);
    }
    stream.write_all(&bytes).await.expect("sending the handshake and subscriptions");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(length) => received.extend_from_slice(&chunk[..length]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the pub port kept the connection open for {PATIENCE:?}");
    (received, started.elapsed())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_cut_and_receive_nothing() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster-key");
    std::fs::write(&key_file, KEY_TEXT).unwrap();
    let server = DataProcess::start(dir.path(), 1, Some(&key_file), &[]).await;
    let address = server.pub_address();

    let other_key = SubscriberKey::new(ClusterKey::new(&[9u8; 32], "another key").unwrap().subscriber_key());
    let wrong_key = other_key.token();
    let stale = subscriber_key().token_issued_at(SystemTime::now() - Duration::from_secs(300));
    let garbled = [TOKEN_PREFIX, b"garbled".as_slice()].concat();
    let cases: [(&str, &[u8]); 3] = [("wrong key", &wrong_key), ("stale", &stale), ("garbled", &garbled)];
    for (case, token) in cases {
        let (received, closed_after) = subscribe_raw(&address, &[token, b""]).await;
        assert!(!contains(&received, b"checkpoint"), "{case}: a message arrived");
        assert!(closed_after < Duration::from_secs(1), "{case}: cut after {closed_after:?}, not at the token");
    }

    // Subscribed to everything without a token: cut at the 2 s deadline, with none of the
    // heartbeats published meanwhile.
    let (received, closed_after) = subscribe_raw(&address, &[b""]).await;
    assert!(!contains(&received, b"checkpoint"), "a subscriber without a token got a message");
    assert!(closed_after >= Duration::from_millis(1900), "cut after {closed_after:?}, before the deadline");

    // Our own subscriber with the wrong key gets an error and no message.
    let mut subscriber = Subscriber::connect_with_key(&server.publish, Some(&other_key), &[b""], &Limits::default(), PATIENCE)
        .await
        .expect("connecting with the wrong key");
    let received = tokio::time::timeout(PATIENCE, subscriber.recv()).await.expect("the pub port cuts the subscriber in time");
    assert!(received.is_err(), "a subscriber with the wrong key received {received:?}");

    // The right key still works.
    let mut subscriber = Subscriber::connect_with_key(&server.publish, Some(&subscriber_key()), &[b"checkpoint.heartbeat"], &Limits::default(), PATIENCE)
        .await
        .expect("connecting with the key");
    let heartbeat = tokio::time::timeout(PATIENCE, subscriber.recv()).await.expect("a heartbeat in time").expect("a heartbeat");
    assert_eq!(heartbeat[0], Bytes::from_static(b"checkpoint.heartbeat"));
}
