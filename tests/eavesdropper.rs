//! A client without the cluster key that subscribes to everything on a data server's pub port
//! reads nothing private: with a key, the payload of every publication is encrypted. The data
//! and web servers run as separate processes on loopback, and the eavesdropper is a plain
//! zeromq SUB socket subscribed to the empty prefix while users register, log in and exchange
//! a private message. A keyless group runs the same scene, and there the eavesdropper must
//! read all three secrets, which shows that the checks can fail.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use blake2::{Blake2b, Digest};
use bytes::Bytes;
use common::{eventually, free_port, init_logging, texts, ServerProcess, WebClient};
use serde_json::json;
use tokio::sync::oneshot;
use zeromq::{Socket, SocketRecv, SubSocket};

const PRIVATE_TEXT: &str = "meet me at the old mill at nine";
const ARGON2_PREFIX: &[u8] = b"$argon2id$";

/// A data server and a web server, as processes, with or without a cluster key.
struct Scene {
    _data: ServerProcess,
    _web: ServerProcess,
    publish: String,
    web: SocketAddr,
}

impl Scene {
    async fn start(dir: &Path, cluster_key: Option<&str>) -> Scene {
        init_logging();
        let request = format!("tcp://127.0.0.1:{}", free_port());
        let publish = format!("tcp://127.0.0.1:{}", free_port());
        let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data_dir = dir.join("data");
        let key_file = dir.join("cluster-key");
        let mut key_arguments = Vec::new();
        if let Some(key) = cluster_key {
            std::fs::write(&key_file, key).expect("writing the key file");
            key_arguments = vec!["--cluster-key-file", key_file.to_str().expect("UTF-8 path")];
        }

        let mut data_arguments = vec!["--id", "1", "--request", &request, "--pub", &publish];
        data_arguments.extend(["--data-dir", data_dir.to_str().expect("UTF-8 path")]);
        data_arguments.extend(&key_arguments);
        let data = ServerProcess::spawn("dataserver", &data_arguments);

        let listen = web.to_string();
        let mut web_arguments = vec!["--listen", &listen, "--data-request", &request, "--data-pub", &publish];
        web_arguments.extend(&key_arguments);
        let web_process = ServerProcess::spawn("webserver", &web_arguments);

        eventually("the web server serves the API", || async {
            match reqwest::get(format!("http://{web}/api/subjects")).await {
                Ok(response) => response.status().is_success(),
                Err(_) => false,
            }
        })
        .await;
        Scene { _data: data, _web: web_process, publish, web }
    }
}

/// Everything that a keyless SUB socket received on the pub port.
struct Captured {
    messages: Vec<Vec<Bytes>>,
}

impl Captured {
    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            self.messages.iter().filter_map(|frames| frames.first()).map(|topic| String::from_utf8_lossy(topic).into_owned()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.messages.iter().flatten().any(|frame| frame.windows(needle.len()).any(|window| window == needle))
    }
}

/// Subscribes a keyless SUB socket to every topic of `publish`, waits until a heartbeat shows
/// that the subscription is in effect, and returns a sender that stops the capture.
async fn eavesdrop(publish: &str) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Captured>) {
    let mut socket = SubSocket::new();
    socket.connect(publish).await.expect("connecting the SUB socket");
    socket.subscribe("").await.expect("subscribing to every topic");
    let first = tokio::time::timeout(common::PATIENCE, socket.recv())
        .await
        .expect("a heartbeat within the patience")
        .expect("receiving a message");

    let (stop, mut stopped) = oneshot::channel::<()>();
    let capture = tokio::spawn(async move {
        let mut messages = vec![first.into_vec()];
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                received = socket.recv() => match received {
                    Ok(message) => messages.push(message.into_vec()),
                    Err(error) => panic!("the SUB socket failed: {error}"),
                },
            }
        }
        Captured { messages }
    });
    (stop, capture)
}

/// Registers ana and bob, logs both in, and sends a private message from ana to bob. Returns
/// the hash under which ana's session is stored, as the web server computes it.
async fn write_secrets(web: SocketAddr) -> String {
    let ana = WebClient::new(web).user("ana").await;
    let bob = WebClient::new(web).user("bob").await;
    let sent = ana.post("/api/private/bob", json!({"text": PRIVATE_TEXT})).await;
    assert_eq!(sent.status, 201, "{sent:?}");
    eventually("bob receives ana's private message", || async {
        texts(&bob.get("/api/private/ana").await.body) == [PRIVATE_TEXT]
    })
    .await;

    let cookie = ana.session_cookie().expect("ana has a session cookie");
    let token = cookie.split_once('=').expect("a name=value cookie").1;
    let digest = Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Runs the scene and returns what the eavesdropper captured, with ana's token hash.
async fn capture_scene(cluster_key: Option<&str>) -> (Captured, String) {
    let dir = tempfile::tempdir().unwrap();
    let scene = Scene::start(dir.path(), cluster_key).await;
    let (stop, capture) = eavesdrop(&scene.publish).await;
    let token_hash = write_secrets(scene.web).await;
    // Publications leave right after the commit; this leaves time for the last ones to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).expect("the capture task is running");
    let captured = capture.await.expect("the capture task panicked");
    (captured, token_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_sub_reads_nothing_private() {
    let (captured, token_hash) = capture_scene(Some("eavesdropper-test-key-0123456789abcdef0123456789")).await;

    let topics = captured.topics();
    assert!(topics.contains(&"checkpoint".to_owned()), "no checkpoint message was captured: {topics:?}");
    assert!(topics.contains(&"webserver".to_owned()), "no webserver message was captured: {topics:?}");
    assert!(!captured.contains(PRIVATE_TEXT.as_bytes()), "the private text was readable");
    assert!(!captured.contains(ARGON2_PREFIX), "a password hash was readable");
    assert!(!captured.contains(token_hash.as_bytes()), "the session token hash was readable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_group_is_readable() {
    let (captured, token_hash) = capture_scene(None).await;

    assert!(captured.contains(PRIVATE_TEXT.as_bytes()), "the private text was not captured in clear");
    assert!(captured.contains(ARGON2_PREFIX), "no password hash was captured in clear");
    assert!(captured.contains(token_hash.as_bytes()), "the session token hash was not captured in clear");
}
