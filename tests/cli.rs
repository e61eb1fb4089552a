//! The binaries' command lines: help text and clear errors for bad arguments.

mod common;

use std::process::Command;

use common::workspace_binary;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    // A binary that wrongly starts would create its data folder here, not in the repository.
    let scratch = tempfile::tempdir().expect("creating a temporary folder");
    let output = Command::new(workspace_binary(binary))
        .args(args)
        .current_dir(scratch.path())
        .output()
        .expect("running the binary");
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
