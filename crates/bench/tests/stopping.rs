//! How the tool's child processes stop: when their standard input closes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_forum-bench");

/// Waits up to `timeout` for `child` to exit and returns its status, killing it otherwise.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Starts a hidden role and returns it once it printed `READY`.
fn start_role(arguments: &[&str]) -> Child {
    let mut child = Command::new(BENCH)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start forum-bench");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("reading READY");
    assert!(line.starts_with("READY "), "{arguments:?} printed {line:?} instead of READY");
    child
}

#[test]
fn echo_stops_when_stdin_closes() {
    let mut child = start_role(&["echo"]);

    drop(child.stdin.take());

    let status = wait_with_timeout(&mut child, Duration::from_secs(5));
    assert!(status.is_some(), "echo still ran 5 s after its standard input closed");
}

#[test]
fn data_server_stops_cleanly_when_stdin_closes() {
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = format!("--data-dir={}", scratch.path().join("store").display());
    let mut child = start_role(&["serve-data", "--id=1", "--request=tcp://127.0.0.1:0", "--publish=tcp://127.0.0.1:0", &data_dir]);

    drop(child.stdin.take());

    let status = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("the data server still ran 10 s after its standard input closed");
    assert!(status.success(), "the data server exited with {status}");
}

#[test]
fn publisher_stops_when_stdin_closes() {
    let mut child = start_role(&["publish", "--count=1", "--header-bytes=8", "--bytes=8"]);

    drop(child.stdin.take());

    let status = wait_with_timeout(&mut child, Duration::from_secs(5)).expect("the publisher still ran 5 s after its standard input closed");
    assert!(status.success(), "the publisher exited with {status}");
}
