//! The binaries' command lines: help text and clear errors for bad arguments.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::workspace_binary;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    // A binary that wrongly starts would create its data folder here, not in the repository.
    let scratch = tempfile::tempdir().expect("creating a temporary folder");
    let mut child = Command::new(workspace_binary(binary))
        .args(args)
        .current_dir(scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the binary");
    // Every case here should exit at once; one that starts serving instead is a failure, not a hang.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("polling the binary").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} was still running after 20 s instead of exiting");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("reading the binary's output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn dataserver_help_names_every_variable() {
    let (status, stdout, _) = run("dataserver", &["--help"]);
    assert_eq!(status, 0);
    for variable in ["FORUM_DATA_REQUEST", "FORUM_DATA_PUB", "FORUM_DATA_DIR", "FORUM_SERVER_ID", "FORUM_PEERS"] {
        assert!(stdout.contains(variable), "--help does not mention {variable}:\n{stdout}");
    }
}

#[test]
fn dataserver_rejects_invalid_peer_url() {
    let (status, _, stderr) = run("dataserver", &["udp://127.0.0.1:20000"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("udp://127.0.0.1:20000"), "the error does not name the URL:\n{stderr}");
}

#[test]
fn dataserver_rejects_empty_peer_item() {
    let (status, _, stderr) = run("dataserver", &["tcp://127.0.0.1:20000,,tcp://127.0.0.1:20001"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("empty item at position 2"), "{stderr}");
}

#[test]
fn dataserver_rejects_invalid_request_endpoint() {
    let (status, _, stderr) = run("dataserver", &["--request", "localhost:21000"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("localhost:21000"), "{stderr}");
}

#[test]
fn webserver_help_names_every_variable() {
    let (status, stdout, _) = run("webserver", &["--help"]);
    assert_eq!(status, 0);
    for variable in ["FORUM_WEB_LISTEN", "FORUM_DATA_REQUEST", "FORUM_DATA_PUB"] {
        assert!(stdout.contains(variable), "--help does not mention {variable}:\n{stdout}");
    }
}

#[test]
fn webserver_rejects_invalid_endpoint() {
    let (status, _, stderr) = run("webserver", &["--data-pub", "tcp://nowhere"]);
    assert_ne!(status, 0, "{stderr}");
    assert!(stderr.contains("tcp://nowhere"), "the error does not name the endpoint:\n{stderr}");
}

#[test]
fn webserver_rejects_invalid_listen_address() {
    let (status, _, stderr) = run("webserver", &["--listen", "not-an-address"]);
    assert_ne!(status, 0, "{stderr}");
    assert!(stderr.contains("not-an-address"), "{stderr}");
}

#[test]
fn webserver_rejects_empty_name() {
    let (status, _, stderr) = run("webserver", &["--name", ""]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("invalid web server name"), "{stderr}");
}

#[test]
fn dataserver_rejects_id_that_differs_from_stored_one() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("server-id"), "7\n").unwrap();
    let data_dir = scratch.path().to_str().unwrap();

    let (status, _, stderr) = run("dataserver", &["--id", "8", "--data-dir", data_dir]);

    assert_ne!(status, 0, "{stderr}");
    assert!(stderr.contains("--id 8 differs from the id 7"), "{stderr}");
    assert_eq!(std::fs::read_to_string(scratch.path().join("server-id")).unwrap(), "7\n");
}
