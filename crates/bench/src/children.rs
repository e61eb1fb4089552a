//! Child processes: the servers and zeromq peers that the tool starts and stops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::machine::resident_kib;

/// How long a child may take to print its `READY` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child process. Dropping it kills the process.
pub struct ChildProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The addresses from its `READY` line.
    pub addresses: Vec<String>,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts this binary with `arguments` (a hidden role), its standard error going to
    /// `log`, and waits for its `READY` line.
    pub async fn start(name: &str, arguments: &[String], log: &Path) -> anyhow::Result<ChildProcess> {
        let executable = std::env::current_exe().context("failed to find this program's path")?;
        let log_file = std::fs::File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
        let mut child = Command::new(executable)
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .with_context(|| format!("{name} did not start within {START_TIMEOUT:?}; see {}", log.display()))?
            .with_context(|| format!("failed to read the output of {name}"))?;
        let Some(addresses) = line.as_deref().and_then(|line| line.strip_prefix("READY ")) else {
            bail!("{name} exited before it was ready; see {}", log.display());
        };
        let addresses = addresses.split_whitespace().map(str::to_owned).collect();
        let stdin = child.stdin.take();
        Ok(ChildProcess { name: name.to_owned(), child, stdin, addresses, log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running child has a pid")
    }

    /// Returns the child's resident memory in KiB.
    pub fn resident_kib(&self) -> anyhow::Result<u64> {
        resident_kib(self.pid())
    }

    /// Writes one line to the child's standard input.
    pub async fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the child's standard input is closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the process to exit, killing it after [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill only sends a signal, to a child of this process that has not been reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("{} exited with {status}; see {}", self.name, self.log.display());
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("{} did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed", self.name)
            }
        }
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// NOTE: another process can take the port before the server binds it; that start then
/// fails with an error naming the endpoint.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}
