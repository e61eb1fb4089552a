//! Shows that our ZMTP is the real protocol: a libzmq client (pyzmq) sends a request to a data
//! server, gets the reply, subscribes to its `webserver` topic and receives a change. The server
//! has a cluster key, so the client also seals and opens the payloads with its own pure-Python
//! XChaCha20-Poly1305 (tests/interop/xchacha.py), which shows that the sealed format is
//! implementable from its description alone.
//!
//! The Python interpreter comes from `FORUM_PYTHON`, or `.venv/bin/python` at the workspace root
//! (`.ci/run` creates that venv with pyzmq and msgpack). Outside CI, a missing interpreter skips
//! the test with a message; with `CI` set, it fails.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use zmtp_guard::{Dealer, Limits, Subscriber};

use forum_dataserver::{Config, DataServer, Options};
use forum_protocol::ClusterKey;

const DEADLINE: Duration = Duration::from_secs(10);

fn python_with_pyzmq() -> Option<PathBuf> {
    let candidate = std::env::var_os("FORUM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let usable = std::process::Command::new(&candidate)
        .args(["-c", "import zmq, msgpack"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    usable.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_client_talks_to_data_server() {
    let Some(python) = python_with_pyzmq() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with pyzmq and msgpack: set FORUM_PYTHON or run .ci/run, which creates .venv"
        );
        eprintln!("skipped: no Python with pyzmq and msgpack (set FORUM_PYTHON or create .venv)");
        return;
    };
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let key_text = "interop-test-key-0123456789abcdef0123456789abcdef";
    let cluster_key = ClusterKey::new(key_text.as_bytes(), "the test key").unwrap();
    let config = Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.path().to_owned(),
        peers: Vec::new(),
    };
    let server = DataServer::start_with(config, Options { cluster_key: Some(cluster_key), ..Options::default() })
        .await
    .expect("starting a data server");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libzmq_client.py");

    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("FORUM_CLUSTER_KEY", key_text)
        .arg(server.request_endpoint())
        .arg(server.pub_endpoint())
        .output()
        .await
        .expect("running the pyzmq client");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the pyzmq client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("REQ request answered"), "{stdout}");
    assert!(stdout.contains("SUB received on webserver"), "{stdout}");
    server.shutdown().await;
}

/// Our client sockets against libzmq's: a DEALER gets a ROUTER's reply, and a SUB receives
/// only its topic from a PUB that sends PINGs and disconnects subscribers that miss a PONG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_clients_talk_to_libzmq_servers() {
    let Some(python) = python_with_pyzmq() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with pyzmq: set FORUM_PYTHON or run .ci/run, which creates .venv"
        );
        eprintln!("skipped: no Python with pyzmq (set FORUM_PYTHON or create .venv)");
        return;
    };
    common::init_logging();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libzmq_servers.py");
    let mut servers = tokio::process::Command::new(python)
        .arg(script)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running the pyzmq servers");
    let mut lines = BufReader::new(servers.stdout.take().unwrap()).lines();
    let ports = tokio::time::timeout(DEADLINE, lines.next_line()).await.expect("ports in time").unwrap().expect("a line of ports");
    let (router_port, pub_port) = ports.split_once(' ').expect("two ports");

    let limits = Limits::default();
    let mut dealer = Dealer::connect(&format!("tcp://127.0.0.1:{router_port}"), &limits, DEADLINE).await.expect("connect to ROUTER");
    dealer.send(&[Bytes::new(), Bytes::from_static(b"request")]).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, dealer.recv()).await.expect("reply in time").expect("reply");
    assert_eq!(reply, [Bytes::new(), Bytes::from_static(b"request"), Bytes::from_static(b"reply")]);

    let mut subscriber =
        Subscriber::connect(&format!("tcp://127.0.0.1:{pub_port}"), &[b"news"], &limits, DEADLINE).await.expect("connect to PUB");
    let first = tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("message in time").expect("message");
    assert_eq!(first[0], Bytes::from_static(b"news"));
    // Several heartbeat timeouts later the connection still delivers, so our PONGs arrived.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut received = 1;
    while tokio::time::Instant::now() < until {
        let message = tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("message in time").expect("message");
        assert_eq!(message[0], Bytes::from_static(b"news"), "a message of another topic");
        received += 1;
    }
    assert!(received > 20, "only {received} messages in 1 s");
}
