//! What crosses the network from a data server's pub port reveals nothing private: with a key,
//! the payload of every publication is encrypted. The data and web servers run as separate
//! processes on loopback. The eavesdropper subscribes to the empty prefix while users
//! register, log in and exchange a private message, and keeps the frames as they arrive,
//! still sealed. With a key, the port admits only a subscriber that sends a token made with
//! the key. So the eavesdropper sends one to get the bytes that cross the network, and a
//! zeromq SUB socket without the key must receive nothing. A keyless group runs the same
//! scene, and there the eavesdropper must read all three secrets, which shows that the checks
//! can fail.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use blake2::{Blake2b, Digest};
use bytes::Bytes;
use common::{eventually, free_port, init_logging, texts, ServerProcess, WebClient};
use serde_json::json;
use tokio::sync::oneshot;
use forum_protocol::ClusterKey;
use zeromq::{Socket, SocketRecv, SubSocket};
use zmtp_guard::{Limits, Subscriber, SubscriberKey};

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

/// Everything that the eavesdropper received on the pub port, as sent.
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

/// Subscribes to every topic of `publish`, with a token when `key` is set, waits until a
/// heartbeat shows that the subscription is in effect, and returns a sender that stops the
/// capture. The frames are kept as they arrive, without opening them.
async fn eavesdrop(publish: &str, key: Option<&SubscriberKey>) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Captured>) {
    let mut socket = Subscriber::connect_with_key(publish, key, &[b""], &Limits::default(), common::PATIENCE)
        .await
        .expect("connecting the SUB socket");
    let first = tokio::time::timeout(common::PATIENCE, socket.recv())
        .await
        .expect("a heartbeat within the patience")
        .expect("receiving a message");

    let (stop, mut stopped) = oneshot::channel::<()>();
    let capture = tokio::spawn(async move {
        let mut messages = vec![first];
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                received = socket.recv() => match received {
                    Ok(message) => messages.push(message),
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
    let subscriber_key = cluster_key.map(|text| {
        let key = ClusterKey::new(text.as_bytes(), "the test key").expect("a valid test key");
        SubscriberKey::new(key.subscriber_key())
    });
    if subscriber_key.is_some() {
        assert_keyless_sub_gets_nothing(&scene.publish).await;
    }
    let (stop, capture) = eavesdrop(&scene.publish, subscriber_key.as_ref()).await;
    let token_hash = write_secrets(scene.web).await;
    // Publications leave right after the commit; this leaves time for the last ones to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).expect("the capture task is running");
    let captured = capture.await.expect("the capture task panicked");
    (captured, token_hash)
}

/// Asserts that a zeromq SUB socket without the key, subscribed to every topic, receives no
/// message, although the port publishes a heartbeat every half second.
async fn assert_keyless_sub_gets_nothing(publish: &str) {
    let mut socket = SubSocket::new();
    socket.connect(publish).await.expect("connecting the SUB socket");
    socket.subscribe("").await.expect("subscribing to every topic");
    let received = tokio::time::timeout(Duration::from_secs(3), socket.recv()).await;
    assert!(!matches!(received, Ok(Ok(_))), "a SUB socket without the key received a message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_traffic_reveals_nothing_private() {
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
