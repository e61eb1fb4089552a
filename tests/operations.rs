//! What operators rely on: a damaged store stops the server with its path, a server never
//! reuses its id without its store, writes are committed in groups, and the admin endpoint
//! serves health and metrics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::data_client::DataClient;
use common::workspace_binary;
use forum_dataserver::{Config, DataServer, Options, STORE_FILE};
use forum_protocol::{Reply, Request};

fn config(directory: &std::path::Path) -> Config {
    Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: directory.to_owned(),
        peers: Vec::new(),
    }
}

#[test]
fn damaged_store_stops_server_naming_path() {
    let directory = tempfile::tempdir().unwrap();
    let store = directory.path().join(STORE_FILE);
    std::fs::write(&store, b"\x00\x01 this is not a redb database ".repeat(300)).unwrap();

    let output = Command::new(workspace_binary("dataserver"))
        .args(["--id", "1", "--request", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--data-dir"])
        .arg(directory.path())
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("running the dataserver");

    assert!(!output.status.success(), "the server started on a damaged store");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&store.display().to_string()), "the error does not name {}:\n{stderr}", store.display());
}

/// Runs the dataserver binary on `data_dir` with id 1 and returns its exit status and
/// standard error. A server that starts is stopped after 5 seconds and counts as a failure
/// to refuse.
fn start_binary(data_dir: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(workspace_binary("dataserver"))
        .args(["--id", "1", "--request", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the dataserver");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = match child.try_wait().unwrap() {
        Some(status) => !status.success(),
        None => {
            child.kill().unwrap();
            false
        }
    };
    let output = child.wait_with_output().unwrap();
    (refused, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Stores a user, a subject and 300 posts in a fresh store in `directory`, as server 1.
async fn fill_store(directory: &std::path::Path) {
    let server = DataServer::start(config(directory)).await.unwrap();
    let mut client = DataClient::new(server.request_endpoint());
    client.expect("registering", Request::Register { name: "ana".into(), password: "password-of-ana".into() }).await;
    let created = client.expect("creating", Request::CreateSubject { title: "Kept".into(), created_by: "ana".into() }).await;
    let Reply::Subject(subject) = created else { panic!("a subject: {created:?}") };
    let posts = (0..300)
        .map(|number| Request::PostMessage { subject: subject.id, author: "ana".into(), text: format!("post {number} {}", "x".repeat(200)) })
        .collect();
    client.pipeline(posts).await.expect("every post is answered");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_store_stops_server_naming_path() {
    let original = tempfile::tempdir().unwrap();
    fill_store(original.path()).await;
    let stored = std::fs::read(original.path().join(STORE_FILE)).unwrap();

    // redb itself stops with a panic on some of these lengths; each must end in an error
    // that names the file.
    for cut in [stored.len() - 4096, stored.len() * 9 / 10, stored.len() / 2, stored.len() / 10] {
        let directory = tempfile::tempdir().unwrap();
        let store = directory.path().join(STORE_FILE);
        std::fs::write(&store, &stored[..cut]).unwrap();
        let (refused, stderr) = start_binary(directory.path());
        assert!(refused, "the server started on a store cut to {cut} of {} bytes:\n{stderr}", stored.len());
        assert!(stderr.contains(&store.display().to_string()), "the error does not name {}:\n{stderr}", store.display());
    }
}

#[test]
fn missing_store_rejects_old_id() {
    for store in [None, Some(&b""[..])] {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("server-id"), "1\n").unwrap();
        if let Some(bytes) = store {
            std::fs::write(directory.path().join(STORE_FILE), bytes).unwrap();
        }
        let (refused, stderr) = start_binary(directory.path());
        assert!(refused, "the server reused its id without its store ({store:?}):\n{stderr}");
        assert!(stderr.contains("new --id"), "the error gives no way out:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_share_commits() {
    let directory = tempfile::tempdir().unwrap();
    let server = DataServer::start(config(directory.path())).await.unwrap();
    let mut client = DataClient::new(server.request_endpoint());
    let registered = client.expect("registering", Request::Register { name: "ana".into(), password: "password-of-ana".into() }).await;
    assert!(matches!(registered, Reply::User(_)), "{registered:?}");
    let created = client.expect("creating", Request::CreateSubject { title: "Load".into(), created_by: "ana".into() }).await;
    let Reply::Subject(subject) = created else { panic!("a subject: {created:?}") };

    let posts = (0..500)
        .map(|number| Request::PostMessage { subject: subject.id, author: "ana".into(), text: format!("post {number}") })
        .collect();
    let replies = client.pipeline(posts).await.expect("every post is answered");
    assert!(replies.iter().all(|reply| matches!(reply, Reply::Message(_))));

    // Rates average over samples taken once a second; wait for one after the posts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let Reply::Status(status) = client.expect("reading the status", Request::Status).await else { panic!("a status") };
    assert_eq!(status.counters.local_changes, 502);
    assert!(status.rates.local_changes > 0, "{:?}", status.rates);
    assert!(status.rates.requests > 0, "{:?}", status.rates);
    assert!(
        status.counters.commits * 4 <= status.counters.local_changes,
        "500 pipelined posts took {} commits; group commit should share them",
        status.counters.commits
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_and_metrics() {
    let directory = tempfile::tempdir().unwrap();
    let options = Options { advertise: None, admin: Some("127.0.0.1:0".parse().unwrap()), ..Options::default() };
    let server = DataServer::start_with(config(directory.path()), options).await.unwrap();
    let admin = server.admin_address().expect("an admin address");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    let health = http.get(format!("http://{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let mut client = DataClient::new(server.request_endpoint());
    client.expect("registering", Request::Register { name: "ana".into(), password: "password-of-ana".into() }).await;
    let metrics = http.get(format!("http://{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("# TYPE forum_requests_total counter"), "{text}");
    assert!(text.contains("# TYPE forum_rate_per_second gauge"), "{text}");
    assert!(text.contains("forum_local_changes_total{server=\"1\"} 1\n"), "{text}");
    assert!(text.contains("forum_version_vector{server=\"1\",origin=\"1\"} 1\n"), "{text}");

    let missing = http.get(format!("http://{admin}/nothing")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown stops the admin endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_without_id_file_keeps_its_owner() {
    let directory = tempfile::tempdir().unwrap();
    fill_store(directory.path()).await;
    let id_file = directory.path().join("server-id");
    assert!(!id_file.exists(), "the library writes no server-id file");

    // Another id is refused, and the refusal writes nothing.
    let output = Command::new(workspace_binary("dataserver"))
        .args(["--id", "2", "--request", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--data-dir"])
        .arg(directory.path())
        .output()
        .expect("running the dataserver");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "--id 2 opened server 1's store:\n{stderr}");
    assert!(stderr.contains("--id 2 differs from the id 1"), "{stderr}");
    assert!(!id_file.exists(), "the refused start wrote {}", id_file.display());

    // Without --id, the server takes the store's owner id and writes it to server-id.
    let mut child = Command::new(workspace_binary("dataserver"))
        .args(["--request", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--data-dir"])
        .arg(directory.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running the dataserver");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !id_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&id_file).unwrap().trim(), "1");
    assert!(still_running, "the server did not start on its own store");
}
