//! Connection counters shared by a listener, its connection tasks and status readers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The open connections and the connections cut, of one listening port.
#[derive(Debug)]
pub(crate) struct Counters {
    /// One permit per open connection, `max_connections` in all.
    permits: Arc<Semaphore>,
    max_connections: usize,
    rejected: AtomicU64,
}

impl Counters {
    pub(crate) fn new(max_connections: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_connections)), max_connections, rejected: AtomicU64::new(0) }
    }

    /// Takes a permit for one more connection, or counts a rejection and returns `None`
    /// when `max_connections` are open.
    pub(crate) fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() {
            self.count_rejection();
        }
        permit
    }

    /// Returns the semaphore whose permits count the open connections.
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    pub(crate) fn count_rejection(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn active(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }
}

/// A cheap, cloneable reader of one port's counters, from a [`Guard`](crate::Guard) or a
/// [`ZmtpListener`](crate::ZmtpListener). After the port stops, it keeps returning the final
/// values.
#[derive(Debug, Clone)]
pub struct GuardStats {
    local_addr: SocketAddr,
    counters: Arc<Counters>,
}

impl GuardStats {
    pub(crate) fn new(local_addr: SocketAddr, counters: Arc<Counters>) -> Self {
        Self { local_addr, counters }
    }

    /// Returns the public address of the port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the number of connections closed for breaking a limit, those closed at
    /// accept because `max_connections` were open included.
    pub fn rejected_connections(&self) -> u64 {
        self.counters.rejected()
    }

    /// Returns the number of connections open now.
    pub fn active_connections(&self) -> usize {
        self.counters.active()
    }
}
