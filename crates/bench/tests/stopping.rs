//! How the tool and its child processes stop: a child when its standard input closes, and
//! a run on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
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

/// Returns the ids of processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(command_line) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&command_line).contains(needle) {
            found.push(pid);
        }
    }
    found
}

fn folder_is_empty(path: &Path) -> bool {
    std::fs::read_dir(path).unwrap().next().is_none()
}

#[test]
fn sigterm_stops_servers_and_removes_scratch() {
    let data_parent = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut run = Command::new(BENCH)
        .args(["--quick", "--only", "e", "--data-dir"])
        .arg(data_parent.path())
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("failed to start forum-bench");

    // Waits until a data server runs with its store under the data folder.
    let needle = data_parent.path().to_string_lossy().into_owned();
    let started = Instant::now();
    while processes_mentioning(&format!("--data-dir={needle}")).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "no data server started within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill only sends a signal, to a child of this test that has not been reaped.
    unsafe {
        libc::kill(run.id() as libc::pid_t, libc::SIGTERM);
    }

    let status = wait_with_timeout(&mut run, Duration::from_secs(15)).expect("forum-bench still ran 15 s after SIGTERM");
    let mut errors = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut errors).unwrap();
    assert_eq!(status.code(), Some(143), "stderr: {errors}");
    assert!(errors.contains("interrupted by SIGTERM; stopped the servers and removed"), "stderr: {errors}");
    assert!(folder_is_empty(data_parent.path()), "the scratch folder under {} remains", data_parent.path().display());
    let survivors = processes_mentioning(&format!("--data-dir={needle}"));
    assert!(survivors.is_empty(), "data servers {survivors:?} outlived the run");
}
