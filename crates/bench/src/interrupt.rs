//! SIGINT and SIGTERM: a run that receives either stops its servers, removes its scratch
//! folder and exits with 128 + the signal number, as a shell reports a process the signal
//! ended.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How long the removal of the scratch folder is retried. A child that was just sent
/// SIGKILL can still create a file in its store until the kernel has ended it.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The handlers of SIGINT and SIGTERM. While they exist, neither signal ends the process.
pub struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
}

impl Interrupts {
    pub fn listen() -> anyhow::Result<Interrupts> {
        let interrupt = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
        let terminate = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
        Ok(Interrupts { interrupt, terminate })
    }

    /// Waits for SIGINT or SIGTERM and returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

/// Removes `path` and everything in it, retrying for [`REMOVAL_TIMEOUT`] while the killed
/// children exit.
pub async fn remove_scratch(path: &Path) -> std::io::Result<()> {
    let started = Instant::now();
    loop {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) if started.elapsed() >= REMOVAL_TIMEOUT => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The error of a run that a signal ended.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub scratch: PathBuf,
    pub removal: std::io::Result<()>,
}

impl Interrupted {
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        match &self.removal {
            Ok(()) => write!(formatter, "interrupted by {name}; stopped the servers and removed {}", self.scratch.display()),
            Err(error) => write!(
                formatter,
                "interrupted by {name}; stopped the servers but failed to remove {}: {error}; remove it by hand",
                self.scratch.display()
            ),
        }
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remove_scratch_deletes_nested_folder() {
        let scratch = tempfile::tempdir().unwrap();
        let store = scratch.path().join("store-1");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("forum.redb"), b"data").unwrap();

        remove_scratch(scratch.path()).await.unwrap();

        assert!(!scratch.path().exists(), "{} still exists", scratch.path().display());
    }

    #[tokio::test]
    async fn remove_scratch_accepts_missing_folder() {
        let scratch = tempfile::tempdir().unwrap();
        let missing = scratch.path().join("gone");

        assert!(remove_scratch(&missing).await.is_ok());
    }

    #[test]
    fn interrupted_exit_code_and_message() {
        let interrupted = Interrupted { signal: libc::SIGTERM, scratch: PathBuf::from("/tmp/forum-bench-x"), removal: Ok(()) };

        assert_eq!(interrupted.exit_code(), 143);
        assert_eq!(interrupted.to_string(), "interrupted by SIGTERM; stopped the servers and removed /tmp/forum-bench-x");
    }
}
